//! The normaliser: the same units whatever the chunking (bytes cut anywhere, UTF-8 split),
//! for prose, markdown, code, patches and tool-call arguments (JSON); never a panic; units on character
//! boundaries.
#![no_main]
use libfuzzer_sys::fuzz_target;
use verbatim::normalize::{Lang, Normalizer, TextKind};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // Patches on the top bytes, so the seeds kept from before keep their kinds.
    let kind = match data[0] {
        250.. => TextKind::Patch(Lang::C_LIKE),
        b => match b % 5 {
            0 => TextKind::Prose,
            1 => TextKind::Markdown,
            2 => TextKind::Code(Lang::C_LIKE),
            3 => TextKind::Code(Lang::from_name("python").unwrap_or(Lang::C_LIKE)),
            _ => TextKind::ToolArgs,
        },
    };
    let size = (data[1] as usize % 13) + 1;
    let body = &data[2..];
    let run = |chunk: usize| {
        let mut n = Normalizer::new(kind);
        let mut out = Vec::new();
        for c in body.chunks(chunk) {
            n.push_bytes(c, &mut out);
        }
        n.finish(&mut out);
        out
    };
    let whole = run(body.len().max(1));
    let cut = run(size);
    assert_eq!(whole, cut, "units depend on chunking");
    let text = verbatim::normalize::text_at_same_offsets(body);
    for u in &whole {
        assert!(u.start < u.end() && u.end() as usize <= body.len());
        assert!(text.is_char_boundary(u.start as usize) && text.is_char_boundary(u.end() as usize));
    }
});
