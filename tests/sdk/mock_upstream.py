"""A mock provider (not a real one) for the SDK tests: answers OpenAI chat completions, legacy
completions, responses (also `background: true`, then fetched by id, whole or streamed), a list
of stored completions, a conversation's items and files (a batch's output, or other bytes), and Anthropic messages, streamed or not, and
message batches (created, retrieved, their results as JSON Lines), with a text chosen by a marker in the last user message
(a response's `input`, a completion's `prompt`):
COPY (a passage of corpora/fixtures/acme-books/chapter-01.md, long enough to block), SHORT (a
shorter passage of chapter-02.md, annotated), TOOL (a tool call whose arguments write
corpora/fixtures/gpl-code/src/ledger.rs, the GPL fixture file, in the order a model writes them:
path first), BARE-CODE (that file pasted into the answer after a line of prose, no Markdown
fence), CITE-CLEAN or CITE-PROTECTED (Anthropic: unrelated text whose block cites a web page,
quoting unrelated text or the COPY passage as the citation's `cited_text`), anything else
(unrelated text)."""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INTRO = "Here is a short story about a lighthouse, as you asked. "
OUTRO = " That is all I can write today, I am afraid."
COPIED = ("Marguerite Oduya kept the lighthouse on Carrow Point for eleven winters before she opened the "
          "ledger that her predecessor had hidden beneath the third stair. It was bound in green oilcloth "
          "and smelled of paraffin and salt, and every page was ruled into columns that nobody had asked for")
SHORT = ("Tobias Renwick had rowed the crossing to Carrow Point since he was fourteen, and in all that time "
         "he had never")
UNRELATED = ("The weather in the valley was mild all week, and the farmers planted their barley early because "
             "the soil had dried out sooner than anyone expected this spring.")


LEDGER = open(os.path.join(os.path.dirname(__file__), "../../corpora/fixtures/gpl-code/src/ledger.rs"),
              encoding="utf-8").read()
TOOL_ARGS = '{"path": "src/ledger.rs", "content": ' + json.dumps(LEDGER) + '}'
BARE_INTRO = "Here is the ledger module, with no formatting as you asked:\n\n"


def wants_tool(body):
    msgs = body.get("messages") or []
    last = msgs[-1]["content"] if msgs else ""
    return isinstance(last, str) and "TOOL" in last


def last_text(body):
    msgs = body.get("messages") or []
    last = msgs[-1]["content"] if msgs else (body.get("input") or body.get("prompt") or "")
    if isinstance(last, list):
        last = " ".join(p.get("text", "") for p in last if isinstance(p, dict))
    return last


def citation_for(body):
    """The web-search citation an Anthropic answer carries, if the request asks for one."""
    last = last_text(body)
    if "CITE-" not in last:
        return None
    quote = COPIED if "CITE-PROTECTED" in last else UNRELATED
    return {"type": "web_search_result_location", "cited_text": quote, "url": "https://example.org/story",
            "title": "A story", "encrypted_index": "enc"}


def answer_for(body):
    last = last_text(body)
    if "BARE-CODE" in last:
        return BARE_INTRO + LEDGER
    if "COPY" in last:
        return INTRO + COPIED + OUTRO
    if "SHORT" in last:
        return INTRO + SHORT + OUTRO
    return INTRO + UNRELATED + OUTRO


def pieces(text, n=7):
    return [text[i:i + n] for i in range(0, len(text), n)]


def response_object(rid, status, text):
    """A Responses API response object; its text only once `completed`."""
    item = {"id": "msg_mock", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    return {"id": rid, "object": "response", "created_at": 1700000000, "status": status, "model": "mock-model",
            "output": [item] if status == "completed" else [], "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [], "error": None, "incomplete_details": None,
            "instructions": None, "metadata": {}, "temperature": 1.0, "top_p": 1.0,
            "background": rid.startswith("resp_bg_")}


def response_events(rid, text):
    """The events of a streamed response."""
    out, n = [], 0
    def ev(data):
        nonlocal n
        data["sequence_number"] = n
        n += 1
        out.append(f"event: {data['type']}\ndata: {json.dumps(data)}\n\n")
    ev({"type": "response.created", "response": response_object(rid, "in_progress", text)})
    ev({"type": "response.output_item.added", "output_index": 0,
        "item": {"id": "msg_mock", "type": "message", "status": "in_progress", "role": "assistant", "content": []}})
    ev({"type": "response.content_part.added", "item_id": "msg_mock", "output_index": 0, "content_index": 0,
        "part": {"type": "output_text", "text": "", "annotations": []}})
    for p in pieces(text):
        ev({"type": "response.output_text.delta", "item_id": "msg_mock", "output_index": 0, "content_index": 0,
            "delta": p, "logprobs": []})
    part = {"type": "output_text", "text": text, "annotations": []}
    ev({"type": "response.output_text.done", "item_id": "msg_mock", "output_index": 0, "content_index": 0,
        "text": text, "logprobs": []})
    ev({"type": "response.content_part.done", "item_id": "msg_mock", "output_index": 0, "content_index": 0,
        "part": part})
    done = response_object(rid, "completed", text)
    ev({"type": "response.output_item.done", "output_index": 0, "item": done["output"][0]})
    ev({"type": "response.completed", "response": done})
    return "".join(out)


# Background responses by id: the text each will have.
BACKGROUND = {}
# Anthropic message batches by id: (custom_id, text) of each request.
BATCHES = {}


def chat_completion(text):
    return {"id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000, "model": "mock-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}}


def message_object(text, model="mock-model"):
    return {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 30}}


def batch_object(bid, origin):
    """A batch that has ended, its `results_url` on the provider's own origin (here the mock's),
    as Anthropic gives it: a client that fetches it as given goes round the proxy."""
    n = len(BATCHES.get(bid, []))
    return {"id": bid, "type": "message_batch", "processing_status": "ended",
            "request_counts": {"processing": 0, "succeeded": n, "errored": 0, "canceled": 0, "expired": 0},
            "created_at": "2026-12-07T00:00:00Z", "ended_at": "2026-12-07T00:01:00Z",
            "expires_at": "2026-12-08T00:00:00Z", "archived_at": None, "cancel_initiated_at": None,
            "results_url": f"{origin}/v1/messages/batches/{bid}/results"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes

    def log_message(self, *args):
        pass

    def send(self, status, ctype, body):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("x-request-id", "req_mock")
        self.end_headers()
        if isinstance(body, str):
            body = body.encode()
        self.wfile.write(body)

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path.startswith("/v1/responses/") and path.count("/") == 3:
            rid = path.rsplit("/", 1)[1]
            text = BACKGROUND.get(rid)
            if text is None:
                self.send(404, "application/json", json.dumps({"error": {"message": "no such response", "type": "not_found"}}))
            elif "stream=true" in query.split("&"):
                self.send(200, "text/event-stream", response_events(rid, text))
            else:
                self.send(200, "application/json", json.dumps(response_object(rid, "completed", text)))
        elif path.startswith("/v1/messages/batches/"):
            parts = path.split("/")
            bid = parts[4]
            origin = f"http://127.0.0.1:{self.server.server_address[1]}"
            if bid not in BATCHES:
                self.send(404, "application/json", json.dumps({"type": "error", "error": {"type": "not_found_error", "message": "no such batch"}}))
            elif len(parts) == 6 and parts[5] == "results":
                lines = [json.dumps({"custom_id": cid, "result": {"type": "succeeded", "message": message_object(t)}})
                         for cid, t in BATCHES[bid]]
                self.send(200, "application/binary", "\n".join(lines) + "\n")
            else:
                self.send(200, "application/json", json.dumps(batch_object(bid, origin)))
        elif path.startswith("/v1/files/") and path.endswith("/content"):
            # A batch's output file (JSON Lines of whole answers), or any other file.
            if path == "/v1/files/file-batch-output/content":
                lines = [json.dumps({"id": f"batch_req_{cid}", "custom_id": cid, "error": None,
                                     "response": {"status_code": 200, "request_id": "req_mock", "body": chat_completion(t)}})
                         for cid, t in [("plain", INTRO + UNRELATED + OUTRO), ("copy", INTRO + COPIED + OUTRO)]]
                self.send(200, "application/octet-stream", "\n".join(lines) + "\n")
            else:
                self.send(200, "application/octet-stream", bytes(range(256)) * 300)
        elif path == "/v1/chat/completions":
            # Stored completions, listed: one plain, one that copies the protected passage.
            self.send(200, "application/json", json.dumps({"object": "list", "data": [
                chat_completion(INTRO + UNRELATED + OUTRO), chat_completion(INTRO + COPIED + OUTRO)],
                "first_id": "chatcmpl-mock", "last_id": "chatcmpl-mock", "has_more": False}))
        elif path.startswith("/v1/conversations/") and path.endswith("/items"):
            # A conversation where the user quoted the passage and the model repeated it.
            def message(role, kind, text):
                return {"type": "message", "id": f"msg_{role}", "status": "completed", "role": role,
                        "content": [{"type": kind, "text": text, **({"annotations": []} if kind == "output_text" else {})}]}
            self.send(200, "application/json", json.dumps({"object": "list", "data": [
                message("user", "input_text", COPIED), message("assistant", "output_text", INTRO + COPIED + OUTRO)],
                "first_id": "msg_user", "last_id": "msg_assistant", "has_more": False}))
        elif self.path.startswith("/v1/models"):
            self.send(200, "application/json", json.dumps({"object": "list", "data": [{"id": "mock-model", "object": "model", "created": 0, "owned_by": "mock"}]}))
        else:
            self.send(404, "application/json", json.dumps({"error": {"message": "not found", "type": "not_found"}}))

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        text = answer_for(body)
        path = self.path.partition("?")[0]
        if path.startswith("/v1/chat/completions") or (
                path.startswith("/openai/deployments/") and path.endswith("/chat/completions")):
            # (Azure OpenAI's deployment path too.)
            self.chat(body, text)
        elif self.path.startswith("/v1/messages/batches"):
            bid = f"msgbatch_mock_{len(BATCHES)}"
            BATCHES[bid] = [(r["custom_id"], answer_for(r["params"])) for r in body.get("requests", [])]
            self.send(200, "application/json", json.dumps(batch_object(bid, f"http://127.0.0.1:{self.server.server_address[1]}")))
        elif self.path.startswith("/v1/messages"):
            self.messages(body, text)
        elif self.path.startswith("/v1/responses"):
            self.responses_api(body, text)
        elif self.path.startswith("/v1/completions"):
            self.completions(body, text)
        else:
            self.send(404, "application/json", json.dumps({"error": {"message": "not found", "type": "not_found"}}))

    def chat(self, body, text):
        base = {"id": "chatcmpl-mock", "created": 1700000000, "model": body.get("model", "mock-model")}
        if wants_tool(body):
            call = {"id": "call_mock", "type": "function", "function": {"name": "write_file", "arguments": TOOL_ARGS}}
            message, finish = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}, "tool_calls"
            first = {"role": "assistant", "content": None, "tool_calls": [{**call, "index": 0, "function": {"name": "write_file", "arguments": ""}}]}
            deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces(TOOL_ARGS, 11)]
        else:
            message, finish = {"role": "assistant", "content": text, "refusal": None}, "stop"
            first = {"role": "assistant", "content": ""}
            deltas = [{"content": p} for p in pieces(text)]
        if not body.get("stream"):
            self.send(200, "application/json", json.dumps({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}}))
            return
        out = []
        def chunk(delta, finish=None):
            out.append("data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}) + "\n\n")
        chunk(first)
        for d in deltas:
            chunk(d)
        chunk({}, finish)
        out.append("data: [DONE]\n\n")
        self.send(200, "text/event-stream", "".join(out))

    def responses_api(self, body, text):
        if body.get("background"):
            rid = f"resp_bg_{len(BACKGROUND)}"
            BACKGROUND[rid] = text
            self.send(200, "application/json", json.dumps(response_object(rid, "queued", text)))
        elif body.get("stream"):
            self.send(200, "text/event-stream", response_events("resp_mock", text))
        else:
            self.send(200, "application/json", json.dumps(response_object("resp_mock", "completed", text)))

    def completions(self, body, text):
        base = {"id": "cmpl-mock", "object": "text_completion", "created": 1700000000, "model": "mock-model"}
        if not body.get("stream"):
            self.send(200, "application/json", json.dumps({**base, "choices": [
                {"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}}))
            return
        out = ["data: " + json.dumps({**base, "choices": [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}]}) + "\n\n"
               for p in pieces(text)]
        out.append("data: " + json.dumps({**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}) + "\n\n")
        out.append("data: [DONE]\n\n")
        self.send(200, "text/event-stream", "".join(out))

    def messages(self, body, text):
        model = body.get("model", "mock-model")
        if wants_tool(body):
            block, stop = {"type": "tool_use", "id": "toolu_mock", "name": "write_file", "input": json.loads(TOOL_ARGS)}, "tool_use"
            start = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(TOOL_ARGS, 11)]
        else:
            block, stop = {"type": "text", "text": text}, "end_turn"
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces(text)]
            cite = citation_for(body)
            if cite is not None:
                block["citations"], start["citations"] = [cite], []
                deltas.insert(0, {"type": "citations_delta", "citation": cite})
        if not body.get("stream"):
            self.send(200, "application/json", json.dumps({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [block], "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 30}}))
            return
        out = []
        def ev(name, data):
            out.append(f"event: {name}\ndata: {json.dumps(data)}\n\n")
        ev("message_start", {"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}})
        ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": start})
        ev("ping", {"type": "ping"})
        for d in deltas:
            ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
        ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 30}})
        ev("message_stop", {"type": "message_stop"})
        self.send(200, "text/event-stream", "".join(out))


def start():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
