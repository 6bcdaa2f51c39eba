"""The files of a stage's directory that are not checkpoints: one module for every stage.

Where it sits: below every stage (training, members, RL, best-of-N, win rates, the data builds,
the experiment driver); it imports nothing of warm_jax, so any module may use it.
- `DONE`: the completion marker a finished stage writes last (a JSON record: its step, wall
  seconds, last eval, ...); a dir without it is unfinished and a rerun resumes it.
  `write_done` / `read_done` / `is_done`.
- `atomic_write_text`, `write_json` (finite JSON: NaN/inf become null, numpy scalars plain
  numbers), `read_json`: small files written by a temporary file and a rename, so a reader
  never sees half a file.
- `write_operative_config`: MODEL_DIR/config.gin, gin's operative config of the run.
- `install_dir`: a finished temporary dir renamed into place (the old one, if any, moved aside
  first, then deleted), so a dir is either absent or complete.
- `overlaps` / `inside`: path checks (a program never writes into one of its inputs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from typing import Any

import numpy as np

DONE = "DONE"
OPERATIVE_CONFIG = "config.gin"


def atomic_write_text(path: str, text: str) -> None:
  """Writes a small text file via a temporary file and rename (never a half-written file)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  """A small JSON file a stage wrote (its stats, results, STAGE_FLOPS.json), or None if there is
  none (the stage did not run, or wrote nothing)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def finite_or_none(value: Any) -> Any:
  """`value` with every non-finite float replaced by None and numpy scalars made plain, in
  dicts, lists and tuples (tuples become lists, as JSON writes them)."""
  if isinstance(value, dict):
    return {k: finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_none(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def write_json(path: str, value: Any, *, indent: int | None = 1) -> None:
  """Writes `value` as strict JSON (non-finite numbers as null) atomically, ending in a newline."""
  atomic_write_text(path, json.dumps(finite_or_none(value), indent=indent,
                                     allow_nan=False) + "\n")


def write_done(directory: str, record: dict[str, Any]) -> None:
  """Marks `directory` finished: DONE holds `record` as one line of strict JSON (non-finite
  numbers as null, like every other JSON file of a stage dir), written last and atomically."""
  atomic_write_text(os.path.join(directory, DONE),
                    json.dumps(finite_or_none(record), allow_nan=False) + "\n")


def read_done(directory: str) -> dict[str, Any] | None:
  """The completion record of a stage dir, or None if it has not finished."""
  return read_json(os.path.join(directory, DONE))


def is_done(directory: str) -> bool:
  return os.path.exists(os.path.join(directory, DONE))


def write_operative_config(model_dir: str) -> str:
  """Writes MODEL_DIR/config.gin, gin's operative config of this run (atomically); returns it."""
  import gin  # the config library itself, not warm_jax's gin layer
  text = gin.operative_config_str()
  os.makedirs(model_dir, exist_ok=True)
  atomic_write_text(os.path.join(model_dir, OPERATIVE_CONFIG), text)
  return text


def staging_dir(output_dir: str) -> str:
  """A new empty dir beside `output_dir` (`<name>.tmp-XXXX`, same file system), where a stage
  writes its output before `install_dir` renames it into place (creating the parent)."""
  output_dir = os.path.abspath(output_dir)
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  return tempfile.mkdtemp(prefix=f"{os.path.basename(output_dir)}.tmp-", dir=parent)


def install_dir(tmp_dir: str, output_dir: str) -> None:
  """Renames a finished `tmp_dir` into place; an old `output_dir` is moved aside first, then
  deleted, so `output_dir` is at every moment absent, the old dir or the new one."""
  old = None
  if os.path.lexists(output_dir):
    old = f"{output_dir}.old-{uuid.uuid4().hex[:8]}"
    os.rename(output_dir, old)
  os.rename(tmp_dir, output_dir)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def inside(path: str, parent: str) -> bool:
  """`path` is `parent` or lies below it (symlinks resolved)."""
  path, parent = os.path.realpath(path), os.path.realpath(parent)
  return path == parent or path.startswith(parent.rstrip(os.sep) + os.sep)


def overlaps(a: str, b: str) -> bool:
  """One of the two paths is the other or lies below it (symlinks resolved)."""
  return inside(a, b) or inside(b, a)
