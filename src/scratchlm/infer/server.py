"""An OpenAI-compatible HTTP server (FastAPI + uvicorn) and its web chat page.

    GET  /                     the chat page (infer/static/chat.html)
    GET  /health               {"status": "ok", ...}: no API key needed
    GET  /metrics              Prometheus text: requests, tokens, running/waiting, latencies
    GET  /v1/models            the one model served
    POST /v1/completions       prompt(s) as text or token ids; echo, logprobs, n, stream...
    POST /v1/chat/completions  messages in (the run's chat template), a reply out
    POST /tokenize, POST /detokenize, GET /tokenizer_info     vLLM's, which lm-eval probes

Request bodies: infer/schemas.py; answers: infer/responses.py; generation: infer/worker.py
and infer/engine.py. Every client mistake is a 4xx with OpenAI's error body, {"error":
{"message", "type", "param", "code"}}: malformed JSON, a wrong type or range, a field we do not
support, an unknown model, max_tokens above the cap, a prompt longer than the context, a body
over 1 MiB (413, counted as it arrives, chunked or not), a wrong API key (401), a full queue
(429). A 500 means a bug of ours, and only the request it happened to fails.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.exceptions import HTTPException

from scratchlm import runs
from scratchlm.infer.chat import reply_stop_ids
from scratchlm.infer.engine import Engine
from scratchlm.infer.limits import BodyLimit
from scratchlm.infer.process import ProcessWorker
from scratchlm.infer.responses import Reply, dumps
from scratchlm.infer.row import Row
from scratchlm.infer.sampling import Sampling
from scratchlm.infer.schemas import (
    MAX_CHOICES,
    APIError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    SamplingFields,
    TokenizeRequest,
    error_body,
)
from scratchlm.infer.tools import ToolUse
from scratchlm.infer.worker import Job, Worker
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
    max_body_bytes: int = 1 << 20  # a larger request body gets a 413
    token_budget: int = 512  # tokens one engine step reads (decoding rows + prompt chunks)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    quantize: str = "none"  # "int8": int8 linear layers (model/quantize.py)


class JSON(JSONResponse):
    """JSON written with ASCII escapes: text a client sent (a lone surrogate too) always fits."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode()


def error(status: int, message: str, param: str | None = None, code: str | None = None, kind: str = "invalid_request_error") -> JSON:  # fmt: skip
    return JSON(error_body(message, param, code, kind), status_code=status)


def bearer_token(header: str) -> str | None:
    """The token of `Authorization: Bearer TOKEN` (the scheme in any case), else None."""
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def create_app(
    model: Any,
    tokenizer: Tokenizer,
    options: ServeOptions,
    template: ChatTemplate | None,
    worker: Worker | ProcessWorker | None = None,
) -> FastAPI:
    """The app serving `model`; `template` None: no chat endpoint (the tokenizer lacks its tokens).
    By default an engine thread of this process generates; `serve` passes a ProcessWorker."""
    app = FastAPI(title="scratchlm", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes, reply=error)
    if worker is None:
        engine = Engine(model, tokenizer, options.max_batch, options.token_budget)
        worker = Worker(engine, options.max_queue)
    app.state.worker = worker
    block = model.cfg.block_size
    text_stop = frozenset({tokenizer.eot_id})
    chat_stop = reply_stop_ids(template, tokenizer) if template is not None else text_stop
    # Special tokens are hidden from the text, as vLLM does; tool calls and results stay
    # (the calculator runs in the engine: the client sees what it was asked and answered).
    tools = ToolUse.of(tokenizer)
    shown = {tools.call, tools.call_end, tools.result, tools.result_end} if tools else set()
    specials = frozenset(tokenizer.special_tokens.values()) - shown

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error(e.status, e.message, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            return error(400, "the request body is not valid JSON")
        loc = [str(p) for p in err["loc"][1:] if not str(p).startswith(("list[", "function-"))]
        param = ".".join(loc) or None
        where = param or "the request body (a JSON object)"
        if err["type"] == "extra_forbidden":
            return error(400, f"{where}: this server does not support it", param, "unsupported_parameter")  # fmt: skip
        return error(400, f"{where}: {err['msg']}", param)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        return error(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(e).__name__}", kind="server_error")

    async def check_key(request: Request) -> None:  # async: no thread pool hop per request
        if options.api_key is None:
            return
        given = bearer_token(request.headers.get("authorization", "")) or ""
        if not hmac.compare_digest(given.encode(), options.api_key.encode()):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")

    def check_model(name: str | None) -> None:
        if name is not None and name != options.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server has {options.model_name!r}", "model", "model_not_found")  # fmt: skip

    def rows_for(req: SamplingFields, prompts: list[list[int]], max_tokens: int | None, chat: bool, logprobs: int | None, prompt_logprobs: int | None) -> list[Row]:  # fmt: skip
        check_model(req.model)
        if max_tokens is not None and max_tokens > options.max_tokens:
            raise APIError(400, f"max_tokens is {max_tokens}; this server allows at most {options.max_tokens}", "max_tokens")  # fmt: skip
        for ids in prompts:
            if len(ids) >= block:
                raise APIError(400, f"this model's context is {block} tokens; the prompt has {len(ids)}", "messages" if chat else "prompt", "context_length_exceeded")  # fmt: skip
            if max(ids) >= tokenizer.vocab_size:
                raise APIError(400, f"token id {max(ids)} is not in the vocabulary (0..{tokenizer.vocab_size - 1})", "prompt")  # fmt: skip
        if len(prompts) * req.n > MAX_CHOICES:
            raise APIError(400, f"{len(prompts)} prompts x n={req.n}: at most {MAX_CHOICES} choices per request", "n")  # fmt: skip
        if worker.full():
            raise APIError(429, "the server is busy; try again shortly", code="rate_limit_exceeded")
        default = options.max_tokens if chat else 16  # OpenAI's default for completions
        sampling = Sampling(req.temperature, max(req.top_k, 0), req.top_p, req.min_p, req.repetition_penalty, req.frequency_penalty, req.presence_penalty)  # fmt: skip
        stop_ids = frozenset() if req.ignore_eos else (chat_stop if chat else text_stop)
        wanted = default if max_tokens is None else max_tokens
        return [
            Row(
                ids,
                min(wanted, block - len(ids)),
                sampling,
                None if req.seed is None else req.seed + j,
                req.stops(),
                stop_ids,
                logprobs,
                prompt_logprobs,
                specials,
                tools=tools is not None,
            )  # fmt: skip
            for ids in prompts
            for j in range(req.n)
        ]

    async def respond(request: Request, rows: list[Row], reply: Reply, stream: bool, endpoint: str):  # fmt: skip
        worker.metrics.request(endpoint)
        job = Job(rows, asyncio.get_running_loop())
        worker.submit(job)
        if stream:
            return StreamingResponse(reply.sse(job), media_type="text/event-stream")
        if not await until_done(request, job):
            return Response(status_code=499)  # the client has gone: nobody reads this
        failed = [r.error for r in rows if r.finish_reason == "error"]
        if failed:
            return error(500, f"generation failed: {failed[0]}", kind="server_error")
        return JSON(reply.body(job))

    def meta(chat: bool) -> dict:
        prefix = "chatcmpl-" if chat else "cmpl-"
        return {"id": prefix + uuid.uuid4().hex[:24], "created": int(time.time()), "model": options.model_name}  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("scratchlm.infer").joinpath("static/chat.html").read_text("utf-8")

    @app.get("/health")
    async def health() -> dict:
        m = worker.metrics
        return {
            "status": "ok",
            "model": options.model_name,
            "device": str(options.device),
            "queued": worker.waiting(),
            "running_rows": worker.active_rows,
            "finished_rows": sum(m.finished.values()),
            "cancelled_rows": m.finished["cancelled"],
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return worker.metrics.render(worker.running(), worker.waiting())

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> dict:
        card = {"id": options.model_name, "object": "model", "created": 0, "owned_by": "scratchlm", "max_model_len": block}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(req: CompletionRequest, request: Request):
        p = req.prompt
        if isinstance(p, str):
            texts, prompts = [p], None
        elif isinstance(p[0], str):
            texts, prompts = p, None
        elif isinstance(p[0], int):
            texts, prompts = None, [p]
        else:
            texts, prompts = None, p
        if prompts is None:
            prompts = [tokenizer.encode(t, allow_special=True) or [tokenizer.eot_id] for t in texts]  # fmt: skip
        if texts is None:
            texts = [visible(ids) for ids in prompts] if req.echo else []
        prompt_logprobs = req.logprobs if req.echo and req.logprobs is not None else None
        rows = rows_for(req, prompts, req.max_tokens, False, req.logprobs, prompt_logprobs)
        echo = [texts[i // req.n] for i in range(len(rows))] if req.echo else []
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        reply = Reply(tokenizer, meta(False), False, echo, req.logprobs, include_usage)
        return await respond(request, rows, reply, req.stream, "completions")

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(req: ChatRequest, request: Request):
        if template is None:
            raise APIError(400, "this model has no chat template (no chat tokens in its tokenizer)", "messages")  # fmt: skip
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        ids, _ = template.render(tokenizer, [m.plain() for m in req.messages], add_generation_prompt=True)  # fmt: skip
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens  # fmt: skip
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        rows = rows_for(req, [ids], max_tokens, True, logprobs, None)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        reply = Reply(tokenizer, meta(True), True, [], logprobs, include_usage)
        return await respond(request, rows, reply, req.stream, "chat_completions")

    def visible(ids: list[int]) -> str:
        return tokenizer.decode([i for i in ids if i not in specials])

    @app.post("/tokenize", dependencies=[Depends(check_key)])
    async def tokenize(req: TokenizeRequest) -> dict:
        check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give either prompt or messages", "prompt")
        if req.messages is not None:
            if template is None:
                raise APIError(400, "this model has no chat template", "messages")
            ids, _ = template.render(tokenizer, [m.plain() for m in req.messages], req.add_generation_prompt)  # fmt: skip
        else:
            ids = tokenizer.encode(req.prompt, allow_special=True)
        strs = [tokenizer.decode([i]) for i in ids] if req.return_token_strs else None
        return {"count": len(ids), "max_model_len": block, "tokens": ids, "token_strs": strs}

    @app.post("/detokenize", dependencies=[Depends(check_key)])
    async def detokenize(req: DetokenizeRequest) -> dict:
        check_model(req.model)
        if req.tokens and max(req.tokens) >= tokenizer.vocab_size:
            raise APIError(400, f"token id {max(req.tokens)} is not in the vocabulary", "tokens")
        return {"prompt": tokenizer.decode(req.tokens)}

    @app.get("/tokenizer_info", dependencies=[Depends(check_key)])
    async def tokenizer_info() -> dict:
        eos = next(s for s, i in tokenizer.special_tokens.items() if i == tokenizer.eot_id)
        return {
            "tokenizer_class": type(tokenizer).__name__,
            "eos_token": eos,
            "bos_token": None,
            "pad_token": eos,
            "unk_token": None,
            "chat_template": template.to_jinja() if template is not None else None,
            "model_max_length": block,
            "added_tokens_decoder": {
                str(i): {"content": s, "special": True} for s, i in tokenizer.special_tokens.items()
            },  # fmt: skip
        }

    return app


async def until_done(request: Request, job: Job) -> bool:
    """Wait for the job; if the client hangs up first, cancel its rows and return False (a
    non-streaming request's client is watched here; a stream's, by the response itself)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def done() -> None:
        while not job.done:
            await job.next_updates()

    watch, finish = asyncio.ensure_future(gone()), asyncio.ensure_future(done())
    try:
        await asyncio.wait({watch, finish}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not finish.done():
            job.cancel()
            finish.cancel()
    return job.done


def serve(path: str, host: str, port: int, options: ServeOptions) -> None:
    """`scratchlm serve`: load the model and run the server until Ctrl-C."""
    import uvicorn

    # The engine process loads the model for generation; this one needs its tokenizer and shape.
    worker = ProcessWorker(
        path,
        options.max_batch,
        options.token_budget,
        options.max_queue,
        options.device,
        options.dtype,
        options.quantize,
    )
    loaded = runs.load_model(path)
    template = runs.chat_template(path, loaded.tokenizer)
    app = create_app(loaded.model, loaded.tokenizer, options, template, worker)
    del loaded  # the weights live in the engine process
    where = f"http://{host}:{port}"
    print(
        f"serving {options.model_name} on {where} (chat page at {where}/, API at {where}/v1)",
        flush=True,
    )
    if options.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: {host} is reachable from other machines and no API key is set", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
