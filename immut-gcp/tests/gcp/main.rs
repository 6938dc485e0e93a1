//! immut-gcp against the fake Compute API, started in-process on 127.0.0.1 (a free port) by
//! each test: the conformance suite, end-to-end deployments with faults, and the call figures.
//! One test binary for the crate, so the Google client is linked once.

mod conformance;
mod deployments;
mod figures;
mod support;
