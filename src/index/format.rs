//! The on-disk index format: file names, headers, record layouts and parameters. Changing any
//! of these (or [`crate::hash`], or the normaliser's output) is a format change: bump
//! [`FORMAT_VERSION`] and commit a new compatibility fixture (see `docs/index-format.md`).

use bytemuck::{Pod, Zeroable};
use serde::{Deserialize, Serialize};

use crate::normalize::Channel;

/// Version of the index directory layout and of everything that determines its contents.
/// 1: the first. 2: the normaliser keeps a Markdown document's fenced code open across fence
/// lines inside a block comment of a named language (`/** … ```rust … ``` … */`), which
/// changes the units of such documents. 3: the code lexer reads char literals (`'x'`, `'\x'`)
/// as one unit where `'` quotes no strings, so the `"` in `'"'` no longer opens a string.
/// 4: the membership filter is a Bloom filter blocked to one 64-bit word per key
/// ([`super::bloom`]) instead of a binary fuse filter: one cache line read per probe, not three;
/// and in `.asm` files the m4 words `dnl` and `C` start comments ([`crate::normalize::Lang`]).
pub const FORMAT_VERSION: u32 = 5;

pub const MANIFEST: &str = "manifest.json";
pub const DOCS: &str = "docs.jsonl";
pub const UNITS: &str = "units.bin";
pub const SPANS: &str = "spans.bin";
pub const POSTINGS: &str = "postings.bin";
pub const FILTER: &str = "filter.bin";
pub const COMMON: &str = "common.bin";
/// One [`crate::normalize::UnitClass`] byte per unit; present when the rename-insensitive
/// channel is built (`params.renamed`).
pub const CLASSES: &str = "classes.bin";

/// Every binary file starts with this 64-byte header.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
pub struct Header {
    pub magic: [u8; 8],
    pub version: u32,
    pub _pad: u32,
    /// Number of records after the header (and, for postings, after the directory).
    pub count: u64,
    /// File-specific: postings' bucket bits; the filter's seed.
    pub aux: u64,
    pub aux2: [u64; 4],
}

pub const HEADER_LEN: usize = std::mem::size_of::<Header>();
const _: () = assert!(HEADER_LEN == 64);

pub const MAGIC_UNITS: [u8; 8] = *b"VBUNITS\0";
pub const MAGIC_SPANS: [u8; 8] = *b"VBSPANS\0";
pub const MAGIC_POSTINGS: [u8; 8] = *b"VBPOSTS\0";
pub const MAGIC_FILTER: [u8; 8] = *b"VBFILTR\0";
pub const MAGIC_COMMON: [u8; 8] = *b"VBCOMMN\0";
pub const MAGIC_CLASSES: [u8; 8] = *b"VBCLASS\0";

/// Set in `Posting::pos` of a rename-insensitive key (positions are below 2^31: files are at
/// most 64 MiB by default and never 2^31 units). It lets the build mark such keys common at a
/// lower count: structure shared by a handful of documents is an idiom, text rarely is.
pub const RENAMED_POS: u32 = 1 << 31;

/// A rename-insensitive key found in at least `common_threshold / RENAMED_COMMON_DIVISOR`
/// documents (and at least 2) is common, or in fewer: [`Params::renamed_common_docs`].
pub const RENAMED_COMMON_DIVISOR: u32 = 4;

impl Header {
    pub fn new(magic: [u8; 8], count: u64, aux: u64, aux2: [u64; 4]) -> Self {
        Header {
            magic,
            version: FORMAT_VERSION,
            _pad: 0,
            count,
            aux,
            aux2,
        }
    }
}

/// One sampled k-gram occurrence: the k-gram starting at unit `pos` of document `doc`.
/// Sorted by key, then document, then position.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Posting {
    pub key: u64,
    pub doc: u32,
    pub pos: u32,
}

/// A key shared by so many documents that it is not evidence on its own.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct CommonKey {
    pub key: u64,
    pub docs: u32,
    pub _pad: u32,
}

/// Byte range of a unit within its document.
#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

/// Fingerprinting parameters of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelParams {
    /// Units per k-gram.
    pub k: u32,
    /// Index-side sampling stride: the k-grams starting at every p-th unit are indexed.
    pub p: u32,
}

impl ChannelParams {
    /// The guarantee: every shared run of at least `t` units contains an indexed k-gram and is
    /// therefore found; shorter runs are never reported.
    pub fn t(&self) -> u32 {
        self.k + self.p - 1
    }
}

/// Build parameters, recorded in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub prose: ChannelParams,
    pub code: ChannelParams,
    /// A key in at least this many documents is common: not evidence on its own.
    pub common_threshold: u32,
    /// The rename-insensitive code channel (identifiers and literals abstracted, see
    /// [`crate::hash::renamed_key`]); absent in indexes built before it existed, which then
    /// match exactly and by gaps only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renamed: Option<ChannelParams>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            prose: ChannelParams { k: 8, p: 5 },
            code: ChannelParams { k: 16, p: 8 },
            common_threshold: 32,
            renamed: Some(ChannelParams { k: 24, p: 6 }),
        }
    }
}

impl Params {
    pub fn channel(&self, c: Channel) -> ChannelParams {
        match c {
            Channel::Prose => self.prose,
            Channel::Code => self.code,
        }
    }

    /// Documents a rename-insensitive key must be sampled in to be marked common at build:
    /// `common_threshold / RENAMED_COMMON_DIVISOR` (at least 2), and never more than the count
    /// from which the matcher estimates the key in `common_threshold` documents (sampled
    /// count × p) and opens no run from it (`IndexMatcher::seed`): with the defaults 6, not 8.
    /// Keys sampled in 6 or 7 documents were kept in the filter and the postings only to be
    /// found, looked up and dropped (docs/benchmarks.md, "Per-chunk latency by workload; the
    /// copied-code tail").
    pub fn renamed_common_docs(&self) -> Option<u32> {
        self.renamed.map(|r| {
            (self.common_threshold / RENAMED_COMMON_DIVISOR)
                .max(2)
                .min(self.common_threshold.div_ceil(r.p.max(1)))
        })
    }

    /// Checks the parameters make sense; returns a message per problem.
    pub fn validate(&self) -> Vec<String> {
        let mut v = Vec::new();
        let renamed = self.renamed.map(|r| ("renamed", r));
        for (name, c) in [("prose", self.prose), ("code", self.code)]
            .into_iter()
            .chain(renamed)
        {
            if !(2..=64).contains(&c.k) {
                v.push(format!("{name} k must be between 2 and 64, not {}", c.k));
            }
            if !(1..=64).contains(&c.p) {
                v.push(format!("{name} p must be between 1 and 64, not {}", c.p));
            }
        }
        if self.common_threshold < 2 {
            v.push("the common-key threshold must be at least 2 documents".into());
        }
        v
    }
}
