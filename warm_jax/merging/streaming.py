"""The streaming averager: M orbax checkpoints in, one orbax checkpoint out, ~one model in RAM.

Where it sits: after the M reward-model runs, before evaluation, BoN and RL (`python -m
warm_jax.average` is its command line, docs/averaging.md its guide). The order of work is fixed
so that every refusal comes before anything is written:

  1. parameters: method, weights, lambda, eta (no disk);
  2. paths: inputs resolved (a model dir means its latest step), no input twice, the output new
     (or --overwrite) and not inside or around an input;
  3. trees, from orbax metadata only: identical leaves, shapes and dtypes; the head present;
  4. the plan (greedy evaluates the members here, one at a time);
  5. the stream: for each leaf, for each band of rows, for each input -- read into a reused
     buffer (the next reads are already decoding in TensorStore's threads), hash (on one of
     HASH_THREADS threads), add into the accumulator (the output band itself for float32
     leaves) -- then one finiteness check of the band's sum, which re-reads the inputs to
     name the one with NaN/inf only when it fails;
  6. no two inputs with the same content; the merged tree carries the head;
  7. orbax writes OUTPUT.tmp-<pid>, manifest.json goes inside, one rename publishes it.

Peak memory: the output tree (one model), plus the buffer pool (read_ahead + 2 + HASH_THREADS
buffers of the largest band), a float32 accumulator/scratch band where the output cannot be
the accumulator, plus orbax's write buffers. A SIGKILL at any point leaves no directory at
OUTPUT (only OUTPUT.tmp-<pid>).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import logging
import math
import os
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.core import run_dir
from warm_jax.merging import checks, memory
from warm_jax.merging import output as output_lib
from warm_jax.merging.reader import (DEFAULT_BAND_BYTES, CheckpointReader, ContentHasher,
                                     LeafInfo, row_bands)
from warm_jax.merging.registry import MergeConfigError, MergePlan, get_method

ACCUMULATE_DTYPES = {"float32": np.float32, "float64": np.float64}
DEFAULT_READ_AHEAD = 2
# Threads that hash (sha256 releases the GIL; each input's hash is fed by one of them).
HASH_THREADS = 2
# Hash jobs queued before the main thread waits for them. Pooled bands are bounded by the
# pool; this bounds the whole leaves of non-linear methods and the output leaves waiting.
HASH_BACKLOG = 4
PROGRESS_EVERY_S = 10.0
MANIFEST_FORMAT = "warm_jax.average/1"


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """How the averager reads and accumulates (not what it computes).

  Attributes:
    accumulate_dtype: "float32" (default) or "float64" for the running sums; float64 leaves are
      always accumulated in float64.
    band_bytes: a leaf larger than this is read in bands of rows of about this size (whole
      storage chunks; see reader.row_bands).
    read_ahead: reads kept in flight beyond the one being accumulated (0: strictly one at a
      time); each costs one band of memory.
    verify_output: re-read the written checkpoint and compare its content hash before
      publishing it (one more model read).
  """

  accumulate_dtype: str = "float32"
  band_bytes: int = DEFAULT_BAND_BYTES
  read_ahead: int = DEFAULT_READ_AHEAD
  verify_output: bool = False

  def __post_init__(self):
    if self.accumulate_dtype not in ACCUMULATE_DTYPES:
      raise MergeConfigError(f"StreamConfig.accumulate_dtype={self.accumulate_dtype!r}: choose "
                             f"one of {sorted(ACCUMULATE_DTYPES)}")
    if self.band_bytes <= 0 or self.read_ahead < 0:
      raise MergeConfigError(f"StreamConfig: band_bytes must be > 0 and read_ahead >= 0, got "
                             f"{self.band_bytes} and {self.read_ahead}")


@dataclasses.dataclass
class _Source:
  """One checkpoint being read: a member or the init."""

  label: str
  reader: CheckpointReader
  is_init: bool = False
  index: int = 0  # position among the sources (which hashing thread feeds its hasher)
  hasher: ContentHasher = dataclasses.field(default_factory=ContentHasher)


class _BufferPool:
  """Reusable byte buffers that band reads decode into (at most `size`, made on demand).

  Reading into a fresh array per band costs a page fault per 4 KiB (about as much CPU as
  copying an uncompressed checkpoint out of the page cache); a handful of buffers reused for
  every band of every input costs that once. A buffer goes back to the pool when both the
  main thread (accumulating) and the hashing thread are done with it.
  """

  def __init__(self, nbytes: int, size: int):
    self.nbytes, self._size, self._made = nbytes, size, 0
    self._free: queue.SimpleQueue = queue.SimpleQueue()

  def get(self) -> np.ndarray:
    try:
      return self._free.get_nowait()
    except queue.Empty:
      pass
    if self._made < self._size:
      self._made += 1
      return np.empty(self.nbytes, np.uint8)
    return self._free.get()  # a hashing thread gives one back (progress: see _ReadQueue)

  def put(self, buffer: np.ndarray) -> None:
    self._free.put(buffer)


def _band_shape(leaf: LeafInfo, band) -> tuple[int, ...]:
  return leaf.shape if band is None else (band[1] - band[0], *leaf.shape[1:])


class _ReadQueue:
  """Keeps `depth` reads in flight ahead of the one being consumed, in task order.

  A task is (source, leaf, band, pooled); a pooled read decodes into a buffer of the pool
  (returned with the values; the consumer gives it back), the others into a fresh array.
  Stores are opened `open_ahead` tasks ahead, so that opening (a metadata read) never blocks.
  The pool holds depth + 2 buffers or more, so a read can always be issued once the hashing
  threads (which never wait on the main thread) have finished a band.
  """

  def __init__(self, tasks: list, depth: int, pool: _BufferPool | None, open_ahead: int):
    self._tasks, self._next, self._depth, self._pool = tasks, 0, depth, pool
    self._open_ahead = open_ahead
    self._pending: collections.deque = collections.deque()
    self._fill()

  def _fill(self):
    while len(self._pending) <= self._depth and self._next < len(self._tasks):
      source, leaf, band, pooled = task = self._tasks[self._next]
      ahead = self._next + self._open_ahead
      if ahead < len(self._tasks):
        self._tasks[ahead][0].reader.open(self._tasks[ahead][1])
      self._next += 1
      buffer = out = None
      if pooled:
        buffer = self._pool.get()
        shape = _band_shape(leaf, band)
        out = buffer[:math.prod(shape) * leaf.dtype.itemsize].view(leaf.dtype).reshape(shape)
      self._pending.append((task, buffer, source.reader.read(leaf, band, out=out)))

  def next(self, source: _Source, leaf: LeafInfo, band) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, the pool buffer holding them or None)."""
    task, buffer, future = self._pending.popleft()
    if task[0] is not source or task[1] is not leaf or task[2] != band:
      raise RuntimeError(f"averager read order broken at {leaf.path}; this is a bug")
    self._fill()
    try:
      return future.result(), buffer
    except ValueError as e:
      raise ckpt_lib.CheckpointError(f"cannot read {leaf.path} from checkpoint {source.label}: "
                                     f"{e}; the checkpoint is incomplete or corrupt") from e


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_paths(inputs: Sequence[str], init: str | None, output: str, overwrite: bool
                 ) -> tuple[list[_Source], _Source | None]:
  if os.path.lexists(output) and not overwrite:
    raise checks.MergeInputError(f"output {output} already exists; pick a new path or pass "
                                 "--overwrite (nothing was written)")
  parent = os.path.dirname(output)
  while not os.path.lexists(parent):  # the first existing ancestor must be a writable dir
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise checks.MergeInputError(
        f"output {output} cannot be created: {parent} is not a writable directory; pick "
        "another output path (nothing was written)")
  sources = [_Source(label=arg, reader=CheckpointReader(arg)) for arg in inputs]
  init_source = _Source(label=init, reader=CheckpointReader(init), is_init=True) if init else None
  seen: dict[str, str] = {}
  for source in sources + ([init_source] if init_source else []):
    real = os.path.realpath(os.fspath(source.reader.path))
    if real in seen:
      role = "the init" if source.is_init else "input"
      raise checks.MergeInputError(
          f"{role} {source.label} and input {seen[real]} are the same checkpoint ({real}): "
          "each member must be a distinct run (averaging a model with itself only reweights "
          "it); remove the duplicate")
    seen[real] = source.label
    # The path as given too: a member's run dir (not only its params) is the member's.
    if (run_dir.overlaps(output, os.fspath(source.reader.path))
        or run_dir.overlaps(output, source.label)):
      raise checks.MergeInputError(
          f"output {output} overlaps checkpoint {source.label} ({source.reader.path}): the "
          "averager never writes into or over its inputs; pick another output path")
  return sources, init_source


def _load_checked(source: _Source) -> Any:
  tree = source.reader.load()
  for path, value in ckpt_lib.flatten_params(tree).items():
    checks.check_finite(source.label, path, np.asarray(value))
  return tree


def _accumulate_dtype(leaf: LeafInfo, config: StreamConfig):
  return np.float64 if leaf.dtype == np.float64 else ACCUMULATE_DTYPES[config.accumulate_dtype]


class _Stream:
  """Executes a plan over the sources, leaf by leaf (see the module docstring, step 5)."""

  def __init__(self, *, plan: MergePlan, members: list[_Source], init: _Source | None,
               config: StreamConfig):
    self.plan, self.members, self.init, self.config = plan, members, init, config
    self.sources = ([init] if init else []) + members
    self.leaves = members[0].reader.leaves
    self.bytes_read = 0
    self.output_hasher = ContentHasher()
    # sha256 releases the GIL: hashing runs on HASH_THREADS threads beside decoding
    # (TensorStore's threads) and accumulating (this thread). Each hasher is fed by one thread
    # only (source i by thread i % HASH_THREADS), so its updates stay in order.
    self._hash_pools = [concurrent.futures.ThreadPoolExecutor(max_workers=1)
                        for _ in range(HASH_THREADS)]
    self._hash_jobs: collections.deque = collections.deque()
    self.coefficients = None
    if plan.linear is not None:
      init_coefficient = [plan.linear.init_coefficient] if init else []
      self.coefficients = init_coefficient + list(plan.linear.coefficients)
    self.bands, self.pooled = {}, {}
    for leaf in self.leaves:
      whole = plan.leaf_merge is not None or not checks.is_float(leaf.dtype)
      chunk_rows = [s.reader.leaves_by_path[leaf.path].chunk_rows for s in self.sources]
      self.bands[leaf.path] = [None] if whole else row_bands(
          leaf.shape, leaf.dtype, chunk_rows, config.band_bytes)
      self.pooled[leaf.path] = not whole
    pooled_bands = [(leaf, band) for leaf in self.leaves if self.pooled[leaf.path]
                    for band in self.bands[leaf.path]]
    self._max_band_size = max((math.prod(_band_shape(leaf, band)) for leaf, band in pooled_bands),
                              default=0)
    self._pool = _BufferPool(
        max((math.prod(_band_shape(leaf, band)) * leaf.dtype.itemsize
             for leaf, band in pooled_bands), default=0),
        config.read_ahead + 2 + HASH_THREADS)
    # Reused arrays of the largest band, by (role, dtype): the accumulator when it is not the
    # output band (bfloat16 leaves, float64 accumulation), the scratch for unequal coefficients.
    self._work: dict[tuple[str, np.dtype], np.ndarray] = {}

  def _tasks(self) -> list:
    return [(source, source.reader.leaves_by_path[leaf.path], band, self.pooled[leaf.path])
            for leaf in self.leaves for band in self.bands[leaf.path] for source in self.sources]

  def _pull(self, source: _Source, leaf: LeafInfo, band, *, check: bool = True
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """The next read (values, pool buffer or None); hashed (the buffer goes back to the pool
    after that) and, with `check`, refused if not finite."""
    values, buffer = self._queue.next(source, source.reader.leaves_by_path[leaf.path], band)
    if check:
      checks.check_finite(source.label, leaf.path, values)
    self._hash(source.hasher, self._hash_pools[source.index % HASH_THREADS], leaf, values,
               start=band is None or band[0] == 0, buffer=buffer)
    self.bytes_read += values.nbytes
    return values, buffer

  def _hash(self, hasher: ContentHasher, pool, leaf: LeafInfo, values: np.ndarray, *,
            start: bool, buffer: np.ndarray | None = None):
    """Queues `values` (not modified until hashed) for hashing on `pool`'s thread."""
    def work():
      try:
        if start:
          hasher.start_leaf(leaf)
        hasher.update(values)
      finally:
        if buffer is not None:
          self._pool.put(buffer)
    self._hash_jobs.append(pool.submit(work))
    while self._hash_jobs and self._hash_jobs[0].done():
      self._hash_jobs.popleft().result()
    while len(self._hash_jobs) > HASH_BACKLOG:  # bounds the fresh (unpooled) arrays held
      self._hash_jobs.popleft().result()

  def run(self) -> list[Any]:
    try:
      out_leaves = self._run()
      while self._hash_jobs:
        self._hash_jobs.popleft().result()
      return out_leaves
    finally:
      for pool in self._hash_pools:
        pool.shutdown(wait=True, cancel_futures=True)

  def _run(self) -> list[Any]:
    for index, source in enumerate(self.sources):
      source.index = index
    total = sum(leaf.nbytes for leaf in self.leaves) * len(self.sources)
    self._queue = _ReadQueue(self._tasks(), self.config.read_ahead, self._pool,
                             open_ahead=2 * len(self.sources))
    out_leaves, t0, last_log = [], time.time(), time.time()
    for index, leaf in enumerate(self.leaves):
      if not checks.is_float(leaf.dtype):
        out = self._copy_leaf(leaf)
      elif self.plan.leaf_merge is not None:
        out = self._merge_leaf(leaf)
      else:
        out = self._linear_leaf(leaf)
      self._hash(self.output_hasher, self._hash_pools[len(self.sources) % HASH_THREADS], leaf,
                 out, start=True)
      for source in self.sources:
        source.reader.release(source.reader.leaves_by_path[leaf.path])
      out_leaves.append(out.item() if leaf.python_scalar else out)
      memory.release_freed_memory()
      if time.time() - last_log >= PROGRESS_EVERY_S:
        last_log = time.time()
        rate = self.bytes_read / max(last_log - t0, 1e-9)
        logging.info("averaging: leaf %d/%d, %.2f/%.2f GB read, %.0f MB/s, ETA %.0f s",
                     index + 1, len(self.leaves), self.bytes_read / 1e9, total / 1e9, rate / 1e6,
                     (total - self.bytes_read) / max(rate, 1.0))
    return out_leaves

  def _work_buffer(self, role: str, dtype, shape) -> np.ndarray:
    """A reused `role` array of `shape` (allocated once, for the largest band)."""
    key = (role, np.dtype(dtype))
    if key not in self._work:
      self._work[key] = np.empty(self._max_band_size, dtype)
    return self._work[key][:math.prod(shape)].reshape(shape)

  def _linear_leaf(self, leaf: LeafInfo) -> np.ndarray:
    """sum_i c_i x_i, band by band, accumulated in place.

    The accumulator is the output band itself when the leaf's dtype is the accumulation dtype
    (float32 leaves by default; else a reused float32/float64 array, cast into the output).
    When every non-zero coefficient is the same c (uniform, greedy), c sum_i x_i is computed:
    one add per input instead of a multiply and an add. Finiteness is checked once per band,
    on the accumulated sum: a NaN or inf in any input with a non-zero coefficient makes the
    sum non-finite, and only then are the inputs re-read to name the culprit (an input with
    coefficient 0 is checked on its own).
    """
    acc_dtype = _accumulate_dtype(leaf, self.config)
    nonzero = {c for c in self.coefficients if c != 0}
    common = nonzero.pop() if len(nonzero) == 1 else None
    out = np.empty(leaf.shape, leaf.dtype)
    for band in self.bands[leaf.path]:
      shape = _band_shape(leaf, band)
      out_band = out if band is None else out[band[0]:band[1]]
      acc = out_band if np.dtype(acc_dtype) == leaf.dtype else self._work_buffer(
          "acc", acc_dtype, shape)
      # (a NaN/inf input is refused below, by name: no numpy warning on the way)
      with np.errstate(invalid="ignore", over="ignore"):
        self._accumulate_band(leaf, band, acc, acc_dtype, common)
        finite = np.isfinite(np.add.reduce(acc, axis=None))
      if not finite:
        self._refuse_non_finite(leaf, band)
      if acc is not out_band:
        out_band[...] = acc
    return out

  def _accumulate_band(self, leaf: LeafInfo, band, acc: np.ndarray, acc_dtype,
                       common: float | None) -> None:
    """acc = sum_i c_i x_i over the sources' rows of `band` (c sum_i x_i if `common`)."""
    first = True
    for source, coefficient in zip(self.sources, self.coefficients):
      values, _ = self._pull(source, leaf, band, check=coefficient == 0)
      if coefficient == 0:
        continue  # read for its hash and checks only
      if common is not None:
        if first:
          np.copyto(acc, values, casting="unsafe")
        else:
          np.add(acc, values, out=acc, dtype=acc_dtype)
      elif first:
        np.multiply(values, acc_dtype(coefficient), out=acc, dtype=acc_dtype)
      else:
        scratch = self._work_buffer("scratch", acc_dtype, acc.shape)
        np.multiply(values, acc_dtype(coefficient), out=scratch, dtype=acc_dtype)
        np.add(acc, scratch, out=acc)
      first = False
    if common is not None:
      np.multiply(acc, acc_dtype(common), out=acc)

  def _refuse_non_finite(self, leaf: LeafInfo, band) -> None:
    """The accumulated band is not finite: re-reads the band of every input and refuses the
    first with NaN/inf (if none has any, the float sum overflowed: it stands, as before)."""
    for source in self.sources:
      values = source.reader.read_now(source.reader.leaves_by_path[leaf.path], band)
      checks.check_finite(source.label, leaf.path, values)

  def _merge_leaf(self, leaf: LeafInfo) -> np.ndarray:
    acc_dtype = _accumulate_dtype(leaf, self.config)
    init = (self._pull(self.init, leaf, None)[0].astype(acc_dtype, copy=False)
            if self.init else None)
    calls = []

    def member(i: int) -> np.ndarray:
      if i != len(calls):
        raise RuntimeError(f"merge method {self.plan.method} asked for member {i} out of order")
      calls.append(i)
      return self._pull(self.members[i], leaf, None)[0].astype(acc_dtype, copy=False)

    merged = self.plan.leaf_merge.merge_leaf(member=member, num_members=len(self.members),
                                             init=init, xp=np)
    if len(calls) != len(self.members):
      raise RuntimeError(f"merge method {self.plan.method} read {len(calls)} of "
                         f"{len(self.members)} members for {leaf.path}; this is a bug")
    return np.asarray(merged).astype(leaf.dtype, copy=False)

  def _copy_leaf(self, leaf: LeafInfo) -> np.ndarray:
    """Integer/bool leaves (e.g. a step counter) are copied, and must agree across members."""
    first = None
    for source in self.sources:
      values, _ = self._pull(source, leaf, None)
      if source.is_init:
        continue
      if first is None:
        first, first_label = values, source.label
      elif not np.array_equal(values, first):
        raise checks.MergeInputError(
            f"checkpoint {source.label} has {leaf.path} (a {leaf.dtype.name} leaf, copied "
            f"rather than averaged) = {values.ravel()[:4]}... but {first_label} has "
            f"{first.ravel()[:4]}...: non-float leaves must agree across members")
    return first


def _source_record(source: _Source, weight: float | None) -> dict[str, Any]:
  return {"arg": source.label, "path": os.path.realpath(os.fspath(source.reader.path)),
          "step": source.reader.step, "content_hash": source.hasher.hexdigest(),
          "weight": weight}


def average_checkpoints(*, inputs: Sequence[str], output: str, method: str = "uniform",
                        weights: Sequence[float] | None = None, lam: float | None = None,
                        init: str | None = None, eta: float | None = None,
                        base: str | None = None,
                        score_fn: Callable[[Any], float] | None = None,
                        head: str | None = checks.DEFAULT_HEAD, overwrite: bool = False,
                        stream: StreamConfig | None = None) -> dict[str, Any]:
  """Merges reward-model checkpoints into a new plain orbax checkpoint at `output`.

  Args:
    inputs: member checkpoints: plain orbax PyTree dirs, step dirs or stage model dirs (their
      latest step), in the order `weights` refer to.
    output: the new checkpoint dir (refused if it exists, unless `overwrite`).
    method: a registered merge method (`warm_jax.merging.method_names()`).
    weights, lam, init, eta, base, score_fn: the method's parameters (each method refuses the
      ones it does not take; see docs/averaging.md).
    head: a node every input must have and the output must keep (None: no check, e.g. for
      policies).
    overwrite: replace an existing `output` (never an input).
    stream: reading/accumulation settings.

  Returns:
    The manifest written to OUTPUT/manifest.json.
  """
  t0, started = time.time(), _now()
  stream = stream or StreamConfig()
  inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs or [])
  inputs = [os.fspath(p) for p in inputs]
  if not inputs:
    raise MergeConfigError("no inputs: pass --inputs DIR [DIR ...] (average_checkpoints."
                           "inputs), the member checkpoints to average")
  if not output:
    raise MergeConfigError("no output: pass --output DIR (average_checkpoints.output)")
  output = os.path.abspath(os.fspath(output))
  merge_method = get_method(method)
  params = dict(weights=weights, lam=lam, eta=eta, base=base, score_fn=score_fn)
  merge_method.check(num_members=len(inputs), has_init=init is not None, **params)
  plan = None
  if not merge_method.evaluates_members:
    plan = merge_method.resolve(num_members=len(inputs), has_init=init is not None, **params)

  members, init_source = _check_paths(inputs, init, output, overwrite)
  everything = members + ([init_source] if init_source else [])
  checks.check_same_tree([(s.label, s.reader.signature()) for s in everything])
  head_leaves = checks.check_head(members[0].label, [l.path for l in members[0].reader.leaves],
                                  head)
  if plan is None:
    plan = merge_method.resolve(num_members=len(inputs), has_init=init is not None,
                                load_member=lambda i: _load_checked(members[i]), **params)
  logging.info("averaging %d checkpoints with %s%s into %s", len(members), method,
               f" (init {init})" if init else "", output)

  engine = _Stream(plan=plan, members=members, init=init_source, config=stream)
  out_leaves = engine.run()
  by_hash: dict[str, str] = {}
  for source in members:
    digest = source.hasher.hexdigest()
    if digest in by_hash:
      raise checks.MergeInputError(
          f"inputs {by_hash[digest]} and {source.label} have identical contents ({digest}): "
          "the same run was given twice (copied or re-saved); remove the duplicate")
    by_hash[digest] = source.label
  if init_source and init_source.hasher.hexdigest() in by_hash:
    logging.warning("the init %s has the same contents as input %s: its task vector is zero",
                    init, by_hash[init_source.hasher.hexdigest()])
  reference = members[0].reader
  checks.check_merged_head(head_leaves, [l.path for l in reference.leaves], head)
  tree = jax.tree_util.tree_unflatten(reference.treedef, out_leaves)

  coefficients = plan.linear.coefficients if plan.linear is not None else (None,) * len(members)
  manifest = {
      "format": MANIFEST_FORMAT,
      "method": method,
      "method_params": dict(plan.params),
      "weights": list(coefficients),
      "init_weight": plan.linear.init_coefficient if plan.linear and init_source else None,
      "selection": plan.selection,
      "inputs": [_source_record(s, w) for s, w in zip(members, coefficients)],
      "init": _source_record(init_source, None) if init_source else None,
      "head": head,
      "head_leaves": head_leaves,
      "output": {"path": output, "content_hash": engine.output_hasher.hexdigest(),
                 "num_leaves": len(out_leaves),
                 "num_params": int(sum(int(np.prod(l.shape)) for l in reference.leaves)),
                 "bytes": int(sum(l.nbytes for l in reference.leaves))},
      "accumulate_dtype": stream.accumulate_dtype,
      "bytes_read": engine.bytes_read,
      "disk_bytes_read": int(sum(s.reader.disk_bytes() for s in everything)),
      "started": started,
  }

  def finish(manifest=manifest):
    manifest.update(finished=_now(), wall_s=round(time.time() - t0, 3),
                    peak_rss_bytes=memory.peak_rss_bytes())
    return manifest

  output_lib.write_checkpoint(
      tree, output=output, overwrite=overwrite, finish_manifest=finish,
      verify_content_hash=manifest["output"]["content_hash"] if stream.verify_output else None,
      band_bytes=stream.band_bytes)
  logging.info("wrote %s: %s of %d members, %.2f GB read in %.1f s, peak RSS %.2f GB", output,
               method, len(members), engine.bytes_read / 1e9, manifest["wall_s"],
               manifest["peak_rss_bytes"] / 1e9)
  return manifest
