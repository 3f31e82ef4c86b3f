//! The response pipeline: upstream bytes in, the bytes that may be sent now out. Sans-IO: it
//! knows nothing of sockets; the hyper body wrapper only polls and forwards.
//!
//! Streaming responses are decoded into SSE events; each event's text pieces are pushed into a
//! scanner per text stream. An event is released when every piece it carries lies before its
//! stream's stable offset (the last `t − 1` units, anything still being formed and every open
//! run are held back), so no unit of a run of `t` or more units leaves before the run is
//! detected. Events without text are released as soon as everything before them is. With
//! `hold = none` everything is released at once and only annotate/log are meaningful.
//!
//! When a run reaches the block threshold the stream is ended in the provider's own format; a
//! finished run is redacted in the held events, annotated with an extra event (or, for
//! Anthropic, on the final `message_delta`), or just recorded. Events nobody changed go out as
//! the exact upstream bytes.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{self, Api, Citation, Part, StreamKey, StreamMeta};
use super::sse::{EventTooLarge, SseDecoder, SseEvent, encode};
use crate::index::Index;
use crate::license::Identification;
use crate::license::markers::{Marker, MarkerKind, MarkerScanner};
use crate::matcher::{Finding, FindingReport, MatchKind, Scanner};
use crate::normalize::{Channel, TextKind};
use crate::policy::{Facts, Policy, Verdict};

/// The request facts a policy can select on.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub tenant: Option<String>,
    pub route: Option<String>,
    pub model: Option<String>,
}

/// A policy's view of a finding.
/// What a policy sees of a finding or marker: its citation and the request's scope.
fn facts(c: &Citation, scope: &Scope) -> Facts {
    Facts {
        kind: c.kind.clone(),
        source: c.channel.clone(),
        rights: c.rights.clone(),
        license: c.license.clone(),
        corpus: c.corpus.clone(),
        units: c.units,
        exact_units: Some(c.exact_units),
        aligned_units: Some(c.aligned_units),
        chars: c.output_end.saturating_sub(c.output_start),
        similarity: c.similarity.unwrap_or(1.0),
        tenant: scope.tenant.clone(),
        route: scope.route.clone(),
        model: scope.model.clone(),
    }
}

fn finding_kind(f: &Finding) -> &'static str {
    if f.caller_supplied {
        "caller-supplied"
    } else {
        f.kind.as_str()
    }
}

/// What to do about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Allow,
    Log,
    Annotate,
    Redact,
    Block,
}

impl Action {
    /// Every action, least severe first.
    pub const ALL: [Action; 5] = [
        Action::Allow,
        Action::Log,
        Action::Annotate,
        Action::Redact,
        Action::Block,
    ];

    /// The action a policy or config names (`allow`, `log`, `annotate`, `redact`, `block`).
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The problem message for a name that is not an action.
    pub fn unknown(name: &str) -> String {
        format!("`{name}` is not one of `allow`, `log`, `annotate`, `redact`, `block`")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Log => "log",
            Action::Annotate => "annotate",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// How much output is held back while it is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hold {
    /// Hold the last t − 1 units and every open run: nothing of a blocked run is released.
    Strict,
    /// Release at once (annotate/log-only routes): no added delay.
    None,
}

/// The built-in rules, until policies exist: long runs get `long_action`, shorter ones
/// `short_action`, runs the caller supplied `caller_supplied`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub long_prose_units: u32,
    pub long_code_units: u32,
    /// A code run gets `long_action` only if it holds a piece copied token for token of at
    /// least this many units (twice the default index's `t`, 23) …
    pub long_code_exact_units: u32,
    /// … or a stretch without a gap, names renamed, of at least this many (twice the fewest a
    /// renamed finding is reported with, `t + k` = 39): a renamed copy of that length.
    pub long_code_aligned_units: u32,
    /// A near copy gets `long_action` only if at least this similar to its source (exact and
    /// renamed runs have similarity 1).
    pub long_min_similarity: f64,
    pub long_action: Action,
    pub short_action: Action,
    pub caller_supplied: Action,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            long_prose_units: 32,
            long_code_units: 50,
            long_code_exact_units: 46,
            long_code_aligned_units: 78,
            long_min_similarity: 0.8,
            long_action: Action::Block,
            short_action: Action::Annotate,
            caller_supplied: Action::Log,
        }
    }
}

/// One decision, for logs and the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// What was done (`log` in shadow mode).
    pub action: Action,
    /// What the policy said.
    pub policy_action: Action,
    pub shadow: bool,
    pub rule: String,
    pub reason: String,
    pub stream: String,
    pub citation: Citation,
    /// SHA-256 of the copied span of the output (the text itself is never recorded).
    pub span_sha256: String,
    /// The finding's kind (`exact`, `caller-supplied`, …) and its license's category.
    pub kind: String,
    pub category: String,
    /// The span's first characters, only when the policy enables excerpts.
    pub excerpt: Option<String>,
}

impl Decision {
    fn new(
        setup: &ScanSetup,
        v: &Verdict,
        cite: &Citation,
        stream: String,
        span: &str,
    ) -> Decision {
        Decision {
            action: v.effective,
            policy_action: v.action,
            shadow: v.shadow,
            rule: v.rule.clone(),
            reason: v.reason.clone(),
            stream,
            citation: cite.clone(),
            span_sha256: crate::audit::sha256_hex(span.as_bytes()),
            kind: cite.kind.clone(),
            category: setup.policy.category_of(&cite.license).as_str().to_string(),
            excerpt: (setup.policy.excerpt_chars > 0)
                .then(|| span.chars().take(setup.policy.excerpt_chars).collect()),
        }
    }
}

/// How a response's scanning is set up.
#[derive(Clone)]
pub struct ScanSetup {
    pub indexes: Vec<Arc<Index>>,
    pub exempt: Arc<FxHashSet<u64>>,
    pub policy: Arc<Policy>,
    /// Who asked, through which route, for which model: policy facts of every finding.
    pub scope: Scope,
    pub hold: Hold,
    pub max_event_bytes: usize,
    /// Past this many bytes of held events the stream is stopped (fail-closed).
    pub max_holdback_bytes: usize,
    /// Past this many bytes from the upstream a stream is stopped (an endless stream must not
    /// grow the text Verbatim keeps for redaction and evidence without bound).
    pub max_response_bytes: usize,
    /// How the answer's text ([`Part::Text`]) is read when the request says (a code
    /// completion: [`api::answer_kind`]); `None`: as its part says.
    pub answer_kind: Option<TextKind>,
}

#[derive(Debug, Clone, Copy)]
struct HeldSpan {
    /// The stream (its index in `Pipeline::streams`, whose key says where the text is in an
    /// event).
    stream: usize,
    start: u64,
    end: u64,
}

#[derive(Debug)]
struct Held {
    /// The event as received (no bytes for one the proxy made).
    ev: SseEvent,
    json: Option<Value>,
    /// The event was read as a [`api::LiteChunk`] and `json` is not built from its data yet
    /// (built by [`Held::ensure_json`] only if the event must be rewritten). Such an event
    /// always carries text, so its `spans` are never empty.
    lazy: bool,
    /// One span for almost every event (a text delta), inline: no allocation per event.
    spans: smallvec::SmallVec<[HeldSpan; 1]>,
    /// The streams whose texts the event repeats ([`api::for_each_repeated_text`]): it is
    /// released only when their texts are decided, or it would carry text still held back (a
    /// closing event that arrives before the deltas it repeats end).
    repeats: smallvec::SmallVec<[usize; 1]>,
    changed: bool,
}

impl Held {
    fn synthetic(event: Option<&str>, v: Value) -> Held {
        Held {
            ev: SseEvent::named(event),
            json: Some(v),
            lazy: false,
            spans: smallvec::SmallVec::new(),
            repeats: smallvec::SmallVec::new(),
            changed: true,
        }
    }

    /// Builds `json` from a lite event's data, before the event is rewritten.
    fn ensure_json(&mut self) {
        if std::mem::take(&mut self.lazy) {
            self.json = self.ev.data().and_then(|d| serde_json::from_str(d).ok());
        }
    }

    /// The bytes to send: the event as it came, moved out (a clone of a `Bytes` made from a
    /// `Vec` allocates its shared header), or re-encoded if it was changed.
    fn into_bytes(self) -> Bytes {
        match (&self.json, self.changed) {
            (Some(v), true) => encode(self.ev.event(), &v.to_string()),
            _ => self.ev.raw,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Relaying,
    /// Blocked (or failed): nothing more from upstream is relayed.
    Ended,
}

/// Scans one streamed response.
pub struct Pipeline {
    api: Api,
    setup: ScanSetup,
    decoder: SseDecoder,
    streams: Vec<(StreamKey, Scanner)>,
    /// Each stream's text so far: a redaction must also reach the events that repeat it whole
    /// (the Responses API's `*.done` events and `response.completed`).
    texts: Vec<String>,
    /// Each stream's license markers (SPDX identifiers, copyright notices, header phrases).
    markers: Vec<MarkerScanner>,
    /// Each stream's license-text runs, kept until no license run is open so a reproduced
    /// license is one finding (see [`crate::license::collapse`]).
    license_pending: Vec<Vec<Finding>>,
    /// Whether the policy could block a license text (else its runs are not held back).
    hold_license: bool,
    /// Whether text that may become a license marker is held until the marker is decided:
    /// strict holdback and a policy that could block or redact one.
    hold_markers: bool,
    /// Each stream's redactions so far, in its original text's offsets (see [`Redactions`]):
    /// held events are rebuilt from the original text with all of them applied, and events
    /// that repeat a stream's whole text (which may arrive after the run was redacted) get
    /// the redacted whole.
    redactions: Vec<Redactions>,
    queue: VecDeque<Held>,
    /// Released events, one frame each (the upstream's event framing is kept). During
    /// [`Pipeline::push_into`] it is the sender's queue, its earlier events first.
    out: VecDeque<Bytes>,
    meta: StreamMeta,
    state: State,
    /// Anthropic: citations waiting for the final `message_delta`.
    pending_cites: Vec<Citation>,
    decisions: Vec<Decision>,
    blocked: bool,
    /// The policy's shortest blockable run per channel (prose, code).
    min_block: [Option<u32>; 2],
    /// Quote streams opened ([`Part::Quote`]): each quote is a stream of its own, decided at
    /// its event, up to [`MAX_QUOTE_STREAMS`]; later quotes share one more.
    quotes: u64,
    /// Upstream events seen.
    pub events_in: u64,
    /// Upstream events released (synthetic events not counted): with `events_in`, how many
    /// are held back.
    pub events_out: u64,
    /// Bytes of upstream events in the queue.
    held_bytes: usize,
    /// Bytes received from the upstream.
    bytes_in: usize,
    /// Why Verbatim stopped the stream on its own (`audit-unavailable`, `holdback-limit`).
    refused: Option<String>,
}

impl Pipeline {
    pub fn new(api: Api, setup: ScanSetup) -> Self {
        let hold_license = setup.policy.may_block_kind("license-text");
        let hold_markers =
            setup.hold == Hold::Strict && setup.policy.may_withhold_kind("license-marker");
        let min_block = [
            setup.policy.min_block_units("prose"),
            setup.policy.min_block_units("code"),
        ];
        Pipeline {
            min_block,
            api,
            decoder: SseDecoder::new(setup.max_event_bytes),
            setup,
            streams: Vec::new(),
            texts: Vec::new(),
            markers: Vec::new(),
            license_pending: Vec::new(),
            hold_license,
            hold_markers,
            redactions: Vec::new(),
            queue: VecDeque::new(),
            out: VecDeque::new(),
            meta: StreamMeta::default(),
            state: State::Relaying,
            pending_cites: Vec::new(),
            decisions: Vec::new(),
            blocked: false,
            quotes: 0,
            events_in: 0,
            events_out: 0,
            held_bytes: 0,
            bytes_in: 0,
            refused: None,
        }
    }

    /// Whether the pipeline has ended the response (blocked, or failed): stop reading upstream.
    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// Whether a block ended the response.
    pub fn ended_by_block(&self) -> bool {
        self.blocked
    }

    /// Why Verbatim stopped the stream on its own, if it did (not a policy's block).
    pub fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    /// Decisions made so far (each reported once).
    pub fn take_decisions(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.decisions)
    }

    /// Feeds upstream bytes; returns the events that may be sent to the client now.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Bytes> {
        self.scan(bytes);
        Vec::from(std::mem::take(&mut self.out))
    }

    /// [`Pipeline::push`], the events released appended to `ready` instead of returned: no
    /// vector is allocated for them (a proxy pushes every upstream frame of every stream), and
    /// the pipeline keeps no buffer of its own between pushes — it appends to `ready` itself,
    /// whose events not yet sent stay ahead of the new ones.
    pub fn push_into(&mut self, bytes: &[u8], ready: &mut VecDeque<Bytes>) {
        std::mem::swap(&mut self.out, ready);
        self.scan(bytes);
        std::mem::swap(&mut self.out, ready);
    }

    /// [`Pipeline::push`]'s work; what it releases is left in `self.out`.
    fn scan(&mut self, bytes: &[u8]) {
        self.bytes_in += bytes.len();
        if self.state == State::Relaying && self.bytes_in > self.setup.max_response_bytes {
            let limit = self.setup.max_response_bytes;
            tracing::warn!(
                limit,
                "upstream stream longer than the response limit; stopping it"
            );
            self.release();
            self.stop(
                "response-too-large",
                &format!("verbatim: output stopped; the response passed {limit} bytes (limits.max_response_bytes)"),
            );
            return;
        }
        if self.state == State::Relaying {
            // On the stack: a push is usually one event, and a buffer kept for the next push
            // was ~300 bytes of every idle stream.
            let mut events = smallvec::SmallVec::<[SseEvent; 2]>::new();
            let r = self.decoder.push(bytes, &mut events);
            for ev in events {
                self.on_event(ev);
                if self.state != State::Relaying {
                    break;
                }
            }
            self.release();
            if let (Err(EventTooLarge { limit }), State::Relaying) = (r, self.state) {
                // Fail-closed, as at the holdback limit: what was decided is sent, what is
                // held undecided is not, and the client gets a stop event in its format.
                tracing::warn!(limit, "upstream event too large; stopping the stream");
                self.stop(
                    "event-too-large",
                    &format!("verbatim: output stopped; an upstream event passed {limit} bytes (limits.max_event_bytes)"),
                );
            }
            if self.state == State::Relaying && self.held_bytes > self.setup.max_holdback_bytes {
                // Fail-closed: what is held is undecided, so none of it is released.
                tracing::warn!(
                    held = self.held_bytes,
                    limit = self.setup.max_holdback_bytes,
                    "holdback limit reached; stopping the stream"
                );
                let limit = self.setup.max_holdback_bytes;
                self.stop(
                    "holdback-limit",
                    &format!("verbatim: output stopped; more than {limit} bytes were held back waiting for a decision (limits.max_holdback_bytes)"),
                );
            }
        }
    }

    /// The upstream ended cleanly: everything still held is decided and released, and bytes
    /// after the last complete event are relayed as they came.
    pub fn finish(&mut self) -> Vec<Bytes> {
        self.end(true)
    }

    /// The upstream failed: complete events still held are decided and released; a partial
    /// last event is dropped so the client never sees half an event.
    pub fn abort(&mut self) -> Vec<Bytes> {
        self.end(false)
    }

    fn end(&mut self, clean: bool) -> Vec<Bytes> {
        if self.state == State::Relaying {
            let rest = self.decoder.finish().filter(|_| clean);
            for i in 0..self.streams.len() {
                self.streams[i].1.finish();
                self.markers[i].finish();
            }
            self.decide();
            if self.state == State::Relaying {
                while let Some(h) = self.queue.pop_front() {
                    self.release_one(h);
                }
                if let Some(rest) = rest {
                    self.out.push_back(rest);
                }
                self.state = State::Ended;
            }
        }
        Vec::from(std::mem::take(&mut self.out))
    }

    fn emit(&mut self, h: Held) {
        if !h.ev.raw.is_empty() {
            self.events_out += 1;
            self.held_bytes = self.held_bytes.saturating_sub(h.ev.raw.len());
        }
        self.out.push_back(h.into_bytes());
    }

    /// Ends the stream now, in the provider's format, without relaying what is held: Verbatim
    /// cannot go on (a decision could not be recorded and the audit trail is fail-closed).
    pub fn refuse(&mut self, reason: &str, explanation: &str) -> Vec<Bytes> {
        self.stop(reason, explanation);
        Vec::from(std::mem::take(&mut self.out))
    }

    /// [`Pipeline::refuse`]'s work: the stop events are queued after what was released
    /// before them (in a push, after what it released so far).
    fn stop(&mut self, reason: &str, explanation: &str) {
        if self.state == State::Relaying {
            self.refused = Some(reason.to_string());
            self.queue.clear();
            self.held_bytes = 0;
            for (event, v) in api::refusal_events(self.api, &mut self.meta, reason, explanation) {
                self.out.push_back(encode(event, &v.to_string()));
            }
            if let Some(done) = api::done_marker(self.api) {
                self.out.push_back(encode(None, done));
            }
            self.state = State::Ended;
            self.blocked = true;
        }
    }

    /// The stream of `key`, opened (read as `kind`, or as its part says) if it is new.
    fn stream(&mut self, key: StreamKey, kind: Option<TextKind>) -> usize {
        if let Some(i) = self.streams.iter().position(|(k, _)| *k == key) {
            return i;
        }
        let kind = kind.unwrap_or_else(|| self.setup.kind_of(key.part));
        let mut s = Scanner::new(&self.setup.indexes, kind);
        s.set_exemptions(Arc::clone(&self.setup.exempt));
        s.set_hold_license_runs(self.hold_license);
        s.set_hold_boilerplate(self.setup.hold == Hold::Strict);
        // One slot at a time: most responses have one stream or two, and a scanner and a
        // marker scanner are large, so the usual growth to four slots left ~3 KB of every
        // open stream unused (heaptrack, docs/benchmarks.md "Memory per idle stream").
        self.streams.reserve_exact(1);
        self.markers.reserve_exact(1);
        self.streams.push((key, s));
        self.texts.push(String::new());
        self.markers.push(match key.part {
            Part::ToolArgs => MarkerScanner::for_json(),
            _ => MarkerScanner::new(),
        });
        self.license_pending.push(Vec::new());
        self.streams.len() - 1
    }

    fn finish_streams(&mut self, pred: impl Fn(&StreamKey) -> bool) {
        for ((k, s), m) in self.streams.iter_mut().zip(&mut self.markers) {
            if pred(k) {
                s.finish();
                m.finish();
            }
        }
    }

    fn on_event(&mut self, ev: SseEvent) {
        self.events_in += 1;
        let api = self.api;
        let ev = if api == Api::ChatCompletions {
            match self.on_lite_event(ev) {
                Ok(()) => return,
                Err(ev) => ev,
            }
        } else {
            ev
        };
        let done = ev.data() == Some("[DONE]");
        let json: Option<Value> = match ev.data() {
            Some(d) if !done => serde_json::from_str(d).ok(),
            _ => None,
        };
        let ends = api::stream_ends(api, json.as_ref(), done);
        // Terminal events: decide every stream *before* queueing, so citations precede them.
        if ends == api::StreamEnds::AllBefore {
            self.finish_streams(|_| true);
            self.decide();
            if self.state != State::Relaying {
                return;
            }
        }
        let mut held = Held {
            ev,
            json,
            lazy: false,
            spans: smallvec::SmallVec::new(),
            repeats: smallvec::SmallVec::new(),
            changed: false,
        };
        let mut quoted = smallvec::SmallVec::<[StreamKey; 1]>::new();
        if let Some(v) = &mut held.json {
            self.meta.observe(api, v);
            for mut piece in api::event_pieces(api, v) {
                if piece.key.part == Part::Quote {
                    // A quote arrives whole in its event: a stream of its own, ended with the
                    // event, so strict holdback keeps neither it nor the text after it waiting
                    // for the block's end. Past the cap (a response citing without end), the
                    // rest share one stream, decided as the block ends.
                    piece.key.b = self.quotes.min(MAX_QUOTE_STREAMS);
                    if self.quotes < MAX_QUOTE_STREAMS {
                        self.quotes += 1;
                        quoted.push(piece.key);
                    }
                }
                held.spans
                    .push(self.take_text(piece.key, &piece.text, piece.kind));
            }
            if !self.pending_cites.is_empty() && api::carries_late_citations(api, v) {
                let cites = std::mem::take(&mut self.pending_cites);
                v["verbatim"] = serde_json::json!({"action": "annotate", "findings": cites});
                held.changed = true;
            }
        }
        if let (true, Some(v)) = (held.spans.is_empty(), &mut held.json) {
            let streams = &self.streams;
            api::for_each_repeated_text(api, v, &mut |k, _| {
                if let Some(s) = streams.iter().position(|(key, _)| *key == k)
                    && !held.repeats.contains(&s)
                {
                    held.repeats.push(s);
                }
            });
            // An event that repeats streams is brought up to date when it is released; any
            // other may still carry text an earlier redaction took out.
            if held.repeats.is_empty() {
                held.changed |= scrub_repeats(api, v, &self.streams, &self.texts, &self.redactions);
            }
        }
        self.hold(held);
        // Streams that end with this event: the text it carried is complete.
        if let api::StreamEnds::After(ended) = ends {
            self.finish_streams(|k| ended.contains(&k.a));
        }
        if !quoted.is_empty() {
            self.finish_streams(|k| quoted.contains(k));
        }
        self.decide();
    }

    /// [`Pipeline::on_event`] for a Chat Completions text chunk read without a JSON tree;
    /// the event back if it is not one (the general path then handles it).
    fn on_lite_event(&mut self, ev: SseEvent) -> Result<(), SseEvent> {
        let Some(lite) = ev.data().and_then(api::LiteChunk::parse) else {
            return Err(ev);
        };
        self.meta.observe_lite(&lite);
        let (key, text) = lite.piece();
        let span = self.take_text(key, text, None);
        drop(lite);
        self.hold(Held {
            ev,
            json: None,
            lazy: true,
            spans: smallvec::smallvec![span],
            repeats: smallvec::SmallVec::new(),
            changed: false,
        });
        self.decide();
        Ok(())
    }

    /// Feeds a piece of an event's text to its stream's scanner, text and marker scanner;
    /// where it lies in that stream.
    fn take_text(&mut self, key: StreamKey, text: &str, kind: Option<TextKind>) -> HeldSpan {
        let s = self.stream(key, kind);
        let sc = &mut self.streams[s].1;
        let start = sc.offset();
        sc.push_str(text);
        self.texts[s].push_str(text);
        self.markers[s].push(text);
        HeldSpan {
            stream: s,
            start,
            end: sc.offset(),
        }
    }

    /// Queues an event until its text is decided.
    fn hold(&mut self, held: Held) {
        self.held_bytes += held.ev.raw.len();
        self.enqueue(held);
    }

    /// The finding's citation and the policy's verdict on it.
    fn judge(
        &self,
        stream: usize,
        f: &Finding,
        known: Option<&Identification>,
    ) -> Option<(Citation, Verdict)> {
        judge(
            &self.setup,
            self.streams[stream].0,
            f,
            &self.texts[stream],
            known,
        )
    }

    fn record(&mut self, stream: usize, v: &Verdict, cite: &Citation) {
        let k = self.streams[stream].0;
        let span = self.texts[stream]
            .get(cite.output_start as usize..cite.output_end as usize)
            .unwrap_or("");
        let d = Decision::new(
            &self.setup,
            v,
            cite,
            format!("{}:{}:{:?}", k.a, k.b, k.part),
            span,
        );
        self.decisions.push(d);
    }

    /// Acts on finished runs, and blocks a still-growing run as soon as the policy would
    /// block it at its present length.
    fn decide(&mut self) {
        for s in 0..self.streams.len() {
            let (lic, other): (Vec<Finding>, Vec<Finding>) = self.streams[s]
                .1
                .take_findings()
                .into_iter()
                .partition(|f| f.kind == MatchKind::LicenseText);
            self.license_pending[s].extend(lic);
            let mut fs: Vec<(Finding, Option<Identification>)> =
                other.into_iter().map(|f| (f, None)).collect();
            if !self.license_pending[s].is_empty()
                && !self.streams[s]
                    .1
                    .open_runs()
                    .any(|r| r.kind == MatchKind::LicenseText)
            {
                let pending = std::mem::take(&mut self.license_pending[s]);
                fs.extend(crate::license::collapse(
                    pending,
                    &self.setup.indexes,
                    &self.texts[s],
                ));
            }
            for (f, id) in fs {
                let Some((cite, v)) = self.judge(s, &f, id.as_ref()) else {
                    continue;
                };
                self.record(s, &v, &cite);
                match v.effective {
                    Action::Block => return self.block(s, f.output_start, &cite),
                    Action::Redact => self.redact(s, f.output_start, f.output_end, &cite),
                    Action::Annotate => self.annotate(cite),
                    Action::Log | Action::Allow => {}
                }
            }
            for m in self.markers[s].take() {
                let (start, end) = (m.start, m.end);
                let (cite, v) = judge_marker(&self.setup, self.streams[s].0, m);
                self.record(s, &v, &cite);
                match v.effective {
                    Action::Block => return self.block(s, start, &cite),
                    Action::Redact => self.redact(s, start, end, &cite),
                    Action::Annotate => self.annotate(cite),
                    Action::Log | Action::Allow => {}
                }
            }
        }
        for s in 0..self.streams.len() {
            // Only runs long enough that the policy could block them are judged: judging builds
            // a citation and evaluates license expressions, and this runs on every event.
            let min = &self.min_block;
            let hold_license = self.hold_license;
            let scanner = &self.streams[s].1;
            let runs: Vec<Finding> = scanner
                .open_runs()
                // A license text the policy cannot block is not judged while it grows (judging
                // it identifies the license over the whole run, on every event).
                .filter(|r| hold_license || r.kind != MatchKind::LicenseText)
                .filter(|r| {
                    let m = match r.channel {
                        Channel::Prose => min[0],
                        Channel::Code => min[1],
                    };
                    m.is_some_and(|m| r.units >= m)
                })
                .map(|r| scanner.open_finding(&r))
                // Only what would be reported if the run ended now (the rule `scan` applies to
                // every run that ends): a gapped run with no exact piece of t, a renamed list,
                // a run only boilerplate hit, boilerplate itself. Strict holdback keeps an
                // open run's text whatever it is, so a run that qualifies only when it ends is
                // still blocked before any of it is released. Before, open runs went to the
                // policy unjudged: of 400 held-out crate files streamed through the pipeline
                // under the built-in policy, 99 were blocked with no reportable finding —
                // idioms of unrelated crates (docs/proxy.md).
                .filter(|f| {
                    self.setup
                        .indexes
                        .get(f.index)
                        .is_some_and(|ix| crate::matcher::qualifies(&ix.params(), f))
                })
                .collect();
            for f in runs {
                if let Some((cite, v)) = self.judge(s, &f, None)
                    && v.effective == Action::Block
                {
                    self.record(s, &v, &cite);
                    return self.block(s, f.output_start, &cite);
                }
            }
        }
    }

    fn annotate(&mut self, cite: Citation) {
        match api::annotation_event(self.api, &mut self.meta, std::slice::from_ref(&cite)) {
            Some((event, v)) => self.enqueue(Held::synthetic(event, v)),
            None => self.pending_cites.push(cite),
        }
    }

    /// Replaces `[start, end)` of a stream's text in the held events by a placeholder. Held
    /// events are rebuilt from the stream's original text with every redaction so far applied,
    /// so redactions that overlap (a license notice inside a copied run: two findings, two
    /// decisions) or meet inside one event cannot leave text of either behind, whichever
    /// comes first. A redaction's placeholder goes into the first held event it reaches.
    fn redact(&mut self, stream: usize, start: u64, end: u64, cite: &Citation) {
        let api = self.api;
        if self.redactions.len() <= stream {
            self.redactions.resize_with(stream + 1, Redactions::default);
        }
        let text = &self.texts[stream];
        let whole_before = self.redactions[stream].apply(text, 0, text.len(), &mut |_| true);
        for (start, end, placeholder) in
            redaction_pieces(self.streams[stream].0.part, text, start, end, cite)
        {
            self.redactions[stream].add(text, start, end, placeholder);
        }
        let rs = &self.redactions[stream];
        let mut placed = vec![false; rs.len()];
        for h in &mut self.queue {
            if !h
                .spans
                .iter()
                .any(|sp| sp.stream == stream && rs.reaches(sp.start, sp.end))
            {
                continue;
            }
            h.ensure_json();
            let Some(v) = &mut h.json else { continue };
            for sp in h
                .spans
                .iter()
                .filter(|sp| sp.stream == stream && rs.reaches(sp.start, sp.end))
            {
                let new = rs.apply(text, sp.start as usize, sp.end as usize, &mut |i| {
                    !std::mem::replace(&mut placed[i], true)
                });
                api::set_event_text(api, v, self.streams[sp.stream].0, &new);
                h.changed = true;
            }
        }
        // Events that repeat the whole text (Responses `*.done`, `response.completed`) must
        // not carry the original either, nor what an earlier redaction left.
        let whole = rs.apply(text, 0, text.len(), &mut |_| true);
        let keep = placeholders(&self.redactions);
        for h in &mut self.queue {
            // Events with text of their own were rewritten above, if at all (and only
            // those are ever read lazily, so `json` is built for every other one).
            if let (true, Some(v)) = (h.spans.is_empty(), &mut h.json) {
                if !whole_before.is_empty() {
                    h.changed |= replace_strings(v, &[(&whole_before, &whole)], &keep);
                }
                if h.repeats.is_empty() {
                    // Its repeated fields were set when it came (to what was delivered then:
                    // nothing, for a stream no delta had begun); set to a stream's text now,
                    // they would carry text not decided yet, released with the event (found by
                    // the `pipeline` fuzz target). Only what a redaction took out is taken.
                    h.changed |= scrub_redacted(v, &self.texts, &self.redactions);
                } else {
                    h.changed |=
                        scrub_repeats(api, v, &self.streams, &self.texts, &self.redactions);
                }
            }
        }
        if !placed.contains(&true) {
            // Already released (hold = none): say so in the log; nothing can be taken back.
            tracing::warn!(doc = %cite.doc, "a run to redact was already released (hold = none)");
        }
    }

    /// Each stream's offset before which its text is decided: what its scanner no longer
    /// holds (see [`Scanner::stable_offset`]) and, when markers are held, before the
    /// earliest marker that could still be found ([`MarkerScanner::undecided_from`]).
    fn stable_offsets(&mut self) -> smallvec::SmallVec<[u64; 4]> {
        let hold_markers = self.hold_markers;
        self.streams
            .iter()
            .zip(&mut self.markers)
            .map(|((_, sc), m)| {
                let at = sc.stable_offset();
                match hold_markers.then(|| m.undecided_from()).flatten() {
                    Some(m) => at.min(m),
                    None => at,
                }
            })
            .collect()
    }

    /// Ends the response: releases what lies before `at` on `stream` (cutting the event that
    /// straddles it), drops everything after, and appends the provider's own ending.
    fn block(&mut self, stream: usize, at: u64, cite: &Citation) {
        let api = self.api;
        let stable = self.stable_offsets();
        while let Some(h) = self.queue.front() {
            // An event that repeats texts goes with what is dropped: it would repeat the
            // blocked run, or text not decided yet.
            let ok = h.repeats.is_empty()
                && h.spans.iter().all(|sp| {
                    if sp.stream == stream {
                        sp.end <= at
                    } else {
                        sp.end <= stable[sp.stream]
                    }
                });
            if !ok {
                break;
            }
            if let Some(h) = self.queue.pop_front() {
                self.emit(h);
            }
        }
        if let Some(mut h) = self.queue.pop_front() {
            h.ensure_json();
            let part: Vec<HeldSpan> = h
                .spans
                .iter()
                .copied()
                .filter(|sp| sp.stream == stream && sp.start < at)
                .collect();
            if let (false, Some(v)) = (part.is_empty(), &mut h.json) {
                for sp in &h.spans {
                    // What precedes `at`, from the original text with the stream's redactions
                    // applied (their placeholders where they start in it), so an earlier
                    // redaction in this event cannot shift the cut.
                    let keep = if sp.stream == stream {
                        let text = &self.texts[stream];
                        let upto = at.min(sp.end) as usize;
                        match self.redactions.get(stream) {
                            Some(r) => r.apply(text, sp.start as usize, upto, &mut |i| {
                                r.starts_within(i, sp.start, at)
                            }),
                            None => text.get(sp.start as usize..upto).unwrap_or("").to_string(),
                        }
                    } else {
                        String::new()
                    };
                    api::set_event_text(api, v, self.streams[sp.stream].0, &keep);
                }
                h.changed = true;
                self.emit(h);
            }
        }
        self.queue.clear();
        for (event, v) in api::block_events(api, &mut self.meta, cite) {
            self.out.push_back(encode(event, &v.to_string()));
        }
        if let Some(done) = api::done_marker(api) {
            self.out.push_back(encode(None, done));
        }
        self.state = State::Ended;
        self.blocked = true;
    }

    /// Queues an event. Room for one first: relaying, the queue holds the event of the push
    /// being handled and rarely more, and the usual first growth to four slots kept ~600 bytes
    /// of every idle stream unused. Then by half again rather than doubling: strict holdback
    /// keeps a stream's last dozen events or so queued while it waits, and doubling left up to
    /// half the slots (~170 bytes each) unused.
    fn enqueue(&mut self, held: Held) {
        let cap = self.queue.capacity();
        if self.queue.len() == cap {
            self.queue.reserve_exact((cap / 2).max(1));
        }
        self.queue.push_back(held);
    }

    /// Moves every event that is safe to send from the queue to the output.
    fn release(&mut self) {
        if self.state != State::Relaying {
            return;
        }
        let stable = self.stable_offsets();
        while let Some(h) = self.queue.front() {
            let ok = self.setup.hold == Hold::None
                || (h.spans.iter().all(|sp| sp.end <= stable[sp.stream])
                    && h.repeats
                        .iter()
                        .all(|&s| stable[s] >= self.texts[s].len() as u64));
            if !ok {
                break;
            }
            if let Some(h) = self.queue.pop_front() {
                self.release_one(h);
            }
        }
    }

    /// Sends a held event whose text is decided. What it repeats is the delivered text as it
    /// stands now, complete.
    fn release_one(&mut self, mut h: Held) {
        if let (false, Some(v)) = (h.repeats.is_empty(), &mut h.json) {
            h.changed |= scrub_repeats(self.api, v, &self.streams, &self.texts, &self.redactions);
        }
        self.emit(h);
    }
}

/// Quotes a response may open a stream each for (Anthropic citations, [`Part::Quote`]); a
/// stream is a scanner over every index (~1.3 KB made), so a response citing without end is
/// bounded.
pub const MAX_QUOTE_STREAMS: u64 = 64;

impl ScanSetup {
    /// How a stream of `part` is read: as the request says for the answer's text
    /// (`answer_kind`), else as its part says.
    fn kind_of(&self, part: Part) -> TextKind {
        match (part, self.answer_kind) {
            (Part::Text, Some(k)) => k,
            _ => text_kind(part),
        }
    }
}

/// How a stream's text is read: tool-call arguments as the JSON they are (their string values
/// each as the text it holds), a code interpreter's code as Python, everything else as
/// Markdown.
fn text_kind(part: Part) -> TextKind {
    match part {
        Part::ToolArgs => TextKind::ToolArgs,
        Part::Code => TextKind::Code(crate::normalize::Lang::SCRIPT),
        Part::Patch => TextKind::Patch(crate::normalize::Lang::C_LIKE),
        Part::Text
        | Part::Thinking
        | Part::Summary
        | Part::Refusal
        | Part::Quote
        | Part::Transcript => TextKind::Markdown,
    }
}

/// What redacting `[start, end)` of a stream's text cuts, each range with its placeholder. In
/// tool-call arguments a run may span several JSON strings (and what lies between them) and a
/// marker may start inside an escape: only string contents are cut, each piece widened to
/// whole escapes and given the placeholder written as JSON string contents, so the arguments
/// stay valid JSON. Free-form arguments (not JSON) are cut as text.
fn redaction_pieces(
    part: Part,
    text: &str,
    start: u64,
    end: u64,
    cite: &Citation,
) -> Vec<(u64, u64, String)> {
    if part != Part::ToolArgs || !crate::normalize::is_json_arguments(text) {
        return vec![(start, end, cite.placeholder())];
    }
    let placeholder = crate::normalize::escape_contents(&cite.placeholder());
    crate::normalize::string_contents_within(text, start, end)
        .into_iter()
        .map(|(s, e)| (s, e, placeholder.clone()))
        .collect()
}

/// One stream's redactions: disjoint ranges of its original text, in order, each with the
/// placeholder that replaces it. Ranges that overlap or touch are one: a notice inside a copied
/// run is cut out with the run, under the placeholder of the longer of the two.
#[derive(Debug, Default)]
struct Redactions(Vec<(u64, u64, String)>, Vec<(String, String)>);

impl Redactions {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds `[start, end)` of `text` (nothing if it is empty).
    fn add(&mut self, text: &str, start: u64, end: u64, placeholder: String) {
        if start >= end {
            return;
        }
        if let Some(original) = text.get(start as usize..end as usize) {
            self.1.push((original.to_string(), placeholder.clone()));
            self.1.sort_by_key(|(o, _)| std::cmp::Reverse(o.len()));
        }
        let (mut a, mut b, mut ph, mut longest) = (start, end, placeholder, end - start);
        self.0.retain(|(s, e, p)| {
            if *e < a || *s > b {
                return true;
            }
            if e - s > longest {
                (ph, longest) = (p.clone(), e - s);
            }
            (a, b) = (a.min(*s), b.max(*e));
            false
        });
        let at = self.0.partition_point(|(s, _, _)| *s < a);
        self.0.insert(at, (a, b, ph));
    }

    /// Takes what the redactions cover out of an event that repeats text (Responses' `*.done`,
    /// `response.completed`): the stream's whole text becomes the redacted whole, then every
    /// redacted original left anywhere in it (an upstream whose closing text differs from its
    /// deltas) becomes its placeholder, the longest where several start at one place. `keep`:
    /// the placeholders of every stream, left as they are ([`replace_strings`]).
    fn scrub(&self, v: &mut Value, text: &str, keep: &[&str]) -> bool {
        let whole = self.apply(text, 0, text.len(), &mut |_| true);
        let pairs: Vec<(&str, &str)> = std::iter::once((text, whole.as_str()))
            .chain(self.1.iter().map(|(o, p)| (o.as_str(), p.as_str())))
            .collect();
        replace_strings(v, &pairs, keep)
    }

    /// Every placeholder the redactions wrote.
    fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .map(|(_, _, p)| p.as_str())
            .chain(self.1.iter().map(|(_, p)| p.as_str()))
    }

    /// Whether some redaction overlaps `[start, end)`.
    fn reaches(&self, start: u64, end: u64) -> bool {
        self.0.iter().any(|&(s, e, _)| s < end && e > start)
    }

    /// Whether redaction `i` starts inside `[start, end)`.
    fn starts_within(&self, i: usize, start: u64, end: u64) -> bool {
        self.0
            .get(i)
            .is_some_and(|&(s, _, _)| (start..end).contains(&s))
    }

    /// `text[from..to]` with every redaction cut out; a redaction's placeholder is written
    /// where it is cut when `place(i)` says so. A range that is not on character boundaries
    /// (not expected: findings and markers are) loses the partial character, never keeps it.
    fn apply(
        &self,
        text: &str,
        from: usize,
        to: usize,
        place: &mut dyn FnMut(usize) -> bool,
    ) -> String {
        let to = to.min(text.len());
        let mut out = String::with_capacity(to.saturating_sub(from));
        let mut pos = from;
        for (i, (s, e, ph)) in self.0.iter().enumerate() {
            let (s, e) = ((*s as usize).max(from), (*e as usize).min(to));
            if s >= to {
                break;
            }
            if e <= from || e <= pos && s < pos {
                continue;
            }
            out.push_str(text.get(pos..s.max(pos)).unwrap_or(""));
            if place(i) {
                out.push_str(ph);
            }
            pos = e.max(pos);
        }
        out.push_str(text.get(pos.min(to)..to).unwrap_or(""));
        out
    }
}

/// Makes an event that repeats streams' texts repeat what the client was given: each repeated
/// text field ([`api::for_each_repeated_text`]) becomes its stream's text as delivered — its
/// redactions applied — whatever the upstream put there (a closing text that differs from the
/// deltas was never scanned, and must not carry what they lost); a repeated field of a stream
/// no delta carried, never scanned either, is emptied; then [`Redactions::scrub`] for anything
/// else that repeats redacted text. A well-formed stream's closing events are left as they
/// came when nothing was redacted (their texts already equal the deltas').
fn scrub_repeats(
    api: Api,
    v: &mut Value,
    streams: &[(StreamKey, Scanner)],
    texts: &[String],
    redactions: &[Redactions],
) -> bool {
    let mut changed = false;
    api::for_each_repeated_text(api, v, &mut |k, slot| {
        let delivered = match streams.iter().position(|(key, _)| *key == k) {
            Some(s) => match (redactions.get(s), texts.get(s)) {
                (Some(r), Some(t)) if !r.is_empty() => r.apply(t, 0, t.len(), &mut |_| true),
                (_, Some(t)) => t.clone(),
                (_, None) => String::new(),
            },
            None => String::new(),
        };
        if slot.as_str() != Some(delivered.as_str()) {
            *slot = Value::String(delivered);
            changed = true;
        }
    });
    let changed = changed | scrub_redacted(v, texts, redactions);
    if changed {
        api::drop_logprobs(v);
    }
    changed
}

/// [`Redactions::scrub`] for every stream: whatever in `v` repeats text a redaction took out.
fn scrub_redacted(v: &mut Value, texts: &[String], redactions: &[Redactions]) -> bool {
    let keep = placeholders(redactions);
    let mut changed = false;
    for (r, text) in redactions.iter().zip(texts) {
        if !r.is_empty() {
            changed |= r.scrub(v, text, &keep);
        }
    }
    changed
}

/// The placeholders of every stream's redactions: one stream's may hold another's original.
fn placeholders(redactions: &[Redactions]) -> Vec<&str> {
    redactions
        .iter()
        .flat_map(Redactions::placeholders)
        .collect()
}

/// Replaces, in every string inside `v`, each `from` of `pairs` by its `to` in one pass
/// (leftmost match first, the longest of those), leaving every text of `keep` as it is;
/// whether anything changed. One pass, and placeholders kept: a placeholder names what it
/// replaced (a marker's license, `(GPL-3.0-or-later)`), so replacing originals one after
/// another — or again at the next redaction — rewrote the placeholders already written,
/// nesting them ever deeper (found by the `pipeline` fuzz target: 11 KB of upstream events
/// released as 694 MB).
fn replace_strings(v: &mut Value, pairs: &[(&str, &str)], keep: &[&str]) -> bool {
    use memchr::memmem::Finder;
    let mut keep: Vec<&str> = keep.iter().copied().filter(|k| !k.is_empty()).collect();
    keep.sort_unstable();
    keep.dedup();
    // Each text searched for, with what replaces it (none: kept). Searched with `memmem`, not
    // one automaton: a `from` is often a stream's whole text, and building an automaton of it
    // at every redaction made the `pipeline` fuzz target twelve times slower.
    let pats: Vec<(Finder<'_>, Option<&str>)> = pairs
        .iter()
        .filter(|(f, _)| !f.is_empty())
        .map(|&(f, t)| (Finder::new(f), Some(t)))
        .chain(keep.iter().map(|k| (Finder::new(k), None)))
        .collect();
    if !pats.iter().any(|(_, to)| to.is_some()) {
        return false;
    }
    replace_with(v, &pats)
}

fn replace_with(v: &mut Value, pats: &[(memchr::memmem::Finder<'_>, Option<&str>)]) -> bool {
    match v {
        Value::String(s) => match replace_in(s, pats) {
            Some(out) if out != *s => {
                *s = out;
                true
            }
            _ => false,
        },
        Value::Array(a) => a.iter_mut().fold(false, |c, x| replace_with(x, pats) | c),
        Value::Object(o) => o.values_mut().fold(false, |c, x| replace_with(x, pats) | c),
        _ => false,
    }
}

/// `s` with every match replaced (see [`replace_strings`]): left to right, the match that
/// starts first and, of those, the longest; nothing matched inside a match. `None` when no
/// text to replace occurs in `s`.
fn replace_in(s: &str, pats: &[(memchr::memmem::Finder<'_>, Option<&str>)]) -> Option<String> {
    let b = s.as_bytes();
    // The next match of each at or after `pos` (searched again once `pos` passes it).
    let mut next: Vec<Option<usize>> = pats.iter().map(|(f, _)| f.find(b)).collect();
    if !pats
        .iter()
        .zip(&next)
        .any(|((_, to), m)| to.is_some() && m.is_some())
    {
        return None;
    }
    let (mut out, mut at, mut pos) = (String::with_capacity(s.len()), 0, 0);
    loop {
        let mut best: Option<(usize, usize, usize)> = None;
        for (i, (f, _)) in pats.iter().enumerate() {
            if next[i].is_some_and(|st| st < pos) {
                next[i] = f.find(&b[pos..]).map(|p| p + pos);
            }
            if let Some(st) = next[i] {
                let len = f.needle().len();
                if best.is_none_or(|(bs, bl, _)| st < bs || (st == bs && len > bl)) {
                    best = Some((st, len, i));
                }
            }
        }
        let Some((st, len, i)) = best else { break };
        if let Some(to) = pats[i].1 {
            out.push_str(&s[at..st]);
            out.push_str(to);
            at = st + len;
        }
        pos = st + len;
    }
    out.push_str(&s[at..]);
    Some(out)
}

/// The citation of a finding and the policy's verdict on it. `text` is the stream's text: a
/// license-text run is named by the license its own text is (unless `known` already says).
fn judge(
    setup: &ScanSetup,
    key: StreamKey,
    f: &Finding,
    text: &str,
    known: Option<&Identification>,
) -> Option<(Citation, Verdict)> {
    let mut r = FindingReport::new(setup.indexes.get(f.index)?, f)?;
    match known {
        Some(id) => r.apply_identification(id),
        None => {
            if let Some(span) = text.get(f.output_start as usize..f.output_end as usize) {
                r.identify_license(span);
            }
        }
    }
    let cite = Citation {
        key_a: key.a,
        kind: finding_kind(f).to_string(),
        corpus: r.corpus,
        doc: r.doc,
        url: r.url,
        license: r.license,
        rights: r.rights.to_string(),
        channel: r.channel.to_string(),
        units: r.units,
        exact_units: r.exact_units,
        aligned_units: r.aligned_units,
        output_start: f.output_start,
        output_end: f.output_end,
        source_start: r.source_start,
        source_end: r.source_end,
        action: String::new(),
        reason: String::new(),
        index_id: r.index_id,
        coverage: r.coverage,
        similarity: (r.similarity < 1.0).then_some(r.similarity),
        marker: None,
    };
    Some(decide(setup, key.part, cite))
}

/// The policy's verdict on `cite`, a citation in text of `part`, written into it. An audio
/// answer's transcript cannot be redacted alone — the audio would still say what the transcript
/// no longer shows — nor a patch, which would no longer apply; so what the policy would redact
/// there is blocked, and the reason says why.
fn decide(setup: &ScanSetup, part: Part, mut cite: Citation) -> (Citation, Verdict) {
    let mut v = setup.policy.decide(&facts(&cite, &setup.scope));
    let why = match part {
        Part::Transcript => "an answer's audio cannot be redacted",
        Part::Patch => "a patch with a redaction in it would no longer apply",
        _ => "",
    };
    if !why.is_empty() && v.effective == Action::Redact {
        v.effective = Action::Block;
        v.reason = format!("{}; blocked instead of redacted: {why}", v.reason);
    }
    cite.action = v.effective.as_str().to_string();
    cite.reason = v.reason.clone();
    (cite, v)
}

/// The citation of a license marker and the policy's verdict on it.
fn judge_marker(setup: &ScanSetup, key: StreamKey, m: Marker) -> (Citation, Verdict) {
    let license = m.expression.clone().unwrap_or_else(|| "NOASSERTION".into());
    let rights = if m.expression.is_some() {
        "licensed"
    } else {
        "copyrighted"
    };
    let cite = Citation {
        key_a: key.a,
        kind: "license-marker".into(),
        corpus: "license-markers".into(),
        doc: match m.kind {
            MarkerKind::SpdxIdentifier => "spdx-identifier",
            MarkerKind::Copyright => "copyright-notice",
            MarkerKind::HeaderPhrase => "license-header",
            MarkerKind::LicenseName => "license-name",
        }
        .into(),
        url: None,
        license,
        rights: rights.into(),
        channel: "code".into(),
        units: 0,
        exact_units: 0,
        aligned_units: 0,
        output_start: m.start,
        output_end: m.end,
        source_start: 0,
        source_end: 0,
        action: String::new(),
        reason: String::new(),
        index_id: String::new(),
        coverage: None,
        similarity: None,
        marker: Some(m),
    };
    decide(setup, key.part, cite)
}

/// Scans a whole (non-streamed) JSON response. Returns the new body if anything had to change,
/// `None` to relay the upstream bytes as they are, and the decisions made.
///
/// Besides one answer, the body may be a list of stored answers (`{"object": "list", "data":
/// [...]}`: `GET /v1/chat/completions`), or of conversation items, or one item (`GET
/// /v1/conversations/{id}/items[/{item}]`; see [`api::Stored`]), or batch results (JSON
/// Lines, one answer a line: `GET /v1/messages/batches/{id}/results`): each answer or
/// model-written item is scanned and acted on alone, as if fetched by itself.
pub fn scan_response(api: Api, body: &[u8], setup: &ScanSetup) -> (Option<Bytes>, Vec<Decision>) {
    let parsed = serde_json::from_slice::<Value>(body);
    if parsed.as_ref().map_or(true, api::batch_result) {
        return scan_lines(body, setup);
    }
    let Ok(mut v) = parsed else {
        return (None, Vec::new());
    };
    let mut decisions = Vec::new();
    let changed = match api::Stored::of(api, &v) {
        api::Stored::Answer => scan_value(api, &mut v, setup, "", &mut decisions),
        api::Stored::List => {
            let mut changed = false;
            for (i, e) in v
                .get_mut("data")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let prefix = format!("data[{i}]/");
                changed |= match api::Stored::of(api, e) {
                    api::Stored::Item => scan_item(e, setup, &prefix, &mut decisions),
                    _ => scan_value(api, e, setup, &prefix, &mut decisions),
                };
            }
            changed
        }
        api::Stored::Item => scan_item(&mut v, setup, "", &mut decisions),
        api::Stored::Other => false,
    };
    let body = changed
        .then(|| serde_json::to_vec(&v).ok().map(Bytes::from))
        .flatten();
    (body, decisions)
}

/// Batch results, JSON Lines: each line one request's result, its answer scanned and acted
/// on as if it had come alone ([`api::batch_answer`]: Anthropic's `result.message`, OpenAI's
/// `response.body`), decisions naming their stream after `line[i]/`. A line that changed is
/// written anew, the others kept byte for byte — a line that is not JSON too (one broken line
/// must not take the scan off every other; a body that is not JSON at all goes through here
/// unchanged).
fn scan_lines(body: &[u8], setup: &ScanSetup) -> (Option<Bytes>, Vec<Decision>) {
    let mut decisions = Vec::new();
    let mut lines: Vec<(&[u8], Option<Vec<u8>>)> = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        if text.iter().all(u8::is_ascii_whitespace) {
            lines.push((line, None));
            continue;
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(text) else {
            lines.push((line, None));
            continue;
        };
        let prefix = format!("line[{i}]/");
        // Each answer is judged as one of its own API (a policy's `route`).
        let changed = api::batch_answer(&mut v).is_some_and(|(api, answer)| {
            let mut line_setup = setup.clone();
            line_setup.scope.route = Some(api.name().to_string());
            // The line's request is not in the output: its answer is read as its API says.
            line_setup.answer_kind = None;
            scan_value(api, answer, &line_setup, &prefix, &mut decisions)
        });
        let rewritten = changed.then(|| serde_json::to_vec(&v).ok()).flatten();
        lines.push((line, rewritten));
    }
    if lines.iter().all(|(_, r)| r.is_none()) {
        return (None, decisions);
    }
    let mut out = Vec::with_capacity(body.len());
    for (i, (line, rewritten)) in lines.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(rewritten.as_deref().unwrap_or(line));
    }
    (Some(Bytes::from(out)), decisions)
}

/// A Responses item stored on its own (a conversation's): scanned as the only output of a
/// response, what the scan marks on that response moved onto the item. Items the caller
/// wrote (user, system and developer messages; tool outputs) are its own text, not scanned.
fn scan_item(item: &mut Value, setup: &ScanSetup, prefix: &str, out: &mut Vec<Decision>) -> bool {
    if !api::model_wrote(item) {
        return false;
    }
    let mut wrapped = serde_json::json!({ "output": [item.take()] });
    let changed = scan_value(Api::Responses, &mut wrapped, setup, prefix, out);
    *item = wrapped["output"][0].take();
    if let Some(mark) = wrapped.get_mut("verbatim") {
        if mark.get("action").and_then(Value::as_str) == Some("block") {
            item["status"] = serde_json::json!("incomplete");
        }
        item["verbatim"] = mark.take();
    }
    changed
}

/// Scans one answer in place ([`scan_response`]); true if it changed. Decisions name their
/// stream after `prefix`.
fn scan_value(
    api: Api,
    v: &mut Value,
    setup: &ScanSetup,
    prefix: &str,
    decisions: &mut Vec<Decision>,
) -> bool {
    let mut cites = Vec::new();
    let mut block: Option<Citation> = None;
    let mut edits: Vec<(StreamKey, String)> = Vec::new();
    for piece in api::response_pieces(api, v) {
        let tool = piece.key.part == Part::ToolArgs;
        let mut s = Scanner::new(
            &setup.indexes,
            piece.kind.unwrap_or_else(|| setup.kind_of(piece.key.part)),
        );
        s.set_exemptions(Arc::clone(&setup.exempt));
        // Whole arguments: a file name anywhere in them names the language (serialised with
        // sorted keys, as a `tool_use` input is here, `content` comes before `path`).
        if let Some(h) = tool
            .then(|| crate::normalize::tool_args_hint(&piece.text))
            .flatten()
        {
            s.set_tool_args_hint(h);
        }
        s.push_str(&piece.text);
        s.finish();
        // Index findings and license markers, judged, acted on from the end backwards so
        // earlier offsets stay valid.
        let mut judged: Vec<(Citation, Verdict)> =
            crate::license::with_regions(s.take_findings(), &setup.indexes, &piece.text)
                .iter()
                .filter_map(|(f, id)| judge(setup, piece.key, f, &piece.text, id.as_ref()))
                .collect();
        let markers = if tool {
            crate::license::markers::scan_json(&piece.text)
        } else {
            crate::license::markers::scan(&piece.text)
        };
        judged.extend(
            markers
                .into_iter()
                .map(|m| judge_marker(setup, piece.key, m)),
        );
        judged.sort_by_key(|(c, _)| c.output_start);
        // Where the text is cut (the earliest block), and what is redacted before it: ranges
        // of the original text, applied together at the end, so findings that overlap (a
        // notice inside a copied run) cannot leave text of either behind.
        let mut cut: Option<usize> = None;
        let mut redactions = Redactions::default();
        for (cite, v) in judged {
            let action = v.effective;
            let span = piece
                .text
                .get(cite.output_start as usize..cite.output_end as usize)
                .unwrap_or("");
            decisions.push(Decision::new(
                setup,
                &v,
                &cite,
                format!(
                    "{prefix}{}:{}:{:?}",
                    piece.key.a, piece.key.b, piece.key.part
                ),
                span,
            ));
            match action {
                Action::Block => {
                    // Keep what precedes the run; later findings are moot.
                    if cut.is_none() {
                        cut = Some(cite.output_start as usize);
                        block = Some(cite);
                    }
                }
                Action::Redact => {
                    for (start, end, placeholder) in redaction_pieces(
                        piece.key.part,
                        &piece.text,
                        cite.output_start,
                        cite.output_end,
                        &cite,
                    ) {
                        redactions.add(&piece.text, start, end, placeholder);
                    }
                    cites.push(cite);
                }
                Action::Annotate => cites.push(cite),
                Action::Log | Action::Allow => {}
            }
        }
        let changed = cut.is_some() || !redactions.is_empty();
        let text = redactions.apply(&piece.text, 0, cut.unwrap_or(piece.text.len()), &mut |_| {
            true
        });
        if changed && tool && cut.is_some() && crate::normalize::is_json_arguments(&piece.text) {
            // JSON arguments cannot be cut short without breaking them: blank them. (Redacted
            // ones stay valid JSON: see `redaction_pieces`; free-form input is cut as text.)
            edits.push((piece.key, String::new()));
        } else if changed {
            edits.push((piece.key, text));
        }
    }
    if edits.is_empty() && cites.is_empty() && block.is_none() {
        return false;
    }
    // A cut or redacted text's tokens must not come back in its log probabilities.
    if !edits.is_empty() || block.is_some() {
        api::drop_logprobs(v);
    }
    for (k, t) in edits {
        api::set_response_text(api, v, k, &t);
    }
    if let Some(b) = &block {
        api::block_value(api, v, b);
    } else {
        api::annotate_value(api, v, &cites, false);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Ranges on character boundaries of `text`, from pairs of character indexes.
    fn ranges(text: &str, pairs: &[(usize, usize)]) -> Vec<(u64, u64)> {
        let bounds: Vec<usize> = text
            .char_indices()
            .map(|(i, _)| i)
            .chain([text.len()])
            .collect();
        pairs
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a % bounds.len(), b % bounds.len());
                (bounds[a.min(b)] as u64, bounds[a.max(b)] as u64)
            })
            .collect()
    }

    /// [`replace_in`] the slow way: at each position, the longest text that starts there.
    fn replace_naive(s: &str, pats: &[(&str, Option<&str>)]) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < s.len() {
            // `max_by_key` takes the last of equals: reversed, the first listed.
            let m = pats
                .iter()
                .rev()
                .filter(|(p, _)| !p.is_empty() && s[i..].starts_with(p))
                .max_by_key(|(p, _)| p.len());
            match m {
                Some((p, to)) => {
                    out.push_str(to.unwrap_or(p));
                    i += p.len();
                }
                None => {
                    let c = s[i..].chars().next().unwrap();
                    out.push(c);
                    i += c.len_utf8();
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn one_pass_replacement_is_leftmost_longest_and_keeps_what_it_must(
            s in "[ab\u{e9}\\[\\]]{0,40}",
            froms in proptest::collection::vec("[ab\u{e9}]{1,4}", 1..4),
            keeps in proptest::collection::vec("\\[[ab\u{e9}]{0,3}\\]", 0..3),
        ) {
            let pats: Vec<(&str, Option<&str>)> = froms
                .iter()
                .map(|f| (f.as_str(), Some("[x]")))
                .chain(keeps.iter().map(|k| (k.as_str(), None)))
                .collect();
            let finders: Vec<(memchr::memmem::Finder<'_>, Option<&str>)> = pats
                .iter()
                .map(|&(p, to)| (memchr::memmem::Finder::new(p), to))
                .collect();
            let got = replace_in(&s, &finders).unwrap_or_else(|| s.clone());
            prop_assert_eq!(got, replace_naive(&s, &pats));
        }

        /// Whatever order overlapping, nested or touching redactions arrive in, and wherever
        /// the text is read from: no byte any of them covers survives, every byte none covers
        /// does, and each group of ranges that overlap or touch leaves one placeholder.
        #[test]
        fn redactions_cut_every_covered_byte_once(
            text in "[a-zé€ 😀]{0,40}",
            pairs in proptest::collection::vec((0usize..64, 0usize..64), 0..6),
            window in (0usize..64, 0usize..64),
        ) {
            let rs = ranges(&text, &pairs);
            let mut r = Redactions::default();
            for &(a, b) in &rs {
                r.add(&text, a, b, "[R]".to_string());
            }
            let w = ranges(&text, &[window])[0];
            let (from, to) = (w.0 as usize, w.1 as usize);
            let got = r.apply(&text, from, to, &mut |_| true);
            // The reference: groups of ranges that overlap or touch, merged.
            let mut sorted: Vec<(u64, u64)> = rs.iter().copied().filter(|(a, b)| a < b).collect();
            sorted.sort();
            let mut groups: Vec<(usize, usize)> = Vec::new();
            for (a, b) in sorted {
                match groups.last_mut() {
                    Some(g) if a as usize <= g.1 => g.1 = g.1.max(b as usize),
                    _ => groups.push((a as usize, b as usize)),
                }
            }
            let mut want = String::new();
            let mut pos = from;
            for (a, b) in groups {
                // Only groups that overlap the window show in it (an empty window has none).
                if !(a < to && b > from && from < to) {
                    continue;
                }
                let (a, b) = (a.max(from), b.min(to));
                want.push_str(&text[pos..a.max(pos)]);
                want.push_str("[R]");
                pos = b.max(pos);
            }
            want.push_str(&text[pos.min(to)..to]);
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn overlapping_redactions_keep_the_longer_ones_placeholder() {
        let text = "0123456789abcdefghij";
        let mut r = Redactions::default();
        r.add(text, 4, 6, "[notice]".into());
        r.add(text, 2, 15, "[run]".into());
        r.add(text, 18, 19, "[other]".into());
        assert_eq!(
            r.apply(text, 0, text.len(), &mut |_| true),
            "01[run]fgh[other]j"
        );
        // Read from inside the first: the rest of it is still cut, its placeholder where
        // `place` allows.
        assert_eq!(r.apply(text, 5, 17, &mut |_| false), "fg");
        assert_eq!(r.apply(text, 5, 17, &mut |i| i == 0), "[run]fg");
    }

    #[test]
    fn scrubbing_again_leaves_placeholders_that_name_what_they_replaced_as_they_are() {
        // A marker's placeholder names the license it cut, so it holds the original (and more
        // than once here): scrubbing an event that repeats the text, once per redaction, must
        // not replace the original inside placeholders already written. It did, and each
        // redaction nested them deeper (the `pipeline` fuzz target: 11 KB of events released
        // as 694 MB).
        let text = "see GPL-3.0 here and GPL-3.0 there";
        let mut r = Redactions::default();
        let ph = "[cut GPL-3.0: GPL-3.0-or-later]";
        r.add(text, 4, 11, ph.into());
        let mut v = json!({"text": text, "other": ["GPL-3.0", "x"]});
        assert!(r.scrub(&mut v, text, &[ph]));
        let once = v.clone();
        assert_eq!(
            once,
            json!({
                "text": format!("see {ph} here and GPL-3.0 there"),
                "other": [ph, "x"],
            })
        );
        r.add(text, 21, 28, ph.into());
        let mut again = once.clone();
        r.scrub(&mut again, text, &[ph]);
        assert_eq!(again["other"], json!([ph, "x"]));
        // The text written at the first redaction is not the whole text any more; what it
        // still holds of an original is cut, and no placeholder is touched.
        let t = again["text"].as_str().unwrap();
        assert_eq!(t, format!("see {ph} here and {ph} there"), "{t}");
        for _ in 0..5 {
            let before = again.clone();
            r.scrub(&mut again, text, &[ph]);
            assert_eq!(again, before, "scrubbing is not idempotent");
        }

        // One stream's placeholder may hold another stream's original: each stream's pass
        // leaves every stream's placeholders as they are.
        let texts = ["see GPL-3.0 x".to_string(), "MIT here".to_string()];
        let mut rs = [Redactions::default(), Redactions::default()];
        rs[0].add(&texts[0], 4, 11, "[cut (MIT)]".into());
        rs[1].add(&texts[1], 0, 3, "[cut MIT]".into());
        let mut v = json!({"a": texts[0], "b": texts[1]});
        for _ in 0..3 {
            scrub_redacted(&mut v, &texts, &rs);
            assert_eq!(v, json!({"a": "see [cut (MIT)] x", "b": "[cut MIT] here"}));
        }
    }
}
