//! Opening an index allocates what it keeps (the filter, the document table) and little else:
//! no buffer the size of an index file that is garbage once the open returns. Such garbage is
//! not just a startup peak — mimalloc, the binary's allocator, keeps freed memory resident in
//! an idle process, so a server held ~70 MB more than it used on an 892 MB index
//! (docs/benchmarks.md). Measured here with a counting allocator around the system one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use common::{Rng, build_index, vocabulary, write_corpus};
use verbatim::index::{Index, Params};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn opening_an_index_leaves_no_file_sized_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = vocabulary('w', 3000, 5);
    let mut r = Rng(17);
    let docs: Vec<(String, String)> = (0..3000)
        .map(|i| {
            let text: Vec<&str> = (0..300)
                .map(|_| vocab[r.below(vocab.len())].as_str())
                .collect();
            (format!("d{i:04}.txt"), text.join(" "))
        })
        .collect();
    let m = write_corpus(dir.path(), "books", "prose", "copyrighted", None, &docs);
    drop(build_index(dir.path(), &[m], Params::default()));
    let idx = dir.path().join("idx");
    let size = |f: &str| std::fs::metadata(idx.join(f)).unwrap().len() as usize;
    let (filter, table) = (size("filter.bin"), size("docs.jsonl"));
    assert!(
        filter > 100_000 && table > 100_000,
        "too small to tell: {filter} / {table}"
    );

    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let index = Index::open(&idx).unwrap();
    let kept = LIVE.load(Relaxed) - before;
    let transient = PEAK.load(Relaxed) - before - kept;
    // Reading either file into a buffer first would add its size here.
    assert!(
        transient < filter.min(table) / 2,
        "opening allocated {transient} bytes it did not keep (filter file {filter}, document table {table}, kept {kept})"
    );
    drop(index);
}
