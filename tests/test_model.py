from __future__ import annotations

import math

import torch

from scratchlm.config import ModelConfig
from scratchlm.model.gpt import GPT, attention_reference


def small(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=32, **kw)
    return GPT(cfg).eval()


def test_logits_shape_and_initial_loss_near_uniform():
    model = small()
    idx = torch.randint(97, (3, 16))
    logits, loss = model(idx, torch.randint(97, (3, 16)))
    assert logits.shape == (3, 16, 97)
    assert abs(loss.item() - math.log(97)) < 0.3


def test_causal_no_position_sees_the_future():
    model = small()
    idx = torch.randint(97, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % 97
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:], atol=1e-4)


def test_sdpa_matches_reference_attention():
    q, k, v = torch.randn(3, 2, 4, 9, 8).unbind(0)
    fast = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(fast, attention_reference(q, k, v), atol=1e-5)


def test_embeddings_are_tied():
    model = small()
    assert model.lm_head.weight is model.wte.weight
    counted = sum(p.numel() for p in model.parameters())
    assert model.num_params(non_embedding=False) == counted
    assert counted < sum(p.numel() for p in model.state_dict().values())  # the tie is one tensor


def test_bias_setting_adds_biases():
    without, with_bias = small(bias=False), small(bias=True)
    assert not any(n.endswith("bias") for n, _ in without.named_parameters())
    assert any(n.endswith("qkv.bias") for n, _ in with_bias.named_parameters())


def test_too_long_input_is_an_error():
    model = small()
    try:
        model(torch.zeros(1, 17, dtype=torch.long))
    except ValueError as e:
        assert "block_size=16" in str(e)
    else:
        raise AssertionError("expected a ValueError")
