//! immut-gcp against the fake Compute API, started in-process on 127.0.0.1 (a free port) by
//! each test: the conformance suite, end-to-end deployments with faults, the call figures, and
//! Google's official Python client against the fake.
//! One test binary for the crate, so the Google client is linked once.

mod conformance;
mod deployments;
mod figures;
mod python_client;
mod readiness;
mod sealed;
mod support;
