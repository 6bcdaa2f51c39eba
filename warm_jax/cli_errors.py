"""How every command-line entry point reports the error it stops on.

`print_error` writes the whole `error: ...` report to stderr in one write and flushes it.
A bare `print(..., file=sys.stderr)` makes two write(2) calls when stderr is a pipe (Python's
stderr is then write-through and unbuffered: the text, then the newline); orbax's and
TensorStore's background threads, still logging a failed write, can land their output between
them, so the report's line gains a stranger's tail (CI saw "... nothing was written    ").
Tests and wrappers that look for the `error: <Kind>: ...` line rely on it being whole.
"""

from __future__ import annotations

import sys


def print_error(message: str) -> None:
  """Writes "error: <message>" and a newline to stderr in one write, then flushes."""
  stream = sys.stderr
  stream.flush()
  stream.write(f"error: {message.rstrip()}\n")
  stream.flush()
