//! Domain records to wire messages (and the few conversions back).

use daehwa::v1;

use crate::{
    backend::directory::{GroupRecord, Relation, UserRecord, UserSettings},
    service::presence::timestamp,
};

/// A user record as the wire `User`.
pub fn user(u: UserRecord) -> v1::User {
    v1::User {
        user_id: u.id.0,
        username: u.username,
        display_name: u.display_name,
        status_message: u.status_message,
        avatar_url: u.avatar_url,
        created_at: Some(timestamp(u.created_at_ms)),
    }
}

/// A group record as the wire `Group` (with its conversation id).
pub fn group(g: GroupRecord) -> v1::Group {
    v1::Group {
        group_id: g.id.0,
        conversation_id: daehwa::group_conversation_id(g.id.0),
        name: g.name,
        owner_id: g.owner.0,
        member_ids: g.members.iter().map(|m| m.0).collect(),
        created_at: Some(timestamp(g.created_at_ms)),
    }
}

/// Settings as the wire message.
pub fn settings(s: UserSettings) -> v1::Settings {
    v1::Settings {
        notifications_enabled: s.notifications_enabled,
        presence_visible: s.presence_visible,
    }
}

/// Wire settings as the domain record.
pub fn settings_from(s: v1::Settings) -> UserSettings {
    UserSettings {
        notifications_enabled: s.notifications_enabled,
        presence_visible: s.presence_visible,
    }
}

/// A relation as the wire enum.
pub fn friendship_state(r: Relation) -> v1::FriendshipState {
    match r {
        Relation::Outgoing => v1::FriendshipState::Outgoing,
        Relation::Incoming => v1::FriendshipState::Incoming,
        Relation::Friends => v1::FriendshipState::Friends,
    }
}

/// Seconds since the epoch to a timestamp.
pub fn seconds(secs: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs as i64,
        nanos: 0,
    }
}
