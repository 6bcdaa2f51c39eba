"""The streaming averager: M orbax checkpoints in, one orbax checkpoint out, ~one model in RAM.

Where it sits: after the M reward-model runs, before evaluation, BoN and RL (`python -m
warm_jax.average` is its command line, docs/averaging.md its guide). The order of work is fixed
so that every refusal comes before anything is written:

  1. parameters: method, weights, lambda, eta (no disk);
  2. paths: inputs resolved (a model dir means its latest step), no input twice, the output new
     (or --overwrite) and not inside or around an input;
  3. trees, from orbax metadata only: identical leaves, shapes and dtypes; the head present;
  4. the plan (greedy evaluates the members here, one at a time);
  5. the stream: for each leaf, for each band of rows, for each input -- read (the next read is
     already decoding in TensorStore's threads), refuse NaN/inf, hash, add c_i * x_i into a
     float32 accumulator -- then cast to the leaf's dtype into the output tree;
  6. no two inputs with the same content; the merged tree carries the head;
  7. orbax writes OUTPUT.tmp-<pid>, manifest.json goes inside, one rename publishes it.

Peak memory: the output tree (one model), plus a few bands (an accumulator, a scratch, 1 +
read_ahead reads, up to HASH_BACKLOG waiting for the hashing thread), plus orbax's compression
buffers while it writes. A SIGKILL at any point leaves no directory at OUTPUT (only
OUTPUT.tmp-<pid>).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from warm_jax import checkpoints as ckpt_lib
from warm_jax.merging import checks, memory
from warm_jax.merging import output as output_lib
from warm_jax.merging.reader import (DEFAULT_BAND_BYTES, CheckpointReader, ContentHasher,
                                     LeafInfo, row_bands)
from warm_jax.merging.registry import MergeConfigError, MergePlan, get_method

ACCUMULATE_DTYPES = {"float32": np.float32, "float64": np.float64}
DEFAULT_READ_AHEAD = 1
# Bands waiting for the hashing thread before the main thread waits for it (bounds memory).
HASH_BACKLOG = 2
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
  hasher: ContentHasher = dataclasses.field(default_factory=ContentHasher)


class _ReadQueue:
  """Reads issued in consumption order, `depth` of them ahead of the one being used."""

  def __init__(self, tasks, depth: int):
    self._tasks = iter(tasks)
    self._pending: collections.deque = collections.deque()
    self._depth = depth
    self._fill()

  def _fill(self):
    while len(self._pending) <= self._depth:
      task = next(self._tasks, None)
      if task is None:
        return
      source, leaf, band = task
      self._pending.append((task, source.reader.read(leaf, band)))

  def next(self, source: _Source, leaf: LeafInfo, band) -> np.ndarray:
    task, future = self._pending.popleft()
    if task[0] is not source or task[1] is not leaf or task[2] != band:
      raise RuntimeError(f"averager read order broken at {leaf.path}; this is a bug")
    self._fill()
    try:
      return future.result()
    except ValueError as e:
      raise ckpt_lib.CheckpointError(f"cannot read {leaf.path} from checkpoint {source.label}: "
                                     f"{e}; the checkpoint is incomplete or corrupt") from e


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _overlap(a: str, b: str) -> bool:
  a, b = os.path.realpath(a), os.path.realpath(b)
  return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


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
    if _overlap(output, os.fspath(source.reader.path)) or _overlap(output, source.label):
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
    # sha256 releases the GIL: hashing on its own thread overlaps with decoding (TensorStore's
    # threads) and accumulating (this thread). One worker keeps each hash's updates in order.
    self._hash_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    self._hash_backlog: collections.deque = collections.deque()
    if plan.linear is not None:
      init_coefficient = [plan.linear.init_coefficient] if init else []
      self.coefficients = init_coefficient + list(plan.linear.coefficients)
    self.bands = {}
    for leaf in self.leaves:
      whole = plan.leaf_merge is not None or not checks.is_float(leaf.dtype)
      chunk_rows = [s.reader.leaves_by_path[leaf.path].chunk_rows for s in self.sources]
      self.bands[leaf.path] = [None] if whole else row_bands(
          leaf.shape, leaf.dtype, chunk_rows, config.band_bytes)

  def _tasks(self):
    for leaf in self.leaves:
      for band in self.bands[leaf.path]:
        for source in self.sources:
          yield source, source.reader.leaves_by_path[leaf.path], band

  def _pull(self, source: _Source, leaf: LeafInfo, band) -> np.ndarray:
    values = self._queue.next(source, source.reader.leaves_by_path[leaf.path], band)
    checks.check_finite(source.label, leaf.path, values)
    self._hash(source.hasher, leaf, values, start=band is None or band[0] == 0)
    self.bytes_read += values.nbytes
    return values

  def _hash(self, hasher: ContentHasher, leaf: LeafInfo, values: np.ndarray, *, start: bool):
    """Queues `values` (never modified afterwards) for hashing on the hashing thread."""
    def work():
      if start:
        hasher.start_leaf(leaf)
      hasher.update(values)
    self._hash_backlog.append(self._hash_pool.submit(work))
    while len(self._hash_backlog) > HASH_BACKLOG:
      self._hash_backlog.popleft().result()

  def run(self) -> list[Any]:
    try:
      out_leaves = self._run()
      while self._hash_backlog:
        self._hash_backlog.popleft().result()
      return out_leaves
    finally:
      self._hash_pool.shutdown(wait=True, cancel_futures=True)

  def _run(self) -> list[Any]:
    total = sum(leaf.nbytes for leaf in self.leaves) * len(self.sources)
    self._queue = _ReadQueue(self._tasks(), self.config.read_ahead)
    out_leaves, t0, last_log = [], time.time(), time.time()
    for index, leaf in enumerate(self.leaves):
      if not checks.is_float(leaf.dtype):
        out = self._copy_leaf(leaf)
      elif self.plan.leaf_merge is not None:
        out = self._merge_leaf(leaf)
      else:
        out = self._linear_leaf(leaf)
      self._hash(self.output_hasher, leaf, out, start=True)
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

  def _linear_leaf(self, leaf: LeafInfo) -> np.ndarray:
    acc_dtype = _accumulate_dtype(leaf, self.config)
    bands = self.bands[leaf.path]
    out = None if bands == [None] else np.empty(leaf.shape, leaf.dtype)
    for band in bands:
      acc = scratch = None
      for source, coefficient in zip(self.sources, self.coefficients):
        values = self._pull(source, leaf, band)
        if coefficient == 0:
          continue  # read for its hash and checks only
        if acc is None:  # (asarray: on 0-d leaves numpy returns a scalar, not an array)
          acc = np.asarray(np.multiply(values, acc_dtype(coefficient), dtype=acc_dtype))
        else:
          scratch = np.empty(acc.shape, acc_dtype) if scratch is None else scratch
          np.multiply(values, acc_dtype(coefficient), out=scratch, dtype=acc_dtype)
          np.add(acc, scratch, out=acc)
        del values
      result = acc.astype(leaf.dtype, copy=False)
      if band is None:
        out = result
      else:
        out[band[0]:band[1]] = result
    return out

  def _merge_leaf(self, leaf: LeafInfo) -> np.ndarray:
    acc_dtype = _accumulate_dtype(leaf, self.config)
    init = self._pull(self.init, leaf, None).astype(acc_dtype, copy=False) if self.init else None
    calls = []

    def member(i: int) -> np.ndarray:
      if i != len(calls):
        raise RuntimeError(f"merge method {self.plan.method} asked for member {i} out of order")
      calls.append(i)
      return self._pull(self.members[i], leaf, None).astype(acc_dtype, copy=False)

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
      values = self._pull(source, leaf, None)
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
