"""The ASGI app: OpenAI's chat-completions API, /v1/models, /health and the web page at /.

Errors keep OpenAI's schema (`{"error": {"message", "type", "param", "code"}}`) for every status,
missing routes and internal errors included, so clients show the message instead of a parse error.
Streaming (`stream: true`) sends OpenAI's chunks and `data: [DONE]`; a batch is generated as one
device program, so the chunks of an answer come once its batch has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from lion_jax.serve.batching import Answer, Batcher, pixel_boxes
from lion_jax.serve.protocol import ApiError, ChatRequest, Limits, error_body, parse_chat

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("page.html")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
MAX_EXAMPLES = 12


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
  return JSONResponse(error_body(status, message, param, code), status_code=status)


def build_app(batcher: Batcher, limits: Limits, max_request_bytes: int, examples: Path | None = None) -> FastAPI:
  """The app around a batcher whose worker loop runs for the app's lifetime."""

  @contextlib.asynccontextmanager
  async def lifespan(app: FastAPI):
    worker = asyncio.create_task(batcher.run())
    yield
    worker.cancel()

  app = FastAPI(title="lion-jax", lifespan=lifespan, docs_url=None, redoc_url=None)
  example_files = (
    sorted(p for p in examples.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_EXAMPLES] if examples else []
  )

  @app.exception_handler(ApiError)
  async def api_error(request: Request, e: ApiError):
    return error_response(e.status, e.message, e.param, e.code)

  @app.exception_handler(HTTPException)
  async def http_error(request: Request, e: HTTPException):
    return error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}")

  @app.exception_handler(Exception)
  async def internal_error(request: Request, e: Exception):
    log.exception("internal error serving %s", request.url.path)
    return error_response(500, f"internal error: {type(e).__name__}: {e}")

  @app.get("/", response_class=HTMLResponse)
  async def page():
    return PAGE.read_text()

  @app.get("/health")
  async def health():
    """Liveness, and how many generations ran for how many requests (more requests than batches: batching)."""
    return {"status": "ok", "model": limits.model, "batches": batcher.batches, "requests": batcher.requests}

  @app.get("/v1/models")
  async def models():
    return {"object": "list", "data": [{"id": limits.model, "object": "model", "created": 0, "owned_by": "lion-jax"}]}

  @app.get("/examples")
  async def example_list():
    """The demo images the page offers next to an upload (--examples)."""
    return [f"/examples/{p.name}" for p in example_files]

  @app.get("/examples/{name}")
  async def example(name: str):
    match = [p for p in example_files if p.name == name]
    if not match:
      raise ApiError(404, f"no example image {name!r}")
    return FileResponse(match[0])

  @app.post("/v1/chat/completions")
  async def chat(request: Request) -> Response:
    # An oversized body is read to its end but not kept: answering before it is sent would break the
    # client's pipe instead of giving it the 413.
    chunks, size = [], 0
    async for chunk in request.stream():
      size += len(chunk)
      if size <= max_request_bytes:
        chunks.append(chunk)
    if size > max_request_bytes:
      raise ApiError(413, f"the request is {size} bytes, more than this server's limit of {max_request_bytes}")
    try:
      body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    chat = await asyncio.to_thread(parse_chat, body, limits)  # decoding an image is no work for the event loop
    answer = await batcher.submit(chat.settings, chat.job)
    text, finish_reason = _stopped(answer, chat.stop)
    reply = dict(
      id=f"chatcmpl-{uuid.uuid4().hex}",
      created=int(time.time()),
      model=limits.model,
      usage=dict(
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=len(answer.ids),
        total_tokens=answer.prompt_tokens + len(answer.ids),
      ),
      boxes=pixel_boxes(text, chat.job.image),  # LION's own fields: boxes in pixels, the tags in the prompt
      tags=answer.tags,
    )
    if chat.stream:
      return StreamingResponse(_chunks(reply, text, finish_reason, chat), media_type="text/event-stream")
    choice = dict(index=0, message=dict(role="assistant", content=text), finish_reason=finish_reason, logprobs=None)
    return JSONResponse(dict(reply, object="chat.completion", choices=[choice]))

  return app


def _stopped(answer: Answer, stop: list[str]) -> tuple[str, str]:
  """The text cut before its first stop sequence, and OpenAI's finish_reason."""
  cuts = [answer.text.find(s) for s in stop if s in answer.text]
  if cuts:
    return answer.text[: min(cuts)], "stop"
  return answer.text, "stop" if answer.finished else "length"


def _chunks(reply: dict, text: str, finish_reason: str, chat: ChatRequest) -> Iterator[str]:
  """Server-sent events in OpenAI's chunk format: the role, the text word by word, the finish
  reason (with LION's boxes and tags), the usage if asked for, then [DONE]."""
  head = {k: reply[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
  event = lambda delta, finish=None, **extra: (
    "data: "
    + json.dumps(head | extra | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})
    + "\n\n"
  )
  yield event({"role": "assistant", "content": ""})
  for piece in re.findall(r"\s*\S+|\s+$", text):
    yield event({"content": piece})
  yield event({}, finish_reason, boxes=reply["boxes"], tags=reply["tags"])
  if chat.include_usage:
    yield "data: " + json.dumps(head | {"choices": [], "usage": reply["usage"]}) + "\n\n"
  yield "data: [DONE]\n\n"
