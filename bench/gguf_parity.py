"""Does llama.cpp run our GGUF export as we run the run itself? Token ids, greedy text, chat.

For each run: `export_run_gguf` (what `scratchlm export gguf` does), then in llama.cpp
(llama-cpp-python in its own venv, bench/llama_cpp_worker.py; f32 KV cache, 1 thread):
  - the token ids of N held-out snippets, against our tokenizer's;
  - greedy continuations of N prompts (held-out snippets' first words), against ours;
  - a chat run: replies to N user messages through the file's chat template, against ours
    (the same template, our generator), and whether each stopped at <|end|>.
Greedy texts may part where two tokens were near-tied (llama.cpp adds in another order); the
first step where they part and our top-two logit gap there are reported.

    python bench/gguf_parity.py [RUN ...] [--n 32] [--new-tokens 48] [--type f32]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from llama_cpp_worker import INSTALL, llama_cpp_python, run_llama_cpp

from scratchlm import runs
from scratchlm.eval.evaluate import default_heldout
from scratchlm.eval.perplexity import heldout_documents
from scratchlm.export.gguf import export_run_gguf
from scratchlm.infer.chat import reply_stop_ids
from scratchlm.infer.generate import Row, generate_rows
from scratchlm.infer.sampling import Sampling

DEFAULT_RUNS = ["work/demo/runs/demo", "work/demo/runs/demo-sft"]


def greedy(model, prompt: list[int], n: int, stop: frozenset[int]) -> tuple[list[int], bool]:
    row = Row(prompt, n, Sampling(temperature=0), stop_ids=stop)
    for _ in generate_rows(model, None, [row]):
        pass
    return row.tokens, row.finish_reason == "stop"


def gap_at(model, prompt: list[int], tokens: list[int], step: int) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens[:step]]))[0][0, -1]
    top = logits.topk(2).values
    return round(float(top[0] - top[1]), 5)


def snippets(run: Path, tok, n: int, words: int) -> list[str]:
    held = default_heldout(run.parent.parent / "runs" / run.name) or default_heldout(run)
    if held is None:
        raise SystemExit(f"{run}: no held-out tokens beside it (<work>/tokens)")
    docs = heldout_documents(held, tok)
    texts = []
    for i in range(n):
        doc = docs[i % len(docs)]
        start = (len(doc) * i) // n % max(1, len(doc) - 64)
        text = tok.decode(doc[start : start + 64])
        texts.append(" ".join(text.split(" ")[1 : 1 + words]))  # whole words, no cut token
    return texts


def compare_run(run: Path, n: int, new: int, kind: str) -> dict:
    loaded = runs.load_model(run)
    model, tok = loaded.model, loaded.tokenizer
    out = Path(tempfile.mkdtemp()) / f"{run.name}.gguf"
    export_run_gguf(run, out, kind)
    texts = snippets(run, tok, n, words=40)
    prompts = [" ".join(t.split(" ")[:6]) for t in texts]
    jobs = [{"kind": "tokenize", "text": t} for t in texts]
    jobs += [{"kind": "greedy", "ids": tok.encode(p), "max_new": new} for p in prompts]
    template = runs.saved_chat_template(run)
    if template is not None:
        jobs += [{"kind": "chat", "messages": [{"role": "user", "content": p}], "max_new": new} for p in prompts]  # fmt: skip
    res = run_llama_cpp(out, jobs, n_ctx=model.cfg.block_size, threads=1, f32_cache=True)
    result: dict = {"run": str(run), "type": kind, "file_mb": round(out.stat().st_size / 1e6, 2)}
    result["tokenization_equal"] = sum(r["ids"] == tok.encode(t) for t, r in zip(texts, res, strict=False))  # fmt: skip
    result["tokenization_of"] = n
    # the file's end-of-generation tokens: <|endoftext|>, and a chat run's <|end|> (EOT)
    stop = frozenset({tok.eot_id} | ({tok.special_tokens[template.end]} if template else set()))
    equal, parted = 0, []
    for p, r in zip(prompts, res[n : 2 * n], strict=True):
        ids, _ = greedy(model, tok.encode(p), new, stop)
        if r["ids"] == ids:
            equal += 1
            continue
        pairs = enumerate(zip(ids, r["ids"], strict=False))
        step = next((i for i, (a, b) in pairs if a != b), min(len(ids), len(r["ids"])))
        parted.append({"prompt": p, "step": step, "ours": tok.decode(ids[step:step + 3]), "llama_cpp": tok.decode(r["ids"][step:step + 3]), "our_top2_gap": gap_at(model, tok.encode(p), ids, step)})  # fmt: skip
    result |= {"greedy_equal": equal, "greedy_of": n, "greedy_parted": parted}
    if template is not None:
        stop = reply_stop_ids(template, tok)
        same, stopped_ours, stopped_theirs = 0, 0, 0
        for p, r in zip(prompts, res[2 * n :], strict=True):
            ids, _ = template.render(tok, [{"role": "user", "content": p}], True)
            reply, stopped = greedy(model, ids, new, stop)
            same += r["text"] == tok.decode(reply)
            stopped_ours += stopped
            stopped_theirs += r["finish_reason"] == "stop"
        result |= {"chat_equal": same, "chat_of": n, "chat_stopped": {"ours": stopped_ours, "llama_cpp": stopped_theirs}}  # fmt: skip
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="*", default=DEFAULT_RUNS)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--type", default="f32", choices=["f32", "f16", "q8_0"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    if llama_cpp_python() is None:
        print(json.dumps({"bench": "gguf_parity", "skipped": f"llama-cpp-python: {INSTALL}"}))
        return
    found = [Path(r) for r in args.runs if runs.is_run(r)]
    if not found:
        print(json.dumps({"bench": "gguf_parity", "skipped": f"no run folder among {args.runs} (make demo)"}))  # fmt: skip
        return
    results = [compare_run(r, args.n, args.new_tokens, args.type) for r in found]
    print(json.dumps({"bench": "gguf_parity", "load_average": os.getloadavg(), "runs": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
