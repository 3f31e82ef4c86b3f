//! Normalisation alone, for checking that a change to the normalisers keeps every unit and for
//! timing it: prints the number of units, a digest of every unit's hash, span and class (the
//! input pushed `PUSH_BYTES` at a time: compare digests across push sizes and builds), and the
//! throughput of five passes in 64 KiB pushes.
//!
//!   cargo run --release --example normalize -- FILE [auto|prose|markdown] [PUSH_BYTES]
//!
//! `auto` (the default) takes the kind from the file's extension, as `verbatim scan` does.

use anyhow::{Context, Result};
use verbatim::normalize::{Normalizer, TextKind, Unit};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .context("usage: normalize FILE [auto|prose|markdown] [PUSH_BYTES]")?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    let kind = match args.get(2).map(String::as_str) {
        None | Some("auto") => TextKind::from_path(std::path::Path::new(path)),
        Some("prose") => TextKind::Prose,
        Some("markdown") => TextKind::Markdown,
        Some(k) => anyhow::bail!("unknown kind `{k}`"),
    };
    let push: usize = match args.get(3) {
        Some(n) => n.parse().context("PUSH_BYTES")?,
        None => 64 << 10,
    };
    anyhow::ensure!(push > 0, "PUSH_BYTES must be positive");

    let (mut digest, mut units) = (0u64, 0u64);
    let mut add = |u: &Unit| {
        digest = digest.rotate_left(5)
            ^ u.hash
            ^ u.start.wrapping_mul(31)
            ^ u.end().wrapping_mul(131)
            ^ (u.class as u64) << 7;
        units += 1;
    };
    let mut n = Normalizer::new(kind);
    let mut out = Vec::new();
    for c in bytes.chunks(push) {
        n.push_bytes(c, &mut out);
        out.drain(..).for_each(|u| add(&u));
    }
    n.finish(&mut out);
    out.drain(..).for_each(|u| add(&u));

    let t = std::time::Instant::now();
    for _ in 0..5 {
        let mut n = Normalizer::new(kind);
        for c in bytes.chunks(64 << 10) {
            n.push_bytes(c, &mut out);
            out.clear();
        }
        n.finish(&mut out);
        out.clear();
    }
    let mb_s = 5.0 * bytes.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
    println!("units {units} digest {digest:016x} {mb_s:.1} MB/s");
    Ok(())
}
