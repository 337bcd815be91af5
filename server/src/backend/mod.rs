//! Storage and delivery backends: one trait per concern, chosen at start-up.
//!
//! | concern | trait | one-machine default |
//! |---|---|---|
//! | accounts, devices, friends, groups | [`Directory`] | SQLite ([`sqlite`]) |
//! | message log, per-conversation seq, read positions | [`MessageStore`] | redb ([`embedded`]) |
//! | message log shared by a cluster of servers | [`MessageStore`] | - (PostgreSQL: [`postgres`]; TiKV: [`tikv`]) |
//! | notifications for offline users | [`Push`] | webhook ([`webhook`]) or none |
//! | who is online, on which server | [`PresenceStore`] | memory; Redis ([`redis`]) |
//! | envelopes between chat servers | [`Bus`] | in process; Redis ([`redis`]) |
//! | cluster membership, load, Snowflake worker ids | [`Registry`] | this server alone ([`registry::StaticRegistry`]); etcd ([`etcd`]) |
//!
//! Services see only the traits, through [`Backends`]. Every implementation must pass the
//! conformance suite of its trait (`directory::conformance`, `message_store::conformance`,
//! `presence_store::conformance`, `bus::conformance`, `registry::conformance`).

pub mod bus;
pub mod directory;
pub mod embedded;
pub mod etcd;
pub mod message_store;
pub mod postgres;
pub mod presence_store;
pub mod push;
pub mod redis;
pub mod registry;
pub mod sqlite;
pub mod tikv;
pub mod webhook;

use std::sync::Arc;

pub use bus::Bus;
pub use directory::Directory;
pub use message_store::MessageStore;
pub use presence_store::PresenceStore;
pub use push::Push;
pub use registry::Registry;

/// The backends one server runs on, shared by every service.
#[derive(Clone)]
pub struct Backends {
    pub directory: Arc<dyn Directory>,
    pub messages: Arc<dyn MessageStore>,
    pub push: Arc<dyn Push>,
}
