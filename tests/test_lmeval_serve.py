"""EleutherAI's lm-eval against `scratchlm serve`, as its users run it: `local-completions`
(log-likelihoods from echoed prompt logprobs; token-id and text requests, batched) gives every
choice the log-likelihood `scratchlm eval` gives it, and `local-chat-completions` generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from serving import running_server
from test_eval import lm_eval_items

from scratchlm import runs
from scratchlm.eval.choice import load_items, score_items
from scratchlm.eval.lmeval import lm_eval_task

pytest.importorskip("lm_eval")
pytest.importorskip("tenacity", reason="lm-eval's API models need its [api] extra: pip install 'lm-eval[api]'")  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_run: Path) -> str:
    with running_server(tiny_run, "--max-batch", "8") as url:
        yield url


def lm_eval(tmp: Path, model: str, model_args: str, task: str, *extra: str) -> list[dict]:
    """Run the lm_eval command; its logged samples, by document."""
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                        "HF_HOME": str(tmp / "hf_home"), "OPENAI_API_KEY": "unused"}  # fmt: skip
    out = tmp / f"out-{model}"
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", model, "--model_args", model_args,
           "--tasks", task, "--include_path", str(tmp / "tasks"), "--output_path", str(out),
           "--log_samples", *extra]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (samples,) = out.rglob(f"samples_{task}_*.jsonl")
    return sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda r: r["doc_id"])  # fmt: skip


@pytest.mark.parametrize("tokenized", [True, False], ids=["token-ids", "text"])
def test_local_completions_scores_like_scratchlm_eval(server, tiny_run, tmp_path, tokenized):
    items = lm_eval_items(tmp_path / "items.jsonl")
    lm_eval_task(items, "scratchlm_items", tmp_path / "tasks")
    args = (f"model=tiny,base_url={server}/v1/completions,tokenizer_backend=remote,"
            f"tokenized_requests={tokenized},num_concurrent=2,max_retries=1,max_length=512")  # fmt: skip
    theirs = lm_eval(tmp_path, "local-completions", args, "scratchlm_items", "--batch_size", "4")
    theirs_ll = [[float(ll) for ll, _ in r["filtered_resps"]] for r in theirs]
    loaded = runs.load_model(tiny_run)
    ours = score_items(loaded.model, loaded.tokenizer, load_items(str(items))[0])
    worst = max(abs(a - b) for x, y in zip(ours.loglik, theirs_ll, strict=True) for a, b in zip(x, y, strict=True))  # fmt: skip
    assert worst < 1e-5, worst
    assert ours.correct == [int(r["acc"]) for r in theirs]
    assert ours.correct_norm == [int(r["acc_norm"]) for r in theirs]


def test_local_chat_completions_generates_what_the_server_answers(server, tmp_path):
    questions = ["What does the for statement do?", "Hello", "Explain if", "Say something"]
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "x"}) + "\n" for q in questions))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "scratchlm_chat.yaml").write_text(
        "\n".join([
            "task: scratchlm_chat", "dataset_path: json",
            f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}",
            "test_split: test", "output_type: generate_until", 'doc_to_text: "{{question}}"',
            'doc_to_target: "{{answer}}"',
            "generation_kwargs: {until: ['\\n\\n'], max_gen_toks: 12, do_sample: false, temperature: 0}",
            "metric_list:", "  - {metric: exact_match, aggregation: mean, higher_is_better: true}", "",
        ])
    )  # fmt: skip
    args = f"model=tiny,base_url={server}/v1/chat/completions,max_retries=1,tokenizer_backend=none"
    samples = lm_eval(tmp_path, "local-chat-completions", args, "scratchlm_chat", "--apply_chat_template")  # fmt: skip
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    for q, sample in zip(questions, samples, strict=True):
        mine = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}], max_tokens=12, temperature=0, stop=["\n\n"], seed=1234)  # fmt: skip
        assert sample["resps"][0][0] == mine.choices[0].message.content
