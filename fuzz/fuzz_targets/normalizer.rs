//! The normaliser: the same units whatever the chunking (bytes cut anywhere, UTF-8 split),
//! for prose, markdown (and its code outside fences read as code), code, patches and tool-call
//! arguments (JSON); never a panic; units on character boundaries.
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
    // Markdown is also read as bare code (its code outside fences), as a scanner reads it:
    // those units too must not depend on the chunking, and none may start before what the
    // normaliser said was final.
    let run = |chunk: usize| {
        let mut n = Normalizer::new(kind);
        n.set_bare_code(true);
        let (mut out, mut bare) = (Vec::new(), Vec::new());
        let mut pending = 0;
        for c in body.chunks(chunk) {
            n.push_bytes(c, &mut out);
            let made = bare.len();
            n.take_bare(&mut bare);
            assert!(bare[made..].iter().all(|u| u.start >= pending), "a bare unit before the final offset");
            pending = n.pending_start();
        }
        n.finish(&mut out);
        let made = bare.len();
        n.take_bare(&mut bare);
        assert!(bare[made..].iter().all(|u| u.start >= pending), "a bare unit before the final offset");
        (out, bare)
    };
    let (whole, whole_bare) = run(body.len().max(1));
    let (cut, cut_bare) = run(size);
    assert_eq!(whole, cut, "units depend on chunking");
    assert_eq!(whole_bare, cut_bare, "bare-code units depend on chunking");
    let text = verbatim::normalize::text_at_same_offsets(body);
    for u in whole.iter().chain(&whole_bare) {
        assert!(u.start < u.end() && u.end() as usize <= body.len());
        assert!(text.is_char_boundary(u.start as usize) && text.is_char_boundary(u.end() as usize));
    }
});
