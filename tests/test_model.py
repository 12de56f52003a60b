from __future__ import annotations

import itertools
import math

import pytest
import torch

from scratchlm.config import ModelConfig, build
from scratchlm.model.attention import attention_reference
from scratchlm.model.cache import KVCache
from scratchlm.model.gpt import GPT
from scratchlm.model.heads import GPTClassifier
from scratchlm.model.layers import apply_rope, rope_tables
from scratchlm.model.lora import (
    apply_lora,
    load_lora,
    merge_and_unwrap,
    merge_lora,
    save_lora,
    unmerge_lora,
)

FAMILIES = {
    "gpt2": dict(norm="layernorm", position="learned", mlp="gelu", bias=True, tie_embeddings=True),
    "llama": dict(
        norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
    ),
    "modern": dict(
        norm="rmsnorm", position="rope", mlp="relu2", qk_norm=True, logit_softcap=15.0, n_kv_head=1
    ),
    "nopos": dict(norm="layernorm", position="none", mlp="gelu", bias=False),
}


def small(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    base = dict(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
    return GPT(ModelConfig(**(base | kw))).eval()


def test_logits_shape_and_initial_loss_near_uniform():
    model = small()
    idx = torch.randint(97, (3, 16))
    logits, loss = model(idx, torch.randint(97, (3, 16)))
    assert logits.shape == (3, 16, 97)
    assert abs(loss.item() - math.log(97)) < 0.3


OPTIONS = list(
    itertools.product(
        ["layernorm", "rmsnorm"],
        ["learned", "rope", "none"],
        ["gelu", "swiglu", "relu2"],
        [0, 2, 1],
        [False, True],
    )
)


@pytest.mark.parametrize("norm, position, mlp, kv, flags", OPTIONS)
def test_every_option_trains(norm, position, mlp, kv, flags):
    # flags toggles the boolean options together: qk-norm, bias, untied embeddings, soft-cap, dropout
    model = small(
        norm=norm, position=position, mlp=mlp, n_kv_head=kv, qk_norm=flags, bias=flags,
        tie_embeddings=not flags, logit_softcap=30.0 if flags else 0.0, dropout=0.1 if flags else 0.0,
    ).train()  # fmt: skip
    idx = torch.randint(97, (2, 32))
    logits, loss = model(idx, idx.roll(-1, 1))
    assert logits.shape == (2, 32, 97) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    if flags:
        assert logits.abs().max() < 30.0


@pytest.mark.parametrize("family", FAMILIES)
def test_causal_no_position_sees_the_future(family):
    model = small(**FAMILIES[family])
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


def test_gqa_equals_mha_with_each_kv_head_repeated():
    gqa = small(n_kv_head=2, **{k: v for k, v in FAMILIES["llama"].items() if k != "n_kv_head"})
    mha = small(n_kv_head=4, **{k: v for k, v in FAMILIES["llama"].items() if k != "n_kv_head"})
    state = gqa.state_dict()
    d, group = 8, 2  # head size; query heads per key/value head
    for i in range(2):
        q, k, v = state[f"blocks.{i}.attn.qkv.weight"].split([32, 16, 16])
        repeat = lambda w: w.view(2, d, 32).repeat_interleave(group, dim=0).reshape(32, 32)  # noqa: E731
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([q, repeat(k), repeat(v)])
    mha.load_state_dict(state)
    idx = torch.randint(97, (2, 20))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    cfg = ModelConfig(vocab_size=10, block_size=64, n_head=1, n_embd=16, position="rope")
    cos, sin = rope_tables(cfg)
    q, k = torch.randn(2, 16)

    def score(m: int, n: int) -> float:
        return (apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n])).item()

    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(9, 9) == pytest.approx(score(0, 0), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_tied_embeddings_stay_tied_through_training():
    tied, untied = small(tie_embeddings=True).train(), small(tie_embeddings=False).train()
    assert tied.lm_head.weight is tied.wte.weight and untied.lm_head.weight is not untied.wte.weight
    before = tied.wte.weight.detach().clone()
    opt = torch.optim.AdamW(tied.parameters(), lr=1e-2)
    idx = torch.randint(97, (2, 16))
    tied(idx, idx)[1].backward()
    opt.step()
    assert tied.lm_head.weight is tied.wte.weight and not torch.equal(before, tied.wte.weight)
    assert untied.num_params() - tied.num_params() == 97 * 32


@pytest.mark.parametrize("preset", ["gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b"])
def test_gpt2_presets_have_gpt2s_parameter_count(preset):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = build(ModelConfig, {"preset": preset, "vocab_size": 50257})
    with torch.device("meta"):
        ours = GPT(cfg)
        theirs = GPT2LMHeadModel(
            GPT2Config(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)
        )
    assert ours.num_params(non_embedding=False) == sum(p.numel() for p in theirs.parameters())
    expected = {
        "gpt2-124m": 124_439_808,
        "gpt2-355m": 354_823_168,
        "gpt2-774m": 774_030_080,
        "gpt2-1.5b": 1_557_611_200,
    }
    assert ours.num_params(non_embedding=False) == expected[preset]


def test_flops_per_token():
    model = small()
    n = model.num_params()
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 32


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_gives_the_same_logits(family):
    model = small(**FAMILIES[family])
    idx = torch.randint(97, (2, 24))
    full, _ = model(idx)
    cache = KVCache(model.cfg, batch=2)
    steps = [model(idx[:, :10], cache=cache)[0]]  # prefill the prompt in one pass
    steps += [
        model(idx[:, t : t + 1], cache=cache)[0] for t in range(10, 24)
    ]  # then one token at a time
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_with_prompts_of_different_lengths(family):
    model = small(**FAMILIES[family])
    a, b = torch.randint(97, (1, 12)), torch.randint(97, (1, 7))
    padded = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])  # left-pad b
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    nxt = torch.randint(97, (2, 3))
    cache = KVCache(model.cfg, batch=2)
    prefill, _ = model(padded, cache=cache, attention_mask=mask)
    steps = [model(nxt[:, t : t + 1], cache=cache)[0] for t in range(3)]
    for row, prompt in enumerate((a, b)):
        alone, _ = model(torch.cat([prompt, nxt[row : row + 1]], 1))
        n = prompt.size(1)
        assert torch.allclose(prefill[row, -n:], alone[0, :n], atol=1e-5)
        assert torch.allclose(torch.cat([s[row] for s in steps]), alone[0, n:], atol=1e-5)


def test_classifier_reads_the_last_real_token_under_any_padding():
    torch.manual_seed(0)
    clf = GPTClassifier(small(**FAMILIES["llama"]), num_classes=3).eval()
    text = torch.randint(97, (1, 9))
    alone, _ = clf(text)
    right = torch.cat([text, torch.zeros(1, 4, dtype=torch.long)], 1)
    left = torch.cat([torch.zeros(1, 4, dtype=torch.long), text], 1)
    mask_r = torch.tensor([[True] * 9 + [False] * 4])
    mask_l = torch.tensor([[False] * 4 + [True] * 9])
    assert torch.allclose(clf(right, mask_r)[0], alone, atol=1e-5)
    assert torch.allclose(clf(left, mask_l)[0], alone, atol=1e-5)
    logits, loss = clf(text.repeat(2, 1), labels=torch.tensor([0, 2]))
    assert logits.shape == (2, 3) and loss.item() > 0


def test_lora_trains_only_adapters_and_merges_exactly(tmp_path):
    model = small(**FAMILIES["llama"]).train()
    idx = torch.randint(97, (2, 16))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapped = apply_lora(model, ["attn.qkv", "attn.proj", "mlp.fc"], rank=4, alpha=8)
    assert len(wrapped) == 6
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(idx, idx)[1].backward()
        opt.step()
        opt.zero_grad()
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, before[name.replace(".base.", ".")]), name
    model.eval()
    adapted, _ = model(idx)
    assert not torch.allclose(adapted, GPT_with(before, model.cfg)(idx)[0], atol=1e-4)
    merge_lora(model)
    assert torch.allclose(model(idx)[0], adapted, atol=1e-5)
    unmerge_lora(model)
    assert torch.allclose(model(idx)[0], adapted, atol=1e-5)

    save_lora(model, tmp_path / "adapters.safetensors")
    fresh = GPT_with(before, model.cfg)
    load_lora(fresh, tmp_path / "adapters.safetensors")
    assert torch.allclose(fresh.eval()(idx)[0], adapted, atol=1e-5)
    merge_and_unwrap(fresh)
    assert not any("lora" in n for n in fresh.state_dict())
    assert torch.allclose(fresh(idx)[0], adapted, atol=1e-5)


def GPT_with(state: dict, cfg: ModelConfig) -> GPT:
    model = GPT(cfg).eval()
    model.load_state_dict(state)
    return model


def test_lora_with_unknown_target_names_the_layers():
    with pytest.raises(ValueError, match="no linear layer matches"):
        apply_lora(small(), ["attn.q_proj"])


def test_too_long_input_is_an_error():
    with pytest.raises(ValueError, match="block_size=32"):
        small()(torch.zeros(1, 33, dtype=torch.long))


def test_presets_fill_in_and_keys_given_win():
    cfg = build(ModelConfig, {"preset": "llama-tiny", "n_layer": 2})
    assert (cfg.norm, cfg.position, cfg.mlp, cfg.n_kv_head, cfg.n_layer) == (
        "rmsnorm",
        "rope",
        "swiglu",
        2,
        2,
    )
    assert cfg.hidden == 384  # 8/3 x 128 rounded up to 64
    from scratchlm.config import SettingsError

    with pytest.raises(SettingsError, match="model.preset='gpt5'.*gpt2-124m"):
        build(ModelConfig, {"preset": "gpt5"}, "model.")
    with pytest.raises(SettingsError, match="n_head=4 must be a multiple of n_kv_head=3"):
        build(ModelConfig, {"n_kv_head": 3})


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=500, block_size=32, n_layer=8, n_head=4, n_embd=256))
    std = {name: p.std().item() for name, p in model.named_parameters() if p.dim() == 2}
    scaled = 0.02 / math.sqrt(2 * 8)
    for name, s in std.items():
        expected = scaled if name.endswith("proj.weight") else 0.02
        assert s == pytest.approx(expected, rel=0.05), name
    assert all(p.abs().sum() == 0 for n, p in model.named_parameters() if n.endswith("bias"))


@pytest.mark.parametrize("new_tokens", [3, 40], ids=["with-cache", "past-the-context"])
def test_batched_greedy_generation_ignores_left_padding(new_tokens):
    from scratchlm.infer.generate import sample

    model = small(**FAMILIES["llama"])
    a, b = torch.randint(97, (1, 12)), torch.randint(97, (1, 7))
    padded = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    together = sample(model, padded, new_tokens, temperature=0, attention_mask=mask)
    for row, prompt in enumerate((a, b)):
        alone = sample(model, prompt, new_tokens, temperature=0)
        assert torch.equal(together[row, -new_tokens:], alone[0, -new_tokens:])
