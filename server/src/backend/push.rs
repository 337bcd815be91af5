//! Notifications for users with no connected device.
//!
//! The chat service calls [`Push::notify`] after a message is stored, for each recipient who
//! has no live stream and has notifications enabled. Delivery is best effort: the message is
//! already durable and the device syncs it when it connects; a push only wakes it up.
//! `notify` must return quickly (queue, never wait on the network).

use async_trait::async_trait;

/// What a push says. Message text is included only when the operator allows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PushNotification {
    pub user_id: u64,
    pub conversation_id: String,
    pub message_id: u64,
    pub seq: u64,
    pub sender_id: u64,
    /// Set only when the provider is configured to include message text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A push provider.
#[async_trait]
pub trait Push: Send + Sync + 'static {
    /// Queues a notification; never blocks on the network.
    async fn notify(&self, notification: PushNotification);
    /// Stops accepting and delivers what is queued, within the provider's own timeouts.
    async fn close(&self);
}

/// A provider that drops every notification: the default when no webhook is configured.
pub struct NoPush;

#[async_trait]
impl Push for NoPush {
    async fn notify(&self, notification: PushNotification) {
        tracing::debug!(
            user_id = notification.user_id,
            "no push provider configured; notification dropped"
        );
    }
    async fn close(&self) {}
}
