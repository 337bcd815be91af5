//! Newtype identifiers used inside the server. Proto messages carry plain integers and
//! strings; the API adapters turn them into these types at the edge, so a user id can never be
//! passed where a group id is expected, and a conversation id is parsed exactly once.

use std::{fmt, str::FromStr};

use crate::error::Error;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// An account. Assigned by the directory, never reused.
    UserId
);
id_type!(
    /// One logged-in device of a user: a login session with its own tokens.
    DeviceId
);
id_type!(
    /// A group; its conversation is `g:<id>`.
    GroupId
);

/// A conversation: the unit of ordering (`seq`) and of membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConversationId {
    /// Two users, `lo < hi`: `dm:<lo>:<hi>`.
    Direct { lo: UserId, hi: UserId },
    /// A group: `g:<group_id>`.
    Group(GroupId),
}

impl ConversationId {
    /// The direct conversation of two different users, in canonical order.
    pub fn direct(a: UserId, b: UserId) -> Result<Self, Error> {
        if a == b {
            return Err(Error::invalid(
                "a direct conversation needs two different users",
            ));
        }
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        Ok(Self::Direct { lo, hi })
    }

    /// For a direct conversation containing `me`, the other user.
    pub fn peer_of(&self, me: UserId) -> Option<UserId> {
        match *self {
            Self::Direct { lo, hi } if lo == me => Some(hi),
            Self::Direct { lo, hi } if hi == me => Some(lo),
            _ => None,
        }
    }

    /// A stable, order-preserving key for ordered stores: tag byte then big-endian ids.
    pub fn to_key(&self) -> [u8; 17] {
        let mut key = [0u8; 17];
        match *self {
            Self::Direct { lo, hi } => {
                key[0] = b'd';
                key[1..9].copy_from_slice(&lo.0.to_be_bytes());
                key[9..17].copy_from_slice(&hi.0.to_be_bytes());
            }
            Self::Group(g) => {
                key[0] = b'g';
                key[1..9].copy_from_slice(&g.0.to_be_bytes());
            }
        }
        key
    }

    /// Inverse of [`ConversationId::to_key`].
    pub fn from_key(key: &[u8]) -> Option<Self> {
        let word = |range: std::ops::Range<usize>| {
            key.get(range)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
        };
        match key.first()? {
            b'd' => Some(Self::Direct {
                lo: UserId(word(1..9)?),
                hi: UserId(word(9..17)?),
            }),
            b'g' => Some(Self::Group(GroupId(word(1..9)?))),
            _ => None,
        }
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct { lo, hi } => write!(f, "dm:{lo}:{hi}"),
            Self::Group(g) => write!(f, "g:{g}"),
        }
    }
}

impl FromStr for ConversationId {
    type Err = Error;

    /// Accepts only the canonical form the server itself prints, so one conversation has
    /// exactly one id (`dm:2:1`, `dm:01:2` and `dm:1:1` are refused).
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || {
            Error::invalid(format!(
                "bad conversation id {s:?}: expected \"dm:<lo>:<hi>\" (two different user ids, lower first) or \"g:<group_id>\""
            ))
        };
        let parsed = if let Some(rest) = s.strip_prefix("dm:") {
            let (lo, hi) = rest.split_once(':').ok_or_else(bad)?;
            let (lo, hi) = (parse_id(lo).ok_or_else(bad)?, parse_id(hi).ok_or_else(bad)?);
            if lo >= hi {
                return Err(bad());
            }
            Self::Direct {
                lo: UserId(lo),
                hi: UserId(hi),
            }
        } else if let Some(rest) = s.strip_prefix("g:") {
            Self::Group(GroupId(parse_id(rest).ok_or_else(bad)?))
        } else {
            return Err(bad());
        };
        Ok(parsed)
    }
}

/// A positive decimal id without sign or leading zeros.
fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_ids_round_trip() {
        for s in ["dm:1:2", "dm:7:1000000", "g:42"] {
            let id: ConversationId = s.parse().unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(ConversationId::from_key(&id.to_key()), Some(id));
        }
    }

    #[test]
    fn non_canonical_ids_are_refused() {
        for s in [
            "",
            "dm:2:1",
            "dm:1:1",
            "dm:01:2",
            "dm:1",
            "dm:1:2:3",
            "g:",
            "g:0",
            "g:-1",
            "x:1",
            "dm:a:b",
            "g:99999999999999999999",
        ] {
            assert!(
                s.parse::<ConversationId>().is_err(),
                "{s:?} should be refused"
            );
        }
    }

    #[test]
    fn keys_sort_like_ids() {
        let a = ConversationId::Group(GroupId(1)).to_key();
        let b = ConversationId::Group(GroupId(256)).to_key();
        assert!(a < b);
    }
}
