"""The calculator tool and the arithmetic tasks it is trained on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchlm.data.arithmetic import problems, split_of
from scratchlm.infer.tools import MAX_CHARS, calculate


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("12*37", "444"),
        ("123+456", "579"),
        ("7-10", "-3"),
        ("7/2", "3.5"),
        ("-7/2", "-3.5"),
        ("1/3", "0.333333"),
        ("2/3", "0.666667"),
        ("7//2", "3"),
        ("-7//2", "-4"),
        ("7%3", "1"),
        ("2**10", "1024"),
        ("2**-2", "0.25"),
        ("-2**2", "-4"),  # like Python: the power binds tighter than the sign
        ("2**3**2", "512"),  # right-associative
        ("(1+2)*(3+4)", "21"),
        (" 1 +  2 ", "3"),
        ("1.5*2", "3"),
        (".5+.25", "0.75"),
        ("--3", "3"),
    ],
)
def test_known_expressions(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(
    ("expression", "why"),
    [
        ("", "empty expression"),
        ("(1+", "unexpected end of expression"),
        ("1+2)", "unexpected ')'"),
        ("1/0", "division by zero"),
        ("5%0", "division by zero"),
        ("0**-1", "division by zero"),
        ("2**1000", "exponents are whole numbers up to 64"),
        ("99**60", "result too large"),
        ("2**0.5", "exponents are whole numbers"),
        ("9" * 50, "number too long"),
        ("99999999999999999999*99999999999999999999*99", "result too large"),
        ("import os", "unexpected 'i'"),
        ("__import__('os')", "unexpected '_'"),
        ("1e5", "unexpected 'e'"),
        ("(" * 150 + "1" + ")" * 40, "too deeply nested"),
        ("-" * 100 + "1", "too deeply nested"),
        ("1+" * 150 + "1", f"longer than {MAX_CHARS} characters"),
    ],
)
def test_malformed_and_huge_expressions_give_an_error_result(expression, why):
    result = calculate(expression)
    assert result.startswith("error: ") and why in result, result


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-999, 999), min_size=1, max_size=6),
    st.lists(st.sampled_from(["+", "-", "*"]), min_size=5, max_size=5),
)
def test_integer_expressions_agree_with_python(numbers, ops):
    expression = str(numbers[0]) + "".join(
        f"{op}({n})" for op, n in zip(ops, numbers[1:], strict=False)
    )
    assert calculate(expression) == str(eval(expression))  # our own test data, not user input


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_gives_a_value_or_an_error_and_never_raises(text):
    result = calculate(text)
    assert isinstance(result, str) and result


def test_problems_are_distinct_correct_and_split_for_good():
    train = problems(500, digits=3, operators="+-*", split="train", seed=1)
    heldout = problems(200, digits=3, operators="+-*", split="heldout", seed=1)
    assert len(train) == 500 and len(heldout) == 200
    assert len({p.expression for p in train}) == 500
    assert not {p.expression for p in train} & {p.expression for p in heldout}
    for p in train + heldout:
        assert str(p.answer) == calculate(p.expression)
        a, b = (int(x) for x in p.expression.replace("*", "+").replace("-", "+").split("+"))
        assert 100 <= a <= 999 and 100 <= b <= 999
    assert {split_of(p.expression) for p in heldout} == {"heldout"}
    assert problems(50, 3, "+", "train", seed=1) == problems(50, 3, "+", "train", seed=1)
    assert problems(50, 3, "+", "train", seed=1) != problems(50, 3, "+", "train", seed=2)


def test_a_small_space_gives_what_it_has():
    one_digit = problems(10_000, digits=1, operators="+", split="heldout")
    assert 0 < len(one_digit) < 100  # 100 possible sums, about a tenth held out
    with pytest.raises(ValueError, match="operators"):
        problems(5, operators="^")


# --------------------------------------------------------------------------- the loop in the engine


def tool_tokenizer():
    from scratchlm.tokenizer.chat import add_chat_tokens
    from scratchlm.tokenizer.tokenizer import BPETokenizer

    return add_chat_tokens(BPETokenizer([bytes([i]) for i in range(256)], "gpt2"), tools=True)[0]


def memorized_model(tok, sequence: list[int]):
    """A real (tiny) model trained until it writes `sequence` greedily: a model that calls the
    tool, made in a second, with no stand-in for any part of the engine."""
    import torch

    from scratchlm.model.config import ModelConfig
    from scratchlm.model.gpt import GPT

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=64)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.tensor([sequence[:-1]]), torch.tensor([sequence[1:]])
    for _ in range(300):
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 1e-3:
            break
    return model.eval()


@pytest.fixture(scope="module")
def caller():
    """A model that, after <|assistant|>, writes <|tool|>12*37<|/tool|><|result|>999<|/result|>
    999<|end|>: it learned a wrong result, so the right one in its context can only come from
    the calculator."""
    tok = tool_tokenizer()
    s = tok.special_tokens
    reply = (
        [s["<|tool|>"], *tok.encode("12*37"), s["<|/tool|>"]]
        + [s["<|result|>"], *tok.encode("999"), s["<|/result|>"]]
        + [*tok.encode("999"), s["<|end|>"]]
    )
    prompt = [s["<|user|>"], *tok.encode("q"), s["<|end|>"], s["<|assistant|>"]]
    return tok, memorized_model(tok, prompt + reply), prompt


def test_the_engine_reads_the_calculators_result_into_the_context(caller):
    from scratchlm.infer.generate import generate_rows
    from scratchlm.infer.row import Row
    from scratchlm.infer.sampling import Sampling

    tok, model, prompt = caller
    s = tok.special_tokens
    end = frozenset({s["<|end|>"]})
    with_tool = Row(prompt, 20, Sampling(0.0), stop_ids=end, tools=True)
    without = Row(prompt, 20, Sampling(0.0), stop_ids=end)
    texts = {id(with_tool): "", id(without): ""}
    for events in generate_rows(model, tok, [with_tool, without]):
        for row, text in events:
            texts[id(row)] += text
    # Without the tool the model writes its memorised (wrong) result itself.
    assert tok.decode(without.tokens) == "<|tool|>12*37<|/tool|><|result|>999<|/result|>999"
    assert without.tool_spans == []
    # With it, the result is the calculator's, read into the context but never generated.
    ((start, stop),) = with_tool.tool_spans
    assert tok.decode(with_tool.ids[start:stop]) == "<|result|>444<|/result|>"
    assert s["<|result|>"] not in with_tool.tokens
    assert texts[id(with_tool)].startswith("<|tool|>12*37<|/tool|><|result|>444<|/result|>")
    assert with_tool.ids[: len(prompt)] == prompt


def test_a_malformed_call_gets_an_error_result_and_generation_goes_on():
    from scratchlm.infer.row import Row
    from scratchlm.infer.tools import ToolUse

    tok = tool_tokenizer()
    tools = ToolUse.of(tok)
    s = tok.special_tokens
    for expression, result in (("1/0", "error: division by zero"), ("2**99999", "error:")):
        row = Row([1, 2], 50, tools=True)
        row.start(tok, tok.vocab_size)
        for t in [s["<|tool|>"], *tok.encode(expression), s["<|/tool|>"]]:
            row.accept(t)
        tools.answer(row)
        ((start, stop),) = row.tool_spans
        assert tok.decode(row.ids[start + 1 : stop - 1]).startswith(result)
        assert row.finish_reason is None and stop == len(row.ids)  # read before the next pick
    lone = Row([1, 2], 5, tools=True)  # a close without an open
    lone.start(tok, tok.vocab_size)
    lone.accept(s["<|/tool|>"])
    tools.answer(lone)
    assert "without <|tool|>" in tok.decode(lone.ids)
    assert ToolUse.of(tool_tokenizer().__class__([bytes([i]) for i in range(256)], "gpt2")) is None


def test_the_hf_export_carries_the_tool_tokens_and_renders_tool_turns_as_we_train_them(
    caller, tmp_path
):
    transformers = pytest.importorskip("transformers")
    from scratchlm.export.hf import export_hf
    from scratchlm.tokenizer.chat import ChatTemplate

    tok, model, _ = caller
    template = ChatTemplate()
    export_hf(model, tok, tmp_path, template.to_jinja())
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for token in template.tool_tokens:  # one token each, as the model learned them
        assert hf_tok.convert_tokens_to_ids(token) == tok.special_tokens[token]
    convo = [
        {"role": "system", "content": "tools: calculator"},
        {"role": "user", "content": "What is 12*37?"},
        {"role": "assistant", "content": "<|tool|>12*37<|/tool|><|result|>444<|/result|>444"},
    ]
    ids, _ = template.render(tok, convo, add_generation_prompt=False)
    hf_ids = hf_tok.apply_chat_template(convo, tokenize=True)
    assert list(getattr(hf_ids, "input_ids", hf_ids)) == ids
    assert tok.special_tokens["<|tool|>"] in ids  # the markup became the tool tokens


def test_a_rollout_past_the_context_gets_no_reward_and_fits_the_scoring_pass(caller):
    from scratchlm.config import FinetuneSettings
    from scratchlm.eval.answers import Task
    from scratchlm.finetune.grpo import Rollouts, sequence_logprobs
    from scratchlm.infer.row import Row
    from scratchlm.infer.tools import ToolUse
    from scratchlm.tokenizer.chat import ChatTemplate

    tok, model, prompt = caller  # block_size 32
    s = tok.special_tokens
    long_prompt = prompt[:1] + tok.encode("x" * 20) + prompt[1:]
    row = Row(long_prompt, 50, tools=True)
    row.start(tok, tok.vocab_size)
    for t in [s["<|tool|>"], *tok.encode("12*37"), s["<|/tool|>"]]:
        row.accept(t)
    ToolUse.of(tok).answer(row)  # <|result|>444<|/result|> read in: past 32 positions
    for t in tok.encode("444"):
        row.accept(t)
    assert len(row.ids) > model.cfg.block_size
    rollouts = Rollouts(model, tok, ChatTemplate(), [], FinetuneSettings(task="grpo"), None)
    sample = rollouts._sample(row, Task("What is 12*37?", "444"))
    assert sample.reward == 0.0  # right, but it did not fit
    assert len(sample.ids) == model.cfg.block_size
    assert len(sample.written) == len(sample.ids) - sample.prompt_len
    sample.advantage = 1.0
    assert sequence_logprobs(model, [sample], tok.eot_id).shape == (1, len(sample.written))
