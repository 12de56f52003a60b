"""The C decode-attention kernel (infer/native.py) against PyTorch's SDPA, alone and in the engine."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
import torch.nn.functional as F

from scratchlm.config import ModelConfig
from scratchlm.infer import native
from scratchlm.infer.engine import Engine
from scratchlm.infer.generate import untrained_model
from scratchlm.infer.layout import prepare_for_generation
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling

FAMILIES = {
    "gpt2": dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=True),
    "llama": dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                  norm="rmsnorm", position="rope", mlp="swiglu", tie_embeddings=False),
}  # fmt: skip

needs_kernel = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler here"
)


def model_of(family: str):
    return prepare_for_generation(untrained_model(ModelConfig(**FAMILIES[family]), seed=0))


def reference(q, k, v, slots, lengths):
    """SDPA over each row's own positions, one row at a time."""
    out = []
    for r, (slot, n) in enumerate(zip(slots.tolist(), lengths.tolist(), strict=True)):
        keys, values = k[slot, :n].transpose(0, 1)[None], v[slot, :n].transpose(0, 1)[None]
        gqa = keys.size(1) != q.size(1)
        out.append(F.scaled_dot_product_attention(q[r][None, :, None], keys, values, enable_gqa=gqa))  # fmt: skip
    return torch.cat(out)[:, :, 0]


@needs_kernel
@pytest.mark.parametrize("heads,kv_heads,d", [(4, 4, 16), (4, 2, 64), (6, 1, 8)])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernel_equals_sdpa_for_any_slots_and_lengths(heads, kv_heads, d, threads):
    assert native.available()
    g = torch.Generator().manual_seed(heads * d)
    slots_n, capacity = 7, 40
    k = torch.randn(slots_n, capacity, kv_heads, d, generator=g)
    v = torch.randn(slots_n, capacity, kv_heads, d, generator=g)
    slots = torch.tensor([5, 0, 3, 6, 1])  # rows in any order of slots
    lengths = torch.tensor([40, 1, 17, 3, 29])  # a full slot, a single key
    # laid out as the model hands it over, (heads, rows, d) seen as (rows, heads, d)
    q = (torch.randn(heads, 5, d, generator=g) * 3).transpose(0, 1)  # sharp softmaxes too
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = native.decode_attention(q, k, v, native.DecodeRows(slots.tolist(), lengths.tolist()))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, reference(q, k, v, slots, lengths), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_the_kernel_refuses_what_it_cannot_read():
    k = v = torch.zeros(2, 8, 1, 4)
    q = torch.zeros(1, 1, 4)
    rows = native.DecodeRows
    with pytest.raises(ValueError, match="outside the cache"):
        native.decode_attention(q, k, v, rows([2], [3]))
    with pytest.raises(ValueError, match="outside the cache"):
        native.decode_attention(q, k, v, rows([0], [9]))
    with pytest.raises(ValueError, match="lengths >= 1"):
        rows([0], [0])
    with pytest.raises(ValueError, match="does not fit"):  # 3 query heads over 2 key heads
        native.decode_attention(torch.zeros(1, 3, 4), torch.zeros(2, 8, 2, 4), torch.zeros(2, 8, 2, 4), rows([0], [1]))  # fmt: skip
    # not float32: the caller's SDPA path runs instead
    assert native.decode_attention(q.double(), k.double(), v.double(), rows([0], [1])) is None


@needs_kernel
@pytest.mark.parametrize("family", FAMILIES)
def test_the_engine_generates_the_same_with_and_without_the_kernel(family):
    """Greedy rows, a sampled row and a logprobs row, prompts read in chunks while others
    decode (so decode rows sit in scattered slots): the same tokens either way, and the same
    logprobs to float rounding."""
    model = model_of(family)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(64, (n,), generator=g).tolist() for n in (3, 25, 9, 14, 2)]

    def generate(kernel: bool) -> list[Row]:
        engine = Engine(model, None, max_batch=3, token_budget=6)
        engine.cache.kernel = kernel
        rows = [Row(p, 12, Sampling(temperature=0)) for p in prompts]
        rows.append(Row(prompts[1], 12, Sampling(temperature=0.9), seed=4))
        rows.append(Row(prompts[2], 12, Sampling(temperature=0), logprobs=2))
        for row in rows:
            engine.add(row)
        while engine.busy:
            engine.step()
        return rows

    with_kernel, without = generate(True), generate(False)
    assert [r.tokens for r in with_kernel] == [r.tokens for r in without]
    lp_a = [lp for lp, _ in with_kernel[-1].token_logprobs]
    lp_b = [lp for lp, _ in without[-1].token_logprobs]
    assert lp_a == pytest.approx(lp_b, abs=1e-5)


def test_without_a_compiler_the_engine_falls_back_and_says_why(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with caplog.at_level(logging.WARNING, logger="scratchlm.infer.native"):
        assert not native.available()
    assert "decode attention uses PyTorch's SDPA" in caplog.text
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing half-written
    engine = Engine(model_of("gpt2"), None, max_batch=2)
    assert engine.cache.kernel is False
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("SCRATCHLM_KERNELS", "0")
    monkeypatch.delenv("CC")
    assert not native.available()  # switched off: not even built


@needs_kernel
def test_the_library_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("SCRATCHLM_CACHE", str(tmp_path))
    assert native.available()
    built = list((tmp_path / "kernels").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_tried", False)
    assert native.available()
    assert built[0].stat().st_mtime_ns == stamp  # loaded again, not rebuilt
