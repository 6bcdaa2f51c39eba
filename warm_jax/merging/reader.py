"""Reading an orbax PyTree checkpoint one leaf -- or one band of rows of a leaf -- at a time.

Where it sits: under the streaming averager (`streaming.py`), which must never hold M models.
orbax can restore a subset of a tree (`PyTreeRestore(partial_restore=True)`), but only whole
leaves and with a metadata read per call; so the leaves are read through TensorStore with the
spec orbax itself builds for them (`ocp.type_handlers.get_json_tspec_read`, the same call its
NumpyHandler makes), which also allows reading a band of rows of a large leaf. Every leaf comes
back as a host numpy array whatever topology wrote it: a checkpoint saved by 4 processes from
sharded jax.Arrays is one global zarr array per leaf, merged into one OCDBT manifest by orbax.

Bands are ranges of rows (axis 0) aligned to the leaf's storage chunks, so no chunk is decoded
twice, and each band is contiguous in C order, so hashing the bands in order hashes the leaf:
the content hash does not depend on how the checkpoint was chunked or sharded.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from warm_jax.core import checkpoints as ckpt_lib

# A large leaf is read in bands of whole storage chunks of about this many bytes (never less
# than one row of chunks): bounds the extra memory a huge embedding needs while keeping reads
# large enough to run at disk speed.
DEFAULT_BAND_BYTES = 64 * 2**20
HASH_NAME = "sha256"
# orbax's checkpoint-level metadata file (tree structure, zarr version, OCDBT or not).
_TREE_METADATA_FILE = "_METADATA"


@dataclasses.dataclass(frozen=True)
class LeafInfo:
  """One leaf of a checkpoint, from orbax's metadata (no array data read).

  Attributes:
    path: 'decoder/layer_0/mlp/wi/kernel' (as `warm_jax.core.checkpoints.flatten_params` names it).
    name: orbax's parameter name, the key of the array in the checkpoint's store.
    shape, dtype: of the stored array.
    chunk_rows: rows (axis-0 extent) of one storage chunk; shape[0] for an unchunked leaf.
    python_scalar: saved from a Python int/float (restored as one, not as a 0-d array).
  """

  path: str
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  chunk_rows: int
  python_scalar: bool = False

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def row_bands(shape: Sequence[int], dtype: np.dtype, chunk_rows: Sequence[int],
              band_bytes: int) -> list[tuple[int, int] | None]:
  """[(start, stop), ...] bands of rows covering axis 0, or [None] for a single whole read.

  Band edges are multiples of every source's storage chunk rows (their lcm), so that no source
  decodes a chunk twice; a band holds about `band_bytes` (at least one row of chunks).
  """
  if not shape or shape[0] <= 1:
    return [None]
  rows = shape[0]
  step = math.lcm(*[max(1, min(c, rows)) for c in chunk_rows])
  row_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
  band_rows = step * max(1, band_bytes // max(1, step * row_bytes))
  if band_rows >= rows:
    return [None]
  return [(start, min(rows, start + band_rows)) for start in range(0, rows, band_rows)]


@functools.cache
def shared_context() -> ts.Context:
  """orbax's TensorStore context (with its OCDBT cache pool), one per process."""
  return ocp.type_handlers.get_ts_context(use_ocdbt=True)


class CheckpointReader:
  """One input: a plain orbax PyTree checkpoint dir, a step dir or a stage's model dir.

  Args:
    arg: the path as the user gave it (used in every message about this input).
    context: a TensorStore context (default: one per process, shared by all readers, so the
      OCDBT B-tree caches are not duplicated per input).
  """

  def __init__(self, arg: str, *, context: ts.Context | None = None):
    self.arg = str(arg)
    # Absolute: orbax's TensorStore specs refuse relative checkpoint paths.
    self.path = epath.Path(os.path.abspath(ckpt_lib.resolve_params_path(self.arg)))
    parent = self.path.parent if self.path.name == ckpt_lib.PARAMS_ITEM else self.path
    self.step = int(parent.name) if parent.name.isdigit() else None
    try:
      metadata = ocp.PyTreeCheckpointer().metadata(self.path)
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
      raise ckpt_lib.CheckpointError(
          f"cannot read the orbax metadata of {self.arg} ({self.path}): {e}; is it a complete "
          "orbax PyTree checkpoint?") from e
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if not jax.tree_util.tree_leaves(tree):  # orbax returns no tree for unreadable metadata
      raise ckpt_lib.CheckpointError(
          f"cannot read the tree of checkpoint {self.arg} ({self.path}): its orbax metadata is "
          "missing or damaged, so the checkpoint is incomplete or corrupt; use another step "
          "of that run, or retrain it")
    self.treedef = jax.tree_util.tree_structure(tree)
    # flatten_params names the leaves in the tree's flatten order, like every other module.
    self.leaves: list[LeafInfo] = [
        self._leaf_info(path, meta) for path, meta in ckpt_lib.flatten_params(tree).items()]
    self.leaves_by_path = {leaf.path: leaf for leaf in self.leaves}
    self._format = self._read_format()
    self._context = context or shared_context()
    self._open: dict[str, ts.Future] = {}

  def _leaf_info(self, path: str, meta) -> LeafInfo:
    shape = tuple(int(d) for d in getattr(meta, "shape", ()) or ())
    if not hasattr(meta, "dtype") or getattr(meta, "name", None) is None:
      raise ckpt_lib.CheckpointError(
          f"checkpoint {self.arg} has a non-array leaf {path} ({type(meta).__name__}): only "
          "trees of arrays (model params) can be averaged")
    storage = getattr(meta, "storage", None)
    chunk = tuple(getattr(storage, "chunk_shape", None) or ()) if storage else ()
    return LeafInfo(path=path, name=str(meta.name), shape=shape, dtype=np.dtype(meta.dtype),
                    chunk_rows=int(chunk[0]) if chunk and shape else (shape[0] if shape else 1),
                    python_scalar=type(meta).__name__ == "ScalarMetadata")

  def _read_format(self) -> dict[str, bool]:
    try:
      with open(os.fspath(self.path / _TREE_METADATA_FILE)) as f:
        meta = json.load(f)
    except (OSError, ValueError):
      meta = {}
    use_ocdbt = meta.get("use_ocdbt")
    if use_ocdbt is None:
      use_ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(self.path)
    return {"use_ocdbt": bool(use_ocdbt), "use_zarr3": bool(meta.get("use_zarr3") or False)}

  def signature(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    return {leaf.path: (leaf.shape, leaf.dtype) for leaf in self.leaves}

  def open(self, leaf: LeafInfo) -> ts.Future:
    """Starts opening a leaf's TensorStore (once; cached until `release`): a future whose
    `.result()` is the store. Opening reads the leaf's zarr metadata, so the streaming averager
    opens the next leaf's stores while it still works on this one."""
    future = self._open.get(leaf.name)
    if future is None:
      info = ocp.type_handlers.ParamInfo(
          name=leaf.name, parent_dir=epath.Path(self.path), use_zarr3=self._format["use_zarr3"],
          is_ocdbt_checkpoint=self._format["use_ocdbt"], ts_context=self._context)
      spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self._format["use_ocdbt"])
      future = self._open[leaf.name] = ts.open(spec, open=True, context=self._context)
    return future

  def read(self, leaf: LeafInfo, band: tuple[int, int] | None = None, *,
           out: np.ndarray | None = None) -> "ReadFuture":
    """Starts reading a leaf (or rows [start, stop) of it) in TensorStore's threads;
    `.result()` is a numpy array (or raises ValueError from TensorStore).

    With `out` (a writable C-contiguous array of the band's shape and the leaf's dtype) the
    values are decoded straight into it and `.result()` returns it: a caller that reuses its
    buffers saves the allocation and the page faults of a fresh array per read (about half
    the CPU of reading an uncompressed checkpoint).
    """
    return ReadFuture(self, leaf, band, out)

  def read_now(self, leaf: LeafInfo, band: tuple[int, int] | None = None) -> np.ndarray:
    try:
      return self.read(leaf, band).result()
    except ValueError as e:
      raise ckpt_lib.CheckpointError(
          f"cannot read {leaf.path} from checkpoint {self.arg}: {e}; the checkpoint is "
          "incomplete or corrupt") from e

  def release(self, leaf: LeafInfo) -> None:
    """Drops the open handle of a leaf that is done (handles are opened lazily)."""
    self._open.pop(leaf.name, None)

  def disk_bytes(self) -> int:
    """Bytes of the checkpoint's files (what a `cat` of the checkpoint reads)."""
    total = 0
    for root, _, files in os.walk(os.fspath(self.path)):
      total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total

  def load(self) -> Any:
    """The whole tree as host numpy arrays (for methods that evaluate members)."""
    leaves = [self.read_now(leaf) for leaf in self.leaves]
    return jax.tree_util.tree_unflatten(self.treedef, [
        value.item() if leaf.python_scalar else value for leaf, value in zip(self.leaves,
                                                                               leaves)])


class ReadFuture:
  """A read in flight: `.result()` waits for it (on TensorStore's futures, no event loop)."""

  def __init__(self, reader: CheckpointReader, leaf: LeafInfo, band: tuple[int, int] | None,
               out: np.ndarray | None):
    self.out = out
    try:
      store = reader.open(leaf).result()
      view = store if band is None else store[band[0]:band[1]]
      if out is None:
        self._future, self._error = view.read(), None
      else:
        self._future, self._error = ts.array(out, copy=False, write=True).write(view), None
    except ValueError as e:  # opening failed: reported by result(), like a failed read
      self._future, self._error = None, e

  def result(self) -> np.ndarray:
    if self._error is not None:
      raise self._error
    value = self._future.result()
    return self.out if self.out is not None else value


class ContentHasher:
  """sha256 over a tree's leaves in flatten order: path, dtype, shape, then C-order bytes.

  Feed each leaf's bands in order with `update`; independent of chunking and sharding, and
  equal for a checkpoint and the in-memory tree it was saved from.
  """

  def __init__(self):
    self._hash = hashlib.new(HASH_NAME)

  def start_leaf(self, leaf: LeafInfo) -> None:
    self._hash.update(f"{leaf.path}|{leaf.dtype.name}|{leaf.shape}\n".encode())

  def update(self, values: np.ndarray) -> None:
    # As raw bytes (a uint8 view: bfloat16 has no buffer-protocol format).
    self._hash.update(np.ascontiguousarray(values).reshape(-1).view(np.uint8))

  def hexdigest(self) -> str:
    return f"{HASH_NAME}:{self._hash.hexdigest()}"


def iter_bands(reader: CheckpointReader, *, band_bytes: int = DEFAULT_BAND_BYTES
               ) -> Iterator[tuple[LeafInfo, tuple[int, int] | None, np.ndarray]]:
  """(leaf, band, values) over a whole checkpoint, one band in memory at a time."""
  for leaf in reader.leaves:
    for band in row_bands(leaf.shape, leaf.dtype, [leaf.chunk_rows], band_bytes):
      yield leaf, band, reader.read_now(leaf, band)
    reader.release(leaf)


def content_hash(path: str, *, band_bytes: int = DEFAULT_BAND_BYTES) -> str:
  """The content hash of a checkpoint, as the averager's manifest records it; check an
  average with `content_hash(OUTPUT) == manifest['output']['content_hash']`."""
  reader = CheckpointReader(path)
  hasher = ContentHasher()
  for leaf, band, values in iter_bands(reader, band_bytes=band_bytes):
    if band is None or band[0] == 0:
      hasher.start_leaf(leaf)
    hasher.update(values)
  return hasher.hexdigest()
