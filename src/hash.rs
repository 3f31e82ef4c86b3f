//! Hashes shared by index build and scan, so the two can never disagree: the hash of one
//! normalised unit, the 32-bit form kept in the unit store, and the key of a k-gram of units.
//!
//! All are xxh3 (a published, stable, platform-independent hash): the index stores them on disk,
//! so a hash that changes between releases or machines (std's `DefaultHasher`, `ahash`) would
//! silently break every index. Changing anything here is an index format change.

use xxhash_rust::xxh3::{Xxh3, xxh3_64_with_seed};

use crate::normalize::Channel;

const PROSE_SEED: u64 = 0x7072_6f73_655f_7631; // "prose_v1"
const CODE_SEED: u64 = 0x636f_6465_5f5f_7631; // "code__v1"
const KGRAM_SEED: u64 = 0x6b67_7261_6d5f_7631; // "kgram_v1"

/// Hash of one normalised unit's text in its channel. Channels hash apart so a prose word never
/// equals a code token.
#[inline]
pub fn unit_hash(channel: Channel, text: &[u8]) -> u64 {
    let seed = match channel {
        Channel::Prose => PROSE_SEED,
        Channel::Code => CODE_SEED,
    };
    xxh3_64_with_seed(text, seed)
}

/// The form a unit takes in the index's unit store (4 bytes per unit). Used only to verify and
/// extend an alignment found through a full 64-bit k-gram key, so 32 bits suffice.
#[inline]
pub fn stored(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// Key of the k-gram made of `units` (their 64-bit hashes, in order).
#[inline]
pub fn kgram_key(units: impl IntoIterator<Item = u64>) -> u64 {
    let mut h = Xxh3::with_seed(KGRAM_SEED);
    for u in units {
        h.update(&u.to_le_bytes());
    }
    h.digest()
}
