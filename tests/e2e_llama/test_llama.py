"""Verbatim in front of a real model server (llama.cpp's llama-server with SmolLM2-135M), driven
by the official SDKs. Run by scripts/e2e-llama.sh, which builds the server."""

import os
import re
import socket
import subprocess
import time
import urllib.request

import sys

import anthropic
import openai
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "sdk"))
import verbatim_proc  # noqa: E402
PASSAGE = ("Marguerite Oduya kept the lighthouse on Carrow Point for eleven winters before she opened the "
           "ledger that her predecessor had hidden beneath the third stair. It was bound in green oilcloth "
           "and smelled of paraffin and salt, and every page was ruled into columns that nobody had asked for")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    port = free_port()
    llama = subprocess.Popen([os.environ["LLAMA_SERVER"], "-m", os.environ["LLAMA_MODEL"], "--port", str(port),
                              "--host", "127.0.0.1", "-c", "2048", "-t", "2", "--temp", "0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            break
        except Exception:
            time.sleep(0.5)
    else:
        llama.kill()
        pytest.fail("llama-server did not become healthy")
    # Caller-supplied runs are blocked here (not just logged) so that a model repeating the
    # prompt's passage exercises the block path against a real server.
    cfg = tmp_path_factory.mktemp("cfg") / "verbatim.toml"
    cfg.write_text('[rules]\ncaller_supplied = "block"\n')
    url = f"http://127.0.0.1:{port}"
    proxy, addr = verbatim_proc.start(["--config", str(cfg),
                                       "--index", os.path.join(ROOT, "tests/fixtures/index-v5"),
                                       "--upstream-openai", url, "--upstream-anthropic", url])
    yield addr, url
    proxy.terminate()
    llama.terminate()
    proxy.wait(timeout=10)
    llama.wait(timeout=10)


def test_openai_stream_and_non_stream_through_verbatim(servers):
    addr, _ = servers
    c = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="sk-none", max_retries=0, timeout=120)
    chunks = list(c.chat.completions.create(model="smollm2", stream=True, max_tokens=40, temperature=0,
                                             messages=[{"role": "user", "content": "Name three colours."}]))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip(), "the model produced no text"
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason in ("stop", "length", None)
    r = c.chat.completions.create(model="smollm2", max_tokens=20, temperature=0,
                                  messages=[{"role": "user", "content": "Say hello."}])
    assert r.choices[0].message.content


def test_anthropic_stream_through_verbatim(servers):
    addr, _ = servers
    c = anthropic.Anthropic(base_url=f"http://{addr}", api_key="none", max_retries=0, timeout=120)
    with c.messages.stream(model="smollm2", max_tokens=40,
                           messages=[{"role": "user", "content": "Name three animals."}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text.strip()
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_a_real_model_repeating_a_protected_passage_is_blocked(servers):
    addr, upstream = servers
    prompt = f"Repeat the following text exactly, word for word, and nothing else:\n\n{PASSAGE}"
    # What the model says without Verbatim (greedy decoding, so the same answer both times).
    direct = openai.OpenAI(base_url=f"{upstream}/v1", api_key="sk-none", max_retries=0, timeout=120)
    raw = direct.chat.completions.create(model="smollm2", max_tokens=120, temperature=0,
                                         messages=[{"role": "user", "content": prompt}]).choices[0].message.content
    words = re.findall(r"\w+", PASSAGE.lower())
    said = re.findall(r"\w+", raw.lower())
    # The model must actually repeat a run of at least t = 12 words (the index's guarantee) for
    # this test to mean anything; if it does not, the test fails and shows what it said.
    longest = longest_run(said, words)
    assert longest >= 12, f"the model did not repeat 12 words of the passage (longest run {longest}): {raw!r}"
    c = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="sk-none", max_retries=0, timeout=120)
    chunks = list(c.chat.completions.create(model="smollm2", stream=True, max_tokens=120, temperature=0,
                                             messages=[{"role": "user", "content": prompt}]))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].choices[0].finish_reason == "content_filter", text
    # Nothing of the run was released: no 12-word run of the passage reached the client.
    assert longest_run(re.findall(r"\w+", text.lower()), words) < 12, text


def longest_run(said, words):
    joined = " " + " ".join(words) + " "
    return max((n for i in range(len(said)) for n in range(1, len(said) - i + 1)
                if " " + " ".join(said[i:i + n]) + " " in joined), default=0)
