"""Sampling and generation: filters keep to their allowed sets, seeds repeat, stops stop,
batches of different prompt lengths give what each prompt gives alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from scratchlm import runs
from scratchlm.config import GenerateSettings, ModelConfig
from scratchlm.infer.generate import (
    Row,
    complete,
    generate_rows,
    generate_text,
    untrained_model,
)
from scratchlm.infer.layout import prepare_for_generation
from scratchlm.infer.sampling import Sampling, filter_logits, penalize_repeats
from scratchlm.infer.text import TextStream
from scratchlm.model.gpt import GPT

# A known next-token distribution: tokens 0-3 likely, the other 12 share the rest evenly.
PROBS = [0.3, 0.2, 0.15, 0.1] + [0.25 / 12] * 12


def known_model() -> GPT:
    """A real GPT whose next-token distribution is PROBS whatever the context: every weight is
    zero, so the final LayerNorm outputs its bias e_0, and the LM head's column 0 holds the
    log-probabilities."""
    cfg = ModelConfig(vocab_size=16, block_size=64, n_layer=1, n_head=1, n_embd=8, bias=True, tie_embeddings=False)  # fmt: skip
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.ln_f.bias[0] = 1.0
        model.lm_head.weight[:, 0] = torch.tensor(PROBS).log()
    return model


def draws(model: GPT, s: Sampling, rows: int = 10, each: int = 60) -> list[int]:
    batch = [Row([0], each, s, seed=i) for i in range(rows)]
    for _ in generate_rows(model, None, batch):
        pass
    return [t for r in batch for t in r.tokens]


def test_the_known_model_has_the_known_distribution():
    logits, _ = known_model()(torch.tensor([[3, 1, 4]]))
    assert torch.allclose(logits[0, -1].softmax(-1), torch.tensor(PROBS), atol=1e-6)


@pytest.mark.parametrize(
    "sampling, allowed",
    [
        (Sampling(top_k=3), {0, 1, 2}),
        (Sampling(top_p=0.6), {0, 1, 2}),  # 0.3 + 0.2 < 0.6: the third is needed to reach it
        (Sampling(top_p=0.45), {0, 1}),
        (Sampling(min_p=0.5), {0, 1, 2}),  # at least 0.15
        (Sampling(min_p=0.6), {0, 1}),
        (Sampling(top_k=3, top_p=0.7), {0, 1}),  # top-p of the top 3, renormalised
        (Sampling(temperature=0), {0}),
    ],
    ids=["top_k", "top_p", "top_p-small", "min_p", "min_p-large", "top_k+top_p", "greedy"],
)
def test_filters_never_emit_a_token_outside_the_allowed_set(sampling, allowed):
    seen = draws(known_model(), sampling)
    assert set(seen) == allowed  # nothing outside, and (600 draws) every allowed token shows up


def test_without_filters_every_token_can_be_drawn():
    assert set(draws(known_model(), Sampling(temperature=1.5), rows=20)) == set(range(16))


def test_filter_logits_by_hand():
    logits = torch.tensor(PROBS).log()
    kept = filter_logits(logits, Sampling(top_k=2)).isfinite()
    assert kept.tolist() == [True, True] + [False] * 14
    assert filter_logits(logits, Sampling(top_p=0.0)).isfinite().sum() == 1  # the top one stays
    hot = filter_logits(logits, Sampling(temperature=2.0)).softmax(-1)
    assert hot[0] < PROBS[0] and hot[-1] > PROBS[-1]  # a higher temperature flattens


def test_repetition_penalty():
    logits = torch.tensor([2.0, -1.0, 1.0])
    out = penalize_repeats(logits, torch.tensor([0, 1]), 2.0)
    assert out.tolist() == [1.0, -2.0, 1.0]  # positive divided, negative multiplied, unseen kept
    # Greedy on the known model repeats token 0 forever, unless repeats are penalised.
    plain = draws(known_model(), Sampling(temperature=0), rows=1, each=4)
    assert plain == [0, 0, 0, 0]
    varied = draws(known_model(), Sampling(temperature=0, repetition_penalty=3.0), rows=1, each=4)
    # Token 0 is in the prompt: 3 x log 0.3 = -3.6 is below log 0.2, so 1 comes next; then 2
    # and 3; then every likely token is penalised, and 0 (-3.6) still beats 4 (log 0.021 = -3.9).
    assert varied == [1, 2, 3, 0]


def test_same_seed_same_text_other_seed_other_text(tiny_run):
    loaded = runs.load_model(tiny_run)
    model, tok = loaded.model, loaded.tokenizer
    s = GenerateSettings(max_new_tokens=40, temperature=1.0, top_k=0, seed=7)
    first = generate_text(model, tok, "The ", s)
    assert first == generate_text(model, tok, "The ", s)
    others = {generate_text(model, tok, "The ", GenerateSettings(max_new_tokens=40, seed=k)) for k in range(3)}  # fmt: skip
    assert len(others) > 1


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "seeded-sampling"])
def test_a_batch_of_different_lengths_gives_what_each_prompt_gives_alone(tiny_run, temperature):
    loaded = runs.load_model(tiny_run)
    model, tok = loaded.model, loaded.tokenizer
    if temperature == 0:  # an untrained model: its greedy choices depend on the context
        model = untrained_model(model.cfg, seed=0)
    prepare_for_generation(model)
    prompts = ["The ", "A function that returns the value of", "x", "class C:\n    def f(self):"]
    s = GenerateSettings(max_new_tokens=20, temperature=temperature, top_k=0, stop=[])
    together = [r.tokens for r in complete(model, tok, prompts, s, batch_size=4)]
    alone = [complete(model, tok, [p], s)[0].tokens for p in prompts]
    assert together == alone
    if temperature == 0:  # (the barely trained model writes the same whatever the prompt)
        assert len({tuple(t) for t in together}) > 1  # the prompts lead somewhere different


def test_stop_strings_stop(tiny_run):
    loaded = runs.load_model(tiny_run)
    model, tok = loaded.model, loaded.tokenizer
    s = GenerateSettings(max_new_tokens=60, temperature=1.0, top_k=0, seed=11, stop=[])
    text = complete(model, tok, ["The "], s)[0].stream.text
    stop = text[20:22]  # a piece of what this seed writes anyway
    cut = text.index(stop)
    assert len(stop) == 2 and cut > 0
    row = complete(model, tok, ["The "], dataclasses.replace(s, stop=[stop]))[0]
    assert row.finish_reason == "stop" and row.stream.text == text[:cut]


class Bytes:
    """A byte-level stand-in tokenizer: token i is byte i (real BPE splits characters too)."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_waits_for_split_characters_and_holds_back_stop_prefixes():
    stream = TextStream(Bytes(), stop=["END"])
    pieces = [stream.push(b) for b in "é E".encode()]  # é is two bytes
    assert pieces == ["", "é", " ", ""]  # no half character; "E" may begin "END"
    assert stream.push(ord("x")) == "Ex"  # it did not
    for b in b"ENDafter":
        stream.push(b)
    assert stream.stopped and stream.text == "é Ex" and stream.finish() == ""
    tail = TextStream(Bytes(), stop=["END"])
    for b in b"abEN":
        tail.push(b)
    assert tail.finish() == "EN" and tail.text == "abEN"  # the end releases what was held


def test_generation_goes_on_past_the_context():
    model = untrained_model(ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=1, n_embd=8), 0)  # fmt: skip
    row = Row([1, 2, 3], 40, Sampling(temperature=0))
    for _ in generate_rows(model, None, [row]):
        pass
    assert len(row.tokens) == 40 and row.finish_reason == "length"
    # greedy reference: each token is the argmax of a plain forward pass over the last
    # block_size tokens, so the cache and the re-read past the context must both agree with it
    seq = [1, 2, 3]
    with torch.no_grad():
        for _ in range(40):
            seq.append(int(model(torch.tensor([seq[-16:]]))[0][0, -1].argmax()))
    assert row.tokens == seq[3:]


@pytest.mark.parametrize("n_embd", [16, 384])  # small layers: W^T for one row; large: packed
@pytest.mark.parametrize("rows", [1, 4])
def test_prepare_for_generation_keeps_the_logits(n_embd, rows):
    from scratchlm.infer.layout import PACKED_ONE_ROW_FROM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=n_embd, bias=True)
    model = GPT(cfg).eval()
    x = torch.randint(0, 50, (rows, 1))  # the decode step's shape: one token a row
    with torch.no_grad():
        before = model(x)[0]
        after = prepare_for_generation(model)(x)[0]
    layers = [m for m in model.modules() if type(m).__name__ == "TransposedLinear"]
    large = [m.weight_t.numel() >= PACKED_ONE_ROW_FROM for m in layers]
    assert layers and (any(large) if n_embd == 384 else not any(large))
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
