"""int8 weights for fast CPU inference: every linear layer (and the LM head) quantized at load.

Decoding one token multiplies a single vector by every weight matrix, so its time goes into
reading the weights from memory. A GPT-2 124M reads ~500 MB of float32 per token; as int8 it
reads a quarter of that. Each matrix row (one output channel) gets its own scale:

    scale[o] = max_i |W[o, i]| / 127        W_int8[o, i] = round(W[o, i] / scale[o])
    y = x W^T + b  ~=  (x W_int8^T) * scale + b

Symmetric (no zero point) and per output channel, so one outlying row does not coarsen the
others. The matmul runs in PyTorch's int8 kernels (bench/int8_kernels.py measured them; the
numbers are in docs/LOG.md):

    fbgemm     torch.ops.quantized.linear_dynamic: also quantizes each input to 8 bits at run
               time, then multiplies int8 by int8 (VNNI where the CPU has it). The fastest at
               every batch size on x86; chosen where the engine exists.
    int8pack   torch._weight_int8pack_mm: int8 weights, bfloat16 activations. Anywhere else.

    quantize_int8(model)       in place: each nn.Linear becomes an Int8Linear; returns the model
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

QUANTIZE_CHOICES = ("none", "int8")


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, float32 scale per row): W ~= W_int8 * scale[:, None]."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps a finite scale
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def fbgemm_available() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines


class Int8Linear(nn.Module):
    """A frozen nn.Linear with int8 weights and one float scale per output channel."""

    def __init__(self, linear: nn.Linear, kernel: str = "auto"):
        super().__init__()
        if kernel == "auto":
            kernel = "fbgemm" if fbgemm_available() else "int8pack"
        if kernel not in ("fbgemm", "int8pack"):
            raise ValueError(f"int8 kernel {kernel!r}: expected fbgemm, int8pack or auto")
        self.kernel, self.in_features, self.out_features = (
            kernel,
            linear.in_features,
            linear.out_features,
        )
        q, scale = quantize_rows(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("weight_int8", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        if kernel == "fbgemm":
            with warnings.catch_warnings():  # torch.ao's quantized tensors are marked deprecated
                warnings.simplefilter("ignore")
                qweight = torch.quantize_per_channel(
                    q.float() * scale[:, None],
                    scale.double(),
                    torch.zeros_like(scale, dtype=torch.long),
                    0,
                    torch.qint8,
                )
                self._packed = torch.ops.quantized.linear_prepack(qweight, bias)
        else:
            self._scale_bf16 = scale.to(torch.bfloat16)

    def dequantized(self) -> torch.Tensor:
        """The float weights this layer multiplies by: W_int8 * scale."""
        return self.weight_int8.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "fbgemm":
            # reduce_range: 7-bit activations, as torch.ao does on x86, so pre-VNNI CPUs
            # cannot overflow their 16-bit intermediate sums
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, True).to(x.dtype)
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(flat, self.weight_int8, self._scale_bf16).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


def quantize_int8(model: nn.Module, kernel: str = "auto") -> nn.Module:
    """Swap every nn.Linear of a CPU model for an Int8Linear, in place; the model then serves
    inference only. A tied LM head gets an int8 copy; the embedding keeps its float rows."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 weights are for CPU inference; this model is on another device")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:  # exactly Linear: a LoRA layer keeps its own forward
                setattr(module, name, Int8Linear(child, kernel))
    return model.eval()
