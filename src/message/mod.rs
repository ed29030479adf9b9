//! The message model and its byte formats: the commitlog record (which is also the body layout
//! of a pull response), the properties string, message ids and tag hash codes.
//!
//! Nothing here does I/O; every decoder takes untrusted bytes and returns an error rather than
//! panicking or over-allocating.

pub mod batch;
pub mod msgid;
pub mod properties;
pub mod record;
pub mod sysflag;

pub use record::{DecodeError, MessageRecord, RecordView};

/// Java's `String.hashCode()` over UTF-16 code units, as RocketMQ uses for tag hash codes
/// (reference §7.2) and index keys (§7.3).
pub fn java_string_hash(s: &str) -> i32 {
    java_hash_continue(0, s)
}

/// Continues a Java string hash `h` over `s` (hashing `a + b` = continuing `hash(a)` over `b`).
pub fn java_hash_continue(mut h: i32, s: &str) -> i32 {
    if s.is_ascii() {
        // ASCII bytes are their own UTF-16 code units: the common case, without re-encoding.
        for b in s.bytes() {
            h = h.wrapping_mul(31).wrapping_add(b as i32);
        }
        return h;
    }
    for unit in s.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(unit as i32);
    }
    h
}

/// Same as [`java_string_hash`] for bytes that should be UTF-8; invalid sequences hash as the
/// lossy decoding (Java would have decoded them with replacement characters too).
pub fn java_bytes_hash(b: &[u8]) -> i32 {
    java_hash_continue_bytes(0, b)
}

/// [`java_hash_continue`] over bytes that should be UTF-8, hashed as [`java_bytes_hash`] does.
/// ASCII, the common case, takes one pass (no separate UTF-8 validation and ASCII check): it
/// runs for every stored message's tags and index keys.
pub fn java_hash_continue_bytes(h: i32, b: &[u8]) -> i32 {
    let mut x = h;
    for &c in b {
        if !c.is_ascii() {
            return match std::str::from_utf8(b) {
                Ok(s) => java_hash_continue(h, s),
                Err(_) => java_hash_continue(h, &String::from_utf8_lossy(b)),
            };
        }
        x = x.wrapping_mul(31).wrapping_add(c as i32);
    }
    x
}

/// Consume-queue tag code of a TAGS value: its Java hash, sign-extended; 0 without tags.
pub fn tags_code(tags: Option<&[u8]>) -> i64 {
    match tags {
        Some(t) if !t.is_empty() => java_bytes_hash(t) as i64,
        _ => 0,
    }
}

/// Masked body CRC stored in BODYCRC: `CRC32(body) & 0x7FFFFFFF` (reference §5.1).
pub fn body_crc(body: &[u8]) -> u32 {
    crc32fast::hash(body) & 0x7FFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_hash_matches_known_values() {
        // Values from java.lang.String#hashCode.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("TagA"), 2598919);
        assert_eq!(java_string_hash("hello"), 99162322);
        assert_eq!(java_string_hash("TopicTest#key1"), -1655984460);
        // Non-BMP characters hash as their surrogate pair.
        assert_eq!(java_string_hash("\u{1F600}"), 0xD83D * 31 + 0xDE00);
    }

    proptest::proptest! {
        #[test]
        fn hash_continues_over_concatenation(a in ".{0,20}", b in ".{0,20}") {
            let whole = format!("{a}{b}");
            let slow: i32 = whole.encode_utf16().fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(u as i32));
            proptest::prop_assert_eq!(java_string_hash(&whole), slow);
            proptest::prop_assert_eq!(java_hash_continue(java_string_hash(&a), &b), slow);
        }

        #[test]
        fn bytes_hash_is_the_lossy_strings_hash(h in proptest::prelude::any::<i32>(), b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let lossy = String::from_utf8_lossy(&b);
            proptest::prop_assert_eq!(java_hash_continue_bytes(h, &b), java_hash_continue(h, &lossy));
        }
    }

    #[test]
    fn tags_code_of_no_tag_is_zero() {
        assert_eq!(tags_code(None), 0);
        assert_eq!(tags_code(Some(b"")), 0);
        assert_eq!(tags_code(Some(b"TagA")), 2598919);
    }
}
