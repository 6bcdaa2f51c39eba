"""The averager's refusals that look at trees and values (shared by both engines).

Where it sits: run on the inputs' metadata before any array is read (same tree, head present),
and on every band of every leaf as it is read (finite values). Each error names the input, the
leaf and the fix, so a sweep that produced one bad member is easy to repair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from warm_jax.core.checkpoints import CheckpointError

DEFAULT_HEAD = "reward_head"


class MergeInputError(CheckpointError):
  """The inputs cannot be merged: mismatched trees, duplicates, a missing head, NaN/inf."""


# {leaf path: (shape, dtype)} -- what a tree is, for these checks.
TreeSignature = Mapping[str, tuple[tuple[int, ...], np.dtype]]


def check_same_tree(signatures: Sequence[tuple[str, TreeSignature]]) -> None:
  """Refuses unless every (label, signature) equals the first; names the first differing path.

  The first differing path is the first, in sorted order, that is missing from one tree or
  differs in shape or dtype.
  """
  ref_label, ref = signatures[0]
  for label, other in signatures[1:]:
    for path in sorted(set(ref) | set(other)):
      if path not in other:
        shape, dtype = ref[path]
        raise MergeInputError(
            f"checkpoint {label} has no {path} but {ref_label} has one of shape {shape} "
            f"({dtype}): all members must share one architecture")
      if path not in ref:
        shape, dtype = other[path]
        raise MergeInputError(
            f"checkpoint {label} has {path} of shape {shape} ({dtype}) but {ref_label} has no "
            f"such leaf: all members must share one architecture")
      (s1, d1), (s2, d2) = ref[path], other[path]
      if tuple(s1) != tuple(s2):
        raise MergeInputError(
            f"checkpoint {label} has {path} of shape {tuple(s2)} but {ref_label} has "
            f"{tuple(s1)}: all members must share one architecture")
      if np.dtype(d1) != np.dtype(d2):
        raise MergeInputError(
            f"checkpoint {label} has {path} of dtype {np.dtype(d2).name} but {ref_label} has "
            f"{np.dtype(d1).name}: all members must store their weights in one dtype")


def head_paths(paths: Sequence[str], head: str) -> list[str]:
  """The leaf paths under a node named `head` (e.g. reward_head/kernel, reward_head/bias)."""
  return [p for p in paths if head in p.split("/")]


def check_head(label: str, paths: Sequence[str], head: str | None) -> list[str]:
  """Refuses a tree without `head` leaves (unless head is None); returns them."""
  if head is None:
    return []
  found = head_paths(paths, head)
  if not found:
    raise MergeInputError(
        f"checkpoint {label} has no {head} leaves, so its average would not be a reward model "
        f"(a WARM average must carry the reward head). If these models have no {head} (e.g. "
        "WARP policies), pass --head none; if the head has another name, pass --head NAME")
  return found


def check_merged_head(expected: Sequence[str], merged_paths: Sequence[str], head: str | None):
  """The merged tree must carry every head leaf the inputs had (mergekit's lost-head bug)."""
  missing = sorted(set(expected) - set(merged_paths))
  if missing:
    raise MergeInputError(f"the merged tree lost head leaf {missing[0]} (head {head!r}); "
                          "nothing was written. This is a bug in the merge method: report it")


def is_float(dtype) -> bool:
  """Floating point, bfloat16 and friends included (numpy alone says bfloat16 is not)."""
  return bool(jnp.issubdtype(dtype, jnp.inexact))


def check_finite(label: str, path: str, values, *, xp=np) -> None:
  """Refuses a leaf (or band of one) with NaN or inf, naming the input and the leaf."""
  if is_float(values.dtype) and not bool(xp.isfinite(values).all()):
    bad = int(values.size - int(xp.isfinite(values).sum()))
    raise MergeInputError(
        f"checkpoint {label} has {bad} non-finite (NaN/inf) values in {path}: a diverged run "
        "cannot be averaged; drop it from the inputs or use an earlier checkpoint of it")
