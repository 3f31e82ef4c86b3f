//! Hashes shared by index build and scan, so the two can never disagree: the hash of one
//! normalised unit, the 32-bit form kept in the unit store, and the key of a k-gram of units.
//!
//! All are xxh3 (a published, stable, platform-independent hash): the index stores them on disk,
//! so a hash that changes between releases or machines (std's `DefaultHasher`, `ahash`) would
//! silently break every index. Changing anything here is an index format change.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::normalize::{Channel, Unit, UnitClass};

const PROSE_SEED: u64 = 0x7072_6f73_655f_7631; // "prose_v1"
const CODE_SEED: u64 = 0x636f_6465_5f5f_7631; // "code__v1"
const KGRAM_SEED: u64 = 0x6b67_7261_6d5f_7631; // "kgram_v1"
const RENAMED_SEED: u64 = 0x7265_6e61_6d5f_7631; // "renam_v1"
/// Shape values of abstracted units in the rename-insensitive channel (an identifier adds the
/// distance back to its previous occurrence in the window).
const IDENT_SHAPE: u64 = 0x6964_656e_745f_0000;
const NUMBER_SHAPE: u64 = 0x6e75_6d62_6572_5f31;
const STRING_SHAPE: u64 = 0x7374_7269_6e67_5f31;

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

/// Multiplier of the polynomial k-gram hash (odd, so multiplication is invertible mod 2^64).
const KGRAM_BASE: u64 = 0x9e37_79b9_7f4a_7c15;

/// Key of the k-gram made of `units` (their 64-bit hashes, in order): the polynomial
/// `Σ hᵢ·B^(k−1−i) mod 2^64`, finalised by a 64-bit mixer. Unit hashes are already uniformly
/// random, so a polynomial over them is a good hash, and unlike hashing the k·8 bytes afresh it
/// can be rolled in O(1) per unit ([`RollingKgram`]), which is what the scan's hot path does.
#[inline]
pub fn kgram_key(units: impl IntoIterator<Item = u64>) -> u64 {
    finalize(
        units
            .into_iter()
            .fold(0u64, |acc, h| acc.wrapping_mul(KGRAM_BASE).wrapping_add(h)),
    )
}

/// Distance from each identifier to the previous occurrence of the same identifier among
/// `units` (`u32::MAX` for a first occurrence and for every other unit): the input of
/// [`renamed_key`], computed once per document or stream.
pub fn prev_distances(units: &[Unit]) -> Vec<u32> {
    let mut d = PrevDistance::default();
    units.iter().map(|u| d.next(u)).collect()
}

/// [`prev_distances`] one unit at a time, for a stream.
#[derive(Debug, Default)]
pub struct PrevDistance {
    /// Identifier → position of its last occurrence.
    last: rustc_hash::FxHashMap<u64, u64>,
    /// Position of the next unit.
    seq: u64,
}

impl PrevDistance {
    /// The distance from `u` back to the previous occurrence of the same identifier.
    pub fn next(&mut self, u: &Unit) -> u32 {
        let i = self.seq;
        self.seq += 1;
        if u.class != UnitClass::Ident {
            return u32::MAX;
        }
        match self.last.insert(u.hash, i) {
            Some(j) => u32::try_from(i - j).unwrap_or(u32::MAX),
            None => u32::MAX,
        }
    }
}

/// The shape of the unit at offset `j` of a window: keywords, operators and punctuation are
/// themselves; a literal is its kind; an identifier is "the same name as `d` units back" or "a
/// name not seen earlier in this window". So two windows have the same shapes exactly when one
/// is the other with identifiers renamed consistently (a bijection) and literals changed —
/// Baker's parameterised matching, restricted to the window so it can be hashed per k-gram.
#[inline]
pub fn shape(hash: u64, class: UnitClass, prev: u32, j: usize) -> u64 {
    match class {
        UnitClass::Other => hash,
        UnitClass::Ident if (prev as usize) <= j => IDENT_SHAPE + u64::from(prev),
        UnitClass::Ident => IDENT_SHAPE,
        UnitClass::Number => NUMBER_SHAPE,
        UnitClass::Str => STRING_SHAPE,
    }
}

/// Key of a k-gram in the rename-insensitive channel, from `(hash, class, prev distance)` of
/// each unit in order. Keyed apart from [`kgram_key`] by its own seed, so the two channels can
/// share one filter and one postings file.
#[inline]
pub fn renamed_key(window: impl IntoIterator<Item = (u64, UnitClass, u32)>) -> u64 {
    let acc = window
        .into_iter()
        .enumerate()
        .fold(0u64, |acc, (j, (h, c, prev))| {
            acc.wrapping_mul(KGRAM_BASE)
                .wrapping_add(shape(h, c, prev, j))
        });
    finalize_seeded(acc, RENAMED_SEED)
}

#[inline]
fn finalize(x: u64) -> u64 {
    finalize_seeded(x, KGRAM_SEED)
}

#[inline]
fn finalize_seeded(mut x: u64, seed: u64) -> u64 {
    // MurmurHash3's fmix64.
    x ^= seed;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The key of the last `k` units, updated in O(1) per unit. The caller supplies the unit that
/// leaves the window (the one `k` units back).
#[derive(Debug, Clone)]
pub struct RollingKgram {
    k: usize,
    /// B^k, to remove the unit leaving the window.
    base_k: u64,
    acc: u64,
    /// Units in the window so far (saturates at k).
    filled: usize,
}

impl RollingKgram {
    pub fn new(k: usize) -> Self {
        let base_k = (0..k).fold(1u64, |p, _| p.wrapping_mul(KGRAM_BASE));
        RollingKgram {
            k,
            base_k,
            acc: 0,
            filled: 0,
        }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Empties the window (e.g. when the channel changes).
    pub fn reset(&mut self) {
        self.acc = 0;
        self.filled = 0;
    }

    /// Adds `h`; `leaving` must be the unit `k` positions back once the window is full.
    /// Returns the key once the window holds `k` units.
    #[inline]
    pub fn push(&mut self, h: u64, leaving: Option<u64>) -> Option<u64> {
        self.acc = self.acc.wrapping_mul(KGRAM_BASE).wrapping_add(h);
        if self.filled == self.k {
            let old = leaving.unwrap_or(0);
            self.acc = self.acc.wrapping_sub(old.wrapping_mul(self.base_k));
        } else {
            self.filled += 1;
        }
        (self.filled == self.k).then(|| finalize(self.acc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_key_equals_direct_key() {
        let hs: Vec<u64> = (0..200u64)
            .map(|i| xxh3_64_with_seed(&i.to_le_bytes(), 1))
            .collect();
        for k in [1, 2, 5, 8, 16, 64] {
            let mut r = RollingKgram::new(k);
            for i in 0..hs.len() {
                let leaving = i.checked_sub(k).map(|j| hs[j]);
                let got = r.push(hs[i], leaving);
                if i + 1 >= k {
                    assert_eq!(
                        got,
                        Some(kgram_key(hs[i + 1 - k..=i].iter().copied())),
                        "k {k} at {i}"
                    );
                } else {
                    assert_eq!(got, None);
                }
            }
        }
    }
}
