"""Greedy decoding's next token from a bfloat16 screen of the LM head, exact in float32.

A greedy row needs only the argmax of its logits. At GPT-2 124M's shape the float32 head
(50257 x 768, 154 MB) is ~30% of the bytes a decode step reads from memory; a bfloat16 copy is
half as many bytes. So every token is scored with the bf16 copy, the few that could still be
the float32 argmax are kept, and those are scored again in float32.

The bound. u = 2^-8 (bf16's unit roundoff), C = n_embd, g = C 2^-24 / (1 - C 2^-24) (a float32
sum of C terms). oneDNN multiplies hb = bf16(h) = h + dh by wb_j = bf16(w_j) = w_j + dw_j
exactly, sums in float32 and rounds the sum to bf16, to nearest (a test checks it). So its
score s_j and ANY float32 evaluation x_j of h . w_j differ by at most

    |dh.w_j + h.dw_j + dh.dw_j|  +  g (1+u)^2 S_j + g S_j  +  u |s_j| / (1-u)  +  tiny
     the bf16 inputs                the two float32 sums      the bf16 result    flushed denormals

with S_j = sum_i |h_i w_ji| <= ||h|| ||w_j|| (Cauchy-Schwarz), hence at most

    bound_j = ||dh|| ||w_j|| + (||h|| + ||dh||) ||dw_j|| + 2g (1+u)^2 ||h|| ||w_j||
              + u |s_j| / (1-u) + tiny

(||dh|| <= u ||h|| and ||dw_j|| <= u ||w_j||: the rounding errors are measured, not assumed
at their worst). ||w_j|| and ||dw_j|| are computed once. The float32 argmax j* has
s_j* + bound_j* >= x_j* >= x_k >= s_k - bound_k for every k, so it is a candidate:
s_j + bound_j >= max_k (s_k - bound_k) (rounding to nearest is monotone, so the float32
comparison keeps it). The candidates are scored in float32 and the best taken: the float32
head's choice, up to float32's own rounding (two float32 evaluations may order a near-tie
differently, as the full head at two batch sizes already does). A row with no candidate (NaN)
or more than MAX_CANDIDATES takes the full float32 head. A logit softcap (tanh) is monotone,
so the raw logits have the same argmax.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from scratchlm.infer.layout import TransposedLinear, pack_for_onednn

# From this many weights (32 MiB of float32, this machine's L3 cache) the screen is faster at
# one row, cache flushed between calls: 768 x 8192 float32 1.35 ms, screened 1.54 ms;
# 768 x 16384 2.19 ms against 1.69; 124M's 768 x 50257 7.3 against 4.4 (and the demo's
# 192 x 2048: 0.21 against 0.63). `python bench/greedy_head.py --sizes` measures it.
SCREEN_FROM = 1 << 23
# Rescoring k candidates at 124M's shape, cache flushed: 64 rows 0.14 ms, 256 rows 0.45 ms
# (columns of an untied head's weight_t: 0.35, 1.1 ms), against 7.3 ms more for the full head.
MAX_CANDIDATES = 256
BLOCK = 64  # the first cut looks at blocks of this many scores

U = 2.0**-8
TINY = 1e-30  # products below float32's normal range may be flushed to zero: C * 2^-126 < this
SAFE = 1 + 2.0**-10  # covers the float32 rounding of the bound's own sums (< C 2^-24, C < 2^14)


def bf16_gemm_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class ScreenedHead:
    """The argmax of `head`'s logits, screened in bf16 and settled in float32.

    `rows` (V, C) may hold the head's rows (a tied head's embedding): rescoring a candidate
    then reads one contiguous row instead of a column of `weight_t` (C, V)."""

    def __init__(
        self,
        head: TransposedLinear,
        rows: torch.Tensor | None = None,
        max_candidates: int = MAX_CANDIDATES,
    ):
        if head.bias is not None:
            raise ValueError("the screen's bound is for a head without bias")
        self.head, self.rows, self.max_candidates = head, rows, max_candidates
        w_t = head.weight_t.detach()  # (C, V)
        C, V = w_t.shape
        padded = -(-V // BLOCK) * BLOCK  # zero rows to whole blocks: they score 0, never chosen
        wb = torch.zeros(padded, C, dtype=torch.bfloat16)
        self.norm = torch.zeros(padded)  # ||w_j||
        self.err = torch.zeros(padded)  # ||bf16(w_j) - w_j||, from exact differences
        for at in range(0, V, 8192):  # a slice at a time: no second full float32 copy
            w = w_t[:, at : at + 8192].t()
            wb[at : at + w.size(0)] = w
            self.norm[at : at + w.size(0)] = torch.linalg.vector_norm(w, dim=1)
            self.err[at : at + w.size(0)] = torch.linalg.vector_norm(wb[at : at + w.size(0)].float() - w, dim=1)  # fmt: skip
        # packed as the float32 layers are (oneDNN's hint 32; 1, 8 and 32 ran within ~7%)
        self.packed = pack_for_onednn(wb)
        if self.packed is None:
            raise RuntimeError("oneDNN cannot pack a bf16 weight here (see bf16_gemm_supported)")
        self.vocab, self.norm_max, self.err_max = V, self.norm.max(), self.err.max()
        g = C * 2.0**-24 / (1 - C * 2.0**-24)
        self.sums = 2 * g * (1 + U) ** 2
        self.screened = self.rescored = self.full = 0  # rows screened, their candidates; rows not

    @torch.no_grad()
    def scores(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The screen's scores s (n, V rounded up to whole blocks) as float32, and per row of
        h (n, C) the bound's factors a, b (n, 1) for `bound`."""
        hb = h.to(torch.bfloat16)
        s = torch.ops.mkldnn._linear_pointwise(hb, self.packed, None, "none", [], "").float()
        dh = torch.linalg.vector_norm(hb.float() - h, dim=1, keepdim=True)  # exact differences
        hn = torch.linalg.vector_norm(h, dim=1, keepdim=True)
        return s, SAFE * (dh + self.sums * hn), SAFE * (hn + dh)

    @staticmethod
    def bound(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, norm: torch.Tensor, err: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """bound_j from a row's factors a, b, the score s_j and the token's ||w_j||, ||dw_j||:
        |s_j - x_j| <= bound_j for any float32 logit x_j."""
        return a * norm + b * err + (SAFE * U / (1 - U)) * s.abs() + TINY

    @torch.no_grad()
    def candidates(self, h: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, token) pairs, row-major and in token order: for each row of h (n, C) the
        tokens below `vocab_size` whose float32 logit could be the largest."""
        n, vocab_size = h.size(0), min(vocab_size, self.vocab)
        s, a, b = self.scores(h)
        # A first cut with the bound at its largest over j: it reads the scores twice, and
        # keeps every candidate (the floor is at least hi - worst; a candidate's s_j at least
        # floor - worst). Elementwise passes over all (n, V) scores cost more than the rest.
        lo = s.amin(1, keepdim=True)
        s[:, vocab_size:] = float("-inf")
        blocks = s.view(n, -1, BLOCK).amax(2)
        hi = blocks.amax(1, keepdim=True)
        worst = self.bound(a, b, torch.maximum(hi.abs(), lo.abs()), self.norm_max, self.err_max)
        cut = hi - 2 * SAFE * worst
        rb, bb = (blocks >= cut).nonzero(as_tuple=True)
        pi, off = (s.view(n, -1, BLOCK)[rb, bb] >= cut[rb]).nonzero(as_tuple=True)
        r, c = rb[pi], bb[pi] * BLOCK + off
        # The bound itself on those: the floor max_k (s_k - bound_k) is among them too.
        sc = s[r, c]
        bound = self.bound(a[r, 0], b[r, 0], sc, self.norm[c], self.err[c])
        floor = torch.full((n,), float("-inf")).scatter_reduce_(0, r, sc - bound, "amax")
        keep = sc + bound >= floor[r]
        return r[keep], c[keep]

    @property
    def pays(self) -> bool:
        """False once more than a quarter of the rows screened (64 at least) took the full
        head: those cost the bf16 pass and the float32 head both, so the engine stops asking.
        (Trained GPT-2 has outlier features that widen the bound; untested here: no weights.)"""
        rows = self.screened + self.full
        return rows < 64 or 4 * self.full <= rows

    @torch.no_grad()
    def argmax(self, h: torch.Tensor, vocab_size: int) -> list[int]:
        """The index of the largest logit below `vocab_size` for each row of h (n, C)."""
        n, vocab_size = h.size(0), min(vocab_size, self.vocab)
        r, c = self.candidates(h, vocab_size)
        count = torch.bincount(r, minlength=n)
        full = ((count == 0) | (count > self.max_candidates)).tolist()  # no finite score; too many
        screen = ~torch.tensor(full)[r]
        r, c = r[screen], c[screen]
        w = self.rows[c] if self.rows is not None else self.head.weight_t.index_select(1, c).t()
        exact = (h[r] * w).sum(1)  # float32, like any evaluation of the full head
        best, top = [-1] * n, [float("-inf")] * n
        for i, j, x in zip(r.tolist(), c.tolist(), exact.tolist(), strict=True):
            if x > top[i]:  # strictly: the first of equal logits wins, as in torch.argmax
                best[i], top[i] = j, x
        full = [i for i in range(n) if full[i] or best[i] < 0]
        if full:
            logits = self.head(h[full])[:, :vocab_size]
            for i, j in zip(full, logits.argmax(1).tolist(), strict=True):
                best[i] = j
        self.screened += n - len(full)
        self.rescored += len(c)
        self.full += len(full)
        return best


def maybe_screened_head(model: nn.Module, min_weights: int | None = None) -> ScreenedHead | None:
    """The model's screened head where it pays and can run, else None: a float32 CPU head
    prepared for generation (infer/layout.py), without bias, of at least `min_weights`
    (default SCREEN_FROM), with oneDNN's bf16 GEMM. Built once per model and kept."""
    head = getattr(model, "lm_head", None)
    if type(head) is not TransposedLinear or head.bias is not None:
        return None  # an int8, LoRA or unprepared head; a bias is outside the bound
    w_t = head.weight_t
    if w_t.device.type != "cpu" or w_t.dtype != torch.float32:
        return None
    if torch.is_autocast_enabled("cpu") or not bf16_gemm_supported():
        return None
    if w_t.numel() < (SCREEN_FROM if min_weights is None else min_weights):
        return None
    screen = getattr(head, "greedy_screen", None)
    if screen is None:
        rows = None
        wte = getattr(model, "wte", None)
        if isinstance(wte, nn.Embedding) and torch.equal(wte.weight, w_t.t()):
            rows = wte.weight  # the tied embedding: the same numbers, one row per token
        screen = head.greedy_screen = ScreenedHead(head, rows)
    return screen
