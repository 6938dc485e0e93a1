//! immut-azure against the fake ARM, started in-process on 127.0.0.1 (a free port) by each
//! test: the conformance suite, end-to-end deployments with faults, the wire contract of the
//! fake, and the call figures. One test binary for the crate, so the SDKs are linked once.

mod conformance;
mod deployments;
mod figures;
mod support;
mod wire;
