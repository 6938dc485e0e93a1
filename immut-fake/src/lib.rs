//! # immut-fake
//!
//! What immut's fake cloud APIs share, written once: the HTTP server, opaque paging tokens, the
//! clock that long-running operations and resource states follow, fault injection and request
//! recording, all steered through one control endpoint. Each cloud's crate (the Compute Engine
//! fake in `immut-gcp`, later an ARM fake) holds only its resources and wire shapes.
//!
//! The split follows moto, the AWS emulator the AWS tests trust:
//!
//! - the **wire** (routes, request parsing, the cloud's JSON and error bodies) is the cloud's
//!   [`Api`] implementation; its errors are types that render the cloud's body ([`CloudError`]);
//! - the **model** (resources and their states over a [`Clock`]) sits behind it, so a handler
//!   reads like the API reference and the model reads like the cloud's behaviour;
//! - [`paging`], [`clock::Timeline`] and [`Faults`] are helpers every resource uses;
//! - [`official_client`] runs a cloud's official client against a fake, to prove the contract.
//! - [`guest`] serves one machine's own metadata service (its boot image, its name), as the
//!   guest on that machine asks it.
//!
//! The control endpoint lives under `/_fake/` on the same port, like moto's `/moto-api/`:
//!
//! | Request | What it does |
//! |---|---|
//! | `POST /_fake/reset` | forgets every resource, fault, recorded request and clock offset |
//! | `GET /_fake/faults`, `POST /_fake/faults` (a [`FaultRule`] or a list), `DELETE /_fake/faults` | fault injection |
//! | `GET /_fake/requests`, `DELETE /_fake/requests` | request counts by operation and the log of recent requests |
//! | `GET /_fake/state` | a JSON dump of the model |
//! | `GET /_fake/settings`, `POST /_fake/settings` | the cloud's timings (how long operations take, ...) |
//! | `GET /_fake/clock`, `POST /_fake/clock` (`{"advance_ms": N}`) | moves the model's clock forward |
//!
//! The server binds the address it is given (the binaries and tests use 127.0.0.1 only) and
//! stops when its [`FakeServer`] handle is dropped or [`FakeServer::shutdown`] is called.

pub mod clock;
pub mod faults;
pub mod guest;
pub mod official_client;
pub mod paging;
pub mod record;
pub mod server;
pub mod standalone;

pub use clock::{Clock, Timeline};
pub use faults::{Fault, FaultRule, Faults};
pub use paging::{Page, PagingError};
pub use record::{Recorded, Recorder};
pub use server::{Api, CloudError, Env, FakeServer, Request, Response};
