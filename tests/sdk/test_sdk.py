"""The official OpenAI and Anthropic Python SDKs, pointed at `verbatim serve` by changing only
their base URL, against a mock provider. The SDKs must raise nothing on our outputs and expose
the finish/stop reason and the annotation."""

import os

import anthropic
import openai
import pytest

import mock_upstream as mock
import verbatim_proc

ROOT = verbatim_proc.ROOT


@pytest.fixture(scope="module")
def proxy():
    upstream = mock.start()
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    try:
        p, addr = verbatim_proc.start(["--index", os.path.join(ROOT, "tests/fixtures/index-v2"),
                                       "--upstream-openai", url, "--upstream-anthropic", url],
                                      extra_env={"RUST_LOG": "info"})
    except RuntimeError as e:
        pytest.fail(str(e))
    yield addr
    p.terminate()
    p.wait(timeout=10)
    upstream.shutdown()


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


def test_anthropic_non_streaming(proxy):
    c = an(proxy)
    r = c.messages.create(model="mock-model", max_tokens=100, messages=[{"role": "user", "content": "COPY"}])
    assert r.stop_reason == "refusal"
    assert r.content[0].text == mock.INTRO
    r = c.messages.create(model="mock-model", max_tokens=100, messages=[{"role": "user", "content": "PLAIN"}])
    assert r.stop_reason == "end_turn" and r.content[0].text == mock.INTRO + mock.UNRELATED + mock.OUTRO
