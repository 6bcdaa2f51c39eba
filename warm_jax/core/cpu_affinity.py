"""Sharing the CPU cores between stages that run side by side: each stage on cores of its own.

Where it sits: the experiment driver (`pipeline.scheduler.run_stages` with PARALLEL_STAGES > 1)
keeps a `CoreSharer` that gives every running stage subprocess a disjoint share of the cores
the driver may use, and all of them back to a stage left running alone; the stage side is
`signal_backend_ready`, called by every gin entry point (`gin_utils.gin_main`) before its
program runs.

Why only after the backend exists: XLA:CPU sizes its intra-op thread pool from the cores the
process may use when its client is created, and the pool's size changes how work (reductions
included) is split, so a stage *started* on one core computes other floats than one started on
two. A stage therefore starts on every core, creates its backend, writes its ready file
(`WARM_JAX_READY_FILE`, set by the driver) and only then has its threads narrowed: the same
thread pool and the same numbers (tested), but two stages no longer time-share both cores.
Measured on 2 cores (docs/experiment.md): two RL stages side by side 76-80 s pinned vs 82-86 s
sharing both cores, two pre-trainings 55.6 s vs 58.6-59.1 s, identical losses.

Linux only (`os.sched_setaffinity` on thread ids from /proc); elsewhere it does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

READY_FILE_ENV = "WARM_JAX_READY_FILE"


def supported() -> bool:
  """Whether threads of other processes can be pinned here (Linux's per-thread affinity)."""
  return hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")


def signal_backend_ready() -> None:
  """The stage side: when the driver asks (WARM_JAX_READY_FILE), create JAX's backend now, on
  every core this process may use, then write the ready file; the driver narrows the process's
  threads only after that. Without the variable: nothing (a user's own run is never pinned)."""
  path = os.environ.get(READY_FILE_ENV)
  if not path:
    return
  import jax
  jax.devices()  # the backend and its thread pools, sized by the cores allowed right now
  with open(path, "w") as f:
    f.write(f"{os.getpid()}\n")


def split_cores(cores: Sequence[int], n: int) -> list[tuple[int, ...]]:
  """`n` shares of `cores`, in order: disjoint and as even as possible when there are at least
  as many cores as shares; with more shares than cores, one core each, round robin."""
  cores = sorted(cores)
  if n < 1:
    raise ValueError(f"split_cores: need at least one share, got {n}")
  if n > len(cores):
    return [(cores[i % len(cores)],) for i in range(n)]
  size, extra = divmod(len(cores), n)
  shares, start = [], 0
  for i in range(n):
    end = start + size + (1 if i < extra else 0)
    shares.append(tuple(cores[start:end]))
    start = end
  return shares


def thread_ids(pid: int) -> set[int]:
  """The ids of the process's threads now (empty once it has exited)."""
  try:
    return {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
  except OSError:
    return set()


class CoreSharer:
  """The driver side: call `update` with the running stages (pid, ready file), in the order
  they started, whenever that set may have changed and about once a second (to catch threads
  a stage starts later). One stage running: all cores; n stages: `split_cores` shares, the
  i-th running stage on the i-th share, applied once its ready file exists."""

  def __init__(self, cores: Sequence[int] | None = None):
    self.enabled = supported()
    self.cores = tuple(sorted(cores if cores is not None else
                              (os.sched_getaffinity(0) if self.enabled else ())))
    self._applied: dict[int, tuple[tuple[int, ...], set[int]]] = {}

  def update(self, running: Sequence[tuple[int, str]]) -> dict[int, tuple[int, ...]]:
    """Pins the ready stages' threads to their shares; returns {pid: share} of those pinned."""
    if not self.enabled or len(self.cores) < 2:
      return {}
    shares = ([self.cores] if len(running) <= 1 else split_cores(self.cores, len(running)))
    pinned = {}
    for (pid, ready_file), share in zip(running, shares):
      if not os.path.exists(ready_file):
        continue  # its backend is not created yet: narrowing now would change its thread pool
      tids = thread_ids(pid)
      before_share, before_tids = self._applied.get(pid, (None, set()))
      todo = tids if share != before_share else tids - before_tids
      for tid in todo:
        try:
          os.sched_setaffinity(tid, share)
        except OSError:  # the thread (or the stage) has just ended
          pass
      self._applied[pid] = (share, tids)
      pinned[pid] = share
    alive = {pid for pid, _ in running}
    for pid in list(self._applied):
      if pid not in alive:
        del self._applied[pid]
    return pinned
