//! Request recording: every call the fake answered, counted by operation, and a bounded log.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// How many requests the log keeps; counts are kept for every request.
const LOG_LEN: usize = 10_000;

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// Model time of arrival, in milliseconds.
    pub at_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The cloud's method name, or `unknown`.
    pub operation: String,
    /// The status answered; 0 when the answer was deliberately lost.
    pub status: u16,
    /// The fault injected, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
}

/// Counts and a log of requests. Cheap to clone; clones share the record.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    counts: BTreeMap<String, u64>,
    log: VecDeque<Recorded>,
}

impl Recorder {
    /// Records a request; `seq` is filled in.
    pub fn record(&self, mut request: Recorded) {
        let mut inner = self.inner.lock().expect("recorder poisoned");
        inner.seq += 1;
        request.seq = inner.seq;
        *inner.counts.entry(request.operation.clone()).or_default() += 1;
        if inner.log.len() == LOG_LEN {
            inner.log.pop_front();
        }
        inner.log.push_back(request);
    }

    /// Requests by operation since the last [`Recorder::clear`].
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.inner.lock().expect("recorder poisoned").counts.clone()
    }

    /// The most recent requests, oldest first.
    pub fn log(&self) -> Vec<Recorded> {
        self.inner.lock().expect("recorder poisoned").log.iter().cloned().collect()
    }

    /// Forgets everything.
    pub fn clear(&self) {
        *self.inner.lock().expect("recorder poisoned") = Inner::default();
    }
}
