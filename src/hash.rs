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

/// [`PrevDistance`] for a scan, which only needs distances shorter than its longest window:
/// a distance of `window` or more is reported as `u32::MAX` (a name not seen in the window —
/// all a window of at most `window` units can tell), and names last seen further back are
/// forgotten every [`RecentNames::PRUNE_EVERY`] units. [`PrevDistance`]'s map keeps every name
/// of a stream, so a scanner's memory grew with the length of a code answer (by about 30 bytes
/// per distinct name: megabytes for a long one); this one keeps the names of the last
/// `PRUNE_EVERY + window` units at most. Same distances wherever they matter, and measured no
/// slower (a 76 MB scan).
#[derive(Debug, Clone)]
pub struct RecentNames {
    last: rustc_hash::FxHashMap<u64, u64>,
    seq: u64,
    window: u64,
    prune_at: u64,
}

impl RecentNames {
    pub const PRUNE_EVERY: u64 = 1024;

    pub fn new(window: usize) -> Self {
        RecentNames {
            last: rustc_hash::FxHashMap::default(),
            seq: 0,
            window: window.max(1) as u64,
            prune_at: Self::PRUNE_EVERY,
        }
    }

    /// Forgets every name seen: the next units have no previous occurrence.
    pub fn reset(&mut self) {
        self.last.clear();
    }

    /// [`PrevDistance::next`], or `u32::MAX` where that is `window` or more.
    #[inline]
    pub fn next(&mut self, u: &Unit) -> u32 {
        let i = self.seq;
        self.seq += 1;
        if self.seq >= self.prune_at {
            let (seq, window) = (self.seq, self.window);
            self.last.retain(|_, &mut at| at + window >= seq);
            self.prune_at = seq + Self::PRUNE_EVERY;
        }
        if u.class != UnitClass::Ident {
            return u32::MAX;
        }
        match self.last.insert(u.hash, i) {
            Some(j) if i - j < self.window => (i - j) as u32,
            _ => u32::MAX,
        }
    }

    /// Names remembered now (at most those of the last `PRUNE_EVERY + window` units).
    pub fn remembered(&self) -> usize {
        self.last.len()
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

/// [`renamed_key`] of the last `k` units of a stream of code units, updated in O(1) per unit
/// instead of re-hashing k shapes. The shape of an identifier depends on where it sits in the
/// window ("the name `d` back" only while that occurrence is inside it), but as the window
/// slides by one, exactly one shape can change: that of the next occurrence of the name that
/// leaves, which becomes "a name not seen earlier". So each step removes the leaving unit,
/// shifts, adds the new one and corrects at most one term.
#[derive(Debug, Clone)]
pub struct RollingRenamed {
    k: usize,
    /// Per unit of the window, at `index % k`: its shape as it stands in the window, and the
    /// index of the next occurrence of its name if that is in the window ([`u64::MAX`] if not).
    ring: Vec<(u64, u64)>,
    acc: u64,
    /// Units pushed since the last reset.
    n: u64,
    /// `n % k`, kept as the units come: three 64-bit divisions per unit were 8 % of a scan
    /// of code.
    slot: usize,
}

/// The longest window [`RollingRenamed`] takes (an index's `k` is at most 64).
pub const RENAMED_MAX_K: usize = 64;

/// B^i for i < [`RENAMED_MAX_K`]: one table for every window rather than a copy in each
/// (a proxy holds a window per open stream and index).
static POW: [u64; RENAMED_MAX_K] = {
    let mut t = [1u64; RENAMED_MAX_K];
    let mut i = 1;
    while i < RENAMED_MAX_K {
        t[i] = t[i - 1].wrapping_mul(KGRAM_BASE);
        i += 1;
    }
    t
};

impl RollingRenamed {
    /// A window of `k` units, 1 ≤ k ≤ [`RENAMED_MAX_K`] (clamped into that range).
    pub fn new(k: usize) -> Self {
        let k = k.clamp(1, RENAMED_MAX_K);
        RollingRenamed {
            k,
            // Allocated by the first unit: a scanner has a window per index with the channel,
            // and a stream of prose never uses it.
            ring: Vec::new(),
            acc: 0,
            n: 0,
            slot: 0,
        }
    }

    /// Empties the window (a unit that is not code).
    pub fn reset(&mut self) {
        self.acc = 0;
        self.n = 0;
        self.slot = 0;
    }

    /// Adds the next unit (its hash, class and distance back to the previous occurrence of the
    /// same identifier, as [`PrevDistance`] gives); returns the key of the window ending at it
    /// once the window holds `k` units.
    #[inline]
    pub fn push(&mut self, hash: u64, class: UnitClass, prev: u32) -> Option<u64> {
        let k = self.k;
        if self.ring.is_empty() {
            self.ring = vec![(0, u64::MAX); k];
        }
        let i = self.n;
        let slot = self.slot; // i % k, and (i − k) % k
        self.n += 1;
        self.slot = if slot + 1 == k { 0 } else { slot + 1 };
        // `(slot + d) % k` for 0 ≤ d ≤ k.
        let ahead = |d: usize| {
            if slot + d >= k {
                slot + d - k
            } else {
                slot + d
            }
        };
        if i >= k as u64 {
            // Unit i − k leaves from offset 0, where its shape has weight B^(k−1).
            let (shape0, next) = self.ring[slot];
            self.acc = self.acc.wrapping_sub(shape0.wrapping_mul(POW[k - 1]));
            if next != u64::MAX {
                // Its next occurrence, at offset m, was "the name m back": now it is new.
                let m = (next - (i - k as u64)) as usize;
                self.acc = self
                    .acc
                    .wrapping_sub((m as u64).wrapping_mul(POW[k - 1 - m]));
                self.ring[ahead(m)].0 = IDENT_SHAPE; // next % k, next = i − k + m
            }
        }
        let j = (i as usize).min(k - 1);
        let s = shape(hash, class, prev, j);
        self.acc = self.acc.wrapping_mul(KGRAM_BASE).wrapping_add(s);
        if class == UnitClass::Ident && (prev as usize) <= j {
            // (i − prev) % k, prev ≤ j < k
            self.ring[ahead(k - prev as usize)].1 = i;
        }
        self.ring[slot] = (s, u64::MAX);
        (self.n >= k as u64).then(|| finalize_seeded(self.acc, RENAMED_SEED))
    }
}

/// Xorshift64 from `seed` (non-zero): the random keys and units of the crate's unit tests.
#[cfg(test)]
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_names_agree_with_prev_distance_below_the_window() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for window in [1usize, 2, 5, 24, 40] {
            let mut full = PrevDistance::default();
            let mut recent = RecentNames::new(window);
            for i in 0..20_000u64 {
                let x = next();
                let class = match x % 4 {
                    0 => UnitClass::Other,
                    1 => UnitClass::Number,
                    _ => UnitClass::Ident,
                };
                // Few names, so most recur within a window; a hash may also recur as a
                // non-identifier, which must not count.
                let u = Unit {
                    hash: (x >> 8) % 30,
                    start: i,
                    len: 1,
                    channel: crate::normalize::Channel::Code,
                    class,
                };
                let d = full.next(&u);
                let want = if (d as usize) < window { d } else { u32::MAX };
                assert_eq!(recent.next(&u), want, "window {window}, unit {i}");
            }
            // Names that never recur: only the recent ones are kept.
            for i in 0..20_000u64 {
                let u = Unit {
                    hash: 1_000 + i,
                    start: i,
                    len: 1,
                    channel: crate::normalize::Channel::Code,
                    class: UnitClass::Ident,
                };
                assert_eq!(recent.next(&u), u32::MAX);
                assert!(recent.remembered() <= 1024 + window + 1);
            }
        }
    }

    #[test]
    fn rolling_renamed_key_equals_direct_key() {
        // Few names, so names recur inside and across windows at every distance; literals,
        // keywords and resets (prose units) mixed in.
        let mut x = 7u64;
        let mut rnd = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 33
        };
        for k in [1usize, 2, 3, 8, 24] {
            let mut units: Vec<(u64, UnitClass)> = Vec::new();
            for _ in 0..3000 {
                let r = rnd();
                units.push(match r % 10 {
                    0..=4 => (r % 6, UnitClass::Ident),
                    5 => (r, UnitClass::Number),
                    6 => (r, UnitClass::Str),
                    _ => (100 + r % 4, UnitClass::Other),
                });
            }
            let mut d = PrevDistance::default();
            let prev: Vec<u32> = units
                .iter()
                .map(|&(h, c)| {
                    d.next(&Unit {
                        hash: h,
                        start: 0,
                        len: 0,
                        channel: crate::normalize::Channel::Code,
                        class: c,
                    })
                })
                .collect();
            let mut roll = RollingRenamed::new(k);
            let mut since_reset = 0;
            for i in 0..units.len() {
                if i % 997 == 500 {
                    roll.reset();
                    since_reset = 0;
                }
                since_reset += 1;
                let got = roll.push(units[i].0, units[i].1, prev[i]);
                if since_reset >= k {
                    let w = (i + 1 - k..=i).map(|m| (units[m].0, units[m].1, prev[m]));
                    assert_eq!(got, Some(renamed_key(w)), "k {k} at {i}");
                } else {
                    assert_eq!(got, None);
                }
            }
        }
    }

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
