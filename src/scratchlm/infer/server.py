"""An OpenAI-compatible HTTP server (FastAPI + uvicorn) and its web chat page.

    GET  /                     the chat page (infer/static/chat.html)
    GET  /health               {"status": "ok", ...}: no API key needed
    GET  /v1/models            the one model served
    POST /v1/completions       text in, text out; "stream": true for server-sent events
    POST /v1/chat/completions  messages in (the run's chat template), a reply out

Every client mistake is a 4xx with OpenAI's error body, {"error": {"message", "type", "param",
"code"}}: malformed JSON, a wrong type, an unknown model, max_tokens above the cap, a prompt
longer than the context, a body over 1 MiB (413), a wrong API key (401), a full queue (429).
A 500 means a bug of ours.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from scratchlm import runs
from scratchlm.infer.chat import reply_stop_ids
from scratchlm.infer.engine import Engine, Job
from scratchlm.infer.generate import Row
from scratchlm.infer.layout import load_for_generation
from scratchlm.infer.sampling import Sampling
from scratchlm.tokenizer.chat import ChatTemplate
from scratchlm.tokenizer.tokenizer import Tokenizer

API_KEY_ENV = "SCRATCHLM_API_KEY"


@dataclass
class ServeOptions:
    model_name: str
    api_key: str | None = None  # None: no key needed
    max_tokens: int = 512  # the largest max_tokens a request may ask for
    max_batch: int = 8  # rows generated together
    max_queue: int = 256  # requests waiting beyond that get a 429
    max_body_bytes: int = 1 << 20  # a larger request body gets a 413, unread
    quantize: str = "none"  # "int8": int8 linear layers (model/quantize.py)


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(
    message: str,
    param: str | None = None,
    code: str | None = None,
    kind: str = "invalid_request_error",
) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------ request bodies

Strict = ConfigDict(extra="ignore", strict=True)  # "10" is not a number; unknown keys ignored
Prob = Annotated[float, Field(ge=0.0, le=1.0)]


class SamplingFields(BaseModel):
    model_config = Strict
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Prob = 1.0
    top_k: Annotated[int, Field(ge=0)] = 0  # not OpenAI's: vLLM's extension, as are the two below
    min_p: Prob = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0)] = 1.0
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool = False
    n: Literal[1] = 1  # one choice per prompt


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)]


class Message(BaseModel):
    model_config = Strict
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]


# ------------------------------------------------------------------ the app


def create_app(
    model: Any, tokenizer: Tokenizer, options: ServeOptions, template: ChatTemplate | None
) -> FastAPI:
    """The app serving `model`; `template` None: no chat endpoint (the tokenizer lacks its tokens)."""
    app = FastAPI(title="scratchlm", docs_url=None, redoc_url=None)
    engine = Engine(model, tokenizer, options.max_batch, options.max_queue)
    app.state.engine = engine
    block = model.cfg.block_size
    text_stop = frozenset({tokenizer.eot_id})
    chat_stop = reply_stop_ids(template, tokenizer) if template is not None else text_stop

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > options.max_body_bytes:
            message = f"the request body is {size} bytes; at most {options.max_body_bytes}"
            return JSONResponse(error_body(message, code="request_too_large"), status_code=413)
        return await call_next(request)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(error_body(e.message, e.param, e.code), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            return JSONResponse(error_body("the request body is not valid JSON"), status_code=400)
        param = ".".join(str(p) for p in err["loc"][1:]) or None
        where = param or "the request body (a JSON object)"
        return JSONResponse(error_body(f"{where}: {err['msg']}", param), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail)), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        body = error_body(f"internal error: {type(e).__name__}", kind="server_error")
        return JSONResponse(body, status_code=500)

    def check_key(request: Request) -> None:
        if options.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(given.encode(), options.api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    def job_for(req: SamplingFields, prompts: list[list[int]], chat: bool) -> Job:
        if req.model is not None and req.model != options.model_name:
            raise APIError(
                404,
                f"the model '{req.model}' does not exist; this server has '{options.model_name}'",
                "model",
                "model_not_found",
            )
        if req.max_tokens is not None and req.max_tokens > options.max_tokens:
            raise APIError(
                400,
                f"max_tokens is {req.max_tokens}; this server allows at most {options.max_tokens}",
                "max_tokens",
            )
        for ids in prompts:
            if len(ids) >= block:
                raise APIError(
                    400,
                    f"this model's context is {block} tokens; the prompt has {len(ids)}",
                    "messages" if chat else "prompt",
                    "context_length_exceeded",
                )
        if len(prompts) > options.max_batch:
            raise APIError(400, f"at most {options.max_batch} prompts per request", "prompt")
        if engine.full():
            raise APIError(429, "the server is busy; try again shortly", code="rate_limit_exceeded")
        default = options.max_tokens if chat else 16  # OpenAI's default for completions
        sampling = Sampling(
            req.temperature, req.top_k, req.top_p, req.min_p, req.repetition_penalty
        )
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        rows = [
            Row(
                ids,
                min(req.max_tokens or default, block - len(ids)),
                sampling,
                req.seed,
                stop,
                chat_stop if chat else text_stop,
            )
            for ids in prompts
        ]
        job = Job(rows, asyncio.get_running_loop())
        engine.submit(job)
        return job

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("scratchlm.infer").joinpath("static/chat.html").read_text("utf-8")

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            "model": options.model_name,
            "queued": engine.jobs.qsize(),
            **engine.stats,
        }

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> dict:
        card = {"id": options.model_name, "object": "model", "created": 0, "owned_by": "scratchlm"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(req: CompletionRequest):
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        job = job_for(req, [tokenizer.encode(p) or [tokenizer.eot_id] for p in prompts], chat=False)
        return await respond(job, req.stream, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(req: ChatRequest):
        if template is None:
            raise APIError(
                400, "this model has no chat template (no chat tokens in its tokenizer)", "messages"
            )
        messages = [m.model_dump() for m in req.messages]
        ids, _ = template.render(tokenizer, messages, add_generation_prompt=True)
        return await respond(job_for(req, [ids], chat=True), req.stream, chat=True)

    async def respond(job: Job, stream: bool, chat: bool):
        meta = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": options.model_name,
        }
        if stream:
            return StreamingResponse(sse(job, meta, chat), media_type="text/event-stream")
        texts = ["" for _ in job.rows]
        async for row, text in events(job):
            texts[job.rows.index(row)] += text
        return completion_body(job, texts, meta, chat)

    return app


async def events(job: Job) -> AsyncIterator[tuple[Row, str]]:
    """The job's (row, text) events until every row has finished."""
    while True:
        kind, row, text = await job.events.get()
        if kind == "done":
            return
        if kind == "error":
            raise RuntimeError(text)
        yield row, text


def usage(job: Job) -> dict[str, int]:
    prompt = sum(len(r.prompt) for r in job.rows)
    completion = sum(len(r.tokens) for r in job.rows)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion_body(job: Job, texts: list[str], meta: dict, chat: bool) -> dict:
    if chat:
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": t},
                "finish_reason": r.finish_reason,
            }
            for i, (t, r) in enumerate(zip(texts, job.rows, strict=True))
        ]
        return {**meta, "object": "chat.completion", "choices": choices, "usage": usage(job)}
    choices = [
        {"index": i, "text": t, "logprobs": None, "finish_reason": r.finish_reason}
        for i, (t, r) in enumerate(zip(texts, job.rows, strict=True))
    ]
    return {**meta, "object": "text_completion", "choices": choices, "usage": usage(job)}


async def sse(job: Job, meta: dict, chat: bool) -> AsyncIterator[str]:
    """Server-sent events: one `data: {chunk}` per piece of text, a last chunk per row with its
    finish_reason, then `data: [DONE]`. Leaving early (the client went away) cancels the rows."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(i: int, text: str | None, finish: str | None, role: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant"} if role else {}) | (
                {"content": text} if text is not None else {}
            )
            choice = {"index": i, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps({**meta, 'object': kind, 'choices': [choice]})}\n\n"

    try:
        if chat:
            yield chunk(0, "", None, role=True)
        async for row, text in events(job):
            i = job.rows.index(row)
            if text:
                yield chunk(i, text, None)
            if row.finish_reason is not None:
                yield chunk(i, None if chat else "", row.finish_reason)
        yield "data: [DONE]\n\n"
    except RuntimeError as e:  # the engine failed: say so in the stream, which has begun
        yield f"data: {json.dumps(error_body(str(e), kind='server_error'))}\n\n"
    finally:
        job.cancel()  # a no-op for rows already finished


def serve(path: str, host: str, port: int, options: ServeOptions) -> None:
    """`scratchlm serve`: load the model and run the server until Ctrl-C."""
    import uvicorn

    loaded = load_for_generation(path, options.quantize)
    template = runs.chat_template(path, loaded.tokenizer)
    app = create_app(loaded.model, loaded.tokenizer, options, template)
    where = f"http://{host}:{port}"
    print(
        f"serving {options.model_name} on {where} (chat page at {where}/, API at {where}/v1)",
        flush=True,
    )
    if options.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: {host} is reachable from other machines and no API key is set", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
