//! immut-azure against the fake ARM, started in-process on 127.0.0.1 (a free port) by each
//! test: the conformance suite, end-to-end deployments with faults, the wire contract of the
//! fake, the long-running-operation fallbacks, the call figures, and Microsoft's official
//! Python clients against the fake. One test binary for the crate, so the SDKs are linked once.

mod conformance;
mod deployments;
mod figures;
mod polling;
mod python_client;
mod readiness;
mod sealed;
mod support;
mod wire;
