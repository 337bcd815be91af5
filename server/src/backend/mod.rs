//! Storage and delivery backends: one trait per concern, chosen at start-up.
//!
//! | concern | trait | one-machine default |
//! |---|---|---|
//! | accounts, devices, friends, groups | [`Directory`] | SQLite ([`sqlite`]) |
//! | message log, per-conversation seq, read positions | [`MessageStore`] | redb ([`embedded`]) |
//! | notifications for offline users | [`Push`] | webhook ([`webhook`]) or none |
//!
//! Services see only the traits, through [`Backends`]. Every implementation must pass the
//! conformance suite of its trait (`directory::conformance`, `message_store::conformance`).

pub mod directory;
pub mod embedded;
pub mod message_store;
pub mod postgres;
pub mod push;
pub mod sqlite;
pub mod webhook;

use std::sync::Arc;

pub use directory::Directory;
pub use message_store::MessageStore;
pub use push::Push;

/// The backends one server runs on, shared by every service.
#[derive(Clone)]
pub struct Backends {
    pub directory: Arc<dyn Directory>,
    pub messages: Arc<dyn MessageStore>,
    pub push: Arc<dyn Push>,
}
