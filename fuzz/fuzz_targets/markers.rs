//! License markers and identification: any text, any chunking, the same markers; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use verbatim::license::markers::{MarkerScanner, scan};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let size = (data[0] as usize % 11) + 1;
    let Ok(text) = std::str::from_utf8(&data[1..]) else {
        return;
    };
    let whole = scan(text);
    let mut s = MarkerScanner::new();
    let chars: Vec<char> = text.chars().collect();
    for c in chars.chunks(size) {
        s.push(&c.iter().collect::<String>());
    }
    s.finish();
    assert_eq!(s.take(), whole, "markers depend on chunking");
    let _ = verbatim::license::LicenseDb::builtin().identify(text);
});
