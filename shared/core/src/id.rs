//! Identities: stores are named by a short id; everything else by a UUIDv7 whose time and
//! random bits are supplied by the caller.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::limits;

/// An id derived from a key (the first 16 bytes of SHA-256 of a domain tag and the key, as a
/// version-8 UUID): the same key gives the same id at every replica, so two stores that decide
/// the same once-only thing while apart (a referral reward, a points expiry) write entries with
/// the same id, and the ledger's set union keeps one.
pub fn derived_id(key: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"chainsync-derived-id\0");
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A store's identity: 1..=32 bytes of `[a-z0-9-]`, not starting or ending with `-`.
/// The hub is the store `hq`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StoreId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store id must be 1 to 32 characters of a-z, 0-9 and '-', not starting or ending with '-'")]
pub struct InvalidStoreId;

impl StoreId {
    pub fn parse(text: &str) -> Result<StoreId, InvalidStoreId> {
        let valid_chars = text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if text.is_empty()
            || text.len() > limits::store_id_bytes_max
            || !valid_chars
            || text.starts_with('-')
            || text.ends_with('-')
        {
            return Err(InvalidStoreId);
        }
        Ok(StoreId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hub's own identity as a replica.
    pub fn hub() -> StoreId {
        StoreId("hq".to_owned())
    }

    /// A 16-byte automerge actor id for documents this store edits: stable per store.
    pub fn actor_bytes(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        // Store ids are at most 32 bytes; fold them into 16 with a position-dependent mix
        // (FNV-1a per half) so that distinct ids give distinct actors in practice.
        let mut hash_a: u64 = 0xcbf2_9ce4_8422_2325;
        let mut hash_b: u64 = 0x8422_2325_cbf2_9ce4;
        for &b in self.0.as_bytes() {
            hash_a = (hash_a ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            hash_b = (hash_b ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3 ^ 0x5bd1_e995);
        }
        bytes[..8].copy_from_slice(&hash_a.to_be_bytes());
        bytes[8..].copy_from_slice(&hash_b.to_be_bytes());
        bytes
    }
}

impl TryFrom<String> for StoreId {
    type Error = InvalidStoreId;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        StoreId::parse(&text)
    }
}

impl From<StoreId> for String {
    fn from(id: StoreId) -> String {
        id.0
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Makes UUIDv7 ids. Time comes from the caller; randomness from the caller's source.
/// Ids never carry a time earlier than the last one made (a clock stepping back reuses the last
/// ms); within one ms their order is that of the random bytes.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last_ms: u64,
}

impl IdGenerator {
    pub fn new() -> IdGenerator {
        IdGenerator::default()
    }

    /// A new id for time `now_ms` (Unix ms) with 10 random bytes from the caller.
    pub fn next(&mut self, now_ms: u64, random: [u8; 10]) -> Uuid {
        // Never go back in time: a stalled clock still yields distinct, ordered timestamps
        // because the random bits differ; a stepped-back clock reuses the last ms.
        let ms = now_ms.max(self.last_ms);
        self.last_ms = ms;
        uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_ids_are_validated() {
        assert!(StoreId::parse("sh-001").is_ok());
        assert!(StoreId::parse("").is_err());
        assert!(StoreId::parse("Shop").is_err());
        assert!(StoreId::parse("-a").is_err());
        assert!(StoreId::parse("a b").is_err());
        assert!(StoreId::parse(&"a".repeat(33)).is_err());
        assert_ne!(
            StoreId::parse("s1").unwrap().actor_bytes(),
            StoreId::parse("s2").unwrap().actor_bytes()
        );
    }

    #[test]
    fn ids_are_v7_and_carry_the_given_time() {
        let mut ids = IdGenerator::new();
        let id = ids.next(1_700_000_000_123, [7; 10]);
        assert_eq!(id.get_version_num(), 7);
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos) / 1_000_000,
            1_700_000_000_123
        );
        let earlier = ids.next(1_600_000_000_000, [8; 10]);
        let (secs, _) = earlier.get_timestamp().unwrap().to_unix();
        assert_eq!(
            secs, 1_700_000_000,
            "a clock step back does not move ids back"
        );
    }
}
