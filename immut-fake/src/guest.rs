//! A machine's own metadata service, as a guest sees it: a link-local server that answers
//! questions about the machine that asks (its image, its name) and only about it. A fake cloud
//! starts one per machine ([`GuestServer::start`] with a read-only view of its model), since
//! the loopback address cannot tell one guest from another the way a cloud's network can.

use std::net::SocketAddr;

use crate::server::{Api, CloudError, FakeServer, Response};

/// A running guest metadata server on 127.0.0.1. Dropping it stops the server.
#[derive(Debug)]
pub struct GuestServer {
    server: FakeServer,
}

impl GuestServer {
    /// Serves `api` on a free port of 127.0.0.1.
    pub async fn start<A: Api>(api: A) -> std::io::Result<GuestServer> {
        Ok(GuestServer { server: FakeServer::start(api, SocketAddr::from(([127, 0, 0, 1], 0))).await? })
    }

    /// `127.0.0.1:PORT`, the form of `GCE_METADATA_HOST`.
    pub fn host(&self) -> String {
        self.server.addr().to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Requests served, by method (`metadata.instance.image`, ...).
    pub fn calls(&self) -> std::collections::BTreeMap<String, u64> {
        self.server.recorder().counts()
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// A metadata service's answer that is not JSON: text with its status and headers, as the
/// Compute Engine metadata server answers keys and refusals.
#[derive(Debug, Clone, PartialEq)]
pub struct TextAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub text: String,
    /// Headers besides `content-type`.
    pub headers: Vec<(String, String)>,
}

impl TextAnswer {
    /// An answer of `status` with `text` and `headers`.
    pub fn new(status: u16, text: impl Into<String>, headers: &[(&str, &str)]) -> Self {
        let headers = headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        TextAnswer { status, text: text.into(), headers }
    }

    /// As a response, with `content-type`.
    pub fn response(&self, content_type: &str) -> Response {
        let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
        headers.extend(self.headers.iter().cloned());
        Response { status: self.status, headers, body: self.text.clone().into_bytes() }
    }
}

impl CloudError for TextAnswer {
    fn status(&self) -> u16 {
        self.status
    }

    fn body(&self) -> serde_json::Value {
        serde_json::Value::String(self.text.clone())
    }

    fn render(&self) -> Response {
        self.response("text/html; charset=UTF-8")
    }
}
