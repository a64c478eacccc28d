//! Hash slots, exactly as Redis Cluster computes them: CRC16 (XMODEM) of
//! the key, or of its hash tag, mod 16,384. The hash tag is what lies
//! between the first `{` and the first `}` after it, when that is not
//! empty, so `{user:1}:name` and `{user:1}:mail` share a slot. A Redis
//! Cluster client computes the same slot for every key.

use crc::{Crc, CRC_16_XMODEM};

/// The number of slots.
pub const SLOTS: u16 = 16_384;

const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The slot of `key`.
pub fn slot_of(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key).unwrap_or(key)) % SLOTS
}

/// The part of `key` its slot is computed from, if it has a hash tag.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let rest = &key[open + 1..];
    let close = rest.iter().position(|&b| b == b'}')?;
    (close > 0).then(|| &rest[..close])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_of_keys_from_the_redis_cluster_specification() {
        // Examples from the Redis Cluster specification and CLUSTER KEYSLOT's
        // documentation.
        assert_eq!(
            slot_of(b"123456789"),
            0x31C3 % SLOTS,
            "the CRC16 check value"
        );
        assert_eq!(slot_of(b"somekey"), 11058);
        assert_eq!(slot_of(b"foo{hash_tag}"), 2515);
        assert_eq!(slot_of(b""), 0);
    }

    #[test]
    fn the_first_non_empty_braces_decide() {
        let slot = slot_of(b"user1000");
        assert_eq!(slot_of(b"{user1000}.following"), slot);
        assert_eq!(slot_of(b"foo{user1000}{bar}"), slot);
        // The first `{` counts, and the first `}` after it.
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        // Empty braces, or no closing one: the whole key.
        assert_eq!(
            slot_of(b"foo{}{bar}"),
            CRC16.checksum(b"foo{}{bar}") % SLOTS
        );
        assert_eq!(slot_of(b"foo{bar"), CRC16.checksum(b"foo{bar") % SLOTS);
    }
}
