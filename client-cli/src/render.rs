//! Formatting for people and for scripts: times, message contents, message lines and JSON
//! objects. Text from the server is cleaned of control characters before it reaches the
//! terminal, so nobody can send escape sequences to another user's screen.

use std::borrow::Cow;
use std::sync::OnceLock;

use daehwa::v1::{Content, Message, PresenceStatus, content::Kind};
use prost_types::Timestamp;
use serde_json::{Value, json};

use crate::config::unix_now;

/// Prints one JSON object as one line.
pub fn print_json(value: &Value) {
    println!("{value}");
}

/// Replaces control characters (except newline and tab) with U+FFFD.
pub fn clean(s: &str) -> Cow<'_, str> {
    if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        Cow::Owned(
            s.chars()
                .map(|c| {
                    if c.is_control() && c != '\n' && c != '\t' {
                        '\u{fffd}'
                    } else {
                        c
                    }
                })
                .collect(),
        )
    } else {
        Cow::Borrowed(s)
    }
}

/// The local UTC offset in seconds, asked once from `date +%z` (0 when that fails).
fn local_offset() -> i64 {
    static OFFSET: OnceLock<i64> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        std::process::Command::new("date")
            .arg("+%z")
            .output()
            .ok()
            .and_then(|out| parse_offset(String::from_utf8_lossy(&out.stdout).trim()))
            .unwrap_or(0)
    })
}

/// Parses a `+hhmm` / `-hhmm` offset into seconds.
fn parse_offset(s: &str) -> Option<i64> {
    let (sign, digits) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    Some(sign * (hours * 3600 + minutes * 60))
}

/// Splits Unix seconds into (year, month, day, hour, minute, second), UTC.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (year, month, day, h as u32, m as u32, s as u32)
}

/// `HH:MM:SS` of Unix seconds shifted by `offset` seconds.
fn clock_at(secs: i64, offset: i64) -> String {
    let (_, _, _, h, m, s) = civil(secs.saturating_add(offset));
    format!("{h:02}:{m:02}:{s:02}")
}

/// `YYYY-MM-DD HH:MM:SS` of Unix seconds shifted by `offset` seconds.
fn datetime_at(secs: i64, offset: i64) -> String {
    let (y, mo, d, h, m, s) = civil(secs.saturating_add(offset));
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}")
}

/// Local `HH:MM:SS` of a timestamp; `--:--:--` when unset.
pub fn clock(ts: Option<&Timestamp>) -> String {
    match ts {
        Some(ts) => clock_at(ts.seconds, local_offset()),
        None => "--:--:--".to_string(),
    }
}

/// Local `YYYY-MM-DD HH:MM:SS` of a timestamp; `never` when unset.
pub fn datetime(ts: Option<&Timestamp>) -> String {
    match ts {
        Some(ts) => datetime_at(ts.seconds, local_offset()),
        None => "never".to_string(),
    }
}

/// RFC 3339 UTC form of a timestamp (`2025-01-02T03:04:05Z`), for JSON; null when unset.
pub fn rfc3339(ts: Option<&Timestamp>) -> Value {
    match ts {
        Some(ts) => {
            let (y, mo, d, h, m, s) = civil(ts.seconds);
            Value::String(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"))
        }
        None => Value::Null,
    }
}

/// How long ago a Unix time was, coarsely: `just now`, `42s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(secs: i64) -> String {
    let d = unix_now().saturating_sub(secs).max(0);
    match d {
        0..=1 => "just now".to_string(),
        2..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86_399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86_400),
    }
}

/// What a message says, for a person: its text, or a placeholder for media and ciphertext.
pub fn content_text(content: Option<&Content>) -> String {
    match content.and_then(|c| c.kind.as_ref()) {
        Some(Kind::Text(text)) => clean(text).into_owned(),
        Some(Kind::Media(media)) => {
            let name = if media.name.is_empty() {
                "unnamed"
            } else {
                &media.name
            };
            format!(
                "[media: {} ({}, {} bytes)]",
                clean(name),
                clean(&media.mime_type),
                media.size
            )
        }
        Some(Kind::Encrypted(e)) => format!("[encrypted message, {}]", clean(&e.scheme)),
        None => "[empty message]".to_string(),
    }
}

/// A message's content as JSON: `{"type": "text", "text": ...}` and so on.
pub fn content_json(content: Option<&Content>) -> Value {
    match content.and_then(|c| c.kind.as_ref()) {
        Some(Kind::Text(text)) => json!({ "type": "text", "text": text }),
        Some(Kind::Media(m)) => json!({
            "type": "media", "media_id": m.media_id, "mime_type": m.mime_type,
            "size": m.size, "name": m.name,
        }),
        Some(Kind::Encrypted(e)) => {
            json!({ "type": "encrypted", "scheme": e.scheme, "size": e.ciphertext.len() })
        }
        None => json!({ "type": "empty" }),
    }
}

/// `[seq] HH:MM:SS sender: text`.
pub fn message_line(message: &Message, sender: &str) -> String {
    format!(
        "[{}] {} {}: {}",
        message.seq,
        clock(message.created_at.as_ref()),
        clean(sender),
        content_text(message.content.as_ref())
    )
}

/// A message as one JSON object (with the sender's username).
pub fn message_json(message: &Message, sender: &str) -> Value {
    let text = match message.content.as_ref().and_then(|c| c.kind.as_ref()) {
        Some(Kind::Text(text)) => Value::String(text.clone()),
        _ => Value::Null,
    };
    json!({
        "conversation_id": message.conversation_id,
        "seq": message.seq,
        "message_id": message.message_id,
        "sender_id": message.sender_id,
        "sender": sender,
        "sender_device_id": message.sender_device_id,
        "client_msg_id": message.client_msg_id,
        "created_at": rfc3339(message.created_at.as_ref()),
        "text": text,
        "content": content_json(message.content.as_ref()),
    })
}

/// `online`, `offline` or `unknown` for a presence status number.
pub fn presence_word(status: i32) -> &'static str {
    match PresenceStatus::try_from(status) {
        Ok(PresenceStatus::Online) => "online",
        Ok(PresenceStatus::Offline) => "offline",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13, 20));
        assert_eq!(civil(-1), (1969, 12, 31, 23, 59, 59));
    }

    #[test]
    fn clocks_and_offsets() {
        assert_eq!(clock_at(1_700_000_000, 0), "22:13:20");
        assert_eq!(clock_at(1_700_000_000, 9 * 3600), "07:13:20");
        assert_eq!(datetime_at(1_700_000_000, 9 * 3600), "2023-11-15 07:13:20");
        assert_eq!(parse_offset("+0900"), Some(32_400));
        assert_eq!(parse_offset("-0130"), Some(-5_400));
        assert_eq!(parse_offset("UTC"), None);
        let ts = Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(rfc3339(Some(&ts)), json!("2023-11-14T22:13:20Z"));
        assert_eq!(clock(None), "--:--:--");
    }

    #[test]
    fn contents() {
        let text = Content {
            kind: Some(Kind::Text("hi\x1b[2J".into())),
        };
        assert_eq!(content_text(Some(&text)), "hi\u{fffd}[2J");
        let enc = Content {
            kind: Some(Kind::Encrypted(daehwa::v1::EncryptedPayload {
                ciphertext: vec![1, 2],
                scheme: "olm.v1".into(),
            })),
        };
        assert_eq!(content_text(Some(&enc)), "[encrypted message, olm.v1]");
        assert_eq!(content_json(Some(&enc))["size"], 2);
        assert_eq!(content_text(None), "[empty message]");
    }

    #[test]
    fn message_lines() {
        let m = Message {
            seq: 4,
            conversation_id: "dm:1:2".into(),
            content: Some(Content {
                kind: Some(Kind::Text("hello".into())),
            }),
            created_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let line = message_line(&m, "alice");
        assert!(line.starts_with("[4] "), "{line}");
        assert!(line.ends_with(" alice: hello"), "{line}");
        let j = message_json(&m, "alice");
        assert_eq!(j["text"], "hello");
        assert_eq!(j["created_at"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn presence_words() {
        assert_eq!(presence_word(PresenceStatus::Online as i32), "online");
        assert_eq!(presence_word(2), "offline");
        assert_eq!(presence_word(99), "unknown");
    }
}
