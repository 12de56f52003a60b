"""Weights laid out for generation on CPU: every linear layer's matrix stored transposed.

Generating one token multiplies a single vector by every weight matrix: the time goes into
reading the matrices from memory, not into arithmetic. On CPU, PyTorch reads a matrix stored
as (in, out) about twice as fast as nn.Linear's (out, in) for this product (measured on this
project's machine: 24 GB/s against 13 GB/s; docs/LOG.md). HF GPT-2's Conv1D layers happen to
use (in, out); its LM head does not.

    prepare_for_generation(model)   # in place; the model then serves inference only
    load_for_generation(path, device, dtype)   # a run or HF folder, loaded (runs/), prepared
    load_for_generation(path, quantize="int8")  # linear layers as int8 weights (model/quantize.py)

The results equal nn.Linear's up to float rounding (the sums run in another order).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from scratchlm import runs

BATCHED_FROM = 3  # rows from which the packed oneDNN weight is faster than W^T (measured)
# From this many weights (2 MiB of float32) the packed weight is faster for one row too: a
# GPT-2 124M decode step 17.5 ms against 24.9 ms; below it (the demo's layers, its 2048 x 192
# head too) oneDNN's call costs more than it saves (`python bench/decode_layout.py`).
PACKED_ONE_ROW_FROM = 1 << 19


def pack_for_onednn(weight: torch.Tensor) -> torch.Tensor | None:
    """The weight in oneDNN's blocked layout, or None where oneDNN is not built in."""
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, 32)
    except (AttributeError, RuntimeError):
        return None


class TransposedLinear(nn.Module):
    """y = x W^T + b, with W^T stored contiguous: a frozen copy of an nn.Linear.

    A batch of rows (the serving engine's decode step: 8 or 32 rows) is a different product:
    there, MKL repacks W^T on every call, and a weight packed once in oneDNN's layout is 2-7x
    faster (docs/LOG.md). So the layer keeps both: W^T for one or two rows of a small layer,
    the packed copy for more, and for any number of rows of a large layer (it costs a second
    copy of the weights in memory)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)
        self.out_features = linear.out_features
        self.packed = pack_for_onednn(linear.weight.detach().float()) if linear.weight.dtype == torch.float32 else None  # fmt: skip
        self.packed_from = 1 if linear.weight.numel() >= PACKED_ONE_ROW_FROM else BATCHED_FROM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        if self.packed is not None and flat.size(0) >= self.packed_from:
            y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        elif self.bias is None:
            y = flat @ self.weight_t
        else:
            y = torch.addmm(self.bias, flat, self.weight_t)
        return y.view(*x.shape[:-1], self.out_features)


def prepare_for_generation(model: nn.Module) -> nn.Module:
    """Swap each nn.Linear of a CPU model for a TransposedLinear (a tied LM head gets its own
    copy: the embedding keeps its rows for lookups). Other devices are left as they are."""
    if next(model.parameters()).device.type != "cpu":
        return model
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:  # exactly Linear: a LoRA layer keeps its own forward
                setattr(module, name, TransposedLinear(child))
    return model.eval()


def load_for_generation(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quantize: str = "none",
) -> runs.LoadedModel:
    """A run folder or HF folder's model on `device` in `dtype` (generation's KV cache takes
    the weights' dtype), laid out for generation, with its tokenizer; with
    `quantize="int8"` its linear layers hold int8 weights (nothing is left to transpose)."""
    loaded = runs.load_model(path, device, quantize=quantize)
    if quantize == "none":
        loaded.model.to(dtype)
    prepare_for_generation(loaded.model)
    return loaded
