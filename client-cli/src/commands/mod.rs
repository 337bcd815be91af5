//! One module per command group; each exposes async functions taking the global [`Ctx`].
//!
//! [`Ctx`]: crate::session::Ctx

pub mod auth;
pub mod friends;
pub mod groups;
pub mod interactive;
pub mod messages;
pub mod presence;
