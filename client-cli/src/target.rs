//! Parsing of the `TARGET` argument of `send`, `history` and `chat`: `@username` for a direct
//! conversation, `#<group_id>` for a group, or a raw conversation id (`dm:<lo>:<hi>`,
//! `g:<group_id>`).

use anyhow::{Result, bail};

/// Where a message goes or a history comes from, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The direct conversation with this user (`@username`).
    User(String),
    /// A group conversation (`#<group_id>`).
    Group(u64),
    /// A conversation id given as is (`dm:1:2`, `g:5`).
    Conversation(String),
}

impl Target {
    /// Parses `@username`, `#<group_id>` or a raw conversation id.
    pub fn parse(s: &str) -> Result<Target> {
        let s = s.trim();
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                bail!("missing username after '@'");
            }
            return Ok(Target::User(name.to_lowercase()));
        }
        if let Some(id) = s.strip_prefix('#') {
            return Ok(Target::Group(parse_group_id(id)?));
        }
        if let Some(id) = s.strip_prefix("g:") {
            return Ok(Target::Group(parse_group_id(id)?));
        }
        if let Some(rest) = s.strip_prefix("dm:") {
            let ok = rest
                .split_once(':')
                .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
            if ok {
                return Ok(Target::Conversation(s.to_string()));
            }
            bail!("invalid conversation id {s:?}: expected dm:<user_id>:<user_id>");
        }
        bail!("invalid target {s:?}: use @username, #<group_id> or a conversation id (dm:1:2, g:3)")
    }
}

/// Parses a group id written as `5`, `#5` or `g:5`.
pub fn parse_group_id(s: &str) -> Result<u64> {
    let s = s.trim();
    let digits = s
        .strip_prefix('#')
        .or_else(|| s.strip_prefix("g:"))
        .unwrap_or(s);
    match digits.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => bail!("invalid group id {s:?}: expected a number such as 12 or #12"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users() {
        assert_eq!(Target::parse("@bob").unwrap(), Target::User("bob".into()));
        assert_eq!(
            Target::parse("@Bob.Smith").unwrap(),
            Target::User("bob.smith".into())
        );
        assert!(Target::parse("@").is_err());
    }

    #[test]
    fn parses_groups() {
        assert_eq!(Target::parse("#12").unwrap(), Target::Group(12));
        assert_eq!(Target::parse("g:7").unwrap(), Target::Group(7));
        assert!(Target::parse("#").is_err());
        assert!(Target::parse("#abc").is_err());
        assert!(Target::parse("#0").is_err());
        assert!(Target::parse("#-1").is_err());
    }

    #[test]
    fn parses_conversation_ids() {
        assert_eq!(
            Target::parse("dm:1:2").unwrap(),
            Target::Conversation("dm:1:2".into())
        );
        assert!(Target::parse("dm:1").is_err());
        assert!(Target::parse("dm:a:b").is_err());
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["bob", "", "x:1", "12"] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn group_ids() {
        assert_eq!(parse_group_id("5").unwrap(), 5);
        assert_eq!(parse_group_id("#5").unwrap(), 5);
        assert_eq!(parse_group_id("g:5").unwrap(), 5);
        assert!(parse_group_id("five").is_err());
    }
}
