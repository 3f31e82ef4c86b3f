//! Provider adapters: which API a request is, where its events and responses carry text, and
//! how each provider's own wire format says "stopped by a content filter" or carries a citation.
//!
//! Text lives in *streams* (one per choice, content block, output item or tool call), each
//! scanned on its own. Unknown fields and event types are never dropped: the adapters read
//! JSON, and the pipeline relays the original bytes of any event it does not change.

use serde_json::{Map, Value, json};

use crate::normalize::TextKind;

/// The APIs whose responses are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions`, and `GET /v1/chat/completions/{id}` (a stored
    /// completion fetched later: the same object).
    ChatCompletions,
    /// OpenAI legacy `POST /v1/completions`.
    Completions,
    /// OpenAI `POST /v1/responses`, and `GET /v1/responses/{id}` (a response fetched later —
    /// how a `background: true` request gets its answer —, whole or `?stream=true`: the same
    /// object and events).
    Responses,
    /// Anthropic `POST /v1/messages`.
    Messages,
}

impl Api {
    /// The scanned API for a request, if any (everything else passes through).
    pub fn route(method: &http::Method, path: &str) -> Option<Api> {
        let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
        if method == http::Method::GET {
            return Api::fetched(path);
        }
        if method != http::Method::POST {
            return None;
        }
        if let Some(api) = Api::returned(path) {
            return Some(api);
        }
        // Accept a deployment prefix before /v1 (e.g. /openai/v1/chat/completions), and Azure
        // OpenAI's deployment paths (`/openai/deployments/{name}/chat/completions`).
        let deployment = |c: &str| {
            path.strip_suffix(c)
                .and_then(|p| p.strip_suffix('/'))
                .and_then(|p| p.rsplit_once('/'))
                .is_some_and(|(d, name)| !name.is_empty() && d.ends_with("/openai/deployments"))
        };
        // Mistral's fill-in-the-middle code completion answers as chat completions do.
        if at(path, "chat/completions")
            || deployment("chat/completions")
            || at(path, "fim/completions")
        {
            Some(Api::ChatCompletions)
        } else if at(path, "completions")
            || deployment("completions")
            // DeepSeek's fill-in-the-middle (base URL `https://api.deepseek.com/beta`).
            || path.strip_suffix("/beta/completions").is_some_and(str::is_empty)
        {
            Some(Api::Completions)
        } else if at(path, "responses") {
            Some(Api::Responses)
        } else if at(path, "messages") {
            Some(Api::Messages)
        } else {
            None
        }
    }

    /// Stored model text fetched after it was made (a blocked answer stays stored at the
    /// provider, so each of these would give it back): `GET …/v1/responses/{id}` and
    /// `GET …/v1/chat/completions/{id}` (one answer); `GET …/v1/chat/completions` (a list of
    /// stored answers); `GET …/v1/conversations/{id}/items[/{item}]` (a conversation's
    /// items, the model's among them); `GET …/v1/responses/{id}/input_items` (a chained
    /// response's input holds the earlier turns' answers). What [`Stored`] the body is says
    /// how it is read. Not `…/chat/completions/{id}/messages`: the request's own messages.
    fn fetched(path: &str) -> Option<Api> {
        if at(path, "chat/completions") {
            return Some(Api::ChatCompletions);
        }
        // A file's content may be a batch's output, whose lines name their own API
        // ([`batch_answer`]); the route is read as chat completions, the commonest, only to
        // be read at all (the server looks at the first line first, [`file_content`]).
        if file_content(path) {
            return Some(Api::ChatCompletions);
        }
        // An Anthropic message batch's results: JSON Lines of whole answers.
        if let Some(batch) = path.strip_suffix("/results")
            && let Some((c, id)) = batch.rsplit_once('/')
            && !id.is_empty()
            && at(c, "messages/batches")
        {
            return Some(Api::Messages);
        }
        let (collection, id) = path.rsplit_once('/')?;
        if id.is_empty() {
            return None;
        }
        if at(collection, "responses") {
            Some(Api::Responses)
        } else if at(collection, "chat/completions") {
            Some(Api::ChatCompletions)
        } else if id == "input_items"
            && collection
                .rsplit_once('/')
                .is_some_and(|(c, rid)| !rid.is_empty() && at(c, "responses"))
        {
            // A response's input items: with `previous_response_id`, the earlier turns'
            // answers too (stored whole, a blocked one with them).
            Some(Api::Responses)
        } else if (id == "items" && conversation(collection))
            || collection
                .rsplit_once('/')
                .is_some_and(|(c, items)| items == "items" && conversation(c))
        {
            // A conversation's items, or one of them.
            Some(Api::Responses)
        } else {
            None
        }
    }

    /// POSTs that are not requests for an answer but return a stored one:
    /// `…/v1/responses/{id}/cancel` (a background response, with the output it has so far)
    /// and `…/v1/chat/completions/{id}` (a stored answer's metadata updated; the answer
    /// comes back).
    fn returned(path: &str) -> Option<Api> {
        let (rest, last) = path.rsplit_once('/')?;
        let (collection, id) = rest.rsplit_once('/')?;
        if last == "cancel" && !id.is_empty() && at(collection, "responses") {
            Some(Api::Responses)
        } else if !last.is_empty() && at(rest, "chat/completions") {
            Some(Api::ChatCompletions)
        } else {
            None
        }
    }

    /// Whether a request fetching an answer asks for it streamed (`?stream=true`).
    pub fn query_streams(path_and_query: &str) -> bool {
        path_and_query
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv == "stream=true"))
    }

    pub fn is_anthropic(self) -> bool {
        self == Api::Messages
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat-completions",
            Api::Completions => "completions",
            Api::Responses => "responses",
            Api::Messages => "messages",
        }
    }
}

/// Whether `path` (without its query or a trailing slash) is the collection `c` of an API:
/// `…/v1/{c}` (any prefix before `/v1`, a gateway's or Azure's `/openai/v1`), `/{c}` (a base
/// URL that ends in `/v1`), or Azure OpenAI's `…/openai/{c}` (its Responses API,
/// `/openai/responses?api-version=…`).
fn at(path: &str, c: &str) -> bool {
    path.strip_suffix(c)
        .and_then(|p| p.strip_suffix('/'))
        .is_some_and(|p| p.is_empty() || p.ends_with("/v1") || p.ends_with("/openai"))
}

/// Whether `path` (without a trailing slash) is one conversation: `…/v1/conversations/{id}`.
fn conversation(path: &str) -> bool {
    path.rsplit_once('/')
        .is_some_and(|(c, id)| !id.is_empty() && at(c, "conversations"))
}

/// What a whole JSON body holds, for [`crate::proxy::pipeline::scan_response`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// One answer of its API (a chat completion, a response, a message).
    Answer,
    /// `{"object": "list", "data": [...]}`: stored answers, or a conversation's items.
    List,
    /// One Responses item on its own (a conversation's: it has a `type`, is no response).
    Item,
    /// Anything else (an error, a deletion receipt): nothing to scan.
    Other,
}

impl Stored {
    pub fn of(api: Api, v: &Value) -> Stored {
        let object = v.get("object").and_then(Value::as_str);
        if object == Some("list") && v.get("data").is_some_and(Value::is_array) {
            Stored::List
        } else if api == Api::Responses
            && v.get("output").is_none()
            && object != Some("response")
            && v.get("type").is_some_and(Value::is_string)
        {
            Stored::Item
        } else if v.is_object() {
            Stored::Answer
        } else {
            Stored::Other
        }
    }
}

/// Where an Anthropic message batch object's route starts, for [`point_results_here`]: the
/// part of `path` before `/v1/messages/batches` when the path is the batches collection, one
/// batch, or its cancel (not its results, which are scanned; [`Api::route`]).
pub fn batches_prefix(path: &str) -> Option<&str> {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    let at = path.find("/v1/messages/batches")?;
    let rest = &path[at + "/v1/messages/batches".len()..];
    let ok = match rest.strip_prefix('/') {
        None => rest.is_empty(),
        Some(r) => match r.split_once('/') {
            None => !r.is_empty(),
            Some((id, "cancel")) => !id.is_empty(),
            Some(_) => false,
        },
    };
    ok.then(|| &path[..at])
}

/// A message batch's `results_url` points at the provider (`https://api.anthropic.com/v1/
/// messages/batches/{id}/results`), and the official SDKs fetch it as given — straight to the
/// provider, round the proxy and its scan of the results. Every `results_url` in a batch
/// object, or in a list of them, whose path is a batch's results is made to point at `here`
/// (the origin and path prefix the client reached Verbatim by) instead; true if one changed.
pub fn point_results_here(v: &mut Value, here: &str) -> bool {
    let one = |b: &mut Value| {
        let Some(url) = b.get("results_url").and_then(Value::as_str) else {
            return false;
        };
        let Some(at) = url.find("/v1/messages/batches/") else {
            return false;
        };
        let path = &url[at..];
        if Api::route(&http::Method::GET, path) != Some(Api::Messages) {
            return false;
        }
        b["results_url"] = Value::String(format!("{here}{path}"));
        true
    };
    match v.get_mut("data").and_then(Value::as_array_mut) {
        Some(list) => list.iter_mut().fold(false, |acc, b| one(b) | acc),
        None => one(v),
    }
}

/// Whether `v` is one line of batch results: an Anthropic message batch's (`custom_id` and
/// `result`) or OpenAI's batch output (`custom_id` and `response`; a batch's input file has
/// `custom_id` and `body`, no `response`).
pub fn batch_result(v: &Value) -> bool {
    v.get("custom_id").is_some() && (v.get("result").is_some() || v.get("response").is_some())
}

/// The answer in one line of batch results, and its API: Anthropic's `result.message` (a
/// Messages answer); OpenAI's `response.body` (a chat completion, response or completion, by
/// its `object`). None for a request that errored, was cancelled or expired, or for an
/// endpoint without text (embeddings).
pub fn batch_answer(v: &mut Value) -> Option<(Api, &mut Value)> {
    if v.pointer("/result/message").is_some_and(Value::is_object) {
        return Some((Api::Messages, v.pointer_mut("/result/message")?));
    }
    let body = v.pointer_mut("/response/body")?;
    let api = match body.get("object").and_then(Value::as_str)? {
        "chat.completion" => Api::ChatCompletions,
        "response" => Api::Responses,
        "text_completion" => Api::Completions,
        _ => return None,
    };
    Some((api, body))
}

/// Whether `path` is a file's content, `…/v1/files/{id}/content`: OpenAI serves a batch's
/// output there (JSON Lines of whole answers), and every other kind of file too, so the
/// proxy looks at the first line before it reads such a body ([`batch_result`]).
pub fn file_content(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path).trim_end_matches('/');
    path.strip_suffix("/content")
        .and_then(|f| f.rsplit_once('/'))
        .is_some_and(|(c, id)| !id.is_empty() && at(c, "files"))
}

/// Whether a Responses item is the model's: an assistant message, or an item a response puts
/// out (a tool call, reasoning); not a message of another role, nor a tool's output or a
/// call's approval, which the caller sent.
pub fn model_wrote(item: &Value) -> bool {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "message" {
        return item.get("role").and_then(Value::as_str) == Some("assistant");
    }
    !(kind.ends_with("_output") || kind.ends_with("_response") || kind == "item_reference")
}

/// What kind of text a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Text,
    /// Tool-call arguments / tool-use input JSON (or a custom tool's free-form input).
    ToolArgs,
    Thinking,
    /// A reasoning summary (Responses), kept apart from the reasoning text of the same item.
    Summary,
    /// Code a hosted code interpreter runs (Responses' `code_interpreter_call`): Python.
    Code,
    /// A refusal the model wrote instead of an answer (Chat Completions' `refusal`, Responses'
    /// `refusal` content parts): model text like any other.
    Refusal,
    /// A passage the provider quotes from a source the answer cites (Anthropic's citations'
    /// `cited_text`: from the caller's documents, search results, or web pages its web search
    /// fetched): it reaches the reader beside the answer, so it is scanned like it. Each quote
    /// is a stream of its own: in a whole response `b` is the citation's index in its block;
    /// streamed, each arrives whole in its `citations_delta`, and the pipeline numbers it and
    /// ends its stream with the event ([`event_pieces`] gives `b` = 0).
    Quote,
    /// The transcript of an answer spoken as audio (Chat Completions' audio output:
    /// `delta.audio.transcript`, `message.audio.transcript`): what the audio says, where a
    /// recited lyric or passage shows. The audio itself cannot be read, so a finding the
    /// policy would redact blocks instead (the pipeline's `judged_for`), and a blocked answer
    /// loses its audio.
    Transcript,
    /// A file the model writes as a diff through the Responses `apply_patch` tool
    /// (`apply_patch_call` items: `operation.diff`, in the language of `operation.path`). The
    /// item arrives whole in `response.output_item.done`; read as [`TextKind::Patch`].
    Patch,
}

/// Identifies one text stream within a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Choice index (OpenAI), content block index (Anthropic), output index (Responses).
    pub a: u64,
    /// Tool call index within a choice, content index within an output item.
    pub b: u64,
    pub part: Part,
}

/// A piece of text an event or response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub key: StreamKey,
    pub text: String,
    /// How the text is read, where its part alone does not say (a patch: in its file's
    /// language).
    pub kind: Option<TextKind>,
}

/// How an `apply_patch_call` item's diff is read: a patch in the language of its path.
fn patch_kind(item: &Value) -> TextKind {
    let path = item
        .pointer("/operation/path")
        .and_then(Value::as_str)
        .unwrap_or("");
    match TextKind::from_path(std::path::Path::new(path)) {
        TextKind::Code(l) => TextKind::Patch(l),
        _ => TextKind::Patch(crate::normalize::Lang::C_LIKE),
    }
}

/// An `apply_patch_call` item's diff.
fn patch_diff(item: &Value) -> Option<&str> {
    (item.get("type").and_then(Value::as_str) == Some("apply_patch_call"))
        .then(|| item.pointer("/operation/diff").and_then(Value::as_str))
        .flatten()
}

fn u(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn key(a: u64, b: u64, part: Part) -> StreamKey {
    StreamKey { a, b, part }
}

/// A Responses shell call's commands (`action.commands`), each a stream of code.
fn shell_commands_mut(item: &mut Value) -> impl Iterator<Item = &mut Value> {
    item.pointer_mut("/action/commands")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter(|c| c.is_string())
}

/// Where the texts of `part` (text or reasoning) are in a Chat Completions content given as a
/// list of parts — as Mistral's reasoning models answer through its OpenAI-compatible API:
/// `[{"type": "thinking", "thinking": [{"type": "text", "text": …}]}, {"type": "text", "text": …}]`
/// — as JSON pointers into `content`, in order. Such content was not read at all before
/// 2026-12-07 (only a string was).
fn content_pointers(content: &Value, part: Part) -> Vec<String> {
    let mut out = Vec::new();
    for (j, p) in content.as_array().into_iter().flatten().enumerate() {
        match (p.get("type").and_then(Value::as_str), part) {
            (Some("text"), Part::Text) if p.get("text").is_some_and(Value::is_string) => {
                out.push(format!("/{j}/text"));
            }
            (Some("thinking"), Part::Thinking) => match p.get("thinking") {
                Some(Value::String(_)) => out.push(format!("/{j}/thinking")),
                Some(Value::Array(sub)) => {
                    for (k, x) in sub.iter().enumerate() {
                        if x.get("text").is_some_and(Value::is_string) {
                            out.push(format!("/{j}/thinking/{k}/text"));
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    out
}

/// The texts of `part` in a content given as parts ([`content_pointers`]), one after the other.
fn content_parts_text(content: &Value, part: Part) -> Option<String> {
    let ptrs = content_pointers(content, part);
    (!ptrs.is_empty()).then(|| {
        ptrs.iter()
            .filter_map(|p| content.pointer(p).and_then(Value::as_str))
            .collect()
    })
}

/// Writes `text` as the texts of `part` in a content given as parts: all of it in the first,
/// the others emptied. False if the content has no such part.
fn set_content_parts_text(content: &mut Value, part: Part, text: &str) -> bool {
    let ptrs = content_pointers(content, part);
    for (n, p) in ptrs.iter().enumerate() {
        if let Some(slot) = content.pointer_mut(p) {
            *slot = Value::String(if n == 0 {
                text.to_string()
            } else {
                String::new()
            });
        }
    }
    !ptrs.is_empty()
}

/// What a Chat Completions tool call's model wrote: a function call's `arguments`, or a custom
/// tool call's free-form `input` (`{"type": "custom", "custom": {"name", "input"}}`).
fn call_text(tc: &Value) -> Option<&str> {
    tc.pointer("/function/arguments")
        .or_else(|| tc.pointer("/custom/input"))
        .and_then(Value::as_str)
}

/// The field [`call_text`] reads, for rewriting.
fn call_text_mut(tc: &mut Value) -> Option<&mut Value> {
    if tc.pointer("/function/arguments").is_some() {
        tc.pointer_mut("/function/arguments")
    } else {
        tc.pointer_mut("/custom/input")
    }
}

/// The `b` of the deprecated single function call's arguments (Chat Completions
/// `function_call.arguments`, answering a request's `functions`; still served by OpenAI and by
/// OpenAI-compatible servers), beside the tool calls' (`b` = their index).
pub const LEGACY_FUNCTION_CALL: u64 = u64::MAX;

/// Text pieces of one streamed event (already parsed from its `data`).
pub fn event_pieces(api: Api, v: &Value) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut push = |k: StreamKey, t: Option<&str>| {
        if let Some(t) = t.filter(|t| !t.is_empty()) {
            out.push(Piece {
                key: k,
                text: t.to_string(),
                kind: None,
            });
        }
    };
    match api {
        Api::ChatCompletions => {
            for c in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = u(c, "index");
                let Some(d) = c.get("delta") else { continue };
                push(
                    key(i, 0, Part::Text),
                    d.get("content").and_then(Value::as_str),
                );
                push(
                    key(i, 0, Part::Thinking),
                    d.get("reasoning_content").and_then(Value::as_str),
                );
                if let Some(content) = d.get("content").filter(|c| c.is_array()) {
                    for part in [Part::Thinking, Part::Text] {
                        push(
                            key(i, 0, part),
                            content_parts_text(content, part).as_deref(),
                        );
                    }
                }
                push(
                    key(i, 0, Part::Refusal),
                    d.get("refusal").and_then(Value::as_str),
                );
                push(
                    key(i, 0, Part::Transcript),
                    d.get("audio")
                        .and_then(|a| a.get("transcript"))
                        .and_then(Value::as_str),
                );
                for tc in d
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    push(key(i, u(tc, "index"), Part::ToolArgs), call_text(tc));
                }
                push(
                    key(i, LEGACY_FUNCTION_CALL, Part::ToolArgs),
                    d.pointer("/function_call/arguments")
                        .and_then(Value::as_str),
                );
            }
        }
        Api::Completions => {
            for c in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                push(
                    key(u(c, "index"), 0, Part::Text),
                    c.get("text").and_then(Value::as_str),
                );
            }
        }
        Api::Responses => match v.get("type").and_then(Value::as_str) {
            Some("response.output_text.delta") => push(
                key(u(v, "output_index"), u(v, "content_index"), Part::Text),
                v.get("delta").and_then(Value::as_str),
            ),
            Some(
                "response.function_call_arguments.delta"
                | "response.custom_tool_call_input.delta"
                | "response.mcp_call_arguments.delta",
            ) => push(
                key(u(v, "output_index"), 0, Part::ToolArgs),
                v.get("delta").and_then(Value::as_str),
            ),
            // The commands of a shell call (the hosted or local shell tool): code a shell runs,
            // where a file can be written whole (`cat > f <<'EOF'`). Read as a script.
            Some("response.shell_call_command.delta") => push(
                key(u(v, "output_index"), u(v, "command_index"), Part::Code),
                v.get("delta").and_then(Value::as_str),
            ),
            Some("response.shell_call_command.added") => push(
                key(u(v, "output_index"), u(v, "command_index"), Part::Code),
                v.get("command").and_then(Value::as_str),
            ),
            Some("response.output_item.done") => {
                if let Some((it, diff)) = v
                    .get("item")
                    .and_then(|it| patch_diff(it).map(|d| (it, d)))
                    .filter(|(_, d)| !d.is_empty())
                {
                    out.push(Piece {
                        key: key(u(v, "output_index"), 0, Part::Patch),
                        text: diff.to_string(),
                        kind: Some(patch_kind(it)),
                    });
                }
            }
            Some("response.code_interpreter_call_code.delta") => push(
                key(u(v, "output_index"), 0, Part::Code),
                v.get("delta").and_then(Value::as_str),
            ),
            Some("response.reasoning_summary_text.delta") => push(
                key(u(v, "output_index"), u(v, "summary_index"), Part::Summary),
                v.get("delta").and_then(Value::as_str),
            ),
            Some("response.reasoning_text.delta") => push(
                key(u(v, "output_index"), u(v, "content_index"), Part::Thinking),
                v.get("delta").and_then(Value::as_str),
            ),
            Some("response.refusal.delta") => push(
                key(u(v, "output_index"), u(v, "content_index"), Part::Refusal),
                v.get("delta").and_then(Value::as_str),
            ),
            _ => {}
        },
        Api::Messages => {
            if v.get("type").and_then(Value::as_str) == Some("content_block_delta") {
                let i = u(v, "index");
                let d = v.get("delta").unwrap_or(&Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        push(key(i, 0, Part::Text), d.get("text").and_then(Value::as_str))
                    }
                    Some("input_json_delta") => push(
                        key(i, 0, Part::ToolArgs),
                        d.get("partial_json").and_then(Value::as_str),
                    ),
                    Some("thinking_delta") => push(
                        key(i, 0, Part::Thinking),
                        d.get("thinking").and_then(Value::as_str),
                    ),
                    Some("citations_delta") => push(
                        key(i, 0, Part::Quote),
                        d.pointer("/citation/cited_text").and_then(Value::as_str),
                    ),
                    _ => {}
                }
            }
        }
    }
    out
}

/// Which text streams a streamed event ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnds {
    None,
    /// A terminal event (`[DONE]`, `response.completed`): every stream ends, and must be
    /// decided before the event is queued so that citations precede it.
    AllBefore,
    /// The streams whose first-level index (choice, content block, output item) is listed end
    /// with this event, after the text it carries.
    After(Vec<u64>),
}

/// Where the provider's stream ends each text stream.
pub fn stream_ends(api: Api, v: Option<&Value>, done: bool) -> StreamEnds {
    if done {
        return StreamEnds::AllBefore;
    }
    let Some(v) = v else { return StreamEnds::None };
    let ty = v.get("type").and_then(Value::as_str);
    let ended: Vec<u64> = match (api, ty) {
        (Api::Responses, Some("response.completed" | "response.incomplete")) => {
            return StreamEnds::AllBefore;
        }
        (Api::Messages, Some("content_block_stop")) => vec![u(v, "index")],
        (
            Api::Responses,
            Some(
                "response.output_text.done"
                | "response.refusal.done"
                | "response.output_item.done"
                | "response.function_call_arguments.done"
                | "response.custom_tool_call_input.done"
                | "response.mcp_call_arguments.done"
                | "response.shell_call_command.done"
                | "response.code_interpreter_call_code.done",
            ),
        ) => vec![u(v, "output_index")],
        (Api::ChatCompletions | Api::Completions, _) => v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
            .map(|c| u(c, "index"))
            .collect(),
        _ => Vec::new(),
    };
    if ended.is_empty() {
        StreamEnds::None
    } else {
        StreamEnds::After(ended)
    }
}

/// Whether this event is where a provider without a separate annotation event carries the
/// citations found earlier (Anthropic: the final `message_delta`).
pub fn carries_late_citations(api: Api, v: &Value) -> bool {
    api == Api::Messages && v.get("type").and_then(Value::as_str) == Some("message_delta")
}

/// The text slot of `key` in a streamed event, for rewriting.
fn event_slot(api: Api, v: &mut Value, k: StreamKey) -> Option<&mut Value> {
    match api {
        Api::ChatCompletions => {
            let c = v
                .get_mut("choices")?
                .as_array_mut()?
                .iter_mut()
                .find(|c| u(c, "index") == k.a)?;
            let d = c.get_mut("delta")?;
            match k.part {
                Part::Text => d.get_mut("content"),
                Part::Thinking => d.get_mut("reasoning_content"),
                Part::Refusal => d.get_mut("refusal"),
                Part::Transcript => d.get_mut("audio")?.get_mut("transcript"),
                Part::Summary | Part::Code | Part::Quote | Part::Patch => None,
                Part::ToolArgs if k.b == LEGACY_FUNCTION_CALL => {
                    d.get_mut("function_call")?.get_mut("arguments")
                }
                Part::ToolArgs => call_text_mut(
                    d.get_mut("tool_calls")?
                        .as_array_mut()?
                        .iter_mut()
                        .find(|t| u(t, "index") == k.b)?,
                ),
            }
        }
        Api::Completions => v
            .get_mut("choices")?
            .as_array_mut()?
            .iter_mut()
            .find(|c| u(c, "index") == k.a)?
            .get_mut("text"),
        Api::Responses => {
            if k.part == Part::Patch {
                v.pointer_mut("/item/operation/diff")
            } else if v.get("type").and_then(Value::as_str)
                == Some("response.shell_call_command.added")
            {
                v.get_mut("command")
            } else {
                v.get_mut("delta")
            }
        }
        Api::Messages => {
            let d = v.get_mut("delta")?;
            match k.part {
                Part::Text => d.get_mut("text"),
                Part::ToolArgs => d.get_mut("partial_json"),
                Part::Thinking => d.get_mut("thinking"),
                Part::Quote => d.get_mut("citation")?.get_mut("cited_text"),
                Part::Summary | Part::Code | Part::Refusal | Part::Transcript | Part::Patch => None,
            }
        }
    }
}

/// Replaces the text of `key` in a streamed event.
pub fn set_event_text(api: Api, v: &mut Value, k: StreamKey, text: &str) {
    if api == Api::ChatCompletions
        && matches!(k.part, Part::Text | Part::Thinking)
        && let Some(content) = v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .and_then(|cs| cs.iter_mut().find(|c| u(c, "index") == k.a))
            .and_then(|c| c.get_mut("delta"))
            .and_then(|d| d.get_mut("content"))
            .filter(|c| c.is_array())
        && set_content_parts_text(content, k.part, text)
    {
        drop_logprobs(v);
        return;
    }
    if let Some(slot) = event_slot(api, v, k) {
        *slot = Value::String(text.to_string());
        drop_logprobs(v);
    }
}

/// Empties every `logprobs` in `v` (an array becomes `[]`, anything else `null`): log
/// probabilities give every token of a text back a second time (`token`, `bytes`, the
/// alternatives in `top_logprobs`; Chat Completions, Completions, Responses), so a text that
/// was cut or redacted must not keep them. Both forms are what the SDKs accept where a
/// provider sends none.
pub fn drop_logprobs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "logprobs" {
                    *x = if x.is_array() { json!([]) } else { Value::Null };
                } else {
                    drop_logprobs(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(drop_logprobs),
        _ => {}
    }
}

/// The text fields of a streamed event that repeat a stream's text once it is complete —
/// Responses' `response.output_text.done`, `response.reasoning_text.done`,
/// `response.function_call_arguments.done`, `response.content_part.done`,
/// `response.output_item.done`, and the whole response in `response.completed` (or
/// `.incomplete`, `.failed`) — each with the stream it repeats. Other APIs repeat nothing.
pub fn for_each_repeated_text(api: Api, v: &mut Value, f: &mut dyn FnMut(StreamKey, &mut Value)) {
    if api != Api::Responses {
        return;
    }
    fn item(oi: u64, it: &mut Value, f: &mut dyn FnMut(StreamKey, &mut Value)) {
        if let Some(a) = it.get_mut("arguments") {
            f(key(oi, 0, Part::ToolArgs), a);
        }
        if let Some(a) = it.get_mut("input").filter(|a| a.is_string()) {
            f(key(oi, 0, Part::ToolArgs), a);
        }
        if let Some(c) = it.get_mut("code").filter(|c| c.is_string()) {
            f(key(oi, 0, Part::Code), c);
        }
        for (j, c) in shell_commands_mut(it).enumerate() {
            f(key(oi, j as u64, Part::Code), c);
        }
        if patch_diff(it).is_some()
            && let Some(d) = it.pointer_mut("/operation/diff")
        {
            f(key(oi, 0, Part::Patch), d);
        }
        for (j, p) in it
            .get_mut("summary")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(t) = p.get_mut("text") {
                f(key(oi, j as u64, Part::Summary), t);
            }
        }
        for (j, c) in it
            .get_mut("content")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let part = content_part(c);
            if let Some(t) = c.get_mut(text_field(part)) {
                f(key(oi, j as u64, part), t);
            }
        }
    }
    let (oi, ci) = (u(v, "output_index"), u(v, "content_index"));
    let ty = v
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match ty.as_str() {
        "response.output_text.done" | "response.reasoning_text.done" => {
            let part = if ty == "response.reasoning_text.done" {
                Part::Thinking
            } else {
                Part::Text
            };
            if let Some(t) = v.get_mut("text") {
                f(key(oi, ci, part), t);
            }
        }
        "response.refusal.done" => {
            if let Some(t) = v.get_mut("refusal") {
                f(key(oi, ci, Part::Refusal), t);
            }
        }
        "response.function_call_arguments.done" | "response.mcp_call_arguments.done" => {
            if let Some(a) = v.get_mut("arguments") {
                f(key(oi, 0, Part::ToolArgs), a);
            }
        }
        "response.custom_tool_call_input.done" => {
            if let Some(a) = v.get_mut("input") {
                f(key(oi, 0, Part::ToolArgs), a);
            }
        }
        "response.code_interpreter_call_code.done" => {
            if let Some(c) = v.get_mut("code") {
                f(key(oi, 0, Part::Code), c);
            }
        }
        "response.shell_call_command.done" => {
            let ci = u(v, "command_index");
            if let Some(c) = v.get_mut("command") {
                f(key(oi, ci, Part::Code), c);
            }
        }
        "response.reasoning_summary_text.done" => {
            let si = u(v, "summary_index");
            if let Some(t) = v.get_mut("text") {
                f(key(oi, si, Part::Summary), t);
            }
        }
        "response.reasoning_summary_part.done" => {
            let si = u(v, "summary_index");
            if let Some(t) = v.get_mut("part").and_then(|p| p.get_mut("text")) {
                f(key(oi, si, Part::Summary), t);
            }
        }
        "response.content_part.done" => {
            if let Some(p) = v.get_mut("part") {
                let part = content_part(p);
                if let Some(t) = p.get_mut(text_field(part)) {
                    f(key(oi, ci, part), t);
                }
            }
        }
        // `.added` too: an item that comes with its text (an `apply_patch_call` with its
        // diff) must not release it before the text is decided.
        "response.output_item.done" | "response.output_item.added" => {
            if let Some(it) = v.get_mut("item") {
                item(oi, it, f);
            }
        }
        // The response lifecycle events (`response.created`, `.in_progress`, `.completed`,
        // `.incomplete`, `.failed`) carry the whole response; a delta does not repeat anything,
        // whatever else an upstream puts in it.
        t if t.starts_with("response.") && !t.ends_with(".delta") => {
            for (i, it) in v
                .get_mut("response")
                .and_then(|r| r.get_mut("output"))
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .enumerate()
            {
                item(i as u64, it, f);
            }
        }
        _ => {}
    }
}

/// The part a Responses content item is: reasoning text, a refusal or output text.
fn content_part(c: &Value) -> Part {
    match c.get("type").and_then(Value::as_str) {
        Some("reasoning_text") => Part::Thinking,
        Some("refusal") => Part::Refusal,
        _ => Part::Text,
    }
}

/// The field of a Responses content item that holds its text: a refusal's is `refusal`.
fn text_field(part: Part) -> &'static str {
    match part {
        Part::Refusal => "refusal",
        _ => "text",
    }
}

/// Text pieces of a whole (non-streamed) response.
pub fn response_pieces(api: Api, v: &Value) -> Vec<Piece> {
    let mut out = Vec::new();
    for_each_response_slot(api, v, |k, t| {
        if !t.is_empty() {
            let kind = (k.part == Part::Patch)
                .then(|| v.get("output")?.get(k.a as usize).map(patch_kind))
                .flatten();
            out.push(Piece {
                key: k,
                text: t.to_string(),
                kind,
            })
        }
    });
    out
}

/// The fields of a Responses output item that hold tool-call text, each with its stream
/// (`StreamKey::b`): string `arguments` (a function call's) are stream 0, `input` (a custom
/// tool call's) stream 0 alone and 1 beside them. The one mapping reading a whole response
/// ([`for_each_response_slot`]) and rewriting it ([`set_response_text`]) both use: with
/// both fields under one stream, a response holding both had the rewritten `input` written
/// into `arguments` and `input` sent as it came (found by the `responses` fuzz target).
fn responses_tool_fields(item: &Value) -> impl Iterator<Item = (u64, &'static str)> {
    let args = item.get("arguments").is_some_and(Value::is_string);
    [(0, "arguments")]
        .into_iter()
        .filter(move |_| args)
        .chain([(u64::from(args), "input")])
}

fn for_each_response_slot(api: Api, v: &Value, mut f: impl FnMut(StreamKey, &str)) {
    match api {
        Api::ChatCompletions => {
            // Choices by their place in the array, not their `index` field: a response that
            // repeats an index must not have one choice's redaction written into another.
            for (i, c) in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let i = i as u64;
                let Some(m) = c.get("message") else { continue };
                if let Some(t) = m.get("content").and_then(Value::as_str) {
                    f(key(i, 0, Part::Text), t);
                }
                if let Some(content) = m.get("content").filter(|c| c.is_array()) {
                    for part in [Part::Thinking, Part::Text] {
                        if let Some(t) = content_parts_text(content, part) {
                            f(key(i, 0, part), &t);
                        }
                    }
                }
                if let Some(t) = m.get("refusal").and_then(Value::as_str) {
                    f(key(i, 0, Part::Refusal), t);
                }
                // Reasoning some OpenAI-compatible servers return beside the answer (DeepSeek,
                // vLLM): scanned when streamed, so whole too.
                if let Some(t) = m.get("reasoning_content").and_then(Value::as_str) {
                    f(key(i, 0, Part::Thinking), t);
                }
                if let Some(t) = m
                    .get("audio")
                    .and_then(|a| a.get("transcript"))
                    .and_then(Value::as_str)
                {
                    f(key(i, 0, Part::Transcript), t);
                }
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if let Some(t) = call_text(tc.1) {
                        f(key(i, tc.0 as u64, Part::ToolArgs), t);
                    }
                }
                if let Some(t) = m
                    .pointer("/function_call/arguments")
                    .and_then(Value::as_str)
                {
                    f(key(i, LEGACY_FUNCTION_CALL, Part::ToolArgs), t);
                }
            }
        }
        Api::Completions => {
            for (i, c) in v
                .get("choices")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                if let Some(t) = c.get("text").and_then(Value::as_str) {
                    f(key(i as u64, 0, Part::Text), t);
                }
            }
        }
        Api::Responses => {
            for (oi, item) in v
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                for (b, field) in responses_tool_fields(item) {
                    if let Some(t) = item.get(field).and_then(Value::as_str) {
                        f(key(oi as u64, b, Part::ToolArgs), t);
                    }
                }
                if let Some(code) = item.get("code").and_then(Value::as_str) {
                    f(key(oi as u64, 0, Part::Code), code);
                }
                if let Some(d) = patch_diff(item) {
                    f(key(oi as u64, 0, Part::Patch), d);
                }
                for (j, c) in item
                    .pointer("/action/commands")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if let Some(c) = c.as_str() {
                        f(key(oi as u64, j as u64, Part::Code), c);
                    }
                }
                for (j, p) in item
                    .get("summary")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        f(key(oi as u64, j as u64, Part::Summary), t);
                    }
                }
                for (ci, c) in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let part = content_part(c);
                    if let Some(t) = c.get(text_field(part)).and_then(Value::as_str) {
                        // The same stream name as streamed (`reasoning_text` is thinking).
                        f(key(oi as u64, ci as u64, part), t);
                    }
                }
            }
        }
        Api::Messages => {
            for (i, b) in v
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = b.get("text").and_then(Value::as_str) {
                            f(key(i as u64, 0, Part::Text), t)
                        }
                        for (j, c) in b
                            .get("citations")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .enumerate()
                        {
                            if let Some(t) = c.get("cited_text").and_then(Value::as_str) {
                                f(key(i as u64, j as u64, Part::Quote), t)
                            }
                        }
                    }
                    Some("thinking") => {
                        if let Some(t) = b.get("thinking").and_then(Value::as_str) {
                            f(key(i as u64, 0, Part::Thinking), t)
                        }
                    }
                    Some("tool_use") => {
                        if let Some(input) = b.get("input") {
                            f(key(i as u64, 0, Part::ToolArgs), &input.to_string())
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Replaces the text of `key` in a whole response (tool-use input is left as JSON).
pub fn set_response_text(api: Api, v: &mut Value, k: StreamKey, text: &str) {
    if api == Api::ChatCompletions
        && matches!(k.part, Part::Text | Part::Thinking)
        && let Some(content) = v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .and_then(|cs| cs.get_mut(k.a as usize))
            .and_then(|c| c.get_mut("message"))
            .and_then(|m| m.get_mut("content"))
            .filter(|c| c.is_array())
        && set_content_parts_text(content, k.part, text)
    {
        return;
    }
    let slot = match api {
        Api::ChatCompletions => v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .and_then(|cs| cs.get_mut(k.a as usize))
            .and_then(|c| c.get_mut("message"))
            .and_then(|m| match k.part {
                Part::Text => m.get_mut("content"),
                Part::Refusal => m.get_mut("refusal"),
                Part::Thinking => m.get_mut("reasoning_content"),
                Part::Transcript => m.get_mut("audio").and_then(|a| a.get_mut("transcript")),
                Part::ToolArgs if k.b == LEGACY_FUNCTION_CALL => m
                    .get_mut("function_call")
                    .and_then(|f| f.get_mut("arguments")),
                _ => m
                    .get_mut("tool_calls")
                    .and_then(Value::as_array_mut)
                    .and_then(|t| t.get_mut(k.b as usize))
                    .and_then(call_text_mut),
            }),
        Api::Completions => v
            .get_mut("choices")
            .and_then(Value::as_array_mut)
            .and_then(|cs| cs.get_mut(k.a as usize))
            .and_then(|c| c.get_mut("text")),
        Api::Responses => v
            .get_mut("output")
            .and_then(Value::as_array_mut)
            .and_then(|o| o.get_mut(k.a as usize))
            .and_then(|item| match k.part {
                Part::ToolArgs => {
                    let field = responses_tool_fields(item).find(|&(b, _)| b == k.b);
                    field.and_then(|(_, f)| item.get_mut(f))
                }
                Part::Patch => item.pointer_mut("/operation/diff"),
                Part::Code if item.get("code").is_some() => item.get_mut("code"),
                Part::Code => shell_commands_mut(item).nth(k.b as usize),
                Part::Summary => item
                    .get_mut("summary")
                    .and_then(Value::as_array_mut)
                    .and_then(|c| c.get_mut(k.b as usize))
                    .and_then(|c| c.get_mut("text")),
                _ => item
                    .get_mut("content")
                    .and_then(Value::as_array_mut)
                    .and_then(|c| c.get_mut(k.b as usize))
                    .and_then(|c| c.get_mut(text_field(k.part))),
            }),
        Api::Messages => v
            .get_mut("content")
            .and_then(Value::as_array_mut)
            .and_then(|c| c.get_mut(k.a as usize))
            .and_then(|b| match k.part {
                Part::Text => b.get_mut("text"),
                Part::Thinking => b.get_mut("thinking"),
                Part::ToolArgs => {
                    // A `tool_use` block's input is a JSON object, not a string: the new
                    // text if it is one, else (a blanked input) an empty object.
                    if let Some(input) = b.get_mut("input") {
                        *input = serde_json::from_str::<Value>(text)
                            .ok()
                            .filter(Value::is_object)
                            .unwrap_or_else(|| Value::Object(Default::default()));
                    }
                    None
                }
                Part::Quote => b
                    .get_mut("citations")
                    .and_then(Value::as_array_mut)
                    .and_then(|c| c.get_mut(k.b as usize))
                    .and_then(|c| c.get_mut("cited_text")),
                Part::Summary | Part::Code | Part::Refusal | Part::Transcript | Part::Patch => None,
            }),
    };
    if let Some(s) = slot {
        *s = Value::String(text.to_string());
    }
}

/// Every string the caller supplied in a request body (messages, system prompt, tool results,
/// documents, prompt, input, instructions), for the caller-supplied exemption.
pub fn request_texts(api: Api, body: &Value) -> Vec<String> {
    let fields: &[&str] = match api {
        // `prompt` and `suffix`: a fill-in-the-middle request (Mistral's), answered as chat.
        Api::ChatCompletions => &["messages", "prompt", "suffix"],
        Api::Completions => &["prompt", "suffix"],
        Api::Responses => &["input", "instructions"],
        Api::Messages => &["system", "messages"],
    };
    let mut out = Vec::new();
    for f in fields {
        if let Some(v) = body.get(f) {
            collect_strings(v, &mut out);
        }
    }
    out
}

/// How the answer's text is read when the request says more than its API does: the
/// completion of a prompt that is code (legacy completions; fill-in-the-middle, a `prompt`
/// and a `suffix`) is code in the prompt's language — unfenced, where the default reading
/// (Markdown: code only inside fences) would read it as prose and miss a copy. The language
/// is what the prompt's last lines show ([`crate::normalize::prompt_code_kind`]), else the
/// suffix's; a fill-in-the-middle request that shows none is read as C-like code. `None`: the
/// API's own reading.
pub fn answer_kind(body: &Value) -> Option<TextKind> {
    let prompt = match body.get("prompt")? {
        Value::String(s) => s.as_str(),
        Value::Array(a) => a.last()?.as_str()?,
        _ => return None,
    };
    let suffix = body
        .get("suffix")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty());
    crate::normalize::prompt_code_kind(prompt)
        .or_else(|| suffix.and_then(crate::normalize::prompt_code_kind))
        .or_else(|| suffix.map(|_| TextKind::Code(crate::normalize::Lang::C_LIKE)))
}

/// The strings of a request that tools produced or were called with: tool results (a file an
/// agent read arrives as one, plain text) and earlier tool calls' arguments. For the
/// caller-supplied exemption, these are also read as code (see
/// [`crate::normalize::tool_text_kinds`]); reading every text so costs ten times as much
/// (measured: docs/benchmarks.md).
pub fn request_tool_texts(api: Api, body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let items = match api {
        Api::ChatCompletions | Api::Messages => body.get("messages"),
        Api::Responses => body.get("input"),
        Api::Completions => None,
    };
    for m in items.and_then(Value::as_array).into_iter().flatten() {
        let ty = m.get("type").and_then(Value::as_str);
        match api {
            Api::ChatCompletions => {
                if m.get("role").and_then(Value::as_str) == Some("tool") {
                    m.get("content").inspect(|c| collect_strings(c, &mut out));
                }
                for tc in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    tc.pointer("/function/arguments")
                        .inspect(|a| collect_strings(a, &mut out));
                }
            }
            Api::Messages => {
                for b in m
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match b.get("type").and_then(Value::as_str) {
                        Some("tool_result") => {
                            b.get("content").inspect(|c| collect_strings(c, &mut out));
                        }
                        Some("tool_use" | "server_tool_use") => {
                            b.get("input").inspect(|c| collect_strings(c, &mut out));
                        }
                        _ => {}
                    }
                }
            }
            Api::Responses => {
                let field = match ty {
                    Some("function_call_output" | "custom_tool_call_output") => "output",
                    Some("function_call") => "arguments",
                    Some("custom_tool_call") => "input",
                    _ => continue,
                };
                m.get(field).inspect(|c| collect_strings(c, &mut out));
            }
            Api::Completions => {}
        }
    }
    out
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        // Short strings are roles, types and ids; no run of t units fits in them.
        Value::String(s) if s.len() >= 16 => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// Whether a request offers the model tools (so its answer may carry tool calls).
pub fn offers_tools(body: &Value) -> bool {
    body.get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty())
}

/// Whether a request asked for a streamed response.
pub fn wants_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

/// What the proxy found, as it travels beside the text (also used for the block explanation).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Citation {
    pub key_a: u64,
    /// `exact`, `renamed`, `near`, `license-text`, `license-marker` (or `caller-supplied`).
    pub kind: String,
    pub corpus: String,
    pub doc: String,
    pub url: Option<String>,
    pub license: String,
    pub rights: String,
    pub channel: String,
    pub units: u32,
    /// What the policy weighs besides `units` ([`crate::policy::Facts`]); not sent.
    #[serde(skip)]
    pub exact_units: u32,
    #[serde(skip)]
    pub aligned_units: u32,
    /// Byte offsets in the stream's text.
    pub output_start: u64,
    pub output_end: u64,
    pub source_start: u64,
    pub source_end: u64,
    pub action: String,
    pub reason: String,
    pub index_id: String,
    /// A license text: the share of the license reproduced (0–1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<f64>,
    /// A gapped (`near`) run: how similar the output is to its source region (0–1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f64>,
    /// A license marker: what it says (expression, holder, years, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub marker: Option<crate::license::markers::Marker>,
}

impl Citation {
    fn azure(&self, filtered: bool) -> Value {
        let cat = if self.channel == "code" {
            "protected_material_code"
        } else {
            "protected_material_text"
        };
        let mut m = Map::new();
        m.insert(
            cat.into(),
            json!({
                "filtered": filtered,
                "detected": true,
                "citation": {"URL": self.url.clone().unwrap_or_default(), "license": self.license},
            }),
        );
        Value::Object(m)
    }

    /// What replaces a redacted span.
    pub fn placeholder(&self) -> String {
        format!(
            "[verbatim: redacted {} {} units of {}:{} ({})]",
            self.units, self.channel, self.corpus, self.doc, self.license
        )
    }

    pub fn explanation(&self) -> String {
        format!(
            "verbatim: output stopped; it reproduced {} {} units of {}:{} ({}, {})",
            self.units, self.channel, self.corpus, self.doc, self.license, self.rights
        )
    }
}

/// Fields of the stream the synthetic events must repeat (id, model, …).
#[derive(Debug, Clone, Default)]
pub struct StreamMeta {
    pub id: Option<Value>,
    pub created: Option<Value>,
    pub model: Option<Value>,
    pub object: Option<Value>,
    pub system_fingerprint: Option<Value>,
    /// Responses: the response object from `response.created`.
    pub response: Option<Value>,
    pub sequence: u64,
    /// Anthropic: content blocks started and not yet stopped; output tokens so far.
    pub open_blocks: Vec<u64>,
    pub output_tokens: u64,
    /// Choice / output indexes seen.
    pub indexes: Vec<u64>,
    /// The raw JSON of id, created, model, object and system_fingerprint last seen on a
    /// [`LiteChunk`] (parsed into the fields above only when it changes).
    lite_seen: [String; 5],
}

/// The commonest streamed events — a Chat Completions chunk with one choice whose delta is
/// text (and perhaps the role), or a piece of one tool call's arguments, not finishing — read
/// without building a `serde_json::Value`:
/// at thousands of events a second the tree's allocations were the largest part of scanning
/// one (docs/benchmarks.md). Anything else, or anything unexpected in the delta, is `None` and
/// takes the general path.
#[derive(Debug, serde::Deserialize)]
pub struct LiteChunk<'a> {
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    created: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    model: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    object: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    system_fingerprint: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    choices: (LiteChoice<'a>,),
}

#[derive(Debug, serde::Deserialize)]
struct LiteChoice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow)]
    delta: LiteDelta<'a>,
    /// Null or absent (a finishing chunk takes the general path).
    #[serde(borrow, default)]
    finish_reason: Option<&'a serde_json::value::RawValue>,
}

/// A JSON string, borrowed from the event where it has no escapes. serde borrows a
/// `Cow<str>` only where it is the field's own type: an `Option<Cow<str>>` field, even marked
/// `borrow`, was copied into a `String` for every streamed chunk.
#[derive(Debug, serde::Deserialize)]
#[serde(transparent)]
struct LiteText<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LiteDelta<'a> {
    #[serde(borrow, default)]
    content: Option<LiteText<'a>>,
    #[serde(borrow, default)]
    #[allow(dead_code)] // accepted, not used
    role: Option<&'a serde_json::value::RawValue>,
    /// Exactly one tool call (more, or none in a list, take the general path).
    #[serde(borrow, default)]
    tool_calls: Option<(LiteToolCall<'a>,)>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LiteToolCall<'a> {
    #[serde(default)]
    index: u64,
    #[serde(borrow, default)]
    #[allow(dead_code)] // accepted, not used
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default, rename = "type")]
    #[allow(dead_code)] // accepted, not used
    kind: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    function: LiteFunction<'a>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LiteFunction<'a> {
    #[serde(borrow, default)]
    #[allow(dead_code)] // accepted, not used
    name: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    arguments: std::borrow::Cow<'a, str>,
}

impl<'a> LiteChunk<'a> {
    /// `data` read as a lite chunk, if it is one with exactly one non-empty piece: text, or
    /// arguments (an event with both, or with neither, takes the general path).
    pub fn parse(data: &'a str) -> Option<LiteChunk<'a>> {
        let c: LiteChunk<'a> = serde_json::from_str(data).ok()?;
        let ch = &c.choices.0;
        let one = ch.delta.tool_calls.is_none() || ch.delta.content.is_none();
        (ch.finish_reason.is_none() && one && !c.piece().1.is_empty()).then_some(c)
    }
    /// The piece, as [`event_pieces`] would give it.
    pub fn piece(&self) -> (StreamKey, &str) {
        let ch = &self.choices.0;
        match &ch.delta.tool_calls {
            Some((tc,)) => (
                key(ch.index, tc.index, Part::ToolArgs),
                &tc.function.arguments,
            ),
            None => (
                key(ch.index, 0, Part::Text),
                ch.delta.content.as_ref().map_or("", |t| &t.0),
            ),
        }
    }
}

impl StreamMeta {
    /// [`StreamMeta::observe`] for a [`LiteChunk`]: the same fields, parsed only when changed.
    pub fn observe_lite(&mut self, c: &LiteChunk<'_>) {
        for (raw, slot, seen) in [
            (c.id, &mut self.id, 0),
            (c.created, &mut self.created, 1),
            (c.model, &mut self.model, 2),
            (c.object, &mut self.object, 3),
            (c.system_fingerprint, &mut self.system_fingerprint, 4),
        ] {
            let Some(raw) = raw else { continue };
            let raw = raw.get();
            if self.lite_seen[seen] != raw {
                if let Ok(v) = serde_json::from_str(raw) {
                    *slot = Some(v);
                }
                self.lite_seen[seen] = raw.to_string();
            }
        }
        let i = c.choices.0.index;
        if !self.indexes.contains(&i) {
            self.indexes.push(i);
        }
    }

    /// Learns from each streamed event.
    pub fn observe(&mut self, api: Api, v: &Value) {
        match api {
            Api::ChatCompletions | Api::Completions => {
                self.lite_seen = Default::default(); // the slots may change below
                for (f, slot) in [
                    ("id", &mut self.id),
                    ("created", &mut self.created),
                    ("model", &mut self.model),
                    ("object", &mut self.object),
                    ("system_fingerprint", &mut self.system_fingerprint),
                ] {
                    // Every chunk repeats these; clone only when one changes.
                    if let Some(x) = v.get(f)
                        && slot.as_ref() != Some(x)
                    {
                        *slot = Some(x.clone());
                    }
                }
                for c in v
                    .get("choices")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let i = u(c, "index");
                    if !self.indexes.contains(&i) {
                        self.indexes.push(i);
                    }
                }
            }
            Api::Responses => {
                if let Some(n) = v.get("sequence_number").and_then(Value::as_u64) {
                    self.sequence = n;
                }
                if let Some(r) = v.get("response") {
                    self.response = Some(r.clone());
                }
            }
            Api::Messages => match v.get("type").and_then(Value::as_str) {
                Some("content_block_start") => self.open_blocks.push(u(v, "index")),
                Some("content_block_stop") => {
                    let i = u(v, "index");
                    self.open_blocks.retain(|&b| b != i);
                }
                Some("message_delta") => {
                    if let Some(n) = v
                        .get("usage")
                        .and_then(|x| x.get("output_tokens"))
                        .and_then(Value::as_u64)
                    {
                        self.output_tokens = n;
                    }
                }
                Some("message_start") => {
                    if let Some(n) = v
                        .pointer("/message/usage/output_tokens")
                        .and_then(Value::as_u64)
                    {
                        self.output_tokens = n;
                    }
                }
                _ => {}
            },
        }
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut m = Map::new();
        for (f, v) in [
            ("id", &self.id),
            ("object", &self.object),
            ("created", &self.created),
            ("model", &self.model),
            ("system_fingerprint", &self.system_fingerprint),
        ] {
            if let Some(v) = v {
                m.insert(f.into(), v.clone());
            }
        }
        m.insert("choices".into(), Value::Array(choices));
        Value::Object(m)
    }
}

/// The events that end a blocked stream, in the provider's own format.
pub fn block_events(
    api: Api,
    meta: &mut StreamMeta,
    why: &Citation,
) -> Vec<(Option<&'static str>, Value)> {
    let ext = json!({"action": "block", "reason": why.reason, "explanation": why.explanation(), "finding": why});
    stop_events(api, meta, ext, Some((why.key_a, why.azure(true))))
}

/// The events that end a stream Verbatim stops for a reason of its own (the audit trail cannot
/// be written and it is fail-closed), in the provider's own format.
pub fn refusal_events(
    api: Api,
    meta: &mut StreamMeta,
    reason: &str,
    explanation: &str,
) -> Vec<(Option<&'static str>, Value)> {
    let ext = json!({"action": "block", "reason": reason, "explanation": explanation});
    stop_events(api, meta, ext, None)
}

/// `ext` is Verbatim's own field on the final event; `filter` the choice the Azure-style
/// `content_filter_results` go on.
fn stop_events(
    api: Api,
    meta: &mut StreamMeta,
    ext: Value,
    filter: Option<(u64, Value)>,
) -> Vec<(Option<&'static str>, Value)> {
    match api {
        Api::ChatCompletions | Api::Completions => {
            let mut idx = meta.indexes.clone();
            if idx.is_empty() {
                idx.push(0);
            }
            let choices = idx
                .iter()
                .map(|&i| {
                    let mut c =
                        json!({"index": i, "finish_reason": "content_filter", "logprobs": null});
                    if api == Api::ChatCompletions {
                        c["delta"] = json!({});
                    } else {
                        c["text"] = json!("");
                    }
                    if let Some((a, f)) = &filter
                        && i == *a
                    {
                        c["content_filter_results"] = f.clone();
                    }
                    c
                })
                .collect();
            let mut chunk = meta.chunk(choices);
            chunk["verbatim"] = ext;
            vec![(None, chunk)]
        }
        Api::Responses => {
            meta.sequence += 1;
            let mut r = meta.response.clone().unwrap_or_else(|| json!({}));
            r["status"] = json!("incomplete");
            r["incomplete_details"] = json!({"reason": "content_filter"});
            r["verbatim"] = ext;
            vec![(
                Some("response.incomplete"),
                json!({"type": "response.incomplete", "sequence_number": meta.sequence, "response": r}),
            )]
        }
        Api::Messages => {
            let mut out: Vec<(Option<&'static str>, Value)> = meta
                .open_blocks
                .drain(..)
                .map(|i| {
                    (
                        Some("content_block_stop"),
                        json!({"type": "content_block_stop", "index": i}),
                    )
                })
                .collect();
            out.push((
                Some("message_delta"),
                json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": "refusal", "stop_sequence": null},
                    "usage": {"output_tokens": meta.output_tokens},
                    "verbatim": ext,
                }),
            ));
            out.push((Some("message_stop"), json!({"type": "message_stop"})));
            out
        }
    }
}

/// Trailer of a blocked OpenAI-style stream.
pub fn done_marker(api: Api) -> Option<&'static str> {
    matches!(api, Api::ChatCompletions | Api::Completions).then_some("[DONE]")
}

/// An event carrying citations beside the text (annotate), or `None` where the provider's
/// format carries them on a later event (Anthropic: the final `message_delta`).
pub fn annotation_event(
    api: Api,
    meta: &mut StreamMeta,
    cites: &[Citation],
) -> Option<(Option<&'static str>, Value)> {
    match api {
        Api::ChatCompletions | Api::Completions => {
            let mut choices = Vec::new();
            for c in cites {
                let mut ch = json!({"index": c.key_a, "finish_reason": null, "content_filter_results": c.azure(false)});
                if api == Api::ChatCompletions {
                    ch["delta"] = json!({});
                } else {
                    ch["text"] = json!("");
                }
                choices.push(ch);
            }
            let mut chunk = meta.chunk(choices);
            chunk["verbatim"] = json!({"action": "annotate", "findings": cites});
            Some((None, chunk))
        }
        Api::Responses => {
            let c = cites.first()?;
            meta.sequence += 1;
            Some((
                Some("response.output_text.annotation.added"),
                json!({
                    "type": "response.output_text.annotation.added",
                    "sequence_number": meta.sequence,
                    "item_id": "",
                    "output_index": c.key_a,
                    "content_index": 0,
                    "annotation_index": 0,
                    "annotation": {
                        "type": "url_citation",
                        "start_index": c.output_start,
                        "end_index": c.output_end,
                        "url": c.url.clone().unwrap_or_default(),
                        "title": format!("{}:{} ({})", c.corpus, c.doc, c.license),
                    },
                    "verbatim": {"action": "annotate", "findings": cites},
                }),
            ))
        }
        Api::Messages => None,
    }
}

/// Adds citations to a whole (non-streamed) response, or to Anthropic's final `message_delta`.
pub fn annotate_value(api: Api, v: &mut Value, cites: &[Citation], filtered: bool) {
    match api {
        Api::ChatCompletions | Api::Completions => {
            if let Some(cs) = v.get_mut("choices").and_then(Value::as_array_mut) {
                // By place in the array, as the response's pieces are read.
                for (i, c) in cs.iter_mut().enumerate() {
                    if let Some(cite) = cites.iter().find(|x| x.key_a == i as u64) {
                        c["content_filter_results"] = cite.azure(filtered);
                    }
                }
            }
        }
        Api::Responses | Api::Messages => {}
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "verbatim".into(),
            json!({"action": if filtered { "block" } else { "annotate" }, "findings": cites}),
        );
    }
}

/// Marks a whole (non-streamed) response as stopped by the filter.
pub fn block_value(api: Api, v: &mut Value, why: &Citation) {
    match api {
        Api::ChatCompletions | Api::Completions => {
            if let Some(c) = v
                .get_mut("choices")
                .and_then(Value::as_array_mut)
                .and_then(|cs| cs.get_mut(why.key_a as usize))
            {
                c["finish_reason"] = json!("content_filter");
                // The audio says the whole answer, the blocked run with it: it goes.
                if let Some(m) = c.get_mut("message").and_then(Value::as_object_mut)
                    && m.get("audio").is_some_and(|a| !a.is_null())
                {
                    m.insert("audio".into(), Value::Null);
                }
            }
        }
        Api::Responses => {
            v["status"] = json!("incomplete");
            v["incomplete_details"] = json!({"reason": "content_filter"});
        }
        Api::Messages => {
            v["stop_reason"] = json!("refusal");
        }
    }
    annotate_value(api, v, std::slice::from_ref(why), true);
    if let Some(obj) = v.get_mut("verbatim").and_then(Value::as_object_mut) {
        obj.insert("explanation".into(), json!(why.explanation()));
        obj.insert("reason".into(), json!(why.reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batchs_results_url_is_made_to_point_back_at_the_proxy() {
        for (path, want) in [
            ("/v1/messages/batches", Some("")),
            ("/v1/messages/batches?limit=2", Some("")),
            (
                "/anthropic/v1/messages/batches/msgbatch_1",
                Some("/anthropic"),
            ),
            ("/v1/messages/batches/msgbatch_1/cancel", Some("")),
            ("/v1/messages/batches/msgbatch_1/results", None),
            ("/v1/messages/batches/msgbatch_1/other", None),
            ("/v1/messages/batchesx", None),
            ("/v1/messages", None),
        ] {
            assert_eq!(batches_prefix(path), want, "{path}");
        }
        let url = "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results";
        let mut one = json!({"id": "msgbatch_1", "results_url": url});
        assert!(point_results_here(&mut one, "http://127.0.0.1:8080/pre"));
        assert_eq!(
            one["results_url"],
            json!("http://127.0.0.1:8080/pre/v1/messages/batches/msgbatch_1/results")
        );
        let mut list = json!({"data": [{"results_url": url}, {"results_url": null},
            {"results_url": "https://elsewhere.example/file.jsonl"}], "has_more": false});
        assert!(point_results_here(&mut list, "http://h"));
        assert_eq!(
            list["data"][0]["results_url"],
            json!("http://h/v1/messages/batches/msgbatch_1/results")
        );
        assert_eq!(list["data"][1]["results_url"], Value::Null);
        assert_eq!(
            list["data"][2]["results_url"],
            json!("https://elsewhere.example/file.jsonl")
        );
        assert!(!point_results_here(&mut json!({"id": "x"}), "http://h"));
    }

    #[test]
    fn requests_are_routed_to_the_api_whose_answer_they_get() {
        use http::Method;
        let (post, get) = (Method::POST, Method::GET);
        for (m, path, want) in [
            (&post, "/v1/chat/completions", Some(Api::ChatCompletions)),
            (
                &post,
                "/openai/v1/chat/completions/",
                Some(Api::ChatCompletions),
            ),
            (&post, "/v1/completions", Some(Api::Completions)),
            (&post, "/v1/responses", Some(Api::Responses)),
            (&post, "/v1/messages?beta=true", Some(Api::Messages)),
            (&get, "/v1/responses/resp_1", Some(Api::Responses)),
            (
                &get,
                "/v1/responses/resp_1?stream=true",
                Some(Api::Responses),
            ),
            (&get, "/responses/resp_1", Some(Api::Responses)),
            (
                &get,
                "/v1/chat/completions/chatcmpl-1",
                Some(Api::ChatCompletions),
            ),
            (&get, "/v1/responses", None),
            (&get, "/v1/responses/", None),
            (
                &get,
                "/v1/responses/resp_1/input_items",
                Some(Api::Responses),
            ),
            (&get, "/v1/responses//input_items", None),
            (&get, "/v1/chat/completions", Some(Api::ChatCompletions)),
            (
                &get,
                "/v1/chat/completions?limit=5",
                Some(Api::ChatCompletions),
            ),
            (&get, "/v1/chat/completions/chatcmpl-1/messages", None),
            (
                &post,
                "/v1/chat/completions/chatcmpl-1",
                Some(Api::ChatCompletions),
            ),
            (&post, "/v1/responses/resp_1/cancel", Some(Api::Responses)),
            (&post, "/v1/responses/resp_1/other", None),
            (&get, "/v1/conversations/conv_1/items", Some(Api::Responses)),
            (
                &get,
                "/v1/conversations/conv_1/items/msg_1",
                Some(Api::Responses),
            ),
            (&get, "/conversations/conv_1/items", Some(Api::Responses)),
            (&get, "/v1/conversations/conv_1", None),
            (&get, "/v1/conversations", None),
            (&get, "/v1/conversations//items", None),
            (&post, "/v1/conversations/conv_1/items", None),
            (
                &get,
                "/v1/messages/batches/msgbatch_1/results",
                Some(Api::Messages),
            ),
            (&get, "/v1/messages/batches/msgbatch_1", None),
            (&get, "/v1/messages/batches//results", None),
            (&get, "/v1/files/file_1/content", Some(Api::ChatCompletions)),
            // Azure OpenAI.
            (
                &post,
                "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
                Some(Api::ChatCompletions),
            ),
            (
                &post,
                "/openai/deployments/gpt-35/completions",
                Some(Api::Completions),
            ),
            (&post, "/openai/deployments//chat/completions", None),
            (&post, "/openai/deployments/x/embeddings", None),
            (
                &post,
                "/openai/responses?api-version=2025-04-01-preview",
                Some(Api::Responses),
            ),
            (&get, "/openai/responses/resp_1", Some(Api::Responses)),
            (&post, "/openai/v1/responses", Some(Api::Responses)),
            (&post, "/v2/chat/completions", None),
            (&post, "/v1/fim/completions", Some(Api::ChatCompletions)),
            (&post, "/beta/completions", Some(Api::Completions)),
            (&post, "/x/beta/completions", None),
            (&post, "/xchat/completions", None),
            (&get, "/v1/files/file_1", None),
            (&get, "/v1/files//content", None),
            (&get, "/v1/models", None),
            (&get, "/v1/models/gpt-x", None),
            (&Method::DELETE, "/v1/responses/resp_1", None),
            (&post, "/v1/embeddings", None),
        ] {
            assert_eq!(Api::route(m, path), want, "{m} {path}");
        }
        assert!(Api::query_streams("/v1/responses/r?stream=true"));
        assert!(Api::query_streams(
            "/v1/responses/r?starting_after=3&stream=true"
        ));
        assert!(!Api::query_streams("/v1/responses/r?stream=false"));
        assert!(!Api::query_streams("/v1/responses/r"));
        assert!(!Api::query_streams("/v1/responses/r?streams=true"));
    }

    /// A chunk's text is borrowed from the event where it has no escapes (no allocation for
    /// every streamed chunk) and decoded where it has.
    #[test]
    fn a_lite_chunks_text_is_borrowed_unless_it_has_escapes() {
        let plain = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"the valley"},"finish_reason":null}]}"#;
        let c = LiteChunk::parse(plain).expect("a lite chunk");
        let text = &c.choices.0.delta.content.as_ref().expect("text").0;
        assert!(matches!(text, std::borrow::Cow::Borrowed("the valley")));
        assert_eq!(c.piece().1, "the valley");
        let escaped = r#"{"id":"c","choices":[{"index":0,"delta":{"content":"a\n\"b\""},"finish_reason":null}]}"#;
        let c = LiteChunk::parse(escaped).expect("a lite chunk");
        let text = &c.choices.0.delta.content.as_ref().expect("text").0;
        assert!(matches!(text, std::borrow::Cow::Owned(_)));
        assert_eq!(c.piece().1, "a\n\"b\"");
    }

    /// A whole Responses response names its streams as the streamed one does: reasoning text
    /// is thinking, summaries and a code interpreter's code are their own parts.
    #[test]
    fn whole_responses_name_their_streams_as_streams_do() {
        let v = json!({"output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}],
             "content": [{"type": "reasoning_text", "text": "thinking it over"}]},
            {"type": "code_interpreter_call", "code": "print(1)"},
            {"type": "message", "content": [{"type": "output_text", "text": "done"}]},
        ]});
        let parts: Vec<(u64, u64, Part, String)> = response_pieces(Api::Responses, &v)
            .into_iter()
            .map(|p| (p.key.a, p.key.b, p.key.part, p.text))
            .collect();
        assert_eq!(
            parts,
            [
                (0, 0, Part::Summary, "plan".to_string()),
                (0, 0, Part::Thinking, "thinking it over".to_string()),
                (1, 0, Part::Code, "print(1)".to_string()),
                (2, 0, Part::Text, "done".to_string()),
            ]
        );
        let mut w = v.clone();
        set_response_text(Api::Responses, &mut w, key(0, 0, Part::Thinking), "x");
        set_response_text(Api::Responses, &mut w, key(0, 0, Part::Summary), "y");
        set_response_text(Api::Responses, &mut w, key(1, 0, Part::Code), "z");
        assert_eq!(w["output"][0]["content"][0]["text"], "x");
        assert_eq!(w["output"][0]["summary"][0]["text"], "y");
        assert_eq!(w["output"][1]["code"], "z");
    }

    /// Anthropic's citations quote their source (`cited_text`): streamed, a quote is a piece of
    /// its block's `Quote` part (the pipeline gives each its own stream); whole, each citation
    /// is its own stream; both can be rewritten.
    #[test]
    fn anthropic_citations_quoted_text_is_a_stream_of_its_own() {
        let cite = |t: &str| {
            json!({"type": "web_search_result_location", "cited_text": t,
                   "url": "https://example.org/a", "title": "A", "encrypted_index": "x"})
        };
        let mut ev = json!({"type": "content_block_delta", "index": 2,
            "delta": {"type": "citations_delta", "citation": cite("the quoted words")}});
        let pieces = event_pieces(Api::Messages, &ev);
        assert_eq!(
            pieces,
            [Piece {
                key: key(2, 0, Part::Quote),
                text: "the quoted words".to_string(),
                kind: None,
            }]
        );
        set_event_text(Api::Messages, &mut ev, key(2, 0, Part::Quote), "[redacted]");
        assert_eq!(ev["delta"]["citation"]["cited_text"], "[redacted]");
        assert_eq!(ev["delta"]["citation"]["url"], "https://example.org/a");

        let v = json!({"content": [
            {"type": "text", "text": "As the page says, "},
            {"type": "text", "text": "it is so", "citations": [cite("first quote"), cite("second quote")]},
        ]});
        let parts: Vec<(u64, u64, Part, String)> = response_pieces(Api::Messages, &v)
            .into_iter()
            .map(|p| (p.key.a, p.key.b, p.key.part, p.text))
            .collect();
        assert_eq!(
            parts,
            [
                (0, 0, Part::Text, "As the page says, ".to_string()),
                (1, 0, Part::Text, "it is so".to_string()),
                (1, 0, Part::Quote, "first quote".to_string()),
                (1, 1, Part::Quote, "second quote".to_string()),
            ]
        );
        let mut w = v.clone();
        set_response_text(Api::Messages, &mut w, key(1, 1, Part::Quote), "[redacted]");
        assert_eq!(w["content"][1]["citations"][1]["cited_text"], "[redacted]");
        assert_eq!(w["content"][1]["citations"][0]["cited_text"], "first quote");
        assert_eq!(w["content"][1]["text"], "it is so");
    }

    /// Tool results and earlier tool calls' arguments, for each API; not the other messages.
    #[test]
    fn tool_texts_are_the_results_and_arguments_of_tool_calls() {
        let file = "fn main() { println!(\"a file the agent read\"); }";
        let args = r#"{"path": "src/main.rs", "content": "fn f() {}"}"#;
        let chat = json!({"tools": [{"type": "function"}], "messages": [
            {"role": "user", "content": "please edit the file for me now"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "write", "arguments": args}}]},
            {"role": "tool", "tool_call_id": "c", "content": file},
        ]});
        assert_eq!(
            request_tool_texts(Api::ChatCompletions, &chat),
            [args, file]
        );
        assert!(offers_tools(&chat));
        let messages = json!({"messages": [
            {"role": "user", "content": "please edit the file for me now"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "write",
                "input": {"path": "src/main.rs", "content": "fn f() { body(); }"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                "content": [{"type": "text", "text": file}]}]},
        ]});
        let got = request_tool_texts(Api::Messages, &messages);
        assert!(got.contains(&"fn f() { body(); }".to_string()) && got.contains(&file.to_string()));
        assert!(!got.iter().any(|t| t.contains("please edit")), "{got:?}");
        assert!(!offers_tools(&messages));
        let responses = json!({"input": [
            {"role": "user", "content": "please edit the file for me now"},
            {"type": "function_call", "call_id": "c", "name": "write", "arguments": args},
            {"type": "function_call_output", "call_id": "c", "output": file},
        ]});
        assert_eq!(request_tool_texts(Api::Responses, &responses), [args, file]);
    }

    fn chunk(delta: Value, finish: Value) -> String {
        json!({"id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
        .to_string()
    }

    #[test]
    fn lite_chunks_are_text_or_argument_deltas_only_and_agree_with_the_general_path() {
        let call = |i: u64, args: &str| json!({"index": i, "function": {"arguments": args}});
        for (delta, finish, lite) in [
            (
                json!({"tool_calls": [call(2, "{\"path\": \"a.rs\"")]}),
                Value::Null,
                true,
            ),
            (
                json!({"content": null, "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "write", "arguments": "{\"p"}}]}),
                Value::Null,
                true,
            ),
            (json!({"tool_calls": [call(0, "")]}), Value::Null, false),
            (
                json!({"tool_calls": [call(0, "x"), call(1, "y")]}),
                Value::Null,
                false,
            ),
            (
                json!({"content": "a", "tool_calls": [call(0, "x")]}),
                Value::Null,
                false,
            ),
            (
                json!({"content": "", "tool_calls": [call(0, "x")]}),
                Value::Null,
                false,
            ),
            (
                json!({"tool_calls": [call(0, "x")]}),
                json!("tool_calls"),
                false,
            ),
            (
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "x", "extra": 1}}]}),
                Value::Null,
                false,
            ),
            (json!({"content": "hello \"world\"\n"}), Value::Null, true),
            (
                json!({"role": "assistant", "content": "hi"}),
                Value::Null,
                true,
            ),
            (json!({"content": ""}), Value::Null, false),
            (json!({"content": "bye"}), json!("stop"), false),
            (
                json!({"content": "x", "tool_calls": []}),
                Value::Null,
                false,
            ),
            (json!({"tool_calls": []}), Value::Null, false),
            (json!({"reasoning_content": "hmm"}), Value::Null, false),
            (json!({"content": "x", "refusal": null}), Value::Null, false),
        ] {
            let d = chunk(delta.clone(), finish);
            let got = LiteChunk::parse(&d);
            assert_eq!(got.is_some(), lite, "{d}");
            let Some(l) = got else { continue };
            let v: Value = serde_json::from_str(&d).unwrap();
            let general = event_pieces(Api::ChatCompletions, &v);
            let (k, t) = l.piece();
            assert_eq!(general.len(), 1);
            assert_eq!((general[0].key, general[0].text.as_str()), (k, t));
            let (mut a, mut b) = (StreamMeta::default(), StreamMeta::default());
            a.observe(Api::ChatCompletions, &v);
            b.observe_lite(&l);
            assert_eq!(
                (
                    &a.id,
                    &a.created,
                    &a.model,
                    &a.object,
                    &a.system_fingerprint,
                    &a.indexes
                ),
                (
                    &b.id,
                    &b.created,
                    &b.model,
                    &b.object,
                    &b.system_fingerprint,
                    &b.indexes
                )
            );
        }
        // Two choices are not lite.
        let two = json!({"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]});
        assert!(LiteChunk::parse(&two.to_string()).is_none());
    }
}
