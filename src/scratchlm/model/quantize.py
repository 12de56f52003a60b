"""int8 weights for fast CPU inference: every linear layer (and the LM head) quantized at load.

Decoding one token multiplies a single vector by every weight matrix, so its time goes into
reading the weights from memory: a GPT-2 124M reads ~500 MB of float32 per token, as int8 a
quarter of that. Each matrix row (one output channel) gets its own scale:

    scale[o] = max_i |W[o, i]| / 127        W_int8[o, i] = round(W[o, i] / scale[o])
    y = x W^T + b  ~=  (x W_int8^T) * scale + b

Symmetric (no zero point) and per output channel, so one outlying row does not coarsen the
others. Only the weights are quantized; the activations stay floating point.

Two kernels, chosen by the number of rows (bench/int8_kernels.py measured the candidates;
the numbers are in docs/LOG.md):

    one row (decoding)   torch.compile of sum(x * W_int8, -1) * scale: Inductor fuses the
                         int8 -> float conversion into the dot products, so the weights are
                         read once, as int8, with float32 activations; it runs at the memory
                         bandwidth (~4.7x float32's matmul over a 124M model's layers)
    several rows         torch._weight_int8pack_mm: int8 weights, bfloat16 activations,
                         float32 sums (PyTorch's AVX-512 / AVX2 / NEON kernels; ~3x float32).
                         Also the fallback when torch.compile cannot run (no C++ compiler).

fbgemm's dynamic quantization (torch.ops.quantized.linear_dynamic) is faster still with many
rows, but it also rounds every input to 7 bits with one scale per tensor, and a model with
outlier features (which trained transformers grow) loses accuracy there: +1.9% bits per byte
where weight-only int8 stays at +0.01%. It is kept as `kernel="fbgemm"` for measurements; the default is `kernel="weight_only"`.

    quantize_int8(model)       in place: each nn.Linear becomes an Int8Linear; returns the model
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

KERNELS = ("weight_only", "fbgemm")
# _weight_int8pack_mm reads activations 16 bf16 values (32 aligned bytes) at a time: a layer
# whose input width is not a multiple of 16 stays float32.
INT8PACK_MULTIPLE = 16


def _dot_rows(x: torch.Tensor, weight_int8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (in,) times every int8 row, scaled: what torch.compile turns into one fused loop."""
    return (x * weight_int8.to(x.dtype)).sum(-1) * scale


class _OneRowKernel:
    """`_dot_rows`, compiled on first use (dynamic shapes: one kernel for every layer); if
    compiling fails (e.g. no C++ compiler), it says so once and reports itself unavailable."""

    def __init__(self):
        self.compiled = None
        self.available = True

    def __call__(self, x, weight_int8, scale) -> torch.Tensor | None:
        if not self.available:
            return None
        if self.compiled is None:
            self.compiled = torch.compile(_dot_rows, dynamic=True)
        try:
            return self.compiled(x, weight_int8, scale)
        except Exception as e:  # the compiler's failures have no common type
            self.available = False
            message = f"int8: torch.compile failed ({type(e).__name__}); using _weight_int8pack_mm"
            warnings.warn(message, stacklevel=2)
            return None


one_row_kernel = _OneRowKernel()


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 weights, float32 scale per row): W ~= W_int8 * scale[:, None]."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127  # an all-zero row keeps a finite scale
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """A frozen nn.Linear with int8 weights and one float scale per output channel."""

    def __init__(self, linear: nn.Linear, kernel: str = "weight_only"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"int8 kernel {kernel!r}: expected one of {', '.join(KERNELS)}")
        if kernel == "weight_only" and linear.in_features % INT8PACK_MULTIPLE:
            raise ValueError(f"weight_only needs an input width divisible by {INT8PACK_MULTIPLE}")
        self.kernel = kernel
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("weight_int8", q.contiguous())
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self._scale_bf16 = scale.to(torch.bfloat16)
        if kernel == "fbgemm":
            with warnings.catch_warnings():  # torch.ao's quantized tensors are marked deprecated
                warnings.simplefilter("ignore")
                zero = torch.zeros_like(scale, dtype=torch.long)
                qweight = torch.quantize_per_channel(self.dequantized(), scale.double(), zero, 0, torch.qint8)  # fmt: skip
                self._packed = torch.ops.quantized.linear_prepack(qweight, bias)

    def dequantized(self) -> torch.Tensor:
        """The float weights this layer stands for: W_int8 * scale."""
        return self.weight_int8.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "fbgemm":  # reduce_range: 7-bit inputs, as torch.ao does on x86
            return torch.ops.quantized.linear_dynamic(x.float(), self._packed, True).to(x.dtype)
        flat = x.reshape(-1, self.in_features)
        if flat.size(0) == 1 and x.dtype == torch.float32:
            y = one_row_kernel(flat[0], self.weight_int8, self.scale)
            if y is not None:
                y = y if self.bias is None else y + self.bias
                return y.view(*x.shape[:-1], self.out_features)
        # a fresh bf16 copy: the kernel's aligned loads need the allocator's alignment
        flat = flat.to(torch.bfloat16, copy=True)
        y = torch._weight_int8pack_mm(flat, self.weight_int8, self._scale_bf16).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, kernel={self.kernel}"


def quantize_int8(model: nn.Module, kernel: str = "weight_only") -> nn.Module:
    """Swap every nn.Linear of a CPU model for an Int8Linear, in place; the model then serves
    inference only. A tied LM head gets an int8 copy; the embedding keeps its float rows. A
    layer the kernel cannot take (weight_only: input width not a multiple of 16) stays float."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 weights are for CPU inference; this model is on another device")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is not nn.Linear:  # exactly Linear: a LoRA layer keeps its own forward
                continue
            if kernel == "weight_only" and child.in_features % INT8PACK_MULTIPLE:
                continue
            setattr(module, name, Int8Linear(child, kernel))
    return model.eval()
