//! Input rules shared by the services: every rejection is `INVALID_ARGUMENT` (or
//! `RESOURCE_EXHAUSTED` for sizes) with a message that says what to change.

use daehwa::v1::{Content, content::Kind};

use crate::error::{Error, Result};

/// Lowercases and checks a username: 3-32 of `[a-z0-9_.-]`, starting with a letter or digit.
pub fn username(raw: &str) -> Result<String> {
    let name = raw.trim().to_lowercase();
    let ok_len = (3..=32).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(name)
    } else {
        Err(Error::invalid(
            "username must be 3-32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
        ))
    }
}

/// Passwords: 8 to 1024 bytes.
pub fn password(password: &str) -> Result<()> {
    if password.len() < 8 {
        return Err(Error::invalid("password must be at least 8 characters"));
    }
    if password.len() > 1024 {
        return Err(Error::invalid("password must be at most 1024 bytes"));
    }
    Ok(())
}

/// A short single-line text field: trimmed, at most `max` characters, no control characters.
pub fn short_text(field: &str, value: &str, max: usize) -> Result<String> {
    let value = value.trim();
    if value.chars().count() > max {
        return Err(Error::invalid(format!(
            "{field} must be at most {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(value.to_owned())
}

/// An optional http(s) URL of at most 512 bytes (empty clears it).
pub fn url(field: &str, value: &str) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(String::new());
    }
    if value.len() > 512
        || !(value.starts_with("https://") || value.starts_with("http://"))
        || value.chars().any(char::is_whitespace)
    {
        return Err(Error::invalid(format!(
            "{field} must be an http(s) URL of at most 512 bytes"
        )));
    }
    Ok(value.to_owned())
}

/// Message content: exactly one non-empty kind within the size limit. Oversized content is
/// `INVALID_ARGUMENT` (API.md: "empty or oversized content"); a request larger than the
/// transport limit is refused by tonic before it is decoded.
pub fn content(content: Option<&Content>, max_bytes: usize) -> Result<()> {
    let too_big = |what: &str, len: usize| {
        Error::invalid(format!(
            "{what} is {len} bytes; the limit is {max_bytes} bytes"
        ))
    };
    match content.and_then(|c| c.kind.as_ref()) {
        None => Err(Error::invalid(
            "message content is empty: set text, media or encrypted",
        )),
        Some(Kind::Text(text)) if text.trim().is_empty() => {
            Err(Error::invalid("message text is empty"))
        }
        Some(Kind::Text(text)) if text.len() > max_bytes => {
            Err(too_big("message text", text.len()))
        }
        Some(Kind::Encrypted(e)) if e.ciphertext.is_empty() => {
            Err(Error::invalid("encrypted payload is empty"))
        }
        Some(Kind::Encrypted(e)) if e.ciphertext.len() > max_bytes => {
            Err(too_big("encrypted payload", e.ciphertext.len()))
        }
        Some(Kind::Media(m)) if m.media_id.is_empty() => {
            Err(Error::invalid("media reference needs a media_id"))
        }
        Some(Kind::Media(m)) if m.media_id.len() + m.mime_type.len() + m.name.len() > 4096 => Err(
            Error::invalid("media reference fields are too long (4096 bytes in all)"),
        ),
        Some(_) => Ok(()),
    }
}

/// A client message id: at most 64 printable ASCII characters; empty gets a random one (and
/// no retry protection).
pub fn client_msg_id(raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Ok(format!("srv-{:032x}", rand::random::<u128>()));
    }
    if raw.len() > 64 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "client_msg_id must be at most 64 printable ASCII characters",
        ));
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use daehwa::v1::EncryptedPayload;

    #[test]
    fn usernames() {
        assert_eq!(username(" Alice_1 ").unwrap(), "alice_1");
        for bad in ["ab", "", "-abc", "a b c", "ünï", &"x".repeat(33)] {
            assert!(username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contents() {
        let text = |t: &str| Content {
            kind: Some(Kind::Text(t.into())),
        };
        assert!(content(Some(&text("hi")), 10).is_ok());
        assert_eq!(
            content(Some(&text("   ")), 10).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            content(Some(&text(&"x".repeat(11))), 10)
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        assert!(content(None, 10).is_err());
        assert!(content(Some(&Content { kind: None }), 10).is_err());
        let enc = Content {
            kind: Some(Kind::Encrypted(EncryptedPayload {
                ciphertext: vec![1; 5],
                scheme: String::new(),
            })),
        };
        assert!(content(Some(&enc), 10).is_ok());
    }
}
