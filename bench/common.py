"""Shared pieces of the benchmarks: model presets, timing, load average, the peak memory of a
subprocess, page-cache control and markdown tables.

Where it sits: every `bench/<name>.py` measures our side and its baseline in the same run with
these helpers, prints a table and the ratio, and can save the rows as JSON (`--json PATH`).
Nothing here is used by the library or the test suite's assertions.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = ("tiny", "small", "base", "large")
VOCAB_SIZE = 1024  # gin/data/common.gin: the data dir's SentencePiece vocabulary
GIB = 2**30


# -------------------------------------------------------------------------------------------------
# Models and devices
# -------------------------------------------------------------------------------------------------
def preset_fields(name: str) -> dict[str, Any]:
  """The literal `TransformerConfig.X = value` bindings of gin/models/<name>.gin (macros such as
  %VOCAB_SIZE are left to the caller), so the benchmarks run exactly the presets' shapes."""
  path = os.path.join(REPO_ROOT, "gin", "models", f"{name}.gin")
  if not os.path.exists(path):
    raise ValueError(f"unknown model preset {name!r}: choose one of {PRESETS} "
                     f"(gin/models/<name>.gin)")
  fields = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      m = re.match(r"\s*TransformerConfig\.(\w+)\s*=\s*([^#]+?)\s*(#.*)?$", line)
      if m and not m.group(2).startswith("%"):
        fields[m.group(1)] = ast.literal_eval(m.group(2))
  return fields


def preset_config(name: str, *, vocab_size: int = VOCAB_SIZE, **overrides: Any):
  """A `TransformerConfig` of preset `name` with the given vocabulary (and any overrides)."""
  from warm_jax.models import TransformerConfig
  fields = preset_fields(name)
  fields.update(vocab_size=vocab_size, dropout_rate=0.0)
  fields.update(overrides)
  return TransformerConfig(**fields)


def single_device_partitioner():
  """One device, everything replicated: a 2-core host is one XLA:CPU device that already uses
  every core (simulated devices would only split the same cores)."""
  import jax
  from warm_jax.core.partitioning import Partitioner
  return Partitioner(mesh_shape={"data": 1}, devices=jax.devices()[:1])


def random_pairs(*, num_pairs: int, seq_len: int, vocab_size: int, seed: int = 0
                 ) -> dict[str, Any]:
  """Preference pairs of full-length random token sequences (no padding, so every framework
  computes on exactly batch x 2 x seq_len tokens; ids 3.. avoid PAD/EOS/BOS)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  shape = (num_pairs, seq_len)
  return {"chosen_tokens": rng.integers(3, vocab_size, shape).astype(np.int32),
          "chosen_mask": np.ones(shape, np.int32),
          "rejected_tokens": rng.integers(3, vocab_size, shape).astype(np.int32),
          "rejected_mask": np.ones(shape, np.int32)}


# -------------------------------------------------------------------------------------------------
# Timing and load
# -------------------------------------------------------------------------------------------------
def load_average() -> float:
  """1-minute load average of the host (the box is shared: context for every number)."""
  return round(os.getloadavg()[0], 2)


@dataclasses.dataclass
class Timing:
  """Seconds of each timed call after the warm-up calls, and the load around them."""

  seconds: list[float]
  load_before: float
  load_after: float

  @property
  def best(self) -> float:
    return min(self.seconds)

  @property
  def median(self) -> float:
    return statistics.median(self.seconds)

  @property
  def load(self) -> str:
    return f"{self.load_before:.1f}-{self.load_after:.1f}"


def time_calls(fn: Callable[[], Any], *, repeats: int, warmup: int = 1) -> Timing:
  """Calls fn() `warmup` times (compiles), then times `repeats` calls (fn must block until its
  work is done, e.g. with jax.block_until_ready)."""
  for _ in range(warmup):
    fn()
  before = load_average()
  seconds = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    seconds.append(time.perf_counter() - t0)
  return Timing(seconds=seconds, load_before=before, load_after=load_average())


# -------------------------------------------------------------------------------------------------
# Subprocesses: wall time, CPU time and peak RSS
# -------------------------------------------------------------------------------------------------
# The child is started by a small launcher process, not by the benchmark itself: Linux carries
# the parent's peak RSS over into the child across fork+exec (signal->maxrss), so a child of a
# 1 GB benchmark process would report at least 1 GB. The launcher is ~10 MB.
_LAUNCHER = r"""
import json, os, subprocess, sys, time
out_path, err_path, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(out_path, "wb") as out, open(err_path, "wb") as err:
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=out, stderr=err)
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.perf_counter() - t0
proc.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"wall_s": wall, "returncode": proc.returncode,
                  "peak_rss_bytes": usage.ru_maxrss * 1024,
                  "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
                  "minor_faults": usage.ru_minflt}))
"""


@dataclasses.dataclass
class ProcessResult:
  """What one measured subprocess cost (peak RSS and minor page faults: ru_maxrss and ru_minflt
  of the child and its waited-for descendants, from wait4)."""

  wall_s: float
  peak_rss_bytes: int
  user_s: float
  sys_s: float
  minor_faults: int  # a page first touched (or mapped anew) costs one: kernel time
  returncode: int
  stdout: str
  stderr: str
  load_before: float
  load_after: float

  @property
  def cpu_s(self) -> float:
    return self.user_s + self.sys_s

  @property
  def load(self) -> str:
    return f"{self.load_before:.1f}-{self.load_after:.1f}"


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: str | None = None, check: bool = True) -> ProcessResult:
  """Runs cmd to completion through the launcher; raises (with its stderr) if it fails."""
  import tempfile
  with tempfile.TemporaryDirectory() as tmp:
    out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    before = load_average()
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, out, err, *cmd], cwd=cwd,
                          env=None if env is None else {**os.environ, **env},
                          capture_output=True, text=True, check=True)
    after = load_average()
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(out, encoding="utf-8", errors="replace") as f:
      stdout = f.read()
    with open(err, encoding="utf-8", errors="replace") as f:
      stderr = f.read()
  result = ProcessResult(stdout=stdout, stderr=stderr, load_before=before, load_after=after,
                         **stats)
  if check and result.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{stderr[-4000:]}")
  return result


# -------------------------------------------------------------------------------------------------
# Files and the page cache
# -------------------------------------------------------------------------------------------------
def files_under(paths: Iterable[str]) -> list[str]:
  """Every regular file under the given files/dirs, sorted."""
  out = []
  for path in paths:
    if os.path.isfile(path):
      out.append(path)
      continue
    for root, _, names in os.walk(path):
      out.extend(os.path.join(root, n) for n in names)
  return sorted(p for p in out if os.path.isfile(p) and not os.path.islink(p))


def total_bytes(files: Iterable[str]) -> int:
  return sum(os.path.getsize(f) for f in files)


def evict_page_cache(files: Sequence[str], *, method: str = "auto") -> str:
  """Makes the next read of `files` cold; returns how (for the results table).

  method "auto": as root, sync + `echo 3 > /proc/sys/vm/drop_caches` (the whole host's clean
  page cache), else as "fadvise"; "fadvise": posix_fadvise(DONTNEED) on each file, which drops
  that file's clean pages only (no root needed, nothing else evicted).
  """
  if method not in ("auto", "fadvise"):
    raise ValueError(f"evict_page_cache method={method!r}: use 'auto' or 'fadvise'")
  os.sync()
  if method == "auto":
    try:
      with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
        f.write("3\n")
      return "drop_caches"
    except OSError:
      pass
  for path in files:
    fd = os.open(path, os.O_RDONLY)
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)
  return "fadvise(DONTNEED) per file" + (" (drop_caches not permitted)" if method == "auto"
                                         else "")


def read_files(files: Sequence[str], *, block_bytes: int = 16 * 2**20) -> tuple[float, int]:
  """(seconds, bytes) to read every byte of `files` into one reused buffer: what `cat f >
  /dev/null` costs, without a process start."""
  buf = bytearray(block_bytes)
  view = memoryview(buf)
  done = 0
  t0 = time.perf_counter()
  for path in files:
    with open(path, "rb", buffering=0) as f:
      while True:
        n = f.readinto(view)
        if not n:
          break
        done += n
  return time.perf_counter() - t0, done


# -------------------------------------------------------------------------------------------------
# Reporting
# -------------------------------------------------------------------------------------------------
def versions(extra: Sequence[str] = ()) -> dict[str, str]:
  """Installed versions of the libraries a benchmark touched (missing ones left out)."""
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", *extra):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      out[name] = importlib.metadata.version(name)
  return out


def machine() -> dict[str, Any]:
  """CPU model, cores, memory and kernel of this host."""
  model = platform.processor() or "?"
  with contextlib.suppress(OSError):
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
          break
  mem = None
  with contextlib.suppress(OSError, ValueError):
    with open("/proc/meminfo", encoding="ascii") as f:
      mem = round(int(f.readline().split()[1]) * 1024 / GIB, 1)
  import jax
  return {"cpu": model, "cores": os.cpu_count(), "memory_gib": mem,
          "kernel": platform.release(), "jax_backend": jax.default_backend(),
          "jax_devices": jax.device_count()}


def header(title: str, *, extra_versions: Sequence[str] = ()) -> str:
  """The lines every benchmark prints first: what ran where, with which versions."""
  return "\n".join([
      f"## {title}",
      "",
      f"- command: `python {' '.join(sys_argv_for_display())}`",
      f"- machine: {json.dumps(machine())}",
      f"- versions: {json.dumps(versions(extra_versions))}",
      f"- load average at start: {load_average()}",
      ""])


def sys_argv_for_display() -> list[str]:
  """sys.argv as `-m bench.<name> ...` when run as a module."""
  argv = list(sys.argv)
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None and spec.name:
    return ["-m", spec.name, *argv[1:]]
  return argv


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table; floats get 3 significant digits (ratios are what matter)."""
  def cell(value: Any) -> str:
    if isinstance(value, float):
      if value != value:  # NaN
        return "n/a"
      return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)

  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def write_json(path: str | None, payload: Any) -> None:
  """Saves a benchmark's raw rows (for RESULTS.md or a plot), if a path was given."""
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=1, default=str)
    f.write("\n")


def configure_jax_for_benchmarks() -> None:
  """CPU unless told otherwise, quiet TensorFlow/absl logs; called before jax is imported."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
