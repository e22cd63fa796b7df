"""OpenAI chat-completions requests read into LION's inputs, and OpenAI's error schema.

Every field is checked here, before a request reaches the batcher, so a bad request costs its
client a 4xx with a message saying what to change and costs the others nothing.

Multi-turn prompts: LION's official code and demo are single-turn, so earlier turns are written as
InstructBLIP's dialogue data writes them (LAVIS `datasets/visdial_dialogue_datasets.py`, the format
lion_jax.evaluation.visdial asks VisDial in): `q: <user> a: <assistant> ... q: <question> a:`. A
conversation of one user message is that message alone, exactly what `Predictor` is asked; system
messages go in front.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import secrets
import urllib.request
from collections.abc import Callable
from typing import Any

from PIL import Image

from lion_jax.data.images import decode_image
from lion_jax.data.records import TASK_TYPES, BadRecord, parse_tags
from lion_jax.serve.batching import Job, Settings

MAX_BEAMS = 16
MAX_STOP = 4  # OpenAI's limit on stop sequences
ROLES = ("system", "user", "assistant")
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+/-]*)(?P<params>(;[^,;]*)*),(?P<data>.*)", re.DOTALL)


class ApiError(Exception):
  """A request the client can fix (or a missing route): its HTTP status and OpenAI error fields."""

  def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
    super().__init__(message)
    self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
  kind = "server_error" if status >= 500 else "not_found_error" if status == 404 else "invalid_request_error"
  return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclasses.dataclass(frozen=True)
class Limits:
  """The server's model name, defaults and bounds (its command-line flags)."""

  model: str
  max_tokens: int  # the default and the most a request may ask for
  max_prompt_tokens: int
  max_image_pixels: int
  allow_remote_images: bool
  num_beams: int  # the default beam width at temperature 0
  repetition_penalty: float
  count_tokens: Callable[[str], int]  # T5 tokens of a prompt


@dataclasses.dataclass(frozen=True)
class ChatRequest:
  settings: Settings
  job: Job
  stop: list[str]
  stream: bool
  include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


def parse_chat(body: Any, limits: Limits) -> ChatRequest:
  """A chat-completions body -> the batcher's settings and job, or ApiError naming the bad field."""
  if not isinstance(body, dict):
    raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
  model = body.get("model", limits.model)
  if model != limits.model:
    raise ApiError(
      404, f"model {model!r} does not exist; this server serves {limits.model!r}", "model", "model_not_found"
    )
  if body.get("n", 1) != 1:
    raise ApiError(400, f"n={body['n']!r}: this server returns one choice per request (n=1)", "n")
  prompt, image = _conversation(body.get("messages"), limits)
  if limits.count_tokens(prompt) > limits.max_prompt_tokens:
    raise ApiError(
      400,
      f"the prompt is {limits.count_tokens(prompt)} tokens, more than this server's limit of "
      f"{limits.max_prompt_tokens} (--max_prompt_tokens)",
      "messages",
      "context_length_exceeded",
    )
  temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
  max_tokens = _number(body, "max_tokens", None, 1, None, integer=True)
  max_tokens = _number(body, "max_completion_tokens", max_tokens or limits.max_tokens, 1, None, integer=True)
  if max_tokens > limits.max_tokens:
    raise ApiError(
      400,
      f"max_tokens={max_tokens} is more than this server's limit of {limits.max_tokens} (--max_tokens)",
      "max_tokens",
    )
  num_beams = _number(body, "num_beams", limits.num_beams if temperature == 0 else 1, 1, MAX_BEAMS, integer=True)
  if temperature > 0 and num_beams != 1:
    raise ApiError(
      400, f"num_beams={num_beams} with temperature={temperature}: sampling draws one sequence", "num_beams"
    )
  task = body.get("task", "image_level")
  if task not in TASK_TYPES:
    raise ApiError(400, f"task={task!r}; expected one of {list(TASK_TYPES)}", "task")
  settings = Settings(
    task=task,
    max_new_tokens=max_tokens,
    num_beams=num_beams,
    repetition_penalty=_number(body, "repetition_penalty", limits.repetition_penalty, 1e-3, 100.0),
    temperature=temperature,
    top_p=_number(body, "top_p", 1.0, 1e-6, 1.0) if temperature > 0 else 1.0,
  )
  try:
    tags = None if body.get("tags") is None else parse_tags(body["tags"])
  except BadRecord as e:
    raise ApiError(400, str(e.detail), "tags") from None
  seed = _number(body, "seed", secrets.randbits(32), None, None, integer=True) % 2**32
  stop = body.get("stop") or []
  stop = [stop] if isinstance(stop, str) else stop
  if not (isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) and s for s in stop)):
    raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOP} non-empty strings", "stop")
  stream, options = body.get("stream", False), body.get("stream_options") or {}
  if not isinstance(stream, bool) or not isinstance(options, dict):
    raise ApiError(400, "stream must be true or false, stream_options an object", "stream")
  return ChatRequest(settings, Job(image, prompt, tags, seed), stop, stream, bool(options.get("include_usage")))


def _number(body: dict, name: str, default, low, high, integer: bool = False):
  """body[name] (or `default`) checked to be a number (an integer) within [low, high]."""
  value = body.get(name)
  if value is None:
    return default
  kinds = (int,) if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kinds):
    raise ApiError(400, f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}", name)
  if (low is not None and value < low) or (high is not None and value > high):
    raise ApiError(400, f"{name}={value!r} is outside [{low}, {high}]", name)
  return value


def conversation_prompt(turns: list[tuple[str, str]]) -> str:
  """The prompt of (role, text) turns ending with the user's question (module docstring)."""
  system = " ".join(text for role, text in turns if role == "system")
  *history, (_, question) = [(role, text) for role, text in turns if role != "system"]
  if history:
    question = " ".join(f"{'q' if role == 'user' else 'a'}: {text}" for role, text in history) + f" q: {question} a:"
  return f"{system} {question}" if system else question


def _conversation(messages: Any, limits: Limits) -> tuple[str, Image.Image]:
  """(prompt, the conversation's one image) of the messages."""
  if not isinstance(messages, list) or not messages:
    raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
  turns, urls = [], []
  for i, message in enumerate(messages):
    where = f"messages[{i}]"
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ROLES:
      raise ApiError(400, f"{where}: role {role!r} is not one of {list(ROLES)}", "messages")
    texts, message_urls = _content(message.get("content"), where)
    turns.append((role, " ".join(texts)))
    urls += message_urls
  if turns[-1][0] != "user":
    raise ApiError(400, f"the last message must be the user's, not {turns[-1][0]!r}", "messages")
  if not turns[-1][1].strip():
    raise ApiError(400, "the last user message has no text: ask a question about the image", "messages")
  if len(urls) != 1:
    raise ApiError(
      400,
      "no image: put one image_url part (a data: URL) in a user message"
      if not urls
      else f"{len(urls)} images: LION reads one image per conversation",
      "messages",
    )
  return conversation_prompt(turns), load_image(urls[0], limits)


def _content(content: Any, where: str) -> tuple[list[str], list[str]]:
  """(texts, image urls) of a message's content: a string or a list of text / image_url parts."""
  if isinstance(content, str):
    return [content], []
  if not isinstance(content, list):
    raise ApiError(400, f"{where}.content must be a string or a list of parts", "messages")
  texts, urls = [], []
  for j, part in enumerate(content):
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
      texts.append(part["text"])
    elif kind == "image_url":
      url = part.get("image_url")
      url = url.get("url") if isinstance(url, dict) else url
      if not isinstance(url, str):
        raise ApiError(
          400, f"{where}.content[{j}].image_url must be {{'url': 'data:image/...;base64,...'}}", "messages"
        )
      urls.append(url)
    else:
      raise ApiError(400, f"{where}.content[{j}]: expected a text or image_url part, got {part!r:.80}", "messages")
  return texts, urls


def load_image(url: str, limits: Limits) -> Image.Image:
  """The RGB image of a data: URL (or an http(s) URL with --allow_remote_images), checked to be at
  most `max_image_pixels` before it is decoded."""
  if url.startswith(("http://", "https://")):
    if not limits.allow_remote_images:
      raise ApiError(
        400,
        "remote image URLs are off on this server: send the image inline as a data:image/...;base64 URL "
        "(or start the server with --allow_remote_images)",
        "messages",
      )
    try:
      with urllib.request.urlopen(url, timeout=20) as response:
        data = response.read()
    except (OSError, ValueError) as e:
      raise ApiError(400, f"could not fetch the image {url!r:.100}: {e}", "messages") from None
  else:
    match = _DATA_URL.fullmatch(url)
    if not match or ";base64" not in match["params"]:
      raise ApiError(400, f"image_url must be a data:image/...;base64,... URL, got {url!r:.60}", "messages")
    try:
      data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError) as e:
      raise ApiError(400, f"the image's base64 data does not decode: {e}", "messages") from None
  try:
    width, height = Image.open(io.BytesIO(data)).size
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ApiError(400, f"the image does not decode: {e}", "messages") from None
  if width * height > limits.max_image_pixels:
    raise ApiError(
      400,
      f"the image is {width} x {height} = {width * height} pixels, more than this server's limit of "
      f"{limits.max_image_pixels} (--max_image_pixels)",
      "messages",
    )
  try:
    return decode_image(data)
  except BadRecord as e:
    raise ApiError(400, f"the image does not decode: {e.detail}", "messages") from None
