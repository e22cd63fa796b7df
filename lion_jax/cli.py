"""What the absl command lines (main, plan, evaluate) share: flag parsing whose mistakes are one line.

A config override naming no config field, a bad flag, or a UserError raised by the config file's
`get_config(arg)` (e.g. `configs/stage1.py:size=xxxl`) prints `error: ...` and exits 2 (usage), with
no traceback: these are the user's to fix.
"""

from __future__ import annotations

import sys

from absl import flags

from lion_jax import errors


def config_file_error(e: BaseException) -> str | None:
  """The message of a UserError that a config file's get_config(arg) raised (e.g. size=xxxl).
  ml_collections re-raises it with the formatted traceback as its text, and absl wraps that in a
  flag error: the original message is what follows the traceback's last `UserError: `."""
  while e is not None and not isinstance(e, errors.UserError):
    e = e.__cause__ or e.__context__
  return None if e is None else str(e).rpartition("UserError: ")[2].strip()


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with a one-line error for a config override that names no config field."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a for a in argv if a.startswith("--config.")]
    name = str(e).strip("\"'")
    print(
      f"error: the config has no field {name!r} (overrides given: {bad}); only the fields the config "
      f"file defines can be set",
      file=sys.stderr,
    )
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {config_file_error(e) or e}", file=sys.stderr)
    sys.exit(2)
