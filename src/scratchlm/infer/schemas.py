"""The server's request bodies, validated before any work: OpenAI's fields, and vLLM's where
lm-eval and other clients send them.

Types are strict ("10" is not a number), ranges are checked (a temperature of 1e-40 is greedy,
a penalty of Infinity or 1e-40 is refused), every string must be valid Unicode, and a field we
do not support is refused by name - never silently ignored.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20  # OpenAI's and vLLM's limit on top logprobs
MAX_CHOICES = 64  # rows one request may ask for (prompts x n)


class APIError(Exception):
    """A client mistake (or a refusal) with its HTTP status and OpenAI error fields."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate such as "\ud800": not a character
        raise ValueError(f"not valid Unicode (a lone surrogate at character {e.start})") from e
    return text


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError("must be a finite number")
    return x


Text = Annotated[str, AfterValidator(_valid_unicode)]
Float = Annotated[float, AfterValidator(_finite)]
Prob = Annotated[Float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[Float, Field(ge=-2.0, le=2.0)]  # OpenAI's range
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]

# strict: "10" is not a number; forbid: a field we do not know is an error that names it
Strict = ConfigDict(extra="forbid", strict=True)


class StreamOptions(BaseModel):
    model_config = Strict
    include_usage: bool = False


class SamplingFields(BaseModel):
    model_config = Strict
    model: Text | None = None
    max_tokens: Annotated[int, Field(ge=0)] | None = None
    temperature: Annotated[Float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Prob = 1.0
    top_k: Annotated[int, Field(ge=-1)] = 0  # vLLM's extensions: top_k (-1 or 0: all), min_p,
    min_p: Prob = 0.0  # repetition_penalty and ignore_eos
    repetition_penalty: Annotated[Float, Field(ge=0.01, le=100.0)] = 1.0
    frequency_penalty: Penalty = 0.0
    presence_penalty: Penalty = 0.0
    ignore_eos: bool = False
    stop: Text | Annotated[list[Text], Field(max_length=16)] | None = None
    seed: int | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None  # an end-user id: OpenAI's, for their abuse monitoring

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class CompletionRequest(SamplingFields):
    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    )
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None


def _text_parts(content: str | list) -> str | list:
    """A list of content parts must be text parts: {"type": "text", "text": "..."}."""
    if isinstance(content, list):
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str) or set(part) - {"type", "text"}:  # fmt: skip
                raise ValueError(f"part {i}: only text parts are supported, got {str(kind or part)[:40]!r}")  # fmt: skip
            _valid_unicode(part["text"])
    return content


class Message(BaseModel):
    model_config = Strict
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[Text | list[dict], AfterValidator(_text_parts)]

    def plain(self) -> dict[str, str]:
        """{"role", "content"} as the chat template reads it (a developer is a system)."""
        parts = self.content
        content = parts if isinstance(parts, str) else "".join(p["text"] for p in parts)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=0)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a prompt, or messages with the chat template."""

    model_config = Strict
    model: Text | None = None
    prompt: Text | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool = True  # our tokenizers add no BOS: nothing to add
    add_generation_prompt: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = Strict
    model: Text | None = None
    tokens: list[Annotated[int, Field(ge=0)]]
