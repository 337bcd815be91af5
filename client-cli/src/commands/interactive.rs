//! `chat TARGET`: the interactive mode. Opens a `Connect` stream, waits for `ready`, shows
//! the last messages, then prints the conversation live while every line typed on standard
//! input is sent as a `send` event. A heartbeat goes out every 5 s; `/quit` or end of input
//! leaves cleanly.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use daehwa::v1::{
    ClientEvent, GetHistoryRequest, HeartbeatEvent, Message, ReadEvent, ServerEvent, client_event,
    send_result::Outcome, server_event::Event,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::commands::messages::text_message;
use crate::names::Names;
use crate::render::{clean, message_json, message_line, presence_word, print_json};
use crate::session::{Ctx, Session};
use crate::target::Target;

const HEARTBEAT: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const BACKLOG: u32 = 20;
/// A "typing" line for the same person at most this often.
const TYPING_QUIET: Duration = Duration::from_secs(5);

/// The state of one interactive session.
struct Chat {
    ctx: Ctx,
    session: Session,
    names: Names,
    conversation_id: String,
    outbox: mpsc::Sender<ClientEvent>,
    /// The highest seq shown: history and live events may overlap.
    shown_seq: u64,
    typing_shown: HashMap<u64, Instant>,
}

/// Runs `chat chat TARGET` until `/quit`, end of input, or the stream ends.
pub async fn run(ctx: &Ctx, target: &str) -> Result<()> {
    let target = Target::parse(target)?;
    let mut session = Session::open(ctx).await?;
    let mut names = Names::new(&session);
    let conversation_id = names.conversation_id(&mut session, &target).await?;
    let title = names.title(&mut session, &conversation_id).await;

    let mut outbox = None;
    let mut events = session
        .call(async |mut api| {
            let (tx, rx) = mpsc::channel(64);
            outbox = Some(tx);
            api.chat.connect(ReceiverStream::new(rx)).await
        })
        .await?;
    let Some(outbox) = outbox else {
        bail!("the stream could not be opened")
    };

    let first = match tokio::time::timeout(READY_TIMEOUT, events.message()).await {
        Err(_) => bail!("the server did not confirm the session within {READY_TIMEOUT:?}"),
        Ok(Err(status)) => return Err(status.into()),
        Ok(Ok(None)) => bail!("the server closed the stream before it was ready"),
        Ok(Ok(Some(ServerEvent {
            event: Some(Event::Ready(_)),
        }))) => None,
        Ok(Ok(Some(other))) => Some(other),
    };

    let mut chat = Chat {
        ctx: ctx.clone(),
        session,
        names,
        conversation_id,
        outbox,
        shown_seq: 0,
        typing_shown: HashMap::new(),
    };
    if !ctx.json {
        println!(
            "── {} ({}) — type a message and press Enter; /quit to leave ──",
            clean(&title),
            chat.conversation_id
        );
    }
    chat.backlog().await?;
    if let Some(event) = first {
        chat.handle(event).await;
    }

    let (line_tx, mut lines) = mpsc::channel::<String>(16);
    tokio::spawn(async move {
        let mut reader = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if line_tx.send(line).await.is_err() {
                break;
            }
        }
    });
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            line = lines.recv() => match line {
                None => return Ok(()),
                Some(line) => {
                    if !chat.typed(&line).await? {
                        return Ok(());
                    }
                }
            },
            event = events.message() => match event {
                Ok(Some(event)) => chat.handle(event).await,
                Ok(None) => bail!(
                    "the server closed the connection: run `chat chat {target_arg}` again to reconnect",
                    target_arg = target_text(&target)
                ),
                Err(status) => bail!("connection lost: {}", status.message()),
            },
            _ = heartbeat.tick() => {
                chat.push(client_event::Event::Heartbeat(HeartbeatEvent {})).await?;
            }
        }
    }
}

/// The TARGET as the user would type it again.
fn target_text(target: &Target) -> String {
    match target {
        Target::User(name) => format!("@{name}"),
        Target::Group(id) => format!("g:{id}"),
        Target::Conversation(id) => id.clone(),
    }
}

impl Chat {
    /// Queues one event on the stream.
    async fn push(&self, event: client_event::Event) -> Result<()> {
        if self
            .outbox
            .send(ClientEvent { event: Some(event) })
            .await
            .is_err()
        {
            bail!("the connection to the server is closed");
        }
        Ok(())
    }

    /// Prints the last messages before the live ones.
    async fn backlog(&mut self) -> Result<()> {
        let request = GetHistoryRequest {
            conversation_id: self.conversation_id.clone(),
            before_seq: 0,
            limit: BACKLOG,
        };
        let mut history = self
            .session
            .call(async |mut api| api.chat.get_history(request.clone()).await)
            .await?;
        history.messages.sort_by_key(|m| m.seq);
        for message in &history.messages {
            self.show(message).await;
        }
        if history.messages.is_empty() && !self.ctx.json {
            println!("(no messages yet)");
        }
        self.mark_read().await;
        Ok(())
    }

    /// Handles one typed line; false when the user wants to leave.
    async fn typed(&mut self, line: &str) -> Result<bool> {
        let text = line.trim_end_matches(['\r', '\n']);
        let text = match text.trim() {
            "" => return Ok(true),
            "/quit" | "/exit" => return Ok(false),
            "/help" => {
                println!(
                    "type a line to send it; /quit leaves; start a line with // to send a '/'"
                );
                return Ok(true);
            }
            t if t.starts_with("//") => &text[text.find('/').unwrap_or(0) + 1..],
            t if t.starts_with('/') => {
                println!("unknown command {t}: /help lists them");
                return Ok(true);
            }
            _ => text,
        };
        let request = text_message(&self.conversation_id, text);
        self.push(client_event::Event::Send(request)).await?;
        Ok(true)
    }

    /// Reacts to one server event.
    async fn handle(&mut self, event: ServerEvent) {
        let me = self.session.me();
        match event.event {
            Some(Event::Message(message)) => {
                if message.conversation_id == self.conversation_id {
                    self.show(&message).await;
                    if message.sender_id != me {
                        self.mark_read().await;
                    }
                } else if message.sender_id != me {
                    let title = self
                        .names
                        .title(&mut self.session, &message.conversation_id)
                        .await;
                    let sender = self.names.name(&mut self.session, message.sender_id).await;
                    let text = format!("new message from {} in {}", clean(&sender), clean(&title));
                    self.notice("message", &sender, &text);
                }
            }
            Some(Event::SendResult(result)) => match result.outcome {
                Some(Outcome::Message(message)) => self.show(&message).await,
                Some(Outcome::Error(error)) => {
                    if self.ctx.json {
                        print_json(&json!({
                            "event": "send_error", "client_msg_id": result.client_msg_id,
                            "code": error.code, "message": error.message,
                        }));
                    } else {
                        println!("! not sent: {}", clean(&error.message));
                    }
                }
                None => {}
            },
            Some(Event::Typing(typing)) => {
                if typing.conversation_id != self.conversation_id || typing.user_id == me {
                    return;
                }
                let now = Instant::now();
                let recent = self
                    .typing_shown
                    .get(&typing.user_id)
                    .is_some_and(|t| now.duration_since(*t) < TYPING_QUIET);
                if !recent {
                    self.typing_shown.insert(typing.user_id, now);
                    let name = self.names.name(&mut self.session, typing.user_id).await;
                    self.notice("typing", &name, &format!("{} is typing…", clean(&name)));
                }
            }
            Some(Event::Presence(presence)) if presence.user_id != me => {
                let name = self.names.name(&mut self.session, presence.user_id).await;
                let word = presence_word(presence.status);
                self.notice(
                    "presence",
                    &name,
                    &format!("{} is now {word}", clean(&name)),
                );
            }
            _ => {}
        }
    }

    /// Prints a message of this conversation once, in seq order.
    async fn show(&mut self, message: &Message) {
        if message.conversation_id != self.conversation_id || message.seq <= self.shown_seq {
            return;
        }
        self.shown_seq = message.seq;
        let sender = self.names.name(&mut self.session, message.sender_id).await;
        if self.ctx.json {
            print_json(&message_json(message, &sender));
        } else {
            println!("{}", message_line(message, &sender));
        }
    }

    /// A one-line note about someone else (`text` is already cleaned).
    fn notice(&self, kind: &str, who: &str, text: &str) {
        if self.ctx.json {
            print_json(&json!({ "event": kind, "user": who, "text": text }));
        } else {
            println!("· {text}");
        }
    }

    /// Tells the server everything shown so far has been read (best effort).
    async fn mark_read(&self) {
        if self.shown_seq > 0 {
            let read = ReadEvent {
                conversation_id: self.conversation_id.clone(),
                seq: self.shown_seq,
            };
            let _ = self.push(client_event::Event::Read(read)).await;
        }
    }
}
