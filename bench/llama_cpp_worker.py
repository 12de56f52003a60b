"""Run a GGUF file in llama.cpp (llama-cpp-python) and answer in JSON: the other side of the
GGUF tests (tests/test_gguf.py) and of bench/quantize.py's reference speed.

It runs under the Python that has llama_cpp (its own venv: llama-cpp-python is a peer, not a
dependency), so it imports nothing of scratchlm and nothing but the standard library besides.

    python bench/llama_cpp_worker.py JOB.json     # prints {"results": [...]}

JOB.json: {"model": "x.gguf", "n_ctx": 512, "threads": 1, "f32_cache": true, "jobs": [...]}, each
job one of
    {"kind": "tokenize", "text": "..."}                      -> {"ids": [...]}
    {"kind": "greedy", "ids": [...], "max_new": 32}          -> {"ids": [...], "stopped": bool}
    {"kind": "chat", "messages": [...], "max_new": 32}       -> {"text", "finish_reason"}
    {"kind": "decode_speed", "ids": [...], "new": 128, "rounds": 3}
                                                             -> {"tokens_per_second": [...]}
Greedy generation stops at an end-of-generation token (llama.cpp's EOS, EOT and the like).
"""

from __future__ import annotations

import json
import sys
import time

import llama_cpp

GGML_TYPE_F32 = 0


def greedy(llm: llama_cpp.Llama, ids: list[int], max_new: int) -> tuple[list[int], bool]:
    out: list[int] = []
    llm.reset()
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            return out, True
        out.append(int(token))
        if len(out) >= max_new:
            break
    return out, False


def decode_speed(llm: llama_cpp.Llama, ids: list[int], new: int) -> float:
    """Tokens per second after the first new token (the prompt's pass is not decoding)."""
    llm.reset()
    first = None
    n = 0
    for _ in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        n += 1
        if first is None:
            first = time.perf_counter()
        if n >= new:
            break
    return (n - 1) / (time.perf_counter() - first)


def run(job: dict, llm: llama_cpp.Llama) -> dict:
    kind = job["kind"]
    if kind == "tokenize":
        return {"ids": llm.tokenize(job["text"].encode(), add_bos=False, special=False)}
    if kind == "greedy":
        ids, stopped = greedy(llm, job["ids"], job["max_new"])
        return {"ids": ids, "stopped": stopped}
    if kind == "chat":
        llm.reset()
        reply = llm.create_chat_completion(
            job["messages"], temperature=0.0, top_k=1, max_tokens=job["max_new"]
        )
        choice = reply["choices"][0]
        return {"text": choice["message"]["content"], "finish_reason": choice["finish_reason"]}
    if kind == "decode_speed":
        speeds = [decode_speed(llm, job["ids"], job["new"]) for _ in range(job.get("rounds", 1))]
        return {"tokens_per_second": speeds}
    raise ValueError(f"unknown job kind {kind!r}")


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    cache = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if spec.get("f32_cache") else {}
    llm = llama_cpp.Llama(
        spec["model"],
        n_ctx=spec.get("n_ctx", 512),
        n_threads=spec.get("threads", 1),
        n_threads_batch=spec.get("threads", 1),
        verbose=False,
        **cache,
    )
    print(json.dumps({"results": [run(job, llm) for job in spec["jobs"]]}))


if __name__ == "__main__":
    main()
