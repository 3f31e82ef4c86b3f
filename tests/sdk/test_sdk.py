"""The official OpenAI and Anthropic Python SDKs, pointed at `verbatim serve` by changing only
their base URL, against a mock provider. The SDKs must raise nothing on our outputs and expose
the finish/stop reason and the annotation."""

import json
import os

import anthropic
import openai
import pytest

import mock_upstream as mock
import verbatim_proc

ROOT = verbatim_proc.ROOT


def serve(*extra):
    """`verbatim serve` with the fixture index (and `extra` arguments) in front of a fresh mock
    upstream, for a module-scoped fixture to yield from."""
    upstream = mock.start()
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    try:
        p, addr = verbatim_proc.start(["--index", os.path.join(ROOT, "tests/fixtures/index-v5"), *extra,
                                       "--upstream-openai", url, "--upstream-anthropic", url],
                                      extra_env={"RUST_LOG": "info"})
    except RuntimeError as e:
        pytest.fail(str(e))
    yield addr
    p.terminate()
    p.wait(timeout=10)
    upstream.shutdown()


@pytest.fixture(scope="module")
def proxy():
    yield from serve()


def oa(addr):
    return openai.OpenAI(base_url=f"http://{addr}/v1", api_key="sk-test", max_retries=0, timeout=20)


def an(addr):
    return anthropic.Anthropic(base_url=f"http://{addr}", api_key="sk-ant-test", max_retries=0, timeout=20)


def chat_stream(addr, marker):
    chunks = list(oa(addr).chat.completions.create(
        model="mock-model", stream=True, messages=[{"role": "user", "content": f"write {marker}"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_openai_stream_passthrough(proxy):
    chunks, text = chat_stream(proxy, "PLAIN")
    assert text == mock.INTRO + mock.UNRELATED + mock.OUTRO
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_stream_block(proxy):
    chunks, text = chat_stream(proxy, "COPY")
    assert "Oduya" not in text and mock.INTRO.startswith(text)
    last = chunks[-1].choices[0]
    assert last.finish_reason == "content_filter"
    cfr = last.model_extra["content_filter_results"]["protected_material_text"]
    assert cfr["filtered"] is True and cfr["citation"]["URL"].endswith("chapter-01.md")
    assert "LicenseRef-Acme-Proprietary" in chunks[-1].model_extra["verbatim"]["explanation"]


def test_openai_stream_annotate(proxy):
    chunks, text = chat_stream(proxy, "SHORT")
    assert text == mock.INTRO + mock.SHORT + mock.OUTRO
    notes = [c.choices[0].model_extra["content_filter_results"] for c in chunks
             if c.choices and (c.choices[0].model_extra or {}).get("content_filter_results")]
    assert len(notes) == 1
    assert notes[0]["protected_material_text"]["citation"]["URL"].endswith("chapter-02.md")


def test_openai_non_streaming(proxy):
    c = oa(proxy)
    r = c.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "COPY"}])
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content == mock.INTRO
    r = c.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "SHORT"}])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["content_filter_results"]["protected_material_text"]["detected"] is True
    r = c.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "PLAIN"}])
    assert r.choices[0].message.content == mock.INTRO + mock.UNRELATED + mock.OUTRO
    assert r.usage.total_tokens == 35


def test_openai_other_endpoints_pass_through(proxy):
    models = oa(proxy).models.list()
    assert [m.id for m in models.data] == ["mock-model"]


def test_openai_responses_streamed_and_whole(proxy):
    c = oa(proxy)
    events = list(c.responses.create(model="mock-model", input="write PLAIN", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == mock.INTRO + mock.UNRELATED + mock.OUTRO
    events = list(c.responses.create(model="mock-model", input="write COPY", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "Oduya" not in text and mock.INTRO.startswith(text)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "content_filter"
    r = c.responses.create(model="mock-model", input="write COPY")
    assert "Oduya" not in r.output_text
    assert r.incomplete_details.reason == "content_filter"
    r = c.responses.create(model="mock-model", input="write PLAIN")
    assert r.output_text == mock.INTRO + mock.UNRELATED + mock.OUTRO


def test_openai_background_response_is_scanned_when_fetched(proxy):
    # `background: true` answers at once with no output; the answer is fetched by id — whole,
    # or streamed — and is scanned there (it passed through unscanned before 2026-12-07).
    c = oa(proxy)
    queued = c.responses.create(model="mock-model", input="write COPY", background=True)
    assert queued.status == "queued" and queued.output == []
    r = c.responses.retrieve(queued.id)
    assert "Oduya" not in r.output_text
    assert r.incomplete_details.reason == "content_filter"
    events = list(c.responses.retrieve(queued.id, stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "Oduya" not in text and mock.INTRO.startswith(text)
    assert events[-1].type == "response.incomplete"
    plain = c.responses.create(model="mock-model", input="write PLAIN", background=True)
    assert c.responses.retrieve(plain.id).output_text == mock.INTRO + mock.UNRELATED + mock.OUTRO


def test_openai_stored_answers_listed_are_scanned(proxy):
    # A blocked answer stays stored at the provider; listing stored completions or reading a
    # conversation's items gave it back (passed through before 2026-12-07, ninth session).
    c = oa(proxy)
    stored = c.chat.completions.list().data
    assert stored[0].choices[0].message.content == mock.INTRO + mock.UNRELATED + mock.OUTRO
    copied = stored[1].choices[0]
    assert "Oduya" not in copied.message.content and copied.finish_reason == "content_filter"
    user, assistant = c.conversations.items.list("conv_mock").data
    assert user.content[0].text == mock.COPIED, "the user's own message is not the model's text"
    assert "Oduya" not in assistant.content[0].text and assistant.status == "incomplete"


def test_openai_batch_output_file_is_scanned_and_other_files_pass(proxy):
    c = oa(proxy)
    lines = [json.loads(l) for l in c.files.content("file-batch-output").text.splitlines()]
    plain, copy = (l["response"]["body"]["choices"][0] for l in lines)
    assert plain["message"]["content"] == mock.INTRO + mock.UNRELATED + mock.OUTRO
    assert "Oduya" not in copy["message"]["content"] and copy["finish_reason"] == "content_filter"
    assert c.files.content("file-other").content == bytes(range(256)) * 300


def test_anthropic_batch_results_come_through_the_proxy_and_are_scanned(proxy):
    # The SDK fetches a batch's `results_url` as the provider gives it — straight to the
    # provider, round the proxy. Verbatim points it back at itself, and scans each result.
    c = an(proxy)
    params = lambda marker: {"model": "mock-model", "max_tokens": 100,
                             "messages": [{"role": "user", "content": f"write {marker}"}]}
    batch = c.messages.batches.create(requests=[{"custom_id": "copy", "params": params("COPY")},
                                                {"custom_id": "plain", "params": params("PLAIN")}])
    assert c.messages.batches.retrieve(batch.id).results_url.startswith(f"http://{proxy}/v1/messages/batches/")
    results = {r.custom_id: r.result for r in c.messages.batches.results(batch.id)}
    copy = results["copy"].message
    assert "Oduya" not in copy.content[0].text and copy.stop_reason == "refusal"
    assert results["plain"].message.content[0].text == mock.INTRO + mock.UNRELATED + mock.OUTRO


def test_azure_openai_deployment_paths_are_scanned(proxy):
    # Azure OpenAI's SDK client posts to /openai/deployments/{deployment}/chat/completions with
    # an `api-key` header: that path passed through unscanned before 2026-12-07 (ninth session).
    c = openai.AzureOpenAI(azure_endpoint=f"http://{proxy}", api_version="2024-10-21", api_key="azure-test-key",
                           max_retries=0, timeout=20)
    chunks = list(c.chat.completions.create(model="mock-model", stream=True,
                                            messages=[{"role": "user", "content": "write COPY"}]))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert "Oduya" not in text and mock.INTRO.startswith(text)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    r = c.chat.completions.create(model="mock-model", messages=[{"role": "user", "content": "write PLAIN"}])
    assert r.choices[0].message.content == mock.INTRO + mock.UNRELATED + mock.OUTRO


def test_openai_legacy_completions(proxy):
    c = oa(proxy)
    chunks = list(c.completions.create(model="mock-model", prompt="write COPY", stream=True))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert "Oduya" not in text and mock.INTRO.startswith(text)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    r = c.completions.create(model="mock-model", prompt="write COPY")
    assert r.choices[0].finish_reason == "content_filter" and "Oduya" not in r.choices[0].text
    r = c.completions.create(model="mock-model", prompt="write PLAIN")
    assert r.choices[0].text == mock.INTRO + mock.UNRELATED + mock.OUTRO


def test_anthropic_stream_passthrough_and_helpers(proxy):
    with an(proxy).messages.stream(model="mock-model", max_tokens=100,
                                   messages=[{"role": "user", "content": "PLAIN"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == mock.INTRO + mock.UNRELATED + mock.OUTRO
    assert final.stop_reason == "end_turn"


def test_anthropic_stream_block(proxy):
    with an(proxy).messages.stream(model="mock-model", max_tokens=100,
                                   messages=[{"role": "user", "content": "COPY"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert "Oduya" not in text and mock.INTRO.startswith(text)
    assert final.stop_reason == "refusal"


def test_anthropic_stream_annotate(proxy):
    events = list(an(proxy).messages.create(model="mock-model", max_tokens=100, stream=True,
                                            messages=[{"role": "user", "content": "SHORT"}]))
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == mock.INTRO + mock.SHORT + mock.OUTRO
    delta = [e for e in events if e.type == "message_delta"][0]
    assert delta.delta.stop_reason == "end_turn"
    finding = delta.model_extra["verbatim"]["findings"][0]
    assert finding["doc"].endswith("chapter-02.md") and finding["license"] == "LicenseRef-Acme-Proprietary"


def test_bare_code_in_a_chat_answer_is_blocked(proxy):
    # The GPL fixture file pasted into the answer without a Markdown fence: read as code too
    # (not only as prose), so its copy is blocked before it goes out, in both SDKs' streams.
    answer = mock.BARE_INTRO + mock.LEDGER
    chunks, text = chat_stream(proxy, "BARE-CODE")
    assert "total_owed" not in text and answer.startswith(text)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    with an(proxy).messages.stream(model="mock-model", max_tokens=1000,
                                   messages=[{"role": "user", "content": "BARE-CODE"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert "total_owed" not in text and answer.startswith(text)
    assert final.stop_reason == "refusal"


def test_anthropic_non_streaming(proxy):
    c = an(proxy)
    r = c.messages.create(model="mock-model", max_tokens=100, messages=[{"role": "user", "content": "COPY"}])
    assert r.stop_reason == "refusal"
    assert r.content[0].text == mock.INTRO
    r = c.messages.create(model="mock-model", max_tokens=100, messages=[{"role": "user", "content": "PLAIN"}])
    assert r.stop_reason == "end_turn" and r.content[0].text == mock.INTRO + mock.UNRELATED + mock.OUTRO


def test_anthropic_citation_quotes_are_scanned(proxy):
    # A web-search citation quoting unrelated text passes; the SDK's accumulated block has it.
    with an(proxy).messages.stream(model="mock-model", max_tokens=100,
                                   messages=[{"role": "user", "content": "CITE-CLEAN"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert final.stop_reason == "end_turn" and text == mock.INTRO + mock.UNRELATED + mock.OUTRO
    assert final.content[0].citations[0].cited_text == mock.UNRELATED
    # Quoting a protected passage: blocked at the quote, nothing of it reaches the SDK.
    with an(proxy).messages.stream(model="mock-model", max_tokens=100,
                                   messages=[{"role": "user", "content": "CITE-PROTECTED"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "refusal"
    assert "Oduya" not in final.model_dump_json()
    r = an(proxy).messages.create(model="mock-model", max_tokens=100,
                                  messages=[{"role": "user", "content": "CITE-PROTECTED"}])
    assert r.stop_reason == "refusal"
    assert "Oduya" not in r.model_dump_json()


# Tool calls. A coding agent's write tool gets a GPL file (the fixture's ledger.rs) as JSON
# arguments. Under the built-in policy the copy is blocked; under a policy that redacts code,
# the SDKs' own accumulation of the streamed arguments (and of the whole responses) must give
# JSON with the path intact and the copied code replaced by a placeholder.

TOOLS_OA = [{"type": "function", "function": {"name": "write_file", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}}]
TOOLS_AN = [{"name": "write_file", "input_schema": {
    "type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def redacting_proxy(tmp_path_factory):
    policy = tmp_path_factory.mktemp("policy") / "redact-code.toml"
    policy.write_text('version = 1\nname = "redact-code"\n[defaults]\naction = "annotate"\n'
                      '[[rules]]\nname = "redact-code"\naction = "redact"\n'
                      'when = { kind = ["exact", "renamed", "near"], source = ["code"] }\n')
    yield from serve("--policy", str(policy))


def assert_redacted(args):
    assert args["path"] == "src/ledger.rs"
    assert "[verbatim: redacted" in args["content"]
    for copied in ("shillings", "Column::Owed", "total_owed"):
        assert copied not in args["content"], args["content"]


def test_openai_tool_call_copy_is_blocked_by_the_builtin_policy(proxy):
    chunks = list(oa(proxy).chat.completions.create(
        model="mock-model", stream=True, tools=TOOLS_OA, messages=[{"role": "user", "content": "TOOL"}]))
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices
                   for tc in (c.choices[0].delta.tool_calls or []))
    assert "shillings" not in args
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_openai_tool_call_arguments_stay_json_when_redacted(redacting_proxy):
    with oa(redacting_proxy).chat.completions.stream(
            model="mock-model", tools=TOOLS_OA, messages=[{"role": "user", "content": "TOOL"}]) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert final.choices[0].finish_reason == "tool_calls"
    assert_redacted(json.loads(final.choices[0].message.tool_calls[0].function.arguments))
    r = oa(redacting_proxy).chat.completions.create(
        model="mock-model", tools=TOOLS_OA, messages=[{"role": "user", "content": "TOOL"}])
    assert_redacted(json.loads(r.choices[0].message.tool_calls[0].function.arguments))


def test_anthropic_tool_use_input_stays_json_when_redacted(redacting_proxy):
    # The SDK parses the streamed `partial_json` as it arrives and builds the input from it.
    with an(redacting_proxy).messages.stream(model="mock-model", max_tokens=100, tools=TOOLS_AN,
                                             messages=[{"role": "user", "content": "TOOL"}]) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert_redacted(final.content[0].input)
    r = an(redacting_proxy).messages.create(model="mock-model", max_tokens=100, tools=TOOLS_AN,
                                            messages=[{"role": "user", "content": "TOOL"}])
    assert_redacted(r.content[0].input)

