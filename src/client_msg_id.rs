//! Fresh `client_msg_id`s for senders.
//!
//! A server keeps an index of every `(conversation, client_msg_id)` so that a retried send
//! returns the first message. Where the index is a B-tree (the embedded store's redb file,
//! TiKV), the ids' order decides what each write costs: ids that sort by time land next to
//! each other at the end of the conversation's range, like the messages themselves, while
//! random ids land on a different page each and rewrite one page per message once a
//! conversation is long. [`time_ordered`] is what Daehwa's clients send; [`random`] is kept
//! for measuring what clients that send random ids cost (`chat-bench --client-ids random`).

use std::time::{SystemTime, UNIX_EPOCH};

/// A UUID version 7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits, in the
/// usual 8-4-4-4-12 hex form. An id from a later millisecond sorts after one from an
/// earlier millisecond; ids of the same millisecond are in random order among themselves.
pub fn time_ordered() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    uuid_with(
        ((ms & 0xffff_ffff_ffff) << 80) | (rand::random::<u128>() >> 48),
        0x7,
    )
}

/// A UUID version 4: 122 random bits.
pub fn random() -> String {
    uuid_with(rand::random(), 0x4)
}

/// `bits` with the version nibble set to `version` and the RFC 9562 variant, formatted.
fn uuid_with(bits: u128, version: u128) -> String {
    let bits = (bits & !(0xf << 76)) | (version << 76);
    let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_shaped_with_their_version_and_variant() {
        for (id, version) in [(time_ordered(), '7'), (random(), '4')] {
            assert_eq!(id.len(), 36, "{id}");
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12]
            );
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
            assert_eq!(groups[2].chars().next(), Some(version), "{id}");
            assert!(
                matches!(groups[3].chars().next(), Some('8' | '9' | 'a' | 'b')),
                "{id}"
            );
        }
        assert_ne!(random(), random());
        assert_ne!(time_ordered(), time_ordered());
    }

    #[test]
    fn time_ordered_ids_sort_by_their_millisecond() {
        let first = time_ordered();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later: Vec<String> = (0..100).map(|_| time_ordered()).collect();
        assert!(later.iter().all(|id| *id > first), "{first} {later:?}");
        let ms = |id: &str| u64::from_str_radix(&id.replace('-', "")[..12], 16).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            now.abs_diff(ms(&first)) < 60_000,
            "{first} carries {}",
            ms(&first)
        );
    }
}
