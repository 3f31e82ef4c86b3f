//! Incremental Server-Sent Events decoding that keeps every event's raw bytes, so an event the
//! proxy does not touch is relayed byte for byte. Events end at a blank line (`\n\n` or
//! `\r\n\r\n`); fields are `event`, `data` (joined with `\n`), and comments (`:`), which carry
//! no text. Chunk boundaries never change the events (tested at every split).

use bytes::{Bytes, BytesMut};

/// One event as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The exact bytes, including the terminating blank line.
    pub raw: Bytes,
    event: Option<Field>,
    data: Option<Field>,
}

/// A field's value: where it lies in the event's bytes — no copy; an event's data is most
/// often one line, and a copy of it was an allocation per event, and in a held event a second
/// copy of its text — or, for data over several lines (joined with `\n`), a string of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    In(std::ops::Range<usize>),
    Own(String),
}

impl SseEvent {
    /// An event with no bytes of its own yet (one the proxy makes).
    pub fn named(event: Option<&str>) -> SseEvent {
        SseEvent {
            raw: Bytes::new(),
            event: event.map(|e| Field::Own(e.to_string())),
            data: None,
        }
    }

    /// The `event` field.
    pub fn event(&self) -> Option<&str> {
        self.event.as_ref().map(|f| self.field(f))
    }

    /// The `data` lines joined with `\n`; `None` if the event has no data field.
    pub fn data(&self) -> Option<&str> {
        self.data.as_ref().map(|f| self.field(f))
    }

    fn field<'a>(&'a self, f: &'a Field) -> &'a str {
        match f {
            Field::In(r) => {
                debug_assert!(std::str::from_utf8(&self.raw[r.clone()]).is_ok());
                // SAFETY: `parse` made the range only after reading all of `raw` as UTF-8
                // (`Bytes` never changes), and both its ends are next to ASCII bytes (`:`, a
                // space, `\r`, `\n`, the start or end of `raw`), so on character boundaries.
                unsafe { std::str::from_utf8_unchecked(&self.raw[r.clone()]) }
            }
            Field::Own(s) => s,
        }
    }
}

/// An event larger than the limit: the stream is ended rather than buffered without bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an upstream event exceeded {limit} bytes")]
pub struct EventTooLarge {
    pub limit: usize,
}

#[derive(Debug)]
pub struct SseDecoder {
    buf: BytesMut,
    /// Bytes of `buf` already searched for an event end.
    searched: usize,
    max_event: usize,
}

impl SseDecoder {
    pub fn new(max_event: usize) -> Self {
        SseDecoder {
            buf: BytesMut::new(),
            searched: 0,
            max_event,
        }
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(
        &mut self,
        bytes: &[u8],
        out: &mut impl Extend<SseEvent>,
    ) -> Result<(), EventTooLarge> {
        if self.buf.is_empty() {
            // Nothing carried over (the usual case: an upstream frame is whole events): the
            // events are read from `bytes` itself, and only an unfinished tail is buffered, so
            // an idle stream's buffer is never allocated. Copying every frame into the buffer
            // first showed as 9 % of `benches/pipeline.rs --interleave 1000` in `perf`, but
            // most of that was the first read of the bench's cold input, which now lands in
            // the event search: decode and parse alone went from ~850 to ~730 ns an event, the
            // whole pipeline only ~1 % (docs/benchmarks.md).
            let mut rest = bytes;
            while let Some(end) = find_event_end(rest, 0) {
                self.check_event(end)?;
                out.extend([event_of(&rest[..end])]);
                rest = &rest[end..];
            }
            if rest.is_empty() {
                return Ok(());
            }
            self.buf.extend_from_slice(rest);
            // `rest` holds no complete event: searched to its end.
            self.searched = rest.len();
            return self.check_event(self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match find_event_end(&self.buf, self.searched.saturating_sub(3)) {
                Some(end) => {
                    self.check_event(end)?;
                    let ev = event_of(&self.buf[..end]);
                    bytes::Buf::advance(&mut self.buf, end);
                    self.searched = 0;
                    out.extend([ev]);
                }
                None => {
                    self.searched = self.buf.len();
                    return self.check_event(self.buf.len());
                }
            }
        }
    }

    /// An event of `len` bytes, complete or not, must not pass the limit. A complete one is
    /// checked too, not only one left unfinished: an upstream that sends a whole oversized
    /// event in one read (or a configured limit below hyper's read size) would otherwise have
    /// it relayed and scanned whole, the limit a bound on buffering only. The events before it
    /// are still given out; it and what follows are not.
    fn check_event(&self, len: usize) -> Result<(), EventTooLarge> {
        if len > self.max_event {
            return Err(EventTooLarge {
                limit: self.max_event,
            });
        }
        Ok(())
    }

    /// Bytes left at the end of the stream that never formed a complete event.
    pub fn finish(&mut self) -> Option<Bytes> {
        self.searched = 0;
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// The event whose bytes are `raw`, in a copy of its own rather than a slice of the frame or
/// `split_to(end).freeze()` of the buffer: either shares an allocation, so an event held back
/// for a decision would keep the whole frame or buffer it came from alive, and the decoder
/// could not reuse its buffer.
fn event_of(raw: &[u8]) -> SseEvent {
    parse(Bytes::copy_from_slice(raw))
}

/// End (exclusive) of the first complete event at or after `from`: just past a blank line.
fn find_event_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        let nl = memchr::memchr(b'\n', &buf[i..])? + i;
        // A line ending here; is the next line empty?
        let next = nl + 1;
        if buf.get(next) == Some(&b'\n') {
            return Some(next + 1);
        }
        if buf.get(next) == Some(&b'\r') && buf.get(next + 1) == Some(&b'\n') {
            return Some(next + 2);
        }
        if next >= buf.len() || (buf.get(next) == Some(&b'\r') && next + 1 >= buf.len()) {
            return None; // need more bytes to know
        }
        i = next;
    }
    None
}

fn parse(raw: Bytes) -> SseEvent {
    let mut event = None;
    let mut data: Option<Field> = None;
    if let Ok(text) = std::str::from_utf8(&raw) {
        // Where `value` (a slice of `text`) lies in it.
        let at = |value: &str| {
            let start = value.as_ptr() as usize - text.as_ptr() as usize;
            start..start + value.len()
        };
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, &line[line.len()..]),
            };
            match field {
                "event" => event = Some(Field::In(at(value))),
                "data" => {
                    data = Some(match data {
                        None => Field::In(at(value)),
                        Some(Field::In(r)) => Field::Own(format!("{}\n{value}", &text[r])),
                        Some(Field::Own(mut d)) => {
                            d.push('\n');
                            d.push_str(value);
                            Field::Own(d)
                        }
                    })
                }
                _ => {}
            }
        }
    }
    SseEvent { raw, event, data }
}

/// Encodes an event the proxy made or changed.
pub fn encode(event: Option<&str>, data: &str) -> Bytes {
    let mut s = String::with_capacity(data.len() + 32);
    if let Some(e) = event {
        s.push_str("event: ");
        s.push_str(e);
        s.push('\n');
    }
    for line in data.split('\n') {
        s.push_str("data: ");
        s.push_str(line);
        s.push('\n');
    }
    s.push('\n');
    Bytes::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str =
        "event: a\ndata: {\"x\":1}\n\n: ping\n\ndata: line1\ndata: line2\r\n\r\ndata: [DONE]\n\n";

    fn decode_split(bytes: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, Option<Bytes>) {
        let mut d = SseDecoder::new(1 << 20);
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            d.push(&bytes[prev..c], &mut out).unwrap();
            prev = c;
        }
        (out, d.finish())
    }

    #[test]
    fn events_are_the_same_at_every_split_and_keep_their_bytes() {
        let b = STREAM.as_bytes();
        let (whole, rest) = decode_split(b, &[]);
        assert_eq!(rest, None);
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[0].event(), Some("a"));
        assert_eq!(whole[0].data(), Some("{\"x\":1}"));
        assert_eq!(whole[1].data(), None);
        assert_eq!(whole[2].data(), Some("line1\nline2"));
        assert_eq!(whole[3].data(), Some("[DONE]"));
        let joined: Vec<u8> = whole.iter().flat_map(|e| e.raw.to_vec()).collect();
        assert_eq!(joined, b);
        for cut in 1..b.len() {
            assert_eq!(decode_split(b, &[cut]).0, whole, "split at {cut}");
        }
        for a in 1..b.len() {
            for c in a..b.len() {
                assert_eq!(decode_split(b, &[a, c]).0, whole, "split at {a} and {c}");
            }
        }
        let every: Vec<usize> = (1..b.len()).collect();
        assert_eq!(decode_split(b, &every).0, whole, "byte at a time");
    }

    #[test]
    fn an_unfinished_event_is_returned_at_the_end_and_a_huge_one_is_refused() {
        let (ev, rest) = decode_split(b"data: a\n\ndata: partial", &[]);
        assert_eq!(ev.len(), 1);
        assert_eq!(rest.as_deref(), Some(&b"data: partial"[..]));
        let mut d = SseDecoder::new(16);
        let mut out = Vec::new();
        assert_eq!(
            d.push(&[b'x'; 17], &mut out),
            Err(EventTooLarge { limit: 16 })
        );
    }

    #[test]
    fn a_complete_event_over_the_limit_is_refused_and_the_ones_before_it_kept() {
        // 16 bytes is the limit; `data: 0123456789\n\n` is 18.
        let big = b"data: 0123456789\n\n";
        let small = b"data: ok\n\n";
        // Whole events in one push (nothing buffered before), and after a buffered tail.
        for cut in [0, 5] {
            let (first, rest) = small.split_at(cut);
            let mut d = SseDecoder::new(16);
            let mut out = Vec::new();
            d.push(first, &mut out).unwrap();
            let mut bytes = rest.to_vec();
            bytes.extend_from_slice(big);
            bytes.extend_from_slice(small);
            assert_eq!(
                d.push(&bytes, &mut out),
                Err(EventTooLarge { limit: 16 }),
                "first push of {cut} bytes"
            );
            assert_eq!(out.len(), 1, "only the event before the big one ({cut})");
            assert_eq!(out[0].data(), Some("ok"));
        }
        // At the limit exactly it passes.
        let mut d = SseDecoder::new(18);
        let mut out = Vec::new();
        d.push(big, &mut out).unwrap();
        assert_eq!(out[0].data(), Some("0123456789"));
    }

    #[test]
    fn fields_are_read_in_place_or_joined_whatever_their_characters() {
        let b =
            "event:délai\r\ndata:  è\r\nid: 7\r\ndata\r\ndata: ünd\r\n\r\nevent: x\ndata: ok\n\n";
        let (ev, rest) = decode_split(b.as_bytes(), &[]);
        assert_eq!(rest, None);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].event(), Some("délai"));
        // One leading space is the separator's; a `data` line without a colon is empty.
        assert_eq!(ev[0].data(), Some(" è\n\nünd"));
        assert_eq!((ev[1].event(), ev[1].data()), (Some("x"), Some("ok")));
        // Not UTF-8: kept byte for byte, no fields.
        let (bad, _) = decode_split(b"data: \xff\n\n", &[]);
        assert_eq!((bad[0].data(), bad[0].raw.len()), (None, 9));
    }

    #[test]
    fn encode_round_trips() {
        let e = encode(Some("message_stop"), "{\"type\":\"message_stop\"}");
        let (ev, _) = decode_split(&e, &[]);
        assert_eq!(ev[0].event(), Some("message_stop"));
        assert_eq!(ev[0].data(), Some("{\"type\":\"message_stop\"}"));
    }
}
