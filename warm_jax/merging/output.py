"""Writing the averager's output: atomically, with its manifest, never over an input.

Where it sits: the last step of `streaming.average_checkpoints` (and the memory bookkeeping it
reports). orbax writes the tree to OUTPUT.tmp-<pid> (itself through its own
`.orbax-checkpoint-tmp` dir and a rename), manifest.json goes inside (orbax ignores extra
files: `StandardCheckpointer().restore(OUTPUT)` works), and one rename publishes OUTPUT. A
process killed at any point leaves at most OUTPUT.tmp-<pid>, which nothing mistakes for the
output; the next run warns about it.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.merging import checks
from warm_jax.merging.reader import DEFAULT_BAND_BYTES, content_hash

MANIFEST_NAME = "manifest.json"
TMP_INFIX = ".tmp-"
OLD_INFIX = ".old-"


def save_tree(path: str, tree: Any, *, compress: bool = False) -> None:
  """orbax writes `path` (itself via a tmp dir and a rename); synchronous.

  orbax's default NumpyHandler deep-copies every host array before writing (so an async save
  can't see later mutations): one more model in memory. This save is synchronous and the tree
  is never mutated, so the copy is turned off.

  Uncompressed by default (`compress=False`: zarr `compressor: null`, orbax's own
  `use_compression=False`): float weights barely compress (zstd saved 7.5% of a 110M model)
  while compressing cost ~1.5 CPU-s/GB to write and decompressing ~1.5 CPU-s/GB at every
  read. orbax restores it like any other checkpoint (the codec is in each array's metadata).
  """
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      *[(t, ocp.type_handlers.ScalarHandler()) for t in (int, float, np.number)])
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                                              use_compression=compress))
  checkpointer.save(path, args=ocp.args.PyTreeSave(tree))
  checkpointer.close()


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
  ckpt_lib.atomic_write_text(os.path.join(directory, MANIFEST_NAME),
                             json.dumps(manifest, indent=2, default=str) + "\n")


def publish(tmp: str, output: str, overwrite: bool) -> None:
  """Makes `tmp` appear at `output` in one rename (two with --overwrite: old aside, new in)."""
  old = None
  if os.path.lexists(output):
    if not overwrite:
      raise checks.MergeInputError(f"output {output} appeared while averaging; nothing was "
                                   "published (the result is left at " + tmp + ")")
    old = f"{output}{OLD_INFIX}{os.getpid()}"
    os.rename(output, old)
  os.rename(tmp, output)
  dir_fd = os.open(os.path.dirname(output) or ".", os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)
  if old is not None:
    shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)


def _tmp_paths(tmp: str) -> list[str]:
  return [p for p in [tmp, *glob.glob(glob.escape(tmp) + ".orbax-checkpoint-tmp*")]
          if os.path.lexists(p)]


def remove_tmp(tmp: str, *, settle_s: float = 0.0, timeout_s: float = 30.0) -> None:
  """Deletes OUTPUT.tmp-<pid> and orbax's own tmp dirs beside it.

  After a failed save (`settle_s` > 0) TensorStore's writer threads may still be finishing
  writes the failure abandoned: a file landing while rmtree runs leaves a directory rmtree
  cannot remove, and a late write recreates one. So the removal repeats until nothing has been
  there for `settle_s` (or `timeout_s` passes, which is logged: a writer that never stops).
  """
  deadline = time.monotonic() + timeout_s
  gone_since = None
  while True:
    for path in _tmp_paths(tmp):
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
      else:  # gone since it was listed: already what we want
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
    now = time.monotonic()
    if _tmp_paths(tmp):
      gone_since = None
    elif gone_since is None:
      gone_since = now
    if gone_since is not None and now - gone_since >= settle_s:
      return
    if now > deadline:
      logging.warning("could not remove %s: something keeps writing there; delete it by hand",
                      ", ".join(_tmp_paths(tmp)) or tmp)
      return
    time.sleep(0.02)


def write_checkpoint(tree: Any, *, output: str, overwrite: bool,
                     finish_manifest: Callable[[], dict[str, Any]],
                     verify_content_hash: str | None = None,
                     band_bytes: int = DEFAULT_BAND_BYTES) -> None:
  """Publishes `tree` at `output` with OUTPUT/manifest.json, or leaves nothing at `output`.

  Args:
    tree: the merged params (host numpy arrays).
    output: absolute path of the new checkpoint dir.
    overwrite: replace an existing `output` (the caller has checked it is not an input).
    finish_manifest: called once the arrays are on disk; returns the manifest to write.
    verify_content_hash: if set, the written checkpoint is read back and must hash to this.
  """
  tmp = f"{output}{TMP_INFIX}{os.getpid()}"
  stale = [p for p in glob.glob(glob.escape(output) + TMP_INFIX + "*") if p != tmp]
  if stale:
    logging.warning("found %s, left by an averager that was killed; it is not a usable "
                    "output and can be deleted", ", ".join(stale))
  os.makedirs(os.path.dirname(output), exist_ok=True)
  remove_tmp(tmp)
  try:
    try:
      save_tree(tmp, tree)
    except (OSError, ValueError) as e:  # TensorStore reports a failed write as ValueError
      reason = ckpt_lib.write_failure_reason(e)
      raise ckpt_lib.CheckpointWriteError(
          f"writing {output} failed: {reason}. Free disk space or make "
          f"{os.path.dirname(output)} writable, then rerun; nothing was written") from e
    if verify_content_hash is not None:
      written = content_hash(tmp, band_bytes=band_bytes)
      if written != verify_content_hash:
        raise ckpt_lib.CheckpointError(f"the written checkpoint {tmp} reads back as {written}, "
                                       f"not {verify_content_hash}: a disk or orbax error; "
                                       "nothing was published")
    write_manifest(tmp, finish_manifest())
    publish(tmp, output, overwrite)
  except BaseException:
    remove_tmp(tmp, settle_s=0.5)
    raise
