//! Offset message ids (reference §6.1): store host IP, port (i32) and commitlog offset (i64),
//! as uppercase hex.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Builds the offset message id of a record stored at `offset` by `store_host`.
pub fn create_message_id(store_host: SocketAddr, offset: i64) -> String {
    let mut s = String::with_capacity(56);
    push_message_id(&mut s, store_host, offset);
    s
}

/// Appends the offset message id of a record stored at `offset` by `store_host` to `s` (a
/// batch's ids go into one string).
pub fn push_message_id(s: &mut String, store_host: SocketAddr, offset: i64) {
    let mut raw = [0u8; 28];
    let n = match store_host.ip() {
        IpAddr::V4(ip) => {
            raw[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            raw[..16].copy_from_slice(&ip.octets());
            16
        }
    };
    raw[n..n + 4].copy_from_slice(&(store_host.port() as i32).to_be_bytes());
    raw[n + 4..n + 12].copy_from_slice(&offset.to_be_bytes());
    for b in &raw[..n + 12] {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xF) as usize] as char);
    }
}

/// Error from [`decode_message_id`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad offset message id {0:?}: expected 32 or 56 hex characters")]
pub struct BadMessageId(pub String);

/// Decodes an offset message id into its store host and commitlog offset.
pub fn decode_message_id(id: &str) -> Result<(SocketAddr, i64), BadMessageId> {
    let bad = || BadMessageId(id.chars().take(64).collect());
    let ip_len = match id.len() {
        32 => 4,
        56 => 16,
        _ => return Err(bad()),
    };
    let mut raw = [0u8; 28];
    for (i, pair) in id.as_bytes().chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
        let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
        raw[i] = (hi * 16 + lo) as u8;
    }
    let ip = if ip_len == 4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        let mut o = [0u8; 16];
        o.copy_from_slice(&raw[..16]);
        IpAddr::V6(Ipv6Addr::from(o))
    };
    let mut p = [0u8; 4];
    p.copy_from_slice(&raw[ip_len..ip_len + 4]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&raw[ip_len + 4..ip_len + 12]);
    let port = i32::from_be_bytes(p);
    let port = u16::try_from(port).map_err(|_| bad())?;
    Ok((SocketAddr::new(ip, port), i64::from_be_bytes(off)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_ipv4() {
        // 127.0.0.1:10911, offset 0x1234 -> 7F000001 00002A9F 0000000000001234
        let id = create_message_id("127.0.0.1:10911".parse().unwrap(), 0x1234);
        assert_eq!(id, "7F00000100002A9F0000000000001234");
        assert_eq!(
            decode_message_id(&id).unwrap(),
            ("127.0.0.1:10911".parse().unwrap(), 0x1234)
        );
    }

    #[test]
    fn rejects_bad_lengths_and_digits() {
        assert!(decode_message_id("").is_err());
        assert!(decode_message_id("7F00000100002A9F000000000000123").is_err());
        assert!(decode_message_id("ZZ00000100002A9F0000000000001234").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(v6 in any::<bool>(), a in any::<u128>(), port in any::<u16>(), off in any::<i64>()) {
            let ip = if v6 { IpAddr::V6(Ipv6Addr::from(a)) } else { IpAddr::V4(Ipv4Addr::from(a as u32)) };
            let host = SocketAddr::new(ip, port);
            let id = create_message_id(host, off);
            prop_assert_eq!(id.len(), if v6 { 56 } else { 32 });
            prop_assert_eq!(decode_message_id(&id).unwrap(), (host, off));
        }
    }
}
