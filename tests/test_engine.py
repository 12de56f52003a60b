"""The engine (infer/engine.py): continuous batching, chunked prompts, a cache of real tokens,
rows past the context, a context extended between steps, one row's failure kept to itself."""

from __future__ import annotations

import pytest
import torch

from scratchlm.config import ModelConfig
from scratchlm.infer.engine import Engine
from scratchlm.infer.generate import generate_rows, untrained_model
from scratchlm.infer.kv import SlotCache
from scratchlm.infer.layout import prepare_for_generation
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling
from scratchlm.model.gpt import GPT
from scratchlm.tokenizer.tokenizer import CharTokenizer

GREEDY = Sampling(temperature=0)
FAMILIES = {
    "gpt2": dict(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=True),
    "llama": dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                  norm="rmsnorm", position="rope", mlp="swiglu", tie_embeddings=False),
}  # fmt: skip


def model_of(family: str):
    return prepare_for_generation(untrained_model(ModelConfig(**FAMILIES[family]), seed=0))


def alone(model, prompt: list[int], n: int, sampling: Sampling = GREEDY, seed: int = 0) -> list[int]:  # fmt: skip
    row = Row(prompt, n, sampling, seed)
    for _ in generate_rows(model, None, [row]):
        pass
    return row.tokens


def run(engine: Engine) -> list[list]:
    steps = []
    while engine.busy:
        steps.append(engine.step())
    return steps


@pytest.mark.parametrize("family", FAMILIES)
def test_continuous_batching_gives_each_row_what_it_gets_alone(family):
    """More rows than places, prompts of 1 to 45 tokens (some longer than the 32-token
    context), budgets that run past the context, a token budget that reads long prompts in
    chunks over several steps: every row's greedy text equals its text generated alone."""
    model = model_of(family)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(64, (n,), generator=g).tolist() for n in (1, 7, 45, 3, 20, 31, 12, 2)]  # fmt: skip
    budgets = [40, 5, 12, 30, 9, 3, 25, 18]
    engine = Engine(model, None, max_batch=3, token_budget=8)
    rows = [Row(p, n, GREEDY) for p, n in zip(prompts, budgets, strict=True)]
    for row in rows:
        engine.add(row)
    steps = run(engine)
    assert max(len({id(r) for r, _ in s}) for s in steps) <= 3  # never more than max_batch
    expected = [alone(model, p, n) for p, n in zip(prompts, budgets, strict=True)]
    assert [r.tokens for r in rows] == expected
    assert all(r.finish_reason == "length" for r in rows)
    assert len({tuple(t) for t in expected}) > 4  # the prompts lead somewhere different


def test_seeded_sampling_does_not_depend_on_the_neighbours():
    model = model_of("llama")
    s = Sampling(temperature=1.0, top_k=20)
    rows = [Row([1, 2, 3][: i + 1], 15, s, seed=i) for i in range(3)]
    for _ in generate_rows(model, None, rows, max_batch=2):
        pass
    assert [r.tokens for r in rows] == [alone(model, [1, 2, 3][: i + 1], 15, s, i) for i in range(3)]  # fmt: skip


def test_a_row_arriving_mid_generation_gets_its_first_token_before_the_running_rows_finish():
    model = model_of("gpt2")
    engine = Engine(model, None, max_batch=4)
    running = [Row([1, 2, 3], 25, GREEDY), Row([4, 5], 25, GREEDY)]
    for row in running:
        engine.add(row)
    events: list[tuple[str, int]] = []  # (what happened, step) in the order it happened
    late = Row([6, 7, 8, 9], 3, GREEDY)
    for step in range(200):
        if not engine.busy:
            break
        if step == 5:
            engine.add(late)  # arrives while the two others generate
        for row, _ in engine.step():
            name = "late" if row is late else f"running{running.index(row)}"
            if len(row.tokens) == 1:
                events.append((f"{name} first token", step))
            if row.finish_reason is not None:
                events.append((f"{name} finished", step))
    order = [name for name, _ in events]
    assert order.index("late first token") < order.index("running0 finished")
    assert order.index("late finished") < order.index("running1 finished")
    assert late.tokens == alone(model, [6, 7, 8, 9], 3)


def test_a_context_extended_between_steps_is_read_before_the_next_token():
    """What a tool call (#21) needs: the caller adds tokens to a row mid-generation; the next
    token is the one the whole context (prompt, generated, added) leads to."""
    model = model_of("llama")
    engine = Engine(model, None, max_batch=2)
    row, other = Row([5, 6, 7], 10, GREEDY), Row([9], 8, GREEDY)
    engine.add(row)
    engine.add(other)
    while len(row.tokens) < 3:
        engine.step()
    row.extend([11, 12, 13])  # e.g. a tool's answer
    run(engine)
    context = [5, 6, 7, *row.tokens[:3], 11, 12, 13]
    assert row.tokens[3:] == alone(model, context, 7)
    assert other.tokens == alone(model, [9], 8)  # the neighbour is untouched


def test_one_rows_failure_is_its_own():
    class Broken(Row):
        def pick(self, logits):
            raise RuntimeError("broken rules")

    model = model_of("gpt2")
    rows = [Row([1, 2], 6, Sampling(temperature=1.0), seed=1), Broken([3], 6, Sampling(top_k=5)), Row([4, 5, 6], 6, GREEDY)]  # fmt: skip
    for _ in generate_rows(model, None, rows):
        pass
    assert rows[1].finish_reason == "error" and "broken rules" in rows[1].error
    assert rows[0].tokens == alone(model, [1, 2], 6, Sampling(temperature=1.0), 1)
    assert rows[2].tokens == alone(model, [4, 5, 6], 6)


def test_extreme_sampling_settings_stay_finite_and_harm_no_neighbour():
    """A temperature of 1e-40 or 1e-300 is greedy; penalties at the ends of their ranges pick
    a real token; none of it makes a NaN that fails the batch."""
    model = model_of("llama")
    odd = [Sampling(temperature=1e-40), Sampling(temperature=1e-300),
           Sampling(temperature=2.0, repetition_penalty=0.01), Sampling(temperature=1.0, repetition_penalty=100.0),
           Sampling(temperature=1e-30, frequency_penalty=2.0, presence_penalty=-2.0)]  # fmt: skip
    rows = [Row([1, 2, 3], 8, s, seed=0) for s in odd] + [Row([4, 5], 8, GREEDY)]
    for _ in generate_rows(model, None, rows):
        pass
    assert all(r.finish_reason == "length" and all(0 <= t < 64 for t in r.tokens) for r in rows)
    assert (
        rows[0].tokens == rows[1].tokens == alone(model, [1, 2, 3], 8)
    )  # tiny temperature: greedy
    assert rows[-1].tokens == alone(model, [4, 5], 8)


def test_prompt_logprobs_match_a_plain_forward_pass():
    model = model_of("gpt2")
    prompt = [3, 14, 15, 9, 26, 5, 35]
    row = Row(prompt, 0, GREEDY, prompt_logprobs=3)
    engine = Engine(model, None, token_budget=3)  # the prompt is read in three chunks
    engine.add(row)
    run(engine)
    with torch.no_grad():
        logp = model(torch.tensor([prompt]))[0][0].log_softmax(-1)
    assert row.prompt_token_logprobs[0] is None and row.tokens == []
    for i in range(1, len(prompt)):
        lp, top = row.prompt_token_logprobs[i]
        assert lp == pytest.approx(float(logp[i - 1, prompt[i]]), abs=1e-5)
        assert [t for t, _ in top] == logp[i - 1].topk(3).indices.tolist()


def test_the_slot_cache_holds_real_tokens_only_and_grows_to_fit():
    model = model_of("gpt2")
    engine = Engine(model, None, max_batch=2)
    short, long = Row([1], 3, GREEDY), Row(list(range(1, 31)), 2, GREEDY)
    engine.add(short)
    engine.add(long)
    engine.step()
    cache: SlotCache = engine.cache
    assert cache.lengths[:2] == [1, 30]  # each slot its own tokens, no padding
    assert cache.capacity == 32  # grown (by doubling) to the longest row, at most block_size
    run(engine)
    assert cache.lengths == [0, 0]  # finished rows leave nothing behind


def test_hidden_tokens_are_generated_but_never_shown():
    """Completions hide special tokens from the text, as vLLM does: a model that often writes
    <|x|> (here, 30% of the time) still gets it in its context and its token list."""
    tok = CharTokenizer("abc", ["<|endoftext|>", "<|x|>"])
    cfg = ModelConfig(vocab_size=5, block_size=64, n_layer=1, n_head=1, n_embd=8, bias=True, tie_embeddings=False)  # fmt: skip
    model = GPT(cfg).eval()
    with torch.no_grad():  # every weight zero: the final norm outputs its bias, the head its column
        for p in model.parameters():
            p.zero_()
        model.ln_f.bias[0] = 1.0
        model.lm_head.weight[:, 0] = torch.tensor([0.3, 0.2, 0.2, 1e-9, 0.3]).log()
    x = tok.special_tokens["<|x|>"]
    row = Row([0], 40, Sampling(temperature=1.0), seed=0, hide_ids=frozenset({x}))
    for _ in generate_rows(model, tok, [row]):
        pass
    assert row.tokens.count(x) > 3
    assert row.stream.text == tok.decode([t for t in row.tokens if t != x])
