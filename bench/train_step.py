"""Training-step throughput and MFU: scratchlm's step against a step written the nanoGPT way.

First measures this device's matmul peak in the step's dtype (the MFU denominator; on a GPU
8192^3 bf16 products, also the data sheet's peak beside it). Then, per shape, both do the same
work per step on the same random batches, copied from CPU memory as a loader would (pinned,
non-blocking on a GPU): forward under autocast (bf16 on a GPU by default), backward, clip to
1.0, AdamW, zero_grad. Ours is what `Trainer.train_step` does: our GPT, our autocast and
batch copy (scratchlm.device), make_optimizer's AdamW (fused), our gradient clipping, and the
step's loss and gradient norm read back to the CPU (the loop checks them every step). The
baseline is nanoGPT's model (bench/baselines.py) and train.py's calls: fused AdamW on CUDA
only, nothing read back. `--compile` compiles both models. Rounds alternate A and B; best
round each. Prints JSON (and writes it to --out).

    python bench/train_step.py [--shapes shakespeare-char,10m,124m] [--rounds 3]
    python bench/train_step.py --device cuda --shapes 124m --block-size 1024 --batch 16 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
from baselines import NanoGPT, report

from scratchlm.config import ModelConfig, PretrainSettings
from scratchlm.device import DTYPES, resolve_device, to_device
from scratchlm.model.gpt import GPT
from scratchlm.train.distributed import clip_grad_norm
from scratchlm.train.mfu import GPU_PEAKS, measure_matmul_peak
from scratchlm.train.optim import make_optimizer

SHAPES = {  # nanoGPT's CPU shakespeare_char recipe, the 10M GPU recipe, GPT-2 small
    "shakespeare-char": dict(
        vocab_size=66, block_size=64, n_layer=4, n_head=4, n_embd=128, batch=12, steps=40
    ),
    "10m": dict(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384, batch=8, steps=4),
    "124m": dict(
        vocab_size=50304, block_size=256, n_layer=12, n_head=12, n_embd=768, batch=4, steps=2
    ),
}


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours_step(model, opt, x, y, device, dtype) -> None:
    x, y = to_device(x, device), to_device(y, device)
    with autocast(device, dtype):
        _, loss = model(x, y)
    loss.backward()
    clip_grad_norm(list(model.parameters()), 1.0)  # reads the norm back: the loop's one wait
    loss.item()  # then the loss, for the finiteness check and the log line
    opt.step()
    opt.zero_grad()


def nanogpt_step(model, opt, x, y, device, dtype) -> None:
    if device.type == "cuda":  # train.py's get_batch
        x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)  # fmt: skip
    with autocast(device, dtype):
        _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def nanogpt_optimizer(model: NanoGPT, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda"  # nanoGPT: fused only on CUDA
    return torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), fused=fused)


def bench_shape(key: str, args: argparse.Namespace, device, dtype, peak: float) -> dict:
    shape = dict(SHAPES[key])
    batch, steps = shape.pop("batch"), shape.pop("steps")
    batch, steps = args.batch or batch, args.steps or steps
    shape["block_size"] = args.block_size or shape["block_size"]
    torch.manual_seed(0)
    ours = GPT(ModelConfig(**shape, bias=False)).to(device).train()
    base = NanoGPT(**shape, bias=False).to(device).train()
    opts = {
        "scratchlm": make_optimizer(ours, PretrainSettings(), device),
        "nanogpt_way": nanogpt_optimizer(base, device),
    }
    models = {"scratchlm": ours, "nanogpt_way": base}
    if args.compile:
        models = {name: torch.compile(m) for name, m in models.items()}
    runs = {"scratchlm": ours_step, "nanogpt_way": nanogpt_step}
    gen = torch.Generator().manual_seed(0)
    xy = [
        torch.randint(shape["vocab_size"], (batch, shape["block_size"] + 1), generator=gen)
        for _ in range(steps)
    ]
    batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in xy]
    warmup = {}
    for name, fn in runs.items():  # the first steps compile (with --compile) and allocate
        start = time.perf_counter()
        for x, y in batches[:2]:
            fn(models[name], opts[name], x, y, device, dtype)
        synchronize(device)
        warmup[name] = round(time.perf_counter() - start, 1)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for name, fn in runs.items():
            synchronize(device)
            start = time.perf_counter()
            for x, y in batches:
                fn(models[name], opts[name], x, y, device, dtype)
            synchronize(device)
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    tokens = batch * shape["block_size"]
    flops = ours.flops_per_token()
    tok_s = {n: round(tokens / t) for n, t in best.items()}
    result = {
        "batch": batch,
        "block_size": shape["block_size"],
        "tokens_per_step": tokens,
        "steps_per_round": steps,
        "warmup_seconds": warmup,
        "tokens_per_second": tok_s,
        "mfu": {n: round(flops * v / peak, 3) for n, v in tok_s.items()},
        "ratio_scratchlm_over_nanogpt_way": round(best["nanogpt_way"] / best["scratchlm"], 3),
    }
    if device.type == "cuda":
        result["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 2)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda if there is one)")
    ap.add_argument(
        "--dtype", default="auto", help="float32 or bfloat16 autocast (auto: bf16 on CUDA)"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--batch", type=int, default=0, help="sequences per step (0: the shape's)")
    ap.add_argument("--block-size", type=int, default=0, help="context (0: the shape's)")
    ap.add_argument("--steps", type=int, default=0, help="steps per round (0: the shape's)")
    ap.add_argument("--peak-size", type=int, default=0, help="matmul size for the peak")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    device = resolve_device(args.device, "--device")
    if args.dtype == "auto":
        args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    dtype = DTYPES[args.dtype]
    size = args.peak_size or (8192 if device.type == "cuda" else 1024)
    peak = max(measure_matmul_peak(device, size, 1.0, dtype) for _ in range(3))
    result = {
        "bench": "train_step",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "compile": args.compile,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        f"{args.dtype}_matmul_peak_tflops": round(peak / 1e12, 3),
        "matmul_size": size,
    }
    if device.type == "cuda":
        sheet = next((v for k, v in GPU_PEAKS.items() if k in result["device"]), None)
        result["datasheet_bf16_peak_tflops"] = sheet and round(sheet / 1e12)
    for key in args.shapes.split(","):
        result[key] = bench_shape(key, args, device, dtype, peak)
    report(result, args.out)


if __name__ == "__main__":
    main()
