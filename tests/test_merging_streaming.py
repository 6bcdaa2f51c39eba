"""The streaming averager's fast paths against independent numpy computations: reads decoded
into reused band buffers, the accumulator that is the output band (or a reused float32/float64
array), c * sum_i x_i for equal coefficients, the once-per-band finiteness check (and its
re-read to name the culprit), and the uncompressed checkpoints it and `save_params` write."""

import os

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from warm_jax.core import checkpoints as ckpt
from warm_jax import merging

ROWS = 48


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {"decoder": {"kernel": rng.standard_normal((ROWS, 5)).astype(np.float32),
                      "embed": rng.standard_normal((ROWS, 3)).astype(ml_dtypes.bfloat16),
                      "wide": rng.standard_normal((ROWS, 2)).astype(np.float64),
                      "bias": rng.standard_normal(5).astype(np.float32)},
          "reward_head": {"kernel": rng.standard_normal((5, 1)).astype(np.float32)},
          "step": np.int32(3)}


def _members(tmp_path, n, *, compress=None):
  trees = [_tree(i) for i in range(n)]
  paths = []
  for i, tree in enumerate(trees):
    paths.append(str(tmp_path / f"rm_{i}"))
    ckpt.save_params(tree, paths[-1], compress=compress if compress is not None else i % 2 == 0)
  return trees, paths


def _numpy_average(trees, weights, accumulate=np.float64):
  """sum_i w_i x_i / sum_i w_i per leaf in float64 (numpy only), cast back."""
  w = np.asarray(weights, np.float64) / np.sum(weights)
  out = {}
  for name, first in ckpt.flatten_params(trees[0]).items():
    xs = [np.asarray(ckpt.flatten_params(t)[name]) for t in trees]
    if not np.issubdtype(xs[0].dtype, np.floating) and xs[0].dtype != ml_dtypes.bfloat16:
      out[name] = xs[0]
      continue
    out[name] = np.einsum("i,i...->...", w, np.stack([x.astype(accumulate) for x in xs])
                          ).astype(xs[0].dtype)
  return out


def _check(out_dir, expected):
  got = ckpt.flatten_params(ckpt.load_params(os.path.abspath(out_dir)))
  assert got.keys() == expected.keys()
  for name, e in expected.items():
    g = np.asarray(got[name])
    assert g.dtype == e.dtype and g.shape == e.shape, name
    tol = 1e-2 if e.dtype == ml_dtypes.bfloat16 else 1e-6
    np.testing.assert_allclose(g.astype(np.float64), np.asarray(e).astype(np.float64),
                               rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("method, kwargs, weights", [
    ("uniform", {}, [1] * 5),                            # c * sum x_i
    ("weighted", {"weights": [1, 2, 0, 3, 4]}, [1, 2, 0, 3, 4]),  # multiply-add, one skipped
])
@pytest.mark.parametrize("read_ahead, accumulate", [(0, "float32"), (3, "float64")])
def test_banded_pooled_reads_equal_numpy(tmp_path, method, kwargs, weights, read_ahead,
                                         accumulate):
  # 5 members (compressed and not, alternately), every leaf in bands of a few rows, so each
  # pooled buffer is reused many times; bfloat16 and float64 leaves use the separate
  # accumulator, float32 ones accumulate in the output band.
  trees, paths = _members(tmp_path, 5)
  out = str(tmp_path / "avg")
  manifest = merging.average_checkpoints(
      inputs=paths, output=out, method=method, **kwargs,
      stream=merging.StreamConfig(band_bytes=64, read_ahead=read_ahead,
                                  accumulate_dtype=accumulate, verify_output=True))
  _check(out, _numpy_average(trees, weights))
  # The hashes are those of the inputs read whole, one at a time (nothing mixed up between
  # reused buffers), and the output's is that of the checkpoint on disk.
  assert [i["content_hash"] for i in manifest["inputs"]] == [
      merging.content_hash(p) for p in paths]
  assert manifest["output"]["content_hash"] == merging.content_hash(out)
  whole = merging.average_checkpoints(inputs=paths, output=str(tmp_path / "whole"),
                                      method=method, **kwargs,
                                      stream=merging.StreamConfig(accumulate_dtype=accumulate))
  assert whole["output"]["content_hash"] == manifest["output"]["content_hash"]


@pytest.mark.parametrize("bad, value, weights, named", [
    (3, np.nan, None, 3),            # in a later band of a banded leaf
    (2, np.inf, [1, 1, 0, 1], 2),    # a member with weight 0 is checked on its own
    (1, -np.inf, None, 1),           # +inf in member 3 as well: the first is named
])
def test_non_finite_inputs_are_refused_by_name(tmp_path, bad, value, weights, named):
  trees, paths = _members(tmp_path, 4)
  trees[bad]["decoder"]["kernel"][ROWS - 2, 1] = value
  if value == -np.inf:
    trees[3]["decoder"]["kernel"][ROWS - 2, 1] = np.inf  # the sum of the two is NaN
  bad_path = str(tmp_path / "bad")
  ckpt.save_params(trees[bad], bad_path)
  paths[bad] = bad_path
  if value == -np.inf:
    ckpt.save_params(trees[3], str(tmp_path / "bad3"))
    paths[3] = str(tmp_path / "bad3")
  out = str(tmp_path / "avg")
  kwargs = {"method": "weighted", "weights": weights} if weights else {}
  with pytest.raises(merging.MergeInputError,
                     match=f"checkpoint {paths[named]} has 1 non-finite .* decoder/kernel"):
    merging.average_checkpoints(inputs=paths, output=out, **kwargs,
                                stream=merging.StreamConfig(band_bytes=64))
  assert not os.path.exists(out)
  assert not [f for f in os.listdir(tmp_path) if f.startswith("avg.")]


def _compressor(path, leaf="decoder/kernel"):
  reader = merging.CheckpointReader(path)
  spec = reader.open(reader.leaves_by_path[leaf]).result().spec().to_json()
  return spec["metadata"]["compressor"]


def test_uncompressed_checkpoints_restore_with_orbax_and_old_ones_still_average(tmp_path):
  tree = _tree(7)
  ckpt.save_params(tree, str(tmp_path / "plain"))  # the default: COMPRESS_CHECKPOINTS
  ckpt.save_params(tree, str(tmp_path / "zstd"), compress=True)  # as before the default
  assert not ckpt.COMPRESS_CHECKPOINTS and _compressor(str(tmp_path / "plain")) is None
  assert _compressor(str(tmp_path / "zstd"))["id"] == "zstd"
  for name in ("plain", "zstd"):
    restored = ckpt.flatten_params(ocp.StandardCheckpointer().restore(str(tmp_path / name)))
    for path, value in ckpt.flatten_params(tree).items():
      np.testing.assert_array_equal(np.asarray(restored[path]), np.asarray(value))
  # Same contents whatever the codec, and a mix of both averages; the output is uncompressed
  # and orbax restores it.
  assert merging.content_hash(str(tmp_path / "plain")) == merging.content_hash(
      str(tmp_path / "zstd"))
  ckpt.save_params(_tree(8), str(tmp_path / "other"), compress=True)
  out = str(tmp_path / "avg")
  merging.average_checkpoints(inputs=[str(tmp_path / "zstd"), str(tmp_path / "other")],
                              output=out)
  assert _compressor(out) is None
  expected = _numpy_average([tree, _tree(8)], [1, 1])
  _check(out, expected)
  restored = ckpt.flatten_params(ocp.StandardCheckpointer().restore(out))
  np.testing.assert_allclose(restored["decoder/kernel"], expected["decoder/kernel"], rtol=1e-6,
                             atol=1e-6)


def test_train_checkpointer_writes_uncompressed_by_default(tmp_path):
  tree = _tree(1)
  for compress, name in ((None, "default"), (True, "zstd")):
    manager = ckpt.TrainCheckpointer(str(tmp_path / name), save_every=1, async_save=False,
                                     compress=compress)
    manager.save(1, tree, {"count": np.int32(0)}, force=True)
    manager.close()
    params = str(tmp_path / name / "checkpoints" / "1" / "params")
    assert (_compressor(params) is None) == (compress is None)
    restored = ckpt.flatten_params(ckpt.load_params(str(tmp_path / name)))
    np.testing.assert_array_equal(restored["decoder/kernel"], tree["decoder"]["kernel"])
