"""Run a GGUF file in llama.cpp (llama-cpp-python) and answer in JSON: the other side of the
GGUF tests (tests/test_gguf.py) and of bench/quantize.py's reference speed.

llama-cpp-python is a peer to compare with, not a dependency: it lives in its own venv, and
this file runs under that venv's Python, so it imports nothing of scratchlm (and nothing but
the standard library besides llama_cpp). `run_llama_cpp(...)` is the caller's side: it finds
that Python (LLAMA_CPP_PYTHON, else /work/venvs/llama/bin/python, else this Python if it has
llama_cpp) and runs this file in it.

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

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GGML_TYPE_F32 = 0
INSTALL = (
    "python3 -m venv /work/venvs/llama && "
    "CMAKE_ARGS=-DLLAVA_BUILD=OFF /work/venvs/llama/bin/pip install llama-cpp-python==0.3.36"
)


def llama_cpp_python() -> str | None:
    """A Python that can import llama_cpp, or None."""
    for candidate in (os.environ.get("LLAMA_CPP_PYTHON"), "/work/venvs/llama/bin/python"):
        if candidate and Path(candidate).is_file():
            return candidate
    return sys.executable if importlib.util.find_spec("llama_cpp") else None


def run_llama_cpp(model: str | Path, jobs: list[dict], timeout: float = 900, **options: Any):
    """Run `jobs` on the GGUF file `model` in llama.cpp; options: n_ctx, threads, f32_cache."""
    python = llama_cpp_python()
    if python is None:
        raise RuntimeError(f"llama-cpp-python is not installed; {INSTALL}")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"model": str(model), **options, "jobs": jobs}, f)
    try:
        done = subprocess.run(
            [python, __file__, f.name], capture_output=True, text=True, timeout=timeout
        )
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp failed on {model}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)["results"]


def greedy(llm, ids: list[int], max_new: int) -> tuple[list[int], bool]:
    import llama_cpp

    out: list[int] = []
    llm.reset()
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            return out, True
        out.append(int(token))
        if len(out) >= max_new:
            break
    return out, False


def decode_speed(llm, ids: list[int], new: int) -> float:
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


def run(job: dict, llm) -> dict:
    kind = job["kind"]
    if kind == "tokenize":
        return {"ids": llm.tokenize(job["text"].encode(), add_bos=False, special=False)}
    if kind == "greedy":
        ids, stopped = greedy(llm, job["ids"], job["max_new"])
        return {"ids": ids, "stopped": stopped}
    if kind == "chat":
        llm.reset()
        reply = llm.create_chat_completion(
            job["messages"],
            temperature=0.0,
            top_k=1,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
            max_tokens=job["max_new"],
        )
        choice = reply["choices"][0]
        return {
            "text": choice["message"]["content"],
            "finish_reason": choice["finish_reason"],
            "prompt_tokens": reply["usage"]["prompt_tokens"],
        }
    if kind == "decode_speed":
        speeds = [decode_speed(llm, job["ids"], job["new"]) for _ in range(job.get("rounds", 1))]
        return {"tokens_per_second": speeds}
    raise ValueError(f"unknown job kind {kind!r}")


def main() -> None:
    import llama_cpp

    with open(sys.argv[1]) as f:
        spec = json.load(f)
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
