//! The test tools: the Python ones (moto and what later tests add) that
//! `./scripts/test.sh --setup` installs into a virtual environment of the repository's own,
//! `target/test-venv`, found the same way by every test and example that starts one of them;
//! and a Prometheus server ([`start_prometheus`]), from the system's package.

use std::path::PathBuf;

/// The interpreter of the test tools' environment: `IMMUT_TEST_PYTHON` when set (the test
/// script sets it), else `target/test-venv/bin/python` of this workspace. It must exist and be
/// able to import `module` (for example `moto.server`); otherwise the error says which command
/// sets it up. Never a Python traceback.
pub fn python_with(module: &str) -> Result<PathBuf, String> {
    let python = std::env::var_os("IMMUT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/test-venv/bin/python")));
    let setup = "run ./scripts/test.sh --setup in the repository (it creates target/test-venv from \
                 scripts/python/requirements.txt), or set IMMUT_TEST_PYTHON to a Python that has it";
    if !python.exists() {
        return Err(format!("the test tools are not set up: {} does not exist; {setup}", python.display()));
    }
    let imported = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}; {setup}", python.display()))?;
    if !imported.status.success() {
        return Err(format!("{} cannot import {module}; {setup}", python.display()));
    }
    Ok(python)
}

/// A moto server on 127.0.0.1, started by [`start_moto`]: the stand-in for AWS (EC2, ELBv2,
/// S3, IAM) that the tests run against. Dropping it stops it by its pid; a watchdog shell
/// also stops it when the test process ends without dropping it (a handle kept in a static).
#[derive(Debug)]
pub struct Moto {
    endpoint: String,
    port: u16,
    server: std::process::Child,
    watchdog: std::process::Child,
}

/// Starts moto on a free port of 127.0.0.1 and waits (up to 60 s) until it accepts
/// connections. `env` is added to its environment (such as `MOTO_ENABLE_AMI_VALIDATION`).
/// Fails, saying how to set the test tools up, when moto is not installed.
pub fn start_moto_with(env: &[(&str, &str)]) -> Result<Moto, String> {
    use std::process::{Command, Stdio};
    let python = python_with("moto.server")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))?
        .port();
    let mut server = Command::new(&python);
    server.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]);
    server.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        server.env(k, v);
    }
    let mut server = server.spawn().map_err(|e| format!("cannot start moto with {}: {e}", python.display()))?;
    // Stops moto, by its pid, once this process is gone (or moto exits on its own).
    let script = format!(
        "while kill -0 {parent} 2>/dev/null && kill -0 {moto} 2>/dev/null; do sleep 0.5; done; kill {moto} 2>/dev/null",
        parent = std::process::id(),
        moto = server.id()
    );
    let watchdog = match Command::new("sh").args(["-c", &script]).stdin(Stdio::null()).spawn() {
        Ok(w) => w,
        Err(e) => {
            let _ = server.kill();
            let _ = server.wait();
            return Err(format!("cannot start the shell that watches moto: {e}"));
        }
    };
    let moto = Moto { endpoint: format!("http://127.0.0.1:{port}"), port, server, watchdog };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return Err(format!("moto did not start on {} within 60 s", moto.endpoint));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(moto)
}

/// [`start_moto_with`] and no extra environment.
pub fn start_moto() -> Result<Moto, String> {
    start_moto_with(&[])
}

impl Moto {
    /// Its URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.server.id()
    }

    /// The standard AWS environment that points a client (an SDK, object_store, the `immut`
    /// command) at this moto with static test credentials: endpoint, keys, region, and
    /// `AWS_ALLOW_HTTP` for plain http.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// Creates an S3 bucket with a plain `PUT /<bucket>` (moto checks no signature).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port))
            .map_err(|e| format!("cannot reach moto on {}: {e}", self.endpoint))?;
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .map_err(|e| format!("cannot send to moto: {e}"))?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).map_err(|e| format!("no answer from moto: {e}"))?;
        if answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(format!("moto refused to create bucket {bucket}: {}", answer.lines().next().unwrap_or("")))
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

mod prometheus;

pub use prometheus::{Prometheus, prometheus_binary, start_prometheus};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moto_serves_s3_and_stops_by_its_pid_when_dropped() {
        let moto = start_moto().unwrap_or_else(|e| panic!("{e}"));
        let pid = moto.pid();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        moto.create_bucket(&format!("test-tools-{}", std::process::id())).unwrap();
        assert!(moto.aws_env().iter().any(|(k, v)| *k == "AWS_ENDPOINT_URL" && v == moto.endpoint()));
        let port = moto.endpoint().rsplit(':').next().unwrap().parse::<u16>().unwrap();
        drop(moto);
        // Reaped by the drop: no process and nothing listening on its port any more.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "moto (pid {pid}) outlived its handle");
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
