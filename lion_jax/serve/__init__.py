"""Serve a LION checkpoint: an OpenAI-compatible chat API with batched generation, and a web page.

  python -m lion_jax.serve --checkpoint /tmp/lion-demo/stage3/export   # then open http://127.0.0.1:8000

app.py (routes, errors, streaming), protocol.py (requests read and checked), batching.py (requests
gathered into batched generations), sampling.py (temperature / top-p decoding), page.html (the page).
"""
