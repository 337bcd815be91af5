//! Domain logic, free of tonic types: what each RPC means, who may do it, and what it
//! changes. The API adapters in `crate::api` decode requests, call these and encode results.

pub mod accounts;
pub mod chat;
pub mod delivery;
mod expiring_cache;
pub mod friendship_cache;
pub mod groups;
pub mod member_cache;
pub mod people;
pub mod presence;
pub mod rate_limit;
pub mod validate;

use std::sync::Arc;

pub use accounts::AccountService;
pub use chat::ChatService;
pub use groups::GroupService;
pub use people::PeopleService;
pub use presence::PresenceService;

/// Recent directory answers the chat hot paths read, each shared with the service that
/// changes what it caches (people forget ended friendships, groups forget changed member
/// lists).
#[derive(Clone, Default)]
pub struct DirectoryCaches {
    /// "These two are friends" answers for direct messages (the people service forgets).
    pub friendships: Arc<friendship_cache::FriendshipCache>,
    /// Group member lists for group messages and reads (the group service forgets).
    pub members: Arc<member_cache::MemberCache>,
}
