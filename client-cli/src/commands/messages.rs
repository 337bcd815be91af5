//! `send`, `history` and `conversations`.

use anyhow::{Result, bail};
use daehwa::v1::{
    Content, GetHistoryRequest, ListConversationsRequest, ListGroupsRequest, SendMessageRequest,
    content::Kind,
};
use serde_json::json;

use crate::names::Names;
use crate::render::{self, clean, message_json, message_line, print_json};
use crate::session::{Ctx, Session};
use crate::target::Target;

/// A text message for `conversation_id`, with a fresh client_msg_id.
pub fn text_message(conversation_id: &str, text: &str) -> SendMessageRequest {
    SendMessageRequest {
        client_msg_id: daehwa::client_msg_id::time_ordered(),
        conversation_id: conversation_id.to_string(),
        content: Some(Content {
            kind: Some(Kind::Text(text.to_string())),
        }),
    }
}

/// `chat send TARGET TEXT...`: sends one text message and prints its seq.
pub async fn send(ctx: &Ctx, target: &str, words: &[String]) -> Result<()> {
    let target = Target::parse(target)?;
    let text = words.join(" ");
    if text.trim().is_empty() {
        bail!("nothing to send");
    }
    let mut session = Session::open(ctx).await?;
    let mut names = Names::new(&session);
    let conversation_id = names.conversation_id(&mut session, &target).await?;
    // The same client_msg_id on a retry: the server then returns the first message.
    let request = text_message(&conversation_id, &text);
    let r = session
        .call(async |mut api| api.chat.send_message(request.clone()).await)
        .await?;
    let Some(message) = r.message else {
        bail!("the server returned no message")
    };
    if ctx.json {
        print_json(&json!({
            "conversation_id": message.conversation_id, "seq": message.seq,
            "message_id": message.message_id, "client_msg_id": message.client_msg_id,
            "created_at": render::rfc3339(message.created_at.as_ref()),
        }));
    } else {
        println!("sent: seq {} in {}", message.seq, message.conversation_id);
    }
    Ok(())
}

/// `chat history TARGET [--limit N]`: the last messages, oldest first.
pub async fn history(ctx: &Ctx, target: &str, limit: u32) -> Result<()> {
    let target = Target::parse(target)?;
    let mut session = Session::open(ctx).await?;
    let mut names = Names::new(&session);
    let conversation_id = names.conversation_id(&mut session, &target).await?;
    let request = GetHistoryRequest {
        conversation_id,
        before_seq: 0,
        limit,
    };
    let r = session
        .call(async |mut api| api.chat.get_history(request.clone()).await)
        .await?;
    if r.messages.is_empty() && !ctx.json {
        println!("no messages yet");
    }
    let mut messages = r.messages;
    messages.sort_by_key(|m| m.seq);
    for message in &messages {
        let sender = names.name(&mut session, message.sender_id).await;
        if ctx.json {
            print_json(&message_json(message, &sender));
        } else {
            println!("{}", message_line(message, &sender));
        }
    }
    Ok(())
}

/// `chat conversations`: my conversations, most recently active first, with unread counts.
pub async fn conversations(ctx: &Ctx) -> Result<()> {
    let mut session = Session::open(ctx).await?;
    let mut names = Names::new(&session);
    let r = session
        .call(async |mut api| {
            api.chat
                .list_conversations(ListConversationsRequest {})
                .await
        })
        .await?;
    if r.conversations
        .iter()
        .any(|c| c.conversation_id.starts_with("g:"))
    {
        // Group names for the titles; the list stands without them.
        if let Ok(groups) = session
            .call(async |mut api| api.groups.list_groups(ListGroupsRequest {}).await)
            .await
        {
            for group in &groups.groups {
                names.remember_group(group.group_id, &group.name);
            }
        }
    }
    if r.conversations.is_empty() && !ctx.json {
        println!("no conversations yet: try `chat send @USERNAME hello`");
    }
    for c in &r.conversations {
        let title = names.title(&mut session, &c.conversation_id).await;
        let last = match &c.last_message {
            Some(m) => Some((m, names.name(&mut session, m.sender_id).await)),
            None => None,
        };
        if ctx.json {
            print_json(&json!({
                "conversation_id": c.conversation_id, "title": title, "last_seq": c.last_seq,
                "read_seq": c.read_seq, "unread_count": c.unread_count,
                "last_message": last.map(|(m, sender)| message_json(m, &sender)),
            }));
            continue;
        }
        let unread = if c.unread_count > 0 {
            format!("  ({} unread)", c.unread_count)
        } else {
            String::new()
        };
        println!("{}  {}{unread}", c.conversation_id, clean(&title));
        if let Some((m, sender)) = last {
            let line = message_line(m, &sender);
            println!("    {}", line.lines().next().unwrap_or_default());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_messages() {
        let m = text_message("g:3", "hi");
        assert_eq!(m.conversation_id, "g:3");
        // A time-ordered UUID (version 7), which keeps the server's retry index compact.
        assert_eq!(m.client_msg_id.len(), 36);
        assert_eq!(m.client_msg_id.as_bytes()[14], b'7');
        assert_eq!(
            m.content,
            Some(Content {
                kind: Some(Kind::Text("hi".into()))
            })
        );
    }
}
