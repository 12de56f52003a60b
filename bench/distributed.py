"""Distributed training on CPU processes (gloo): DDP scaling and FSDP's per-rank memory.

1. Scaling: the same global batch (16 sequences of 128 tokens, 10 M model) on 1 process and
   on 2 (DDP), one thread per process. Each step is forward + backward (+ all-reduce) + clip +
   AdamW. efficiency = (tok/s on 2 processes) / (2 x tok/s on 1 process): 1.0 is perfect
   scaling; it cannot exceed 1 and drops with all-reduce time (and with cores shared by
   anything else).
2. Memory: the GPT-2 124M shape after one training step on 2 processes, per rank: bytes of
   parameters, gradients and AdamW state each rank holds (the local shards, summed), and the
   process's peak RSS. FSDP should hold about 1/2 of DDP's model-state bytes.

    python bench/distributed.py [--steps 6] [--skip-memory]

The driver starts each case with torchrun (`python -m torch.distributed.run`); the workers
are this same file with --worker. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time

import torch

from scratchlm.config import ModelConfig, ParallelSettings, PretrainSettings, build
from scratchlm.model.gpt import GPT
from scratchlm.train import distributed
from scratchlm.train.optim import make_optimizer

SHAPES = {
    "10m": dict(vocab_size=8192, block_size=128, n_layer=6, n_head=6, n_embd=384),
    "124m": dict(preset="gpt2-124m", vocab_size=50304, block_size=64),
}


def local_bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def rss_bytes() -> int:
    """Resident memory now (the peak above also counts the whole model built before sharding)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    p = ParallelSettings(strategy=args.strategy)
    d, device = distributed.setup(p, torch.device("cpu"))
    cfg = build(ModelConfig, SHAPES[args.shape] | {"dropout": 0.0}, "model.")
    torch.manual_seed(0)
    model = GPT(cfg)
    forward = distributed.parallelize(model, d, p, device)
    opt = make_optimizer(model, PretrainSettings(lr=1e-4), device)
    accum = args.global_batch // (args.micro_batch * d.dp_world)
    gen = torch.Generator().manual_seed(d.rank)

    def step() -> None:
        for micro in range(accum):
            x = torch.randint(cfg.vocab_size, (args.micro_batch, cfg.block_size), generator=gen)
            with distributed.no_sync(forward, micro == accum - 1):
                _, loss = forward(x, x)
                (loss / accum).backward()
        distributed.clip_grad_norm(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad()

    step()  # warm-up (allocations, DDP buckets, first gathers)
    distributed.barrier(d)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    distributed.barrier(d)
    seconds = (time.perf_counter() - start) / args.steps
    params = list(model.parameters())
    state = [v for s in opt.optimizers[0].state.values() for v in s.values() if v.dim() > 0]
    result = {
        "strategy": args.strategy if d.enabled else "one process",
        "processes": d.world,
        "threads_per_process": torch.get_num_threads(),
        "tokens_per_second": round(args.global_batch * cfg.block_size / seconds),
        "param_bytes_per_rank": local_bytes(params),
        "optimizer_state_bytes_per_rank": local_bytes(state),
        "peak_rss_mb_per_rank": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_mb_after_steps_per_rank": round(rss_bytes() / 2**20),
    }
    # Gradients exist only between backward and zero_grad: count them after backward.
    for micro in range(accum):
        x = torch.randint(cfg.vocab_size, (args.micro_batch, cfg.block_size), generator=gen)
        with distributed.no_sync(forward, micro == accum - 1):
            forward(x, x)[1].backward()
    result["grad_bytes_per_rank"] = local_bytes(p.grad for p in params if p.grad is not None)
    if d.main:
        print("RESULT " + json.dumps(result), flush=True)
    distributed.teardown()


def run_case(nproc: int, strategy: str, shape: str, steps: int, batch: int, micro: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={port}", __file__, "--worker"]
    cmd += [f"--strategy={strategy}", f"--shape={shape}", f"--steps={steps}"]
    cmd += [f"--global-batch={batch}", f"--micro-batch={micro}"]
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[0].removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--shape", default="10m")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    one = run_case(1, "ddp", "10m", args.steps, args.global_batch, args.micro_batch)
    two = run_case(2, "ddp", "10m", args.steps, args.global_batch, args.micro_batch)
    report = {
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "scaling": {
            "shape": "10m: 6 x 384, block 128, vocab 8192",
            "global_batch_sequences": args.global_batch,
            "one_process": one,
            "ddp_two_processes": two,
            "efficiency": round(two["tokens_per_second"] / (2 * one["tokens_per_second"]), 3),
        },
    }
    if not args.skip_memory:
        mem = {s: run_case(2, s, "124m", 1, 2, 1) for s in ("ddp", "fsdp")}
        model_state = {
            s: m["param_bytes_per_rank"]
            + m["grad_bytes_per_rank"]
            + m["optimizer_state_bytes_per_rank"]
            for s, m in mem.items()
        }
        report["memory_124m_two_processes"] = mem | {
            "model_state_bytes_per_rank": model_state,
            "fsdp_over_ddp": round(model_state["fsdp"] / model_state["ddp"], 3),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
