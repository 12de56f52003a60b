"""int8 weights (`generate.quantize=int8`): decode speed and bits per byte against float32.

Speed: greedy decoding at batch 1, 1 thread, on GPT-2-layout models with random weights at
the ~10M and 124M shapes of bench/generate.py. Sides, alternating round by round so the
machine's load falls on all alike, each reporting its median round:

    scratchlm_int8     model/quantize.py's Int8Linear (what --quantize int8 loads)
    scratchlm_float32  our float32 generator (infer/layout.py's transposed weights)
    hf_float32         HF transformers' `generate` on the same weights (export_hf)
    llama_cpp_q8_0     for reference, where llama-cpp-python is installed: the same weights
                       exported by `scratchlm export gguf --type q8_0`, decoded by llama.cpp

Quality: bits per byte on held-out text for each side, on trained runs (random weights say
nothing about quality): by default work/demo/runs/demo and its chat fine-tune, scored on the
pipeline's validation tokens beside them (eval/perplexity.py's sliding windows). Also, for
the record of the kernel choice (docs/LOG.md): fbgemm's dynamic int8 (which quantizes the
activations too), on the run as it is and on the same run given outlier features: two
channels of every norm's gain x30, divided back out of the next layer's weights, so float32
computes exactly the same function (trained transformers grow such channels).

    python bench/quantize.py [--shapes 10m,124m] [--rounds 3] [--new-tokens 128] [--run RUN ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch
from generate import SHAPES, hf, ours
from llama_cpp_worker import INSTALL, llama_cpp_python, run_llama_cpp

from scratchlm import runs
from scratchlm.config import ModelConfig, build
from scratchlm.eval.evaluate import default_heldout
from scratchlm.eval.perplexity import heldout_documents, perplexity
from scratchlm.export.gguf import export_gguf
from scratchlm.export.hf import export_hf
from scratchlm.infer.layout import prepare_for_generation
from scratchlm.model.gpt import GPT
from scratchlm.model.quantize import quantize_int8
from scratchlm.tokenizer.tokenizer import BPETokenizer

DEFAULT_RUNS = ["work/demo/runs/demo", "work/demo/runs/demo-sft"]


def agreement(a: list[int], b: list[int]) -> int:
    """How many greedy tokens two sides share before they first differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))


def llama_cpp_side(model: GPT, folder: str, prompt: list[int], n: int):
    """llama.cpp decoding the same weights from a q8_0 GGUF: seconds for tokens 2..n."""
    # GGUF needs a tokenizer; decoding speed does not depend on which: bytes and one merge
    tok = BPETokenizer.from_merges([(97, 98)], "gpt2")
    path = export_gguf(model, tok, Path(folder) / "q8_0.gguf", "q8_0")
    job = {"kind": "decode_speed", "ids": prompt, "new": n}

    def run():
        (res,) = run_llama_cpp(path, [job], n_ctx=len(prompt) + n + 8, threads=1)
        return None, 0.0, (n - 1) / res["tokens_per_second"][0]

    return run


def bench_speed(key: str, rounds: int, n: int, prompt_len: int, kernel: str) -> dict:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    f32 = GPT(build(ModelConfig, {"preset": "gpt2-124m", **SHAPES[key]})).eval()
    folder = tempfile.mkdtemp()
    export_hf(f32, None, folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = torch.randint(SHAPES[key]["vocab_size"], (prompt_len,)).tolist()
    llama = llama_cpp_python() is not None
    reference = llama_cpp_side(f32, folder, prompt, n) if llama else None
    int8 = prepare_for_generation(quantize_int8(copy.deepcopy(f32), kernel))
    prepare_for_generation(f32)
    sides = {
        "scratchlm_int8": lambda: ours(int8, prompt, n),
        "scratchlm_float32": lambda: ours(f32, prompt, n),
        "hf_float32": lambda: hf(theirs, prompt, n),
    }
    if reference is not None:
        sides["llama_cpp_q8_0"] = reference
    for run in sides.values():
        run()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sides}
    outputs = {}
    for _ in range(rounds):
        for name, run in sides.items():  # alternate: every side sees the same machine load
            tokens, _, rest = run()
            times[name].append(rest)
            outputs[name] = tokens
    decode = {k: round((n - 1) / statistics.median(v), 1) for k, v in times.items()}
    return {
        "params": f32.num_params(non_embedding=False),
        "int8_kernel": int8.lm_head.kernel,
        "new_tokens": n,
        "decode_tokens_per_second": decode,
        "int8_vs_float32": round(decode["scratchlm_int8"] / decode["scratchlm_float32"], 2),
        "int8_vs_hf_float32": round(decode["scratchlm_int8"] / decode["hf_float32"], 2),
        "greedy_float32_equals_hf": outputs["scratchlm_float32"] == outputs["hf_float32"],
        "int8_greedy_tokens_equal_to_float32_before_first_difference": agreement(
            outputs["scratchlm_int8"], outputs["scratchlm_float32"]
        ),
        "llama_cpp": "measured" if llama else f"skipped: {INSTALL}",
    }


class HFLogits(torch.nn.Module):
    """An HF causal LM behind our model's face: .cfg.block_size and (logits, None)."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, idx: torch.Tensor):
        return self.model(idx).logits, None


def with_outlier_channels(model: GPT, factor: float, channels=(5, 77)) -> GPT:
    """The same function with outlier activations: norm gain x factor on a few channels,
    the next layer's input columns / factor."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for block in model.blocks:
            for norm, layer in ((block.ln_1, block.attn.qkv), (block.ln_2, block.mlp.fc)):
                for c in channels:
                    norm.weight[c] *= factor
                    layer.weight[:, c] /= factor
    return model


def kernel_comparison(model: GPT, tok, docs, max_tokens: int) -> dict:
    out = {}
    for label, m in (("as_trained", model), ("outlier_channels_x30", with_outlier_channels(model, 30))):  # fmt: skip
        bpb = {"float32": perplexity(m, tok, docs, max_tokens=max_tokens).to_dict()["bits_per_byte"]}  # fmt: skip
        for kernel in ("weight_only", "fbgemm"):
            q = quantize_int8(copy.deepcopy(m), kernel)
            bpb[kernel] = perplexity(q, tok, docs, max_tokens=max_tokens).to_dict()["bits_per_byte"]
        out[label] = {k: f"{100 * (v / bpb['float32'] - 1):+.3f}%" for k, v in bpb.items() if k != "float32"}  # fmt: skip
    return out


def bench_quality(run: Path, max_tokens: int, kernel: str) -> dict:
    from transformers import AutoModelForCausalLM

    loaded = runs.load_model(run)
    heldout = default_heldout(run)
    if heldout is None:
        return {"run": str(run), "skipped": "no held-out tokens beside the run"}
    docs = heldout_documents(heldout, loaded.tokenizer)
    folder = tempfile.mkdtemp()
    export_hf(loaded.model, loaded.tokenizer, folder)
    models = {
        "scratchlm_int8": quantize_int8(copy.deepcopy(loaded.model), kernel),
        "scratchlm_float32": loaded.model,
        "hf_float32": HFLogits(AutoModelForCausalLM.from_pretrained(folder).eval(), loaded.model.cfg),
    }  # fmt: skip
    bpb = {
        k: perplexity(m, loaded.tokenizer, docs, max_tokens=max_tokens).to_dict()["bits_per_byte"]
        for k, m in models.items()
    }
    return {
        "run": str(run),
        "params": loaded.model.num_params(non_embedding=False),
        "tokens_scored": max_tokens,
        "bits_per_byte": {k: round(v, 5) for k, v in bpb.items()},
        "int8_change_percent": round(
            100 * (bpb["scratchlm_int8"] / bpb["scratchlm_float32"] - 1), 3
        ),
        "kernels_bits_per_byte_change": kernel_comparison(
            loaded.model, loaded.tokenizer, docs, max_tokens
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="10m,124m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--run", action="append", help="trained runs for bits per byte")
    ap.add_argument("--max-tokens", type=int, default=50_000, help="held-out tokens scored")
    ap.add_argument("--kernel", default="weight_only", help="int8 kernel: weight_only or fbgemm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result: dict = {
        "bench": "quantize_int8",
        "threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg(),
    }
    for key in filter(None, args.shapes.split(",")):
        result[key] = bench_speed(key, args.rounds, args.new_tokens, args.prompt_tokens, args.kernel)  # fmt: skip
    trained = [Path(r) for r in (args.run or DEFAULT_RUNS) if runs.is_run(r)]
    result["quality"] = [bench_quality(r, args.max_tokens, args.kernel) for r in trained]
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
