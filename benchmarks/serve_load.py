r"""Load on `python -m lion_jax.serve`: concurrent clients, batched generation against one at a time.

  python -m benchmarks.serve_load [--checkpoint /tmp/lion-demo/stage3/export] [--data /tmp/lion-demo/data] \
      [--clients 32] [--requests 64] [--max_batch 16] [--num_beams N]

Starts the server on 127.0.0.1 twice over the checkpoint, batching (--max_batch N) and one at a time
(--max_batch 1), and sends the same requests from `clients` threads: the first `requests` caption,
VQA and REC records of the data's val.jsonl (the demo's prompts, the records' tags, LION's settings).
Untimed rounds compile the programs; the last round is timed: requests/s and p50/p95 latency per mode.
Every answer is checked against the same request sent alone (one after another, to the batching
server). Appends a row to benchmarks/results/serve_load.jsonl.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import record
from lion_jax.data import templates


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def data_url(path: Path) -> str:
  return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def requests_of(data: Path, count: int, num_beams: int | None = None) -> list[dict]:
  """Chat requests for the first `count` caption / VQA / REC records of data/val.jsonl (beam width:
  the server's default, LION's 5, or `num_beams`)."""
  prompts = {
    "caption": lambda r: templates.CAPTION_TEMPLATES[0],
    "vqa": lambda r: r["question"],
    "rec": lambda r: templates.REC_TEMPLATES[0].format(expr=r["expression"]),
  }
  requests = []
  for line in (data / "val.jsonl").read_text().splitlines():
    r = json.loads(line)
    if r["task"] in prompts and len(requests) < count:
      content = [
        {"type": "text", "text": prompts[r["task"]](r)},
        {"type": "image_url", "image_url": {"url": data_url(data / r["image"])}},
      ]
      requests.append(dict(messages=[{"role": "user", "content": content}], task=r["task_type"], tags=r["tags"]))
      requests[-1].update({} if num_beams is None else {"num_beams": num_beams})
  return requests


def post(url: str, body: dict) -> tuple[float, str]:
  """(seconds, the answer) of one chat request."""
  start = time.perf_counter()
  request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode())
  with urllib.request.urlopen(request, timeout=600) as reply:
    text = json.loads(reply.read())["choices"][0]["message"]["content"]
  return time.perf_counter() - start, text


def under_load(url: str, requests: list[dict], clients: int) -> tuple[float, list[float], list[str]]:
  """(wall seconds, latencies, answers) of all requests sent from `clients` threads."""
  start = time.perf_counter()
  with ThreadPoolExecutor(clients) as pool:
    results = list(pool.map(lambda body: post(url, body), requests))
  return time.perf_counter() - start, [r[0] for r in results], [r[1] for r in results]


def health(url: str) -> dict:
  with urllib.request.urlopen(f"{url}/health", timeout=10) as reply:
    return json.loads(reply.read())


def started(checkpoint: str, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
  port = free_port()
  server = subprocess.Popen(
    [sys.executable, "-m", "lion_jax.serve", "--checkpoint", checkpoint, "--port", str(port)]
    + ["--max_batch", str(max_batch), "--max_wait_ms", str(max_wait_ms)],
    stdout=subprocess.DEVNULL,
  )
  url = f"http://127.0.0.1:{port}"
  while True:
    if server.poll() is not None:
      raise SystemExit(f"the server exited with {server.returncode}")
    try:
      health(url)
      return server, url
    except OSError:
      time.sleep(0.5)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", default="/tmp/lion-demo/stage3/export", help="default: %(default)s")
  parser.add_argument("--data", help="the demo's data folder (default: <checkpoint>/../../data)")
  parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default: %(default)s)")
  parser.add_argument("--requests", type=int, default=64, help="requests per round (default: %(default)s)")
  parser.add_argument("--num_beams", type=int, help="beam width of every request (default: the server's, 5)")
  parser.add_argument("--max_batch", type=int, default=16, help="the batching server's (default: %(default)s)")
  parser.add_argument("--max_wait_ms", type=float, default=20.0, help="the batching server's (default: %(default)s)")
  args = parser.parse_args(argv)
  requests = requests_of(Path(args.data or Path(args.checkpoint).parents[1] / "data"), args.requests, args.num_beams)
  modes, alone = {}, None
  for mode, max_batch in (("batched", args.max_batch), ("one_at_a_time", 1)):
    server, url = started(args.checkpoint, max_batch, args.max_wait_ms)
    try:
      # Two untimed rounds and each request alone compile the shapes (batch rows x prompt length) the
      # timed round meets: ~12 s per shape for the demo's model on 2 cores, which would swamp it.
      for _ in range(2):
        under_load(url, requests, args.clients)
      served_alone = [post(url, body)[1] for body in requests]
      alone = alone or served_alone
      before = health(url)
      wall, latencies, answers = under_load(url, requests, args.clients)
      after = health(url)
    finally:
      server.terminate()
      server.wait(60)
    cuts = statistics.quantiles(latencies, n=20)
    modes[mode] = dict(
      max_batch=max_batch,
      requests_per_s=round(len(requests) / wall, 3),
      p50_s=round(statistics.median(latencies), 3),
      p95_s=round(cuts[18], 3),
      max_s=round(max(latencies), 3),
      mean_batch=round((after["requests"] - before["requests"]) / (after["batches"] - before["batches"]), 2),
      answers_equal_alone=sum(a == b for a, b in zip(answers, alone)),
    )
  record(
    "serve_load",
    dict(
      command="python -m benchmarks.serve_load " + " ".join(argv if argv is not None else sys.argv[1:]),
      checkpoint=args.checkpoint,
      clients=args.clients,
      requests=len(requests),
      max_wait_ms=args.max_wait_ms,
      num_beams=args.num_beams or 5,
      speedup=round(modes["batched"]["requests_per_s"] / modes["one_at_a_time"]["requests_per_s"], 2),
      **modes,
    ),
  )
  if any(m["answers_equal_alone"] != len(requests) for m in modes.values()):
    raise SystemExit("some answers under load differ from the same request sent alone")


if __name__ == "__main__":
  main()
