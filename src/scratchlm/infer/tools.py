"""The calculator a model calls mid-generation: `<|tool|>12*37<|/tool|>` -> `<|result|>444<|/result|>`.

The expression is parsed by a small recursive-descent parser (never `eval`), over exact
fractions, with every size bounded so that no expression can take long or use much memory:

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/" | "//" | "%") factor)*
    factor := ("+" | "-") factor | power
    power  := atom ("**" factor)?          right-associative, like Python
    atom   := NUMBER | "(" expr ")"

    calculate("12*37")        -> "444"
    calculate("7/2")          -> "3.5"
    calculate("1/3")          -> "0.333333"       (6 decimals, rounded)
    calculate("2**1000")      -> "error: result too large"
    calculate("(1+")          -> "error: unexpected end of expression"

A malformed or oversized expression gives an "error: ..." result, which the model sees like any
other result; the tool never raises. `ToolUse` runs it inside the generation engine, for every
row that asks for tools (generate, chat, serve and RL rollouts alike).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from scratchlm.infer.row import Row
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.tokenizer import Tokenizer

MAX_CHARS = 200  # longest expression read
MAX_DIGITS = 40  # largest number, in digits, as input, result or any step between
MAX_EXPONENT = 64  # a ** b needs |b| <= this
MAX_DEPTH = 32  # nested parentheses and unary signs
DECIMALS = 6
TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d+)?|\.\d+)|(\*\*|//|[-+*/%()]))")


class CalcError(ValueError):
    """Why an expression has no value (shown to the model as "error: <why>")."""


def _check(value: Fraction) -> Fraction:
    limit = 10**MAX_DIGITS
    if abs(value.numerator) >= limit or value.denominator >= limit:
        raise CalcError("result too large")
    return value


class _Parser:
    def __init__(self, text: str):
        self.tokens = self._lex(text)
        self.pos, self.depth = 0, 0

    @staticmethod
    def _lex(text: str) -> list[str]:
        tokens, pos = [], 0
        text = text.rstrip()
        while pos < len(text):
            m = TOKEN.match(text, pos)
            if m is None:
                raise CalcError(f"unexpected {text[pos:].strip()[:1]!r}")
            tokens.append(m.group(1) or m.group(2))
            pos = m.end()
        return tokens

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise CalcError("unexpected end of expression")
        self.pos += 1
        return token

    def expression(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term()
            value = _check(value + right if op == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/", "//", "%"):
            op, right = self.take(), self.factor()
            if op != "*" and right == 0:
                raise CalcError("division by zero")
            if op == "*":
                value = value * right
            elif op == "/":
                value = value / right
            elif op == "//":
                value = Fraction(value // right)
            else:
                value = value % right
            value = _check(value)
        return value

    def factor(self) -> Fraction:
        if self.peek() in ("+", "-"):
            sign = self.take()
            value = self._nested(self.factor)
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        if self.peek() != "**":
            return base
        self.take()
        exponent = self._nested(self.factor)
        if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
            raise CalcError(f"exponents are whole numbers up to {MAX_EXPONENT}")
        if base == 0 and exponent < 0:
            raise CalcError("division by zero")
        # Bound the size before computing: digits(base ** e) ~ e * digits(base).
        size = max(len(str(base.numerator)), len(str(base.denominator)))
        if (size - 1) * abs(int(exponent)) > MAX_DIGITS:
            raise CalcError("result too large")
        return _check(base ** int(exponent))

    def atom(self) -> Fraction:
        token = self.take()
        if token == "(":
            value = self._nested(self.expression)
            if self.take() != ")":
                raise CalcError("expected ')'")
            return value
        if token[0].isdigit() or token[0] == ".":
            if len(token) > MAX_DIGITS:
                raise CalcError("number too long")
            return Fraction(token)
        raise CalcError(f"unexpected {token!r}")

    def _nested(self, rule):  # noqa: ANN001, ANN202 (a bound method of this parser)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise CalcError("too deeply nested")
        try:
            return rule()
        finally:
            self.depth -= 1


def format_number(value: Fraction) -> str:
    """An integer as is; anything else rounded to DECIMALS places, trailing zeros dropped."""
    if value.denominator == 1:
        return str(value.numerator)
    rounded = round(value, DECIMALS)
    sign = "-" if rounded < 0 else ""
    whole, part = divmod(abs(rounded.numerator) * 10**DECIMALS // rounded.denominator, 10**DECIMALS)
    decimals = f"{part:0{DECIMALS}d}".rstrip("0")
    return f"{sign}{whole}.{decimals}" if decimals else f"{sign}{whole}"


def calculate(expression: str) -> str:
    """The value of an arithmetic expression as text, or "error: <why>"."""
    if len(expression) > MAX_CHARS:
        return f"error: expression longer than {MAX_CHARS} characters"
    try:
        parser = _Parser(expression)
        if not parser.tokens:
            raise CalcError("empty expression")
        value = parser.expression()
        if parser.peek() is not None:
            raise CalcError(f"unexpected {parser.peek()!r}")
        return format_number(value)
    except CalcError as e:
        return f"error: {e}"
    except (ZeroDivisionError, OverflowError, ValueError) as e:  # belt and braces
        return f"error: {type(e).__name__}"


# --------------------------------------------------------------------------- the loop in the engine


@dataclass(frozen=True)
class ToolUse:
    """Calls the calculator for a row that just closed a call: the expression since its last
    <|tool|> is evaluated and <|result|>VALUE<|/result|> is read into the row's context (not
    its generated tokens); the engine reads it before the row's next token is picked."""

    tokenizer: Tokenizer
    call: int
    call_end: int
    result: int
    result_end: int
    max_calls: int = 16  # per row: a model that calls in a loop stops being answered

    @classmethod
    def of(
        cls, tokenizer: Tokenizer | None, template: ChatTemplate | None = None
    ) -> ToolUse | None:
        """The tool loop for this tokenizer, or None when it has no tool tokens."""
        if tokenizer is None:
            return None
        ids = [tokenizer.special_tokens.get(t) for t in (template or ChatTemplate()).tool_tokens]
        return None if None in ids else cls(tokenizer, *ids)  # type: ignore[arg-type]

    def answer(self, row: Row) -> str:
        """Run the call `row` has just closed; return the text the result adds to its stream."""
        if len(row.tool_spans) >= self.max_calls:
            return ""
        generated = row.ids[len(row.prompt) :]
        opened = max((i for i, t in enumerate(generated[:-1]) if t == self.call), default=None)
        if opened is None:
            value = "error: <|/tool|> without <|tool|>"
        else:
            value = calculate(self.tokenizer.decode(generated[opened + 1 : -1]))
        injected = [self.result, *self.tokenizer.encode(value), self.result_end]
        start = len(row.ids)
        row.extend(injected)
        row.tool_spans.append((start, len(row.ids)))
        if row.stream is None:
            return ""
        return "".join(row.stream.push(t) for t in injected if t not in row.hide_ids)
