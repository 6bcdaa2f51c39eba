"""Metrics a person can plot: JSONL + TensorBoard events, and a one-line progress display.

Where it sits: the trainer (and later BoN/RL/evaluation) write namespaced scalars
(`train/loss`, `eval/loss`, `perf/tokens_per_s`, `rm/accuracy`, ...) through `MetricsWriter`
into MODEL_DIR/metrics.jsonl and MODEL_DIR/tb/. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
  """Appends {"step": s, name: value, ...} lines to metrics.jsonl and TensorBoard scalars.

  On resume (`resume_step` given) lines of steps after the restored checkpoint are dropped, so
  the file describes one consistent history.
  """

  def __init__(self, model_dir: str, *, resume_step: int | None = None,
               tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(model_dir, METRICS_FILE)
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(model_dir, exist_ok=True)
    if os.path.exists(self.path):
      keep_until = resume_step if resume_step is not None else -1
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and _step_of(line) <= keep_until]
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, self.path)
    if tensorboard:
      from tensorboardX import SummaryWriter  # deferred: only the writing process needs it
      self._tb = SummaryWriter(os.path.join(model_dir, "tb"))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _jsonable(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _step_of(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return 1 << 62  # unreadable line: dropped


def _jsonable(v: Any) -> Any:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else str(f)


def read_metrics(model_dir: str) -> list[dict[str, Any]]:
  with open(os.path.join(model_dir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


class Progress:
  """`[stage] step 120/2000 (6%) | loss 3.21 | 45.2 step/s | ETA 0:01:23` lines on stderr."""

  def __init__(self, *, name: str, total_steps: int, start_step: int = 0,
               stream=None):
    self.name, self.total, self.start = name, total_steps, start_step
    self.stream = stream or sys.stderr
    self.t0 = time.perf_counter()
    self.enabled = jax.process_index() == 0

  def update(self, step: int, fields: dict[str, float]) -> None:
    if not self.enabled:
      return
    elapsed = time.perf_counter() - self.t0
    done = step - self.start
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    shown = " | ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
    pct = 100.0 * step / max(self.total, 1)
    self.stream.write(f"[{self.name}] step {step}/{self.total} ({pct:.0f}%) | {shown} | "
                      f"{rate:.2f} step/s | ETA {_fmt_time(eta)}\n")
    self.stream.flush()


def _fmt(v: float) -> str:
  if isinstance(v, float) and (abs(v) >= 1e4 or (0 < abs(v) < 1e-3)):
    return f"{v:.3g}"
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
