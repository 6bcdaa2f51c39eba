"""Safetensors files of a Hugging Face model dir: read one tensor at a time, write in shards.

Where it sits: under `importer` (read) and `exporter` (write). A model dir holds either
`model.safetensors` or shards listed by `model.safetensors.index.json` ({"weight_map": {tensor
name: file}}). `SafetensorsReader` lists every tensor's shape and dtype from the file headers
(no data read) and then reads single tensors through `safe_open`, so a conversion never holds
more than the tensor at hand besides its output (nor keeps the files' pages mapped).
`write_safetensors` writes shards of at most `max_shard_bytes` (one in memory at a time) and the
index when there is more than one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy: safetensors' numpy reads need it)
import numpy as np

from warm_jax.hf.errors import ConversionError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Floating dtypes a checkpoint's weights may come in; each is widened to float32 exactly.
FLOAT_DTYPES = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16}
EXPORT_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _safe_open(path: str):
  try:
    from safetensors import safe_open
  except ImportError as e:  # pragma: no cover - the hf extra is missing
    raise ConversionError("reading safetensors needs the `safetensors` package: pip install "
                          "-e '.[hf]'") from e
  try:
    return safe_open(path, framework="numpy")
  except Exception as e:  # safetensors raises its own SafetensorError (not exported)
    raise ConversionError(f"{path} is not a readable safetensors file ({e}); re-download or "
                          "re-save the model") from e


class SafetensorsReader:
  """Every tensor of a model dir's safetensors files, read lazily one at a time.

  Attributes:
    model_dir: the directory.
    tensors: {name: (file, shape, safetensors dtype string)} from the headers.
  """

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    files, weight_map = self._files()
    self.tensors: dict[str, tuple[str, tuple[int, ...], str]] = {}
    for file in files:
      with _safe_open(os.path.join(model_dir, file)) as f:
        for name in f.keys():
          if name in self.tensors:
            raise ConversionError(f"tensor {name} is stored twice ({self.tensors[name][0]} and "
                                  f"{file}) in {model_dir}; the checkpoint is inconsistent")
          piece = f.get_slice(name)
          self.tensors[name] = (file, tuple(int(d) for d in piece.get_shape()),
                                str(piece.get_dtype()))
    for name, file in (weight_map or {}).items():
      if name not in self.tensors or self.tensors[name][0] != file:
        raise ConversionError(f"{INDEX_FILE} in {model_dir} puts tensor {name} in {file}, but "
                              "that file does not hold it; the download is incomplete")

  def _files(self) -> tuple[list[str], dict[str, str] | None]:
    index = os.path.join(self.model_dir, INDEX_FILE)
    if os.path.exists(index):
      try:
        with open(index) as f:
          weight_map = json.load(f)["weight_map"]
      except (ValueError, KeyError) as e:
        raise ConversionError(f"{index} is not a safetensors index (no weight_map): {e}") from e
      files = sorted(set(weight_map.values()))
      for file in files:
        if not os.path.exists(os.path.join(self.model_dir, file)):
          raise ConversionError(f"{index} lists shard {file}, which is not in {self.model_dir}; "
                                "the download is incomplete")
      return files, weight_map
    if os.path.exists(os.path.join(self.model_dir, SINGLE_FILE)):
      return [SINGLE_FILE], None
    present = sorted(os.listdir(self.model_dir)) if os.path.isdir(self.model_dir) else []
    found = [f for f in present if f.endswith(".safetensors")]
    if len(found) == 1:
      return found, None
    hint = (" (it has PyTorch .bin weights: re-save them with "
            "model.save_pretrained(dir, safe_serialization=True))"
            if any(f.endswith(".bin") for f in present) else "")
    raise ConversionError(f"{self.model_dir} has no {SINGLE_FILE} or {INDEX_FILE}{hint}; "
                          f"files there: {present[:10]}")

  def names(self) -> list[str]:
    """Tensor names in storage order (file by file), which is the order to read them in."""
    return list(self.tensors)

  def read(self, name: str, *, expected_shape: Sequence[int] | None = None) -> np.ndarray:
    """One tensor as float32, after checking its dtype, shape and finiteness."""
    file, shape, dtype = self.tensors[name]
    if dtype not in FLOAT_DTYPES:
      raise ConversionError(
          f"tensor {name} ({file}) has dtype {dtype}; only {sorted(FLOAT_DTYPES)} weights can be "
          "converted (a quantized checkpoint must be dequantized first)")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
      raise ConversionError(
          f"tensor {name} ({file}) has shape {shape} but config.json implies "
          f"{tuple(expected_shape)}; config.json and the weights disagree")
    # Opened per tensor: safe_open memory-maps the file, and every page read stays resident
    # (counted in RSS) until the map is closed, which for one open handle would be a second
    # copy of the model by the end. Re-opening only re-reads the JSON header.
    with _safe_open(os.path.join(self.model_dir, file)) as handle:
      array = np.asarray(handle.get_tensor(name), dtype=np.float32)
    if not np.isfinite(array).all():
      raise ConversionError(f"tensor {name} ({file}) holds non-finite values; the checkpoint "
                            "is corrupt")
    return array

  def close(self) -> None:
    """Nothing stays open between reads (kept for callers that close readers)."""


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_bytes: int | None
                ) -> list[list[str]]:
  """Greedy shards of tensor names in order, each at most max_shard_bytes (a larger tensor
  gets a shard of its own); one shard when max_shard_bytes is None."""
  shards: list[list[str]] = [[]]
  used = 0
  for name, nbytes in sizes:
    if max_shard_bytes is not None and shards[-1] and used + nbytes > max_shard_bytes:
      shards.append([])
      used = 0
    shards[-1].append(name)
    used += nbytes
  return shards


def write_safetensors(out_dir: str, *, sizes: Sequence[tuple[str, int]],
                      produce: Callable[[Sequence[str]], Iterator[tuple[str, np.ndarray]]],
                      max_shard_bytes: int | None) -> list[str]:
  """Writes the tensors `produce(names)` yields, shard by shard; returns the file names.

  Args:
    sizes: (tensor name, bytes) in write order; decides the sharding before anything is made.
    produce: yields (name, array) for the names of one shard; called once per shard.
  """
  from safetensors.numpy import save_file
  shards = plan_shards(sizes, max_shard_bytes)
  total = len(shards)
  files, weight_map = [], {}
  for k, names in enumerate(shards):
    file = SINGLE_FILE if total == 1 else f"model-{k + 1:05d}-of-{total:05d}.safetensors"
    tensors = dict(produce(names))
    if list(tensors) != list(names):
      raise AssertionError(f"produced {list(tensors)[:3]}... for shard {names[:3]}...")
    save_file(tensors, os.path.join(out_dir, file), metadata={"format": "pt"})
    del tensors
    files.append(file)
    weight_map.update({name: file for name in names})
  if total > 1:
    index = {"metadata": {"total_size": int(sum(n for _, n in sizes))},
             "weight_map": weight_map}
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
      json.dump(index, f, indent=2)
  return files


def nbytes(shape: Sequence[int], dtype) -> int:
  return math.prod(shape) * np.dtype(dtype).itemsize
