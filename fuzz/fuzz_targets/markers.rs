//! License markers and identification: any text, any chunking, the same markers; never a panic;
//! and no marker not reported yet starts before `undecided_from` (what a strict proxy may
//! release). With the first byte's high bit set, the text is tool-call arguments (JSON, read
//! through its projection).
#![no_main]
use libfuzzer_sys::fuzz_target;
use verbatim::license::markers::{MarkerKind, MarkerScanner, scan, scan_json};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let json = data[0] >= 0x80;
    let size = ((data[0] & 0x7f) as usize % 11) + 1;
    let Ok(text) = std::str::from_utf8(&data[1..]) else {
        return;
    };
    let whole = if json { scan_json(text) } else { scan(text) };
    let held: Vec<(MarkerKind, u64)> = whole.iter().map(|m| (m.kind, m.start)).collect();
    let mut s = if json {
        MarkerScanner::for_json()
    } else {
        MarkerScanner::new()
    };
    let mut found = Vec::new();
    let mut pushed = 0u64;
    let chars: Vec<char> = text.chars().collect();
    for c in chars.chunks(size) {
        let piece: String = c.iter().collect();
        s.push(&piece);
        pushed += piece.len() as u64;
        found.extend(s.take());
        let released = s.undecided_from().unwrap_or(pushed).min(pushed);
        for m in held
            .iter()
            .filter(|m| !found.iter().any(|f| (f.kind, f.start) == **m))
        {
            assert!(
                released <= m.1,
                "{m:?} not reported, text up to {released} released"
            );
        }
    }
    s.finish();
    found.extend(s.take());
    assert_eq!(found, whole, "markers depend on chunking");
    let _ = verbatim::license::LicenseDb::builtin().identify(text);
});
