"""The one error type for what a user can fix, and how command lines report it.

A `UserError` is a bad config field, path, record, checkpoint or mesh: something the message tells
the user how to fix. Command lines print it as one line and exit 1. Every other exception is a bug
in lion-jax and propagates with its traceback, so an internal failure never looks like a user's
mistake. `UserError` subclasses `ValueError` so callers that catch `ValueError` keep working.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
  """Something the user can fix; the message names the field, file or record and what is wrong."""


def exit_code(run: Callable[[], int | None]) -> int:
  """Runs a command line's body: a `UserError` becomes `error: <message>` on stderr and exit code 1;
  anything else propagates with its traceback."""
  try:
    return run() or 0
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


class MissingFile(UserError, FileNotFoundError):
  """A path the user gave (a config field, a flag) that does not exist."""
