"""How the command-line tools (`main`, `data.prepare`, `summarize`) end on an error.

One line, `error: <what went wrong and the fix>`, on stderr; `--verbosity=1` prints the
traceback above it (and the libraries' own tracebacks and INFO logs: `quiet_library_logs`).
Exit status 2 for usage errors (flags, config values: what was asked for cannot be done as
asked, `ValueError` and absl's flag errors) and 1 for runtime failures (files, disks,
numerics).
"""

from __future__ import annotations

import logging as python_logging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from absl import app, flags, logging

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

_VERBOSITY_FLAG = re.compile(r"^--?(?:v|verbosity)=(-?\d+)$")
# Exceptions whose message is written for users; any other type is named in the line too.
_SELF_EXPLAINING = (ValueError, OSError, RuntimeError, flags.Error, app.UsageError)


def exit_code(error: BaseException) -> int:
  return EXIT_USAGE if isinstance(error, (ValueError, flags.Error)) else EXIT_FAILURE


def fail(error: BaseException | str, code: int | None = None, *, argv: Sequence[str] = (),
         at_once: bool = False) -> NoReturn:
  """Prints `error: ...` (after the traceback, when verbose) and exits with `code`
  (default: `exit_code(error)`). `at_once` skips the interpreter's exit, which waits for
  every non-daemon thread (a save that hangs, a peer in a collective)."""
  if code is None:
    code = EXIT_FAILURE if isinstance(error, str) else exit_code(error)
  verbose = _verbose(argv)
  if isinstance(error, BaseException) and verbose:
    traceback.print_exception(error)
  print(f"error: {one_line(error)}", file=sys.stderr)
  if not verbose:
    # The line above stays the last: what threads still running log on their way out
    # (Orbax's writes abandoned after a failed save, asyncio's unretrieved tasks) is not.
    python_logging.disable(python_logging.CRITICAL)
  if at_once:
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access
  sys.exit(code)


def one_line(error: BaseException | str) -> str:
  """The error's message on one line. A message that embeds a traceback (ml_collections'
  config-file errors do) keeps its first line and the traceback's last."""
  if isinstance(error, str):
    return error
  lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
  message = lines[0]
  if any(line.startswith("Traceback (most recent call last)") for line in lines):
    message = f"{message.removesuffix('Error whilst parsing config file:').strip()} {lines[-1]}"
  if not isinstance(error, _SELF_EXPLAINING) or not message:
    message = f"{type(error).__name__}: {message} (--verbosity=1 shows the traceback)"
  return message


# Libraries that narrate every step of their work at INFO (Orbax logs ~30 lines per save).
_CHATTY_LIBRARIES = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/jax/_src/")
# Where those libraries' errors are also logged from: asyncio reports an Orbax write task's
# error that nobody retrieved (a failed save's) when the task is garbage collected, which may
# be before `cli.fail`'s line (eclip_jax itself runs no event loop).
_LIBRARY_EVENT_LOOPS = ("/asyncio/",)


def quiet_library_logs() -> None:
  """Keeps warnings from everywhere but INFO only from eclip_jax (unless --verbosity>=1);
  the libraries' warnings and errors lose their tracebacks, which `cli.fail`'s last line
  makes redundant (Orbax logs a failed save's three times)."""
  if logging.get_verbosity() > logging.INFO:
    return

  def keep(record) -> bool:
    from_library = any(part in record.pathname for part in _CHATTY_LIBRARIES)
    if from_library or any(part in record.pathname for part in _LIBRARY_EVENT_LOOPS):
      record.exc_info = record.exc_text = record.stack_info = None
    return record.levelno >= python_logging.WARNING or not from_library

  logging.get_absl_handler().addFilter(keep)


def no_arguments(argv: Sequence[str]) -> None:
  """Exits 2 if anything but flags followed the program name."""
  if len(argv) > 1:
    fail(f"unexpected arguments {list(argv[1:])}; flags are --name=value.", EXIT_USAGE)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with its errors (an unknown flag, a bad value, a missing required
  flag) as one `error:` line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    fail(error, EXIT_USAGE, argv=argv)


def _verbose(argv: Sequence[str]) -> bool:
  """--verbosity >= 1, also when flag parsing failed before setting it."""
  if flags.FLAGS.is_parsed():
    return logging.get_verbosity() >= 1
  values = [int(m.group(1)) for m in map(_VERBOSITY_FLAG.match, argv) if m]
  return bool(values) and values[-1] >= 1
