"""python -m lion_jax.serve, started for real on 127.0.0.1 over a tiny checkpoint (one server for the
module): the official `openai` client, raw HTTP for bad input, and headless Chromium for the page."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.serve_load import data_url, free_port
from lion_jax.inference import Predictor
from lion_jax.serve.batching import Batcher, Job, Settings
from lion_jax.serve.protocol import conversation_prompt
from tests.conftest import require, require_program
from tests.test_inference import random_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]
MAX_TOKENS, BEAMS = 8, 2  # the server's limits and defaults: short answers, cheap compiles


def http(url: str, body: bytes | dict | None = None) -> tuple[int, dict]:
  """(status, JSON reply) of a GET, or a POST of raw bytes or JSON: the requests the client would not send."""
  data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
  request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=120) as reply:
      return reply.status, json.loads(reply.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """(base url, checkpoint root, Predictor with the server's settings); the server is stopped after the module."""
  root = random_tiny_checkpoint(tmp_path_factory.mktemp("serve"))
  port = free_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}  # the tests' flags, one CPU device
  server = subprocess.Popen(
    [sys.executable, "-m", "lion_jax.serve", "--checkpoint", str(root / "ckpt"), "--port", str(port)]
    + ["--max_tokens", str(MAX_TOKENS), "--num_beams", str(BEAMS), "--max_batch", "16", "--max_wait_ms", "300"]
    + ["--max_image_pixels", "1000000", "--max_request_mb", "2", "--examples", str(root / "data" / "images")],
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  url = f"http://127.0.0.1:{port}"
  predictor = Predictor.load(root / "ckpt", num_beams=BEAMS, max_new_tokens=MAX_TOKENS)
  deadline = time.monotonic() + 120
  while True:
    if server.poll() is not None:
      pytest.fail(f"the server exited with {server.returncode}:\n{server.stdout.read()}")
    try:
      if http(f"{url}/health")[0] == 200:
        break
    except OSError:
      pass
    if time.monotonic() > deadline:
      server.kill()
      pytest.fail(f"the server did not answer /health in 120 s:\n{server.stdout.read()}")
    time.sleep(0.3)
  yield url, root, predictor
  server.terminate()
  server.wait(30)


def image_path(root: Path, i: int) -> Path:
  return root / "data" / "images" / f"{i:06d}.png"


def user_turn(text: str, path: Path) -> dict:
  return {
    "role": "user",
    "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": data_url(path)}}],
  }


def client_of(url: str):
  openai = require("openai")
  return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_the_openai_client_gets_the_predictors_answers(served):
  url, root, predictor = served
  client = client_of(url)
  assert [m.id for m in client.models.list()] == ["lion"]
  image, question = image_path(root, 0), "What color is the circle?"
  reply = client.chat.completions.create(
    model="lion", messages=[user_turn(question, image)], extra_body={"tags": "red, circle"}
  )
  expected = predictor(image, question, tags="red, circle")
  assert reply.choices[0].message.content == expected.text
  assert reply.choices[0].finish_reason == "length"  # a random model: no EOS within 8 tokens
  assert reply.usage.completion_tokens == MAX_TOKENS and reply.usage.prompt_tokens > 0
  assert reply.tags == ["red", "circle"] and reply.boxes == [list(b) for b in expected.boxes]
  # Region level, and a conversation: earlier turns in the documented prompt format.
  turns = [
    user_turn(question, image),
    {"role": "assistant", "content": "red"},
    {"role": "user", "content": "And the square?"},
  ]
  reply = client.chat.completions.create(model="lion", messages=turns, extra_body={"task": "region_level", "tags": []})
  prompt = conversation_prompt([("user", question), ("assistant", "red"), ("user", "And the square?")])
  assert prompt == "q: What color is the circle? a: red q: And the square? a:"
  assert reply.choices[0].message.content == predictor(image, prompt, tags=[], task="region_level").text
  # Sampling: the seed decides the answer; a stop sequence cuts it.
  sample = lambda **kw: client.chat.completions.create(
    model="lion", messages=[user_turn(question, image)], temperature=0.9, top_p=0.8, seed=7, **kw
  )
  first = sample().choices[0].message.content
  assert sample().choices[0].message.content == first and first != expected.text
  cut = sample(stop=[first[3:6]]).choices[0]
  assert cut.message.content == first[: first.find(first[3:6])] and cut.finish_reason == "stop"


def test_streaming_gives_the_same_text_as_a_reply(served):
  url, root, _ = served
  client = client_of(url)
  request = dict(model="lion", messages=[user_turn("Describe the image.", image_path(root, 1))])
  whole = client.chat.completions.create(**request)
  chunks = list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
  assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
  assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_16_concurrent_requests_are_batched_and_each_answered_as_alone(served):
  url, root, _ = served
  client = client_of(url)
  questions = ["What color is the circle?", "Is there a square?", "How many shapes?", "Describe the image."]
  requests = [
    dict(
      model="lion",
      messages=[user_turn(questions[i % 4], image_path(root, i % 6))],
      extra_body={"tags": ["red"] * (i % 3)},
    )
    for i in range(16)
  ]
  ask = lambda request: client.chat.completions.create(**request).choices[0].message.content
  before = http(f"{url}/health")[1]
  with ThreadPoolExecutor(16) as pool:
    together = list(pool.map(ask, requests))
  after = http(f"{url}/health")[1]
  assert after["requests"] - before["requests"] == 16 and after["batches"] - before["batches"] < 16
  assert together == [ask(request) for request in requests]


BAD_INPUTS = {
  "malformed JSON": (b"{not json", 400, "not valid JSON"),
  "no image": ({"messages": [{"role": "user", "content": "Hi?"}]}, 400, "no image"),
  "an undecodable image": ("data:image/png;base64," + base64.b64encode(b"not a png").decode(), 400, "does not decode"),
  "bad base64": ("data:image/png;base64,@@@", 400, "base64"),
  "a huge image": ("huge", 400, "pixels, more than this server's limit of 1000000"),
  "a remote image": ("https://example.com/cat.png", 400, "remote image URLs are off"),
  "a huge request": ("x" * (3 << 20), 413, "more than this server's limit"),
  "an unknown model": ({"model": "gpt-4o"}, 404, "model 'gpt-4o' does not exist"),
  "too many tokens": ({"max_tokens": MAX_TOKENS + 1}, 400, f"limit of {MAX_TOKENS} (--max_tokens)"),
  "an unknown task": ({"task": "pixel_level"}, 400, "task='pixel_level'"),
  "a text temperature": ({"temperature": "hot"}, 400, "temperature must be a number"),
  "n > 1": ({"n": 2}, 400, "n=2"),
  "an unknown role": ({"messages": [{"role": "tool", "content": "x"}]}, 400, "role 'tool'"),
  "beams with sampling": ({"temperature": 0.5, "num_beams": 3}, 400, "num_beams=3 with temperature=0.5"),
  "two images": ("two", 400, "2 images"),
}


def bad_body(case, root: Path):
  """The request body of a BAD_INPUTS case: raw bytes, an image URL in a valid request, or fields
  that replace a valid request's."""
  good = {"model": "lion", "messages": [user_turn("What is it?", image_path(root, 0))]}
  if isinstance(case, bytes):
    return case
  if isinstance(case, dict):
    return {**good, **case}
  if case == "huge":
    buffer = io.BytesIO()
    Image.new("RGB", (1100, 1000)).save(buffer, "PNG")
    case = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
  if case == "two":
    return {**good, "messages": [*good["messages"], user_turn("And this?", image_path(root, 1))]}
  parts = [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": case}}]
  return {**good, "messages": [{"role": "user", "content": parts}]}


def test_each_bad_input_gets_its_status_and_message_and_the_next_request_is_served(served):
  openai = require("openai")
  url, root, predictor = served
  good = {"model": "lion", "messages": [user_turn("What is it?", image_path(root, 0))], "tags": []}
  expected = predictor(image_path(root, 0), "What is it?", tags=[]).text
  for name, (case, status, message) in BAD_INPUTS.items():
    code, reply = http(f"{url}/v1/chat/completions", bad_body(case, root))
    assert code == status and message in reply["error"]["message"] and reply["error"]["type"], (name, reply)
    code, reply = http(f"{url}/v1/chat/completions", good)
    assert code == 200 and reply["choices"][0]["message"]["content"] == expected, name
  code, reply = http(f"{url}/v2/nothing")
  assert code == 404 and "Not Found" in reply["error"]["message"]
  with pytest.raises(openai.NotFoundError, match="does not exist; this server serves 'lion'"):
    client_of(url).chat.completions.create(model="other", messages=good["messages"])


def test_the_page_in_headless_chromium_uploads_asks_and_draws(served):
  webdriver = require("selenium.webdriver")
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select, WebDriverWait

  url, root, predictor = served
  options = webdriver.ChromeOptions()
  options.binary_location = require_program("chromium")
  for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
    options.add_argument(flag)
  browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(require_program("chromedriver")))
  try:
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    picture = "return document.getElementById('picture').src"
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#examples img"))[0].click()  # an --examples image
    example = wait.until(lambda b: b.execute_script(picture))
    browser.find_element(By.ID, "image-file").send_keys(str(image_path(root, 2)))  # an upload replaces it
    wait.until(lambda b: b.execute_script(picture) not in ("", example))
    assert browser.execute_script(picture) == data_url(image_path(root, 2))
    question = "What is at [0.250,0.250,0.750,0.750] in the image <image>?"
    browser.find_element(By.ID, "question").send_keys(question)
    Select(browser.find_element(By.ID, "task")).select_by_visible_text("region_level")
    browser.find_element(By.ID, "tags").send_keys("red, circle")
    browser.find_element(By.ID, "ask").click()
    answer = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#conversation .assistant"))[0].text
    expected = predictor(image_path(root, 2), question, tags="red, circle", task="region_level")
    assert answer == expected.text.strip()  # the page shows the text as the browser renders it
    boxes = browser.find_elements(By.CSS_SELECTOR, "#boxes rect.box")
    assert len(boxes) == 1 + len(expected.boxes)  # the question's region, then the answer's boxes
    side = Image.open(image_path(root, 2)).width
    assert float(boxes[0].get_attribute("x")) == pytest.approx(0.25 * side)
    assert browser.find_element(By.ID, "tags-used").text == "red, circle"
    assert browser.find_element(By.ID, "error").text == ""
    # The conversation is kept: the next question is asked with the earlier turns.
    browser.find_element(By.ID, "question").send_keys("And the colour?")
    browser.find_element(By.ID, "ask").click()
    answers = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#conversation .assistant")[1:])
    prompt = conversation_prompt([("user", question), ("assistant", expected.text), ("user", "And the colour?")])
    assert (
      answers[0].text == predictor(image_path(root, 2), prompt, tags="red, circle", task="region_level").text.strip()
    )
  finally:
    browser.quit()


def test_the_batcher_never_mixes_settings_and_a_failing_batch_fails_only_its_requests():
  """In-process, with a generation that records its batches and fails on one prompt."""
  batches = []

  def generate(settings, jobs):
    batches.append((settings, [job.prompt for job in jobs]))
    if any(job.prompt == "fail" for job in jobs):
      raise RuntimeError("device lost")
    return [f"{settings.num_beams}:{job.prompt}" for job in jobs]

  beams = lambda n: Settings("image_level", 8, n, 1.5, 0.0, 1.0)
  job = lambda prompt: Job(Image.new("RGB", (4, 4)), prompt, None, 0)

  async def main():
    batcher = Batcher(generate, max_batch=3, max_wait_ms=50)
    worker = asyncio.create_task(batcher.run())
    asks = [(beams(1 + i % 2), f"q{i}") for i in range(7)] + [(beams(3), "fail"), (beams(3), "other")]
    results = await asyncio.gather(*(batcher.submit(s, job(p)) for s, p in asks), return_exceptions=True)
    after = await batcher.submit(beams(3), job("next"))
    worker.cancel()
    return results, after

  results, after = asyncio.run(main())
  assert results[:7] == [f"{1 + i % 2}:q{i}" for i in range(7)]
  assert [str(r) for r in results[7:]] == ["device lost"] * 2 and after == "3:next"
  assert all(len(prompts) <= 3 for _, prompts in batches)
  assert sorted(p for _, prompts in batches for p in prompts) == sorted(
    [f"q{i}" for i in range(7)] + ["fail", "other", "next"]
  )
  assert all(all(int(p[1:]) % 2 == s.num_beams - 1 for p in prompts if p.startswith("q")) for s, prompts in batches)
