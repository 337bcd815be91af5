//! Messaging: send (persist, then deliver), sync, history, conversations, read marks and
//! typing.
//!
//! Send path: validate → rate limit → membership → Snowflake id → durable append (the store
//! assigns the gapless seq; a retried client_msg_id returns the first message) → deliver to
//! every live session of every member except the sending device, on this server and, through
//! the bus, on the servers holding the others' streams → push to members with no live session
//! anywhere. Only then is the sender answered, so an acknowledged message is never lost; a
//! delivery that fails (slow consumer, crash, lost envelope) is repaired by the recipient's
//! sync.

use std::{collections::HashMap, sync::Arc, time::Instant};

use tokio::sync::Semaphore;

use daehwa::v1::{
    Content, Message, ReadReceipt, ServerEvent, TypingNotice, content::Kind, server_event::Event,
};

use crate::{
    auth::{AuthContext, tokens::now_ms},
    backend::{
        Backends,
        message_store::{ConversationState, NewMessage},
        push::PushNotification,
    },
    error::{Error, Result},
    ids::{ConversationId, UserId},
    metrics::Metrics,
    service::{
        DirectoryCaches,
        delivery::Delivery,
        friendship_cache::FriendshipCache,
        member_cache::{self, MemberCache, Members},
        rate_limit::RateLimiter,
        validate,
    },
    session::SharedEvent,
    snowflake::Snowflake,
};

/// Cursors accepted in one SyncMessages call.
const MAX_CURSORS: usize = 1000;
/// Page size when the caller asks for 0.
const DEFAULT_PAGE: usize = 100;

/// Limits the chat service enforces.
#[derive(Debug, Clone)]
pub struct ChatLimits {
    pub max_content_bytes: usize,
    pub max_page_size: usize,
    pub push_include_text: bool,
}

/// One message to send, as the client gave it.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// The client's idempotency key.
    pub client_msg_id: String,
    /// The conversation id as the client wrote it.
    pub conversation: String,
    /// What to send.
    pub content: Option<Content>,
}

/// A conversation as ListConversations reports it.
#[derive(Debug, Clone)]
pub struct ConversationSummary {
    pub state: ConversationState,
    pub unread: u64,
}

/// The chat service of one server.
pub struct ChatService {
    backends: Backends,
    delivery: Arc<Delivery>,
    ids: Snowflake,
    rate: RateLimiter,
    limits: ChatLimits,
    metrics: Arc<Metrics>,
    /// Recent friendship answers, shared with the people service (which forgets ended ones).
    friendships: Arc<FriendshipCache>,
    /// Recent group member lists, shared with the group service (which forgets changed ones).
    members: Arc<MemberCache>,
    typing_rate: RateLimiter,
    push_tasks: Arc<Semaphore>,
}

/// Typing notices per second per user (burst 10); more are dropped.
const TYPING_RATE: f64 = 2.0;
/// Messages whose push notifications may be in preparation at once; beyond, pushes are
/// dropped (the messages are stored; devices sync when they connect).
const PUSH_BACKLOG: usize = 1024;

impl ChatService {
    /// A chat service over `backends`, delivering through `delivery`.
    pub fn new(
        backends: Backends,
        delivery: Arc<Delivery>,
        ids: Snowflake,
        rate: RateLimiter,
        limits: ChatLimits,
        metrics: Arc<Metrics>,
        caches: DirectoryCaches,
    ) -> Self {
        Self {
            backends,
            friendships: caches.friendships,
            members: caches.members,
            delivery,
            ids,
            rate,
            limits,
            metrics,
            typing_rate: RateLimiter::new(TYPING_RATE, 10),
            push_tasks: Arc::new(Semaphore::new(PUSH_BACKLOG)),
        }
    }

    /// Stores and delivers a message; returns the stored message (the first one for a retry).
    pub async fn send(
        &self,
        caller: AuthContext,
        client_msg_id: &str,
        conversation: &str,
        content: Option<Content>,
    ) -> Result<Message> {
        let send = SendRequest {
            client_msg_id: client_msg_id.to_owned(),
            conversation: conversation.to_owned(),
            content,
        };
        self.send_many(caller, vec![send])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::internal("a send without an outcome")))
    }

    /// Stores and delivers several messages of one device, in order: those that pass
    /// validation are committed together (one durable commit where the store can) with
    /// their seqs in the order given, then delivered in that order. Returns one outcome per
    /// send, in order. A Connect stream hands over what its client already sent, so a client
    /// with several sends in flight is not served one commit at a time.
    pub async fn send_many(
        &self,
        caller: AuthContext,
        sends: Vec<SendRequest>,
    ) -> Vec<Result<Message>> {
        let mut outcomes: Vec<Option<Result<Message>>> = sends.iter().map(|_| None).collect();
        let mut members_of: HashMap<ConversationId, Result<Members>> = HashMap::new();
        let mut accepted = Vec::with_capacity(sends.len());
        let mut news = Vec::with_capacity(sends.len());
        for (index, send) in sends.into_iter().enumerate() {
            match self.prepare(caller, send, &mut members_of).await {
                Ok((members, new)) => {
                    accepted.push((index, members));
                    news.push(new);
                }
                Err(e) => outcomes[index] = Some(Err(e)),
            }
        }
        if !news.is_empty() {
            let started = Instant::now();
            let appended = self.backends.messages.append_many(news).await;
            self.metrics
                .store_append_latency
                .observe(started.elapsed().as_secs_f64());
            for ((index, members), result) in accepted.into_iter().zip(appended) {
                outcomes[index] = Some(match result {
                    Ok(appended) if appended.duplicate => Ok(appended.message),
                    Ok(appended) => {
                        self.metrics.messages_sent.inc();
                        self.fan_out(caller, &members, &appended.message).await;
                        Ok(appended.message)
                    }
                    Err(e) => Err(e),
                });
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Error::internal("a send without an outcome"))))
            .collect()
    }

    /// Checks one send and gives it its id: validation, membership (looked up once per
    /// conversation of a batch), rate, worker id lease.
    async fn prepare(
        &self,
        caller: AuthContext,
        send: SendRequest,
        members_of: &mut HashMap<ConversationId, Result<Members>>,
    ) -> Result<(Members, NewMessage)> {
        let conversation: ConversationId = send.conversation.parse()?;
        validate::content(send.content.as_ref(), self.limits.max_content_bytes)?;
        let client_msg_id = validate::client_msg_id(&send.client_msg_id)?;
        let members = match members_of.get(&conversation) {
            Some(known) => known.clone()?,
            None => {
                let found = self.members_for_send(caller.user, conversation).await;
                members_of.insert(conversation, found.clone());
                found?
            }
        };
        if !self.rate.try_acquire(caller.user) {
            return Err(Error::exhausted(
                "sending too fast: slow down and retry in a moment",
            ));
        }
        let Some(message_id) = self.ids.try_next_id() else {
            return Err(Error::unavailable(
                "this server holds no message id lease right now (registry unreachable): retry, or use another server",
            ));
        };
        let new = NewMessage {
            conversation,
            message_id,
            sender: caller.user,
            sender_device: caller.device,
            client_msg_id,
            content: send.content.unwrap_or_default(),
            created_at_ms: now_ms(),
        };
        Ok((members, new))
    }

    /// Who receives a message in `conversation`, after checking `sender` may send there:
    /// a member, and for direct conversations a friend of the other user.
    async fn members_for_send(
        &self,
        sender: UserId,
        conversation: ConversationId,
    ) -> Result<Members> {
        match conversation {
            ConversationId::Direct { lo, hi } => {
                let Some(peer) = conversation.peer_of(sender) else {
                    return Err(Error::denied("you are not a member of this conversation"));
                };
                if let Err(epoch) = self.friendships.check(sender, peer) {
                    if !self.backends.directory.are_friends(sender, peer).await? {
                        return Err(Error::denied(format!(
                            "user {peer} is not your friend: direct messages need a friendship"
                        )));
                    }
                    self.friendships.remember(sender, peer, epoch);
                }
                Ok(Arc::from([lo, hi]))
            }
            ConversationId::Group(_) => self.ensure_reader(sender, conversation).await,
        }
    }

    /// Offers the message to every live session of every member (except the sending
    /// device), then hands members with no live session anywhere to push, off the sender's
    /// path.
    async fn fan_out(&self, caller: AuthContext, members: &[UserId], message: &Message) {
        let event = SharedEvent::new(ServerEvent {
            event: Some(Event::Message(message.clone())),
        });
        let mut offline = self
            .delivery
            .to_users(members, Some(caller.device), &event)
            .await;
        offline.retain(|u| *u != caller.user);
        if offline.is_empty() {
            return;
        }
        let Ok(permit) = self.push_tasks.clone().try_acquire_owned() else {
            tracing::warn!(
                recipients = offline.len(),
                "push backlog full: notifications dropped"
            );
            return;
        };
        let job = PushJob {
            backends: self.backends.clone(),
            metrics: self.metrics.clone(),
            include_text: self.limits.push_include_text,
        };
        let message = message.clone();
        tokio::spawn(async move {
            job.notify_all(&offline, &message).await;
            drop(permit);
        });
    }

    /// Everything after each cursor, ascending per conversation, at most `limit` in all.
    pub async fn sync(
        &self,
        me: UserId,
        cursors: &[(String, u64)],
        limit: u32,
    ) -> Result<(Vec<Message>, bool)> {
        if cursors.len() > MAX_CURSORS {
            return Err(Error::invalid(format!(
                "at most {MAX_CURSORS} cursors per request"
            )));
        }
        let mut parsed = Vec::with_capacity(cursors.len());
        for (conversation, after) in cursors {
            let conversation: ConversationId = conversation.parse()?;
            self.ensure_reader(me, conversation).await?;
            parsed.push((conversation, *after));
        }
        let mut budget = self.page(limit);
        let mut messages = Vec::new();
        for (i, (conversation, after)) in parsed.iter().enumerate() {
            let mut page = self
                .backends
                .messages
                .read_after(*conversation, *after, budget + 1)
                .await?;
            if page.len() > budget {
                page.truncate(budget);
                messages.extend(page);
                return Ok((messages, true));
            }
            budget -= page.len();
            messages.extend(page);
            if budget == 0 {
                return Ok((messages, i + 1 < parsed.len()));
            }
        }
        Ok((messages, false))
    }

    /// The page before `before_seq` (0: the newest), ascending.
    pub async fn history(
        &self,
        me: UserId,
        conversation: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let conversation: ConversationId = conversation.parse()?;
        self.ensure_reader(me, conversation).await?;
        self.backends
            .messages
            .read_before(conversation, before_seq, self.page(limit))
            .await
    }

    /// My direct and group conversations, most recently active first.
    pub async fn conversations(&self, me: UserId) -> Result<Vec<ConversationSummary>> {
        let mut ids = self.backends.messages.direct_conversations(me).await?;
        ids.extend(
            self.backends
                .directory
                .groups_of(me)
                .await?
                .into_iter()
                .map(|g| ConversationId::Group(g.id)),
        );
        ids.sort_unstable();
        ids.dedup();
        let mut summaries: Vec<ConversationSummary> = self
            .backends
            .messages
            .conversation_states(me, &ids)
            .await?
            .into_iter()
            .map(|state| ConversationSummary {
                unread: state.last_seq.saturating_sub(state.read_seq),
                state,
            })
            .collect();
        summaries.sort_by_key(|s| {
            std::cmp::Reverse(s.state.last_message.as_ref().map_or(0, |m| m.message_id))
        });
        Ok(summaries)
    }

    /// Moves my read position and tells the members' devices (mine included).
    pub async fn mark_read(
        &self,
        caller: AuthContext,
        conversation: &str,
        seq: u64,
    ) -> Result<u64> {
        let conversation: ConversationId = conversation.parse()?;
        let members = self.ensure_reader(caller.user, conversation).await?;
        let read = self
            .backends
            .messages
            .mark_read(caller.user, conversation, seq)
            .await?;
        if read == 0 {
            return Ok(read); // nothing to read: nobody to tell
        }
        let event = SharedEvent::new(ServerEvent {
            event: Some(Event::ReadReceipt(ReadReceipt {
                conversation_id: conversation.to_string(),
                user_id: caller.user.0,
                seq: read,
            })),
        });
        self.delivery
            .to_users(&members, Some(caller.device), &event)
            .await;
        Ok(read)
    }

    /// Tells the other members I am typing (not stored).
    ///
    /// Typing in a direct conversation needs a friendship (like sending); typing
    /// notices beyond the typing rate are dropped silently (they are hints, not data).
    pub async fn typing(&self, caller: AuthContext, conversation: &str) -> Result<()> {
        let conversation: ConversationId = conversation.parse()?;
        let members = self.members_for_send(caller.user, conversation).await?;
        if !self.typing_rate.try_acquire(caller.user) {
            return Ok(());
        }
        let event = SharedEvent::new(ServerEvent {
            event: Some(Event::Typing(TypingNotice {
                conversation_id: conversation.to_string(),
                user_id: caller.user.0,
            })),
        });
        let others: Vec<UserId> = members
            .iter()
            .copied()
            .filter(|m| *m != caller.user)
            .collect();
        self.delivery.to_users(&others, None, &event).await;
        Ok(())
    }

    /// Checks `me` may read `conversation` and returns its members. Direct conversations stay
    /// readable to both users after a friendship ends; groups to current members only.
    ///
    /// A group's list comes from the member cache when it is recent; a list without `me` is
    /// read again from the directory (`me` may have joined through another server), so the
    /// cache can delay a removal by its TTL but never refuses a member.
    async fn ensure_reader(&self, me: UserId, conversation: ConversationId) -> Result<Members> {
        match conversation {
            ConversationId::Direct { lo, hi } if lo == me || hi == me => Ok(Arc::from([lo, hi])),
            ConversationId::Direct { .. } => {
                Err(Error::denied("you are not a member of this conversation"))
            }
            ConversationId::Group(group) => {
                let epoch = match self.members.get(group) {
                    Ok(members) if member_cache::contains(&members, me) => return Ok(members),
                    Ok(_) => self.members.epoch(),
                    Err(epoch) => epoch,
                };
                let listed = self.backends.directory.member_ids(group).await?;
                let members = self.members.remember(group, listed, epoch);
                if member_cache::contains(&members, me) {
                    Ok(members)
                } else if self.backends.directory.group(group).await?.is_none() {
                    Err(Error::not_found(format!("no group with id {group}")))
                } else {
                    Err(Error::denied("you are not a member of this group"))
                }
            }
        }
    }

    fn page(&self, limit: u32) -> usize {
        match limit as usize {
            0 => DEFAULT_PAGE.min(self.limits.max_page_size),
            n => n.min(self.limits.max_page_size),
        }
    }
}

/// Push notifications for one message, run off the sender's path.
struct PushJob {
    backends: Backends,
    metrics: Arc<Metrics>,
    include_text: bool,
}

impl PushJob {
    /// Notifies each user who has notifications on.
    async fn notify_all(&self, users: &[UserId], message: &Message) {
        let text = match message.content.as_ref().and_then(|c| c.kind.as_ref()) {
            Some(Kind::Text(t)) if self.include_text => Some(t.clone()),
            _ => None,
        };
        for &user in users {
            match self.backends.directory.settings(user).await {
                Ok(settings) if !settings.notifications_enabled => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(user_id = %user, error = %e, "cannot read settings for push; sending anyway")
                }
            }
            self.metrics.pushes.inc();
            self.backends
                .push
                .notify(PushNotification {
                    user_id: user.0,
                    conversation_id: message.conversation_id.clone(),
                    message_id: message.message_id,
                    seq: message.seq,
                    sender_id: message.sender_id,
                    text: text.clone(),
                })
                .await;
        }
    }
}
