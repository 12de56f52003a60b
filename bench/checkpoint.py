"""What checksummed checkpoints cost: saving (and verifying) a GPT-2-small training checkpoint.

A: `runs.save_checkpoint` (safetensors weights, state.pt with the AdamW moments, meta.json with
the sha256 of each file, fsynced and published atomically), then `runs.checkpoint_problem`
(every file hashed again, as a resume or a load does); `ours_checksum_s` is the hashing inside
the save (timed again on the saved folder). B, the baseline: the same two files written plainly
(`safetensors.save_file` + `torch.save`, nanoGPT's way: no fsync, no checksums). Rounds
alternate A and B; best round each. Prints JSON.

    python bench/checkpoint.py [--rounds 3] [--small]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from scratchlm import runs
from scratchlm.config import PretrainSettings
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.train.optim import make_optimizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--small", action="store_true", help="a 10M model instead of 124M")
    args = p.parse_args()
    torch.set_num_threads(1)
    shape = dict(n_layer=6, n_head=6, n_embd=384) if args.small else dict(n_layer=12, n_head=12, n_embd=768)  # fmt: skip
    model = GPT(ModelConfig(vocab_size=50304, block_size=1024, **shape))
    opt = make_optimizer(model, PretrainSettings(), torch.device("cpu"))
    x = torch.randint(0, 50304, (1, 32))
    model(x, x)[1].backward()
    opt.step()  # AdamW moments exist, as in a real checkpoint
    state = {"optimizer": opt.state_dict()}
    root = Path(tempfile.mkdtemp())
    ours, plain = [], []
    try:
        for i in range(args.rounds):
            t = time.perf_counter()
            ckpt = runs.save_checkpoint(root / "ours", i, model, {"model": {}}, state)
            saved = time.perf_counter() - t
            assert runs.checkpoint_problem(ckpt) is None
            verified = time.perf_counter() - t - saved
            t = time.perf_counter()
            runs.file_checksums(ckpt, skip={runs.META})
            ours.append((saved, verified, time.perf_counter() - t))
            t = time.perf_counter()
            folder = root / "plain" / f"step_{i:06d}"
            folder.mkdir(parents=True)
            save_file(runs.weights_for_saving(model), str(folder / runs.WEIGHTS))
            torch.save(state, folder / runs.STATE)
            plain.append(time.perf_counter() - t)
        size = sum(f.stat().st_size for f in ckpt.iterdir())
    finally:
        shutil.rmtree(root)
    best = min(ours, key=lambda r: r[0])
    print(json.dumps({
        "checkpoint_bytes": size,
        "ours_save_s": round(best[0], 3),
        "ours_verify_s": round(best[1], 3),
        "ours_checksum_s": round(best[2], 3),
        "plain_save_s": round(min(plain), 3),
        "save_ratio": round(best[0] / min(plain), 2),
        "threads": 1,
        "load": os.getloadavg()[0],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
