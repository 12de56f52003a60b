"""The screened greedy head (infer/greedy.py): a bf16 screen of the LM head whose bound really
holds, whose argmax is the float32 head's, and which the engine uses for plain greedy rows
only, leaving every other row's logits as they were."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from scratchlm.config import ModelConfig
from scratchlm.infer import greedy
from scratchlm.infer.engine import Engine
from scratchlm.infer.generate import untrained_model
from scratchlm.infer.greedy import ScreenedHead, maybe_screened_head
from scratchlm.infer.layout import TransposedLinear, prepare_for_generation
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling
from scratchlm.model.quantize import quantize_int8

pytestmark = pytest.mark.skipif(
    not greedy.bf16_gemm_supported(), reason="oneDNN's bf16 GEMM is not available here"
)


def head_of(weight: torch.Tensor) -> TransposedLinear:
    linear = nn.Linear(weight.size(1), weight.size(0), bias=False)
    linear.weight.data.copy_(weight)
    return TransposedLinear(linear)


def hidden(n: int, C: int, g: torch.Generator) -> torch.Tensor:
    """Hidden states shaped like a final norm's output, with a few large outlier features
    (GPT-2 has them): the bf16 rounding of those dominates the bound."""
    h = torch.randn(n, C, generator=g)
    h[:, :3] *= 20
    return h


def test_onednn_rounds_its_bf16_result_to_nearest():
    """The bound's u |s_j| / (1-u) term assumes it: with one nonzero input feature every
    score is one exact float32 product, rounded once to bf16."""
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(512, 64)
    w[:, 0] = torch.randn(512, generator=g)
    h = torch.zeros(4, 64)
    h[:, 0] = torch.randn(4, generator=g)
    s, _, _ = ScreenedHead(head_of(w)).scores(h)
    product = h[:, :1].bfloat16().float() * w[:, 0].bfloat16().float()[None]  # exact in float32
    assert torch.equal(s[:, :512], product.bfloat16().float())
    truncated = (product.view(torch.int32) & ~0xFFFF).view(torch.float32)
    assert not torch.equal(s[:, :512], truncated)  # the check can tell the two apart


def bf16_exact(x: torch.Tensor) -> torch.Tensor:
    return x.bfloat16().float()


# One feature makes each term of the bound nearly tight (Cauchy-Schwarz is then an equality),
# so a term missing from it shows; the mixed case is the general one.
CASES = ["one feature, both rounded", "one feature, weights exact", "one feature, hidden exact", "mixed"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_the_bound_holds_for_every_token(case):
    g = torch.Generator().manual_seed(1)
    V, C = 4096, 256
    w = torch.randn(V, C, generator=g) * torch.rand(V, 1, generator=g)  # rows of mixed norms
    h = hidden(32, C, g)
    if case.startswith("one feature"):
        w[:, 1:], h[:, 1:] = 0, 0
        w = bf16_exact(w) if case.endswith("weights exact") else w
        h = bf16_exact(h) if case.endswith("hidden exact") else h
    else:
        w[:, 3] *= 30  # a feature the head reads strongly
    screen = ScreenedHead(head_of(w))
    s, a, b = screen.scores(h)
    s = s[:, :V]
    bound = screen.bound(a, b, s, screen.norm[:V], screen.err[:V])
    exact = h.double() @ w.double().t()  # the true logits
    float32 = screen.head(h)  # one float32 evaluation
    assert ((s - exact).abs() <= bound).all() and ((s - float32).abs() <= bound).all()
    # at most the textbook bound: (2u + u^2 + 2g(1+u)^2) ||h|| ||w_j||, u = 2^-8, plus the
    # result's rounding (the measured rounding errors are at most their worst case u ||.||)
    u, gamma = 2.0**-8, C * 2.0**-24 / (1 - C * 2.0**-24)
    textbook = (2 * u + u * u + 2 * gamma * (1 + u) ** 2) * h.norm(dim=1, keepdim=True) * screen.norm[:V]  # fmt: skip
    assert (bound <= greedy.SAFE * (textbook + u / (1 - u) * s.abs()) + 1e-6).all()


def test_the_screened_argmax_is_the_float32_heads():
    g = torch.Generator().manual_seed(2)
    V, C = 4096, 128
    w = torch.randn(V, C, generator=g) * 0.05
    # near ties: token 7's row again with tiny changes, a row nearly a copy of token 100's,
    # and exact ties (equal rows: the first wins, as in torch.argmax)
    w[7:40] = w[7] + 1e-4 * torch.randn(33, C, generator=g)
    w[2000] = w[100] * (1 + 1e-5)
    w[3001:3005] = w[3000]
    h = hidden(96, C, g)
    h[:32] = w[7] * 50 + 0.01 * torch.randn(32, C, generator=g)  # the 33 near copies lead
    h[32:48] = w[100] * 50 + 0.01 * torch.randn(16, C, generator=g)
    h[48:56] = 1e-3 * torch.randn(8, C, generator=g)  # small: the bound is wide against it
    h[56:60] = w[3000] * 50
    head = head_of(w)
    screen = ScreenedHead(head)
    expected = head(h).argmax(1).tolist()
    assert expected[56:60] == [3000] * 4
    assert screen.argmax(h, V) == expected
    assert screen.screened == 96 and screen.full == 0
    assert screen.rescored > 96 + 32 * 10  # the near ties kept many candidates each
    # a smaller vocabulary (the tokenizer's): nothing past it is chosen
    assert screen.argmax(h, 2000) == head(h)[:, :2000].argmax(1).tolist()


@pytest.mark.parametrize("vocab_size", [4096, 2000])
def test_the_candidates_are_exactly_those_the_bound_allows(vocab_size):
    """The first cut (blocks, the bound at its largest) loses none of them."""
    g = torch.Generator().manual_seed(5)
    V, C = 4096, 128
    w = torch.randn(V, C, generator=g) * torch.rand(V, 1, generator=g)
    w[1000:1300] = w[1000] + 0.02 * torch.randn(300, C, generator=g)  # a crowd of near ties
    h = hidden(32, C, g)
    h[24:] = w[1000] * 5 + 0.1 * torch.randn(8, C, generator=g)
    w[:, 0], h[::2, 0] = 1.0, -300.0  # logits far below zero (GPT-2's are)
    screen = ScreenedHead(head_of(w))
    s, a, b = screen.scores(h)
    s = s[:, :vocab_size]
    bound = screen.bound(a, b, s, screen.norm[:vocab_size], screen.err[:vocab_size])
    allowed = s + bound >= (s - bound).amax(1, keepdim=True)
    r, c = screen.candidates(h, vocab_size)
    assert torch.stack([r, c], 1).tolist() == allowed.nonzero().tolist()
    assert allowed.sum(1).max() > 20  # the crowd's rows keep many


def test_a_row_with_too_many_candidates_takes_the_full_head():
    g = torch.Generator().manual_seed(3)
    V, C = 2048, 64
    w = torch.randn(V, C, generator=g) * 0.05
    w[500:900] = w[500]  # 400 equal rows: the first of them is the argmax
    h = hidden(4, C, g)
    h[0] = w[500] * 100
    head = head_of(w)
    screen = ScreenedHead(head, max_candidates=256)
    assert screen.argmax(h, V) == head(h).argmax(1).tolist()
    assert screen.argmax(h, V)[0] == 500
    assert screen.full == 2 and screen.screened == 6  # row 0 each time; the other three screened


def test_a_screen_that_mostly_falls_back_stops_being_asked():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(1024, 32, generator=g) * 0.05
    w[:600] = w[0]  # 600 equal rows: every row below has more than 256 candidates
    screen = ScreenedHead(head_of(w))
    crowd = w[0].expand(8, 32) * 100
    for _ in range(7):
        assert screen.argmax(crowd, 1024) == [0] * 8
        assert screen.pays  # fewer than 64 rows seen: too early to judge
    screen.argmax(crowd, 1024)
    assert screen.full == 64 and not screen.pays


def test_a_row_that_is_not_finite_takes_the_full_head():
    screen = ScreenedHead(head_of(torch.randn(512, 32)))
    h = torch.randn(2, 32)
    h[1, 5] = float("nan")
    assert screen.argmax(h, 512)[0] == screen.head(h[:1]).argmax().item()
    assert screen.full == 1


def test_a_tied_head_rescores_from_the_embedding_rows():
    shape = dict(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=32)
    model = prepare_for_generation(untrained_model(ModelConfig(**shape), seed=0))
    screen = maybe_screened_head(model, min_weights=0)
    assert screen is not None and screen.rows is model.wte.weight
    assert maybe_screened_head(model, min_weights=0) is screen  # built once per model
    untied = ModelConfig(**shape, tie_embeddings=False)
    assert maybe_screened_head(prepare_for_generation(untrained_model(untied, 0)), 0).rows is None


def test_where_the_screen_does_not_pay_or_cannot_run_there_is_none():
    cfg = ModelConfig(vocab_size=2048, block_size=16, n_layer=1, n_head=4, n_embd=192)
    model = prepare_for_generation(untrained_model(cfg, seed=0))
    assert maybe_screened_head(model) is None  # the demo's 2048 x 192 head: too small to pay
    assert maybe_screened_head(model, min_weights=0) is not None
    assert maybe_screened_head(untrained_model(cfg, seed=0), min_weights=0) is None  # nn.Linear
    bf16 = prepare_for_generation(untrained_model(cfg, seed=0).to(torch.bfloat16))
    assert maybe_screened_head(bf16, min_weights=0) is None
    int8 = quantize_int8(untrained_model(cfg, seed=0))
    assert maybe_screened_head(int8, min_weights=0) is None
    meta = prepare_for_generation(untrained_model(cfg, seed=0)).to("meta")
    assert maybe_screened_head(meta, min_weights=0) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert maybe_screened_head(prepare_for_generation(untrained_model(cfg, seed=0)), min_weights=0) is None  # fmt: skip
    biased = nn.Linear(32, 64)
    with pytest.raises(ValueError, match="bias"):
        ScreenedHead(TransposedLinear(biased))


FAMILIES = {
    "gpt2": dict(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=True),
    "llama": dict(vocab_size=512, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                  norm="rmsnorm", position="rope", mlp="swiglu", tie_embeddings=False,
                  logit_softcap=5.0),
}  # fmt: skip


def generate(model, rows: list[Row], screen: bool) -> Engine:
    engine = Engine(model, None, max_batch=len(rows), token_budget=16, screen_greedy=screen)
    for row in rows:
        engine.add(row)
    while engine.busy:
        engine.step()
    return engine


@pytest.mark.parametrize("family", FAMILIES)
def test_the_engine_screens_plain_greedy_rows_and_nothing_else(family, monkeypatch):
    """Greedy rows (several, decoding together), a sampled row, a greedy row with logprobs
    and one with prompt logprobs, in one batch: the same tokens and logprobs with the screen
    on and off; the screen picked every greedy row's tokens and none of the others'."""
    monkeypatch.setattr(greedy, "SCREEN_FROM", 0)  # the small head goes through the screen
    model = prepare_for_generation(untrained_model(ModelConfig(**FAMILIES[family]), seed=0))
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(512, (n,), generator=g).tolist() for n in (3, 9, 1, 20, 5, 6)]

    def rows() -> list[Row]:
        greedy_ = Sampling(temperature=0)
        return [
            Row(prompts[0], 12, greedy_),
            Row(prompts[1], 40, greedy_),  # runs past the 32-token context
            Row(prompts[2], 12, greedy_, stop_ids=frozenset({7})),
            Row(prompts[3], 12, Sampling(temperature=0.9, top_k=50), seed=5),
            Row(prompts[4], 12, greedy_, logprobs=3),
            Row(prompts[5], 6, greedy_, prompt_logprobs=2),
        ]

    on, off = rows(), rows()
    screened = generate(model, on, screen=True).screen
    assert generate(model, off, screen=False).screen is None
    for a, b in zip(on, off, strict=True):
        assert a.tokens == b.tokens and a.finish_reason == b.finish_reason
        scored = zip(a.prompt_token_logprobs[1:], b.prompt_token_logprobs[1:], strict=True)
        for (lp_a, top_a), (lp_b, top_b) in [*zip(a.token_logprobs, b.token_logprobs, strict=True), *scored]:  # fmt: skip
            assert lp_a == pytest.approx(lp_b, abs=1e-5)
            assert [t for t, _ in top_a] == [t for t, _ in top_b]
    assert len(on[5].prompt_token_logprobs) == len(prompts[5])
    # the three plain greedy rows' tokens (a stop token too), and nothing more, were screened
    picked = sum(len(r.tokens) + (r.finish_reason == "stop") for r in on[:3])
    assert screened.screened + screened.full == picked
    assert screened.screened > 0
    assert len({tuple(r.tokens) for r in on}) == len(on)  # the rows went different ways
