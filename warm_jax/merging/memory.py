"""Process memory for the streaming averager: its peak, and giving freed memory back.

Where it sits: `streaming.py` reports the peak in the manifest and trims after each leaf; the
CLI (`warm_jax.average`, a host program) also caps glibc's heap arenas. The library does not,
since that setting is process-wide.

glibc's mmap threshold is left dynamic on purpose. Pinned at its initial 128 KiB (as the CLI
did until 2026-12-07), every buffer TensorStore allocates to read a storage chunk was a fresh
mmap, faulted in page by page and unmapped on free: one minor page fault per 4 KiB of every
member, 1.16M faults at M = 10 x 110M. Dynamic, those buffers come back from the heap and are
reused (0.45-0.61M faults, the same peak memory within 0.1 GiB; bench/RESULTS.md section 9).
"""

from __future__ import annotations

import ctypes
import functools
import resource
from typing import Any

_KIB = 1024  # VmHWM and ru_maxrss are in KiB on Linux
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
# Heap arenas for the whole process: TensorStore's reading threads share them, so a chunk
# buffer freed by one thread is reused by the next read on another.
MAX_HEAP_ARENAS = 2


@functools.cache
def _libc() -> Any:
  try:
    return ctypes.CDLL("libc.so.6")
  except OSError:
    return None  # not glibc: nothing to tune


def release_freed_memory() -> None:
  """Hands the freed bands of a finished leaf back to the OS.

  glibc keeps freed blocks in its arenas (TensorStore decodes in its own threads, hence in
  other arenas) and raises its mmap threshold after each large free, so without this the
  resident set creeps up by megabytes per member although nothing is held.
  """
  libc = _libc()
  if libc is not None and hasattr(libc, "malloc_trim"):
    libc.malloc_trim(0)


def peak_rss_bytes() -> int:
  """This process's resident-memory high-water mark.

  /proc's VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent
  across fork+exec, so a child of a 700 MB pytest reports at least 700 MB.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) * _KIB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _KIB


def share_heap_arenas(max_arenas: int = MAX_HEAP_ARENAS) -> None:
  """Caps glibc's heap arenas (process-wide; call before the reading threads start).

  By default each thread that allocates gets an arena of its own (up to 8 per core), so the
  multi-megabyte buffers that TensorStore's threads free stay in their arenas and new reads
  on other threads take fresh memory: the peak crept up with the number of members (+22-40
  MB from 2 to 8 members of a 40 MB model, the test
  `test_peak_memory_stays_near_one_model_as_members_grow`); with two shared arenas, +8-18 MB.
  """
  libc = _libc()
  if libc is not None and hasattr(libc, "mallopt"):
    libc.mallopt(_M_ARENA_MAX, int(max_arenas))
