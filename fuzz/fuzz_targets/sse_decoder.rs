//! The SSE decoder: any bytes, cut anywhere, give the same events as the whole, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use verbatim::proxy::sse::SseDecoder;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte chooses the chunk size; the rest is the stream.
    let size = (data[0] as usize % 17) + 1;
    let body = &data[1..];
    let whole = {
        let mut d = SseDecoder::new(1 << 16);
        let mut ev = Vec::new();
        let r = d.push(body, &mut ev);
        (ev, r.is_ok(), d.finish())
    };
    let mut d = SseDecoder::new(1 << 16);
    let mut ev = Vec::new();
    let mut ok = true;
    for c in body.chunks(size) {
        if d.push(c, &mut ev).is_err() {
            ok = false;
            break;
        }
    }
    if ok && whole.1 {
        let rest = d.finish();
        assert_eq!(
            format!("{:?}", ev),
            format!("{:?}", whole.0),
            "events depend on chunking"
        );
        // The fields read back as the text they are (the decoder keeps most as ranges of the
        // event's bytes).
        let fields = |evs: &[verbatim::proxy::sse::SseEvent]| -> Vec<(Option<String>, Option<String>)> {
            evs.iter()
                .map(|e| (e.event().map(str::to_string), e.data().map(str::to_string)))
                .collect()
        };
        assert_eq!(fields(&ev), fields(&whole.0), "fields depend on chunking");
        assert_eq!(rest, whole.2);
    }
});
