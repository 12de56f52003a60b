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
