"""The API contract real clients rely on, exercised with the official `openai` client and raw
HTTP on a real server: every completions and chat field, vLLM's tokenizer endpoints, refusals
that name the field, and the Prometheus metrics."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
import torch
from serving import running_server

from scratchlm import runs


@pytest.fixture(scope="module")
def server(tiny_run: Path) -> str:
    with running_server(tiny_run, "--max-batch", "8") as url:
        yield url


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def model(tiny_run: Path):
    return runs.load_model(tiny_run)


def tokenize(server: str, text: str) -> list[int]:
    return httpx.post(f"{server}/tokenize", json={"prompt": text}).json()["tokens"]


def greedy(client: openai.OpenAI, prompt, **kw):
    return client.completions.create(model="tiny", prompt=prompt, temperature=0, **kw)


def test_every_prompt_form_gives_the_same_greedy_text(server, client):
    ids = tokenize(server, "The for")
    text = greedy(client, "The for", max_tokens=8).choices[0].text
    assert greedy(client, ids, max_tokens=8).choices[0].text == text
    both = greedy(client, ["The for", "The if"], max_tokens=8).choices
    assert [c.index for c in both] == [0, 1] and both[0].text == text
    lists = greedy(client, [ids, tokenize(server, "The if")], max_tokens=8).choices
    assert [c.text for c in lists] == [c.text for c in both]


def test_echo_with_logprobs_covers_the_prompt_as_lm_eval_reads_it(server, client, model):
    """lm-eval's log-likelihood request: token ids, echo, logprobs=1, max_tokens 1 (or 0)."""
    ids = tokenize(server, "The for statement is used to iterate")
    r = greedy(client, ids, max_tokens=1, echo=True, logprobs=1).choices[0]
    lp = r.logprobs
    assert len(lp.tokens) == len(ids) + 1 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # fmt: skip
    with torch.no_grad():
        ref = model.model(torch.tensor([ids]))[0][0].log_softmax(-1)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=1e-4)
        best = int(ref[i - 1].argmax())
        assert max(lp.top_logprobs[i].values()) == pytest.approx(float(ref[i - 1, best]), abs=1e-4)  # fmt: skip
        assert model.tokenizer.decode([ids[i]]) in lp.top_logprobs[i]  # the chosen token too
    assert lp.token_logprobs[-1] == pytest.approx(float(ref[-1].max()), abs=1e-4)  # greedy's pick
    assert r.text.startswith(model.tokenizer.decode(ids))
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    zero = greedy(client, ids, max_tokens=0, echo=True, logprobs=5).choices[0]
    assert zero.logprobs.token_logprobs == lp.token_logprobs[:-1] and zero.text == model.tokenizer.decode(ids)  # fmt: skip
    assert all(len(t) <= 6 for t in zero.logprobs.top_logprobs[1:])  # 5 best + the chosen one


def test_n_seed_stop_and_penalties(server, client):
    three = client.completions.create(model="tiny", prompt="The ", max_tokens=12, n=3, seed=5)
    again = client.completions.create(model="tiny", prompt="The ", max_tokens=12, n=3, seed=5)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.text for c in three.choices] == [c.text for c in again.choices]
    assert len({c.text for c in three.choices}) > 1
    assert three.usage.prompt_tokens == len(tokenize(server, "The "))  # one prompt, 3 choices
    plain = greedy(client, "The ", max_tokens=30, frequency_penalty=0).choices[0].text
    assert greedy(client, "The ", max_tokens=30, frequency_penalty=2.0).choices[0].text != plain
    assert greedy(client, "The ", max_tokens=30, presence_penalty=2.0).choices[0].text != plain
    cut = plain[10:12]
    stopped = greedy(client, "The ", max_tokens=30, stop=[cut]).choices[0]
    assert stopped.text == plain[: plain.index(cut)] and stopped.finish_reason == "stop"


def test_streams_end_with_a_usage_chunk_when_asked(client):
    chunks = list(client.completions.create(model="tiny", prompt="The ", max_tokens=10, temperature=0, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].text for c in chunks[:-1]) == greedy(client, "The ", max_tokens=10).choices[0].text  # fmt: skip
    chat = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_completion_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chat[-1].choices == [] and 0 < chat[-1].usage.completion_tokens <= 6


def test_chat_fields_the_current_openai_client_sends(client):
    def reply(**kw):
        return client.chat.completions.create(model="tiny", temperature=0, **kw)

    system = reply(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}], max_completion_tokens=7)  # fmt: skip
    assert system.usage.completion_tokens <= 7
    parts = reply(messages=[{"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                            {"role": "user", "content": [{"type": "text", "text": "Hi there"}]}], max_completion_tokens=7)  # fmt: skip
    assert parts.choices[0].message.content == system.choices[0].message.content
    scored = reply(messages=[{"role": "user", "content": "Hi"}], max_tokens=5, logprobs=True, top_logprobs=3)  # fmt: skip
    content = scored.choices[0].logprobs.content
    assert len(content) == scored.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 3 and item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)  # fmt: skip
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
    with pytest.raises(openai.BadRequestError, match="image_url"):
        reply(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}])  # fmt: skip


@pytest.mark.parametrize(
    "endpoint, body, param",
    [("completions", {"prompt": "a", "logit_bias": {"1": 5}}, "logit_bias"),
     ("completions", {"prompt": "a", "suffix": "b"}, "suffix"),
     ("completions", {"prompt": "a", "best_of": 2}, "best_of"),
     ("completions", {"prompt": "a", "logprobs": 21}, "logprobs"),
     ("completions", {"prompt": [5, 99999]}, "prompt"),
     ("chat/completions", {"messages": [{"role": "user", "content": "a"}], "tools": []}, "tools"),
     ("chat/completions", {"messages": [{"role": "user", "content": "a", "name": "x"}]}, "messages.0.name"),
     ("chat/completions", {"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2}, "top_logprobs"),
     ("chat/completions", {"messages": [{"role": "user", "content": "a"}], "response_format": {"type": "json_object"}}, "response_format")],
)  # fmt: skip
def test_a_field_we_do_not_support_is_refused_by_name(server, endpoint, body, param):
    r = httpx.post(f"{server}/v1/{endpoint}", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_vllms_tokenizer_endpoints(server, model):
    tok = model.tokenizer
    info = httpx.get(f"{server}/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>" and "<|assistant|>" in info["chat_template"]
    r = httpx.post(f"{server}/tokenize", json={"prompt": "The for<|endoftext|>", "add_special_tokens": False}).json()  # fmt: skip
    assert r["tokens"] == tok.encode("The for") + [tok.eot_id] and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == 512
    chat = httpx.post(f"{server}/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()  # fmt: skip
    assert chat["tokens"][-1] == tok.special_tokens["<|assistant|>"]
    back = httpx.post(f"{server}/detokenize", json={"tokens": r["tokens"][:-1]}).json()
    assert back == {"prompt": "The for"}


def test_completions_hide_special_tokens_as_vllm_does(server, client, model):
    tok = model.tokenizer
    ids = [tok.eot_id, tok.special_tokens["<|user|>"], *tok.encode("The for")]
    echoed = greedy(client, ids, max_tokens=0, echo=True).choices[0].text
    assert echoed == "The for"
    # (generated special tokens: tests/test_engine.py, on a model that writes them)


def test_metrics_in_prometheus_text_format(server, client):
    def scrape() -> dict[str, float]:
        text = httpx.get(f"{server}/metrics").text
        assert "# TYPE scratchlm_time_to_first_token_seconds histogram" in text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}  # fmt: skip

    before = scrape()
    greedy(client, "The ", max_tokens=5)
    after = scrape()
    key = 'scratchlm_requests_total{endpoint="completions"}'
    assert after[key] == before.get(key, 0) + 1
    assert after["scratchlm_generation_tokens_total"] >= before["scratchlm_generation_tokens_total"] + 5  # fmt: skip
    assert after["scratchlm_time_to_first_token_seconds_count"] == before["scratchlm_time_to_first_token_seconds_count"] + 1  # fmt: skip
    assert after['scratchlm_e2e_request_latency_seconds_bucket{le="+Inf"}'] == after["scratchlm_e2e_request_latency_seconds_count"]  # fmt: skip
    assert (
        after["scratchlm_num_requests_running"] == 0 and "scratchlm_num_requests_waiting" in after
    )


def test_a_request_arriving_mid_stream_is_answered_before_the_stream_ends(server):
    """Continuous batching, seen from outside: a short request sent while a long stream is
    generating is complete before that stream's last chunk (by order of events, not time)."""
    url = f"{server}/v1/completions"
    body = {"prompt": "The ", "max_tokens": 400, "temperature": 0, "stream": True}
    order = []
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                break  # the long one is generating
        short = httpx.post(url, json={"prompt": "A", "max_tokens": 4, "temperature": 0}, timeout=60)  # fmt: skip
        order.append("short answered")
        for line in lines:
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["finish_reason"]:
                order.append("long finished")
    assert short.status_code == 200 and order == ["short answered", "long finished"]
