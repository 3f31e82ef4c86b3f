//! The membership filter of index format 4: a Bloom filter blocked to one 64-bit word per key
//! (a key picks a word and sets [`HASHES`] bits in it). A probe reads one word — one cache
//! line — where the binary fuse filter of formats 1–3 read three lines at random places of a
//! table far larger than the caches, and testing it is a mask and a compare. A scan probes
//! every k-gram of its input, so those reads are what a scan of text unlike the corpus waits
//! for most: unrelated code scanned 1.17× and prose 1.20× faster with it (docs/benchmarks.md,
//! "A one-word Bloom filter").
//!
//! The price is the false-positive rate: about 2 in 1,000 at [`BITS_PER_KEY`] (a test
//! measures it), against 1.5 in 100,000 for the fuse filter of about the same size. A false
//! positive costs one postings lookup that finds nothing — a few per 1,000 units scanned.
//!
//! Hand-written: it is a dozen lines, and the matcher needs what filter crates keep private —
//! the word's address, to start loading the words of a whole push before testing any, and the
//! table in memory the index chooses (a map with transparent huge pages).

/// Filter bits per distinct key.
pub const BITS_PER_KEY: u64 = 20;
/// Bits set per key (the best count for ~3 keys a word).
pub const HASHES: u64 = 6;
/// The hash seed every index of this format uses (the filter file records it).
pub const SEED: u64 = 0x51_7cc1_b727_220a;

/// Words for `keys` distinct keys (at least one).
pub fn words_for(keys: u64) -> u64 {
    (keys * BITS_PER_KEY).div_ceil(64).max(1)
}

/// The key's hash: keys are hashes already, but the word must not be chosen by the bits the
/// postings' buckets use; murmur3's 64-bit finaliser of `key ^ seed`.
#[inline(always)]
pub fn hash(key: u64, seed: u64) -> u64 {
    let mut h = key ^ seed;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The word of hash `h` in a table of `words` words (its high half, scaled: always below
/// `words`), and the bits the key sets in it (six 6-bit fields of the hash remixed by a
/// multiplication, so they do not repeat the bits that chose the word).
#[inline(always)]
pub fn position(h: u64, words: u64) -> (usize, u64) {
    let i = (((h >> 32) * words) >> 32) as usize;
    let g = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let m = (1u64 << (g >> 58))
        | (1u64 << ((g >> 52) & 63))
        | (1u64 << ((g >> 46) & 63))
        | (1u64 << ((g >> 40) & 63))
        | (1u64 << ((g >> 34) & 63))
        | (1u64 << ((g >> 28) & 63));
    (i, m)
}

/// The filter of `keys` (distinct or not).
pub fn build(keys: &[u64], seed: u64) -> Vec<u64> {
    let n = words_for(keys.len() as u64);
    let mut words = vec![0u64; n as usize];
    for &k in keys {
        let (i, m) = position(hash(k, seed), n);
        words[i] |= m;
    }
    words
}

/// Whether the word and bits `pos` (see [`position`]) say the key may be present.
#[inline(always)]
pub fn test(words: &[u64], (i, m): (usize, u64)) -> bool {
    words.get(i).is_some_and(|w| w & m == m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No false negatives, and the false-positive rate the module's documentation states.
    #[test]
    fn members_are_found_and_false_positives_are_rare() {
        let mut next = crate::hash::xorshift(0x2545_f491_4f6c_dd1d);
        let members: Vec<u64> = (0..300_000).map(|_| next()).collect();
        let words = build(&members, SEED);
        assert_eq!(words.len() as u64, words_for(300_000));
        let n = words.len() as u64;
        for &k in &members {
            assert!(test(&words, position(hash(k, SEED), n)), "member {k:#x}");
        }
        let trials = 2_000_000;
        let fp = (0..trials)
            .filter(|_| test(&words, position(hash(next(), SEED), n)))
            .count();
        let rate = fp as f64 / f64::from(trials);
        assert!(
            (1.0e-3..3.0e-3).contains(&rate),
            "false-positive rate {rate}"
        );
    }

    /// The six bits are distinct most of the time (a collision only weakens the filter).
    #[test]
    fn a_key_sets_about_six_bits() {
        let mut next = crate::hash::xorshift(0x9e37_79b9_7f4a_7c15);
        let total: u32 = (0..10_000)
            .map(|_| position(hash(next(), SEED), 1 << 20).1.count_ones())
            .sum();
        let mean = f64::from(total) / 10_000.0;
        assert!(mean > 5.7 && mean <= 6.0, "mean bits {mean}");
    }
}
