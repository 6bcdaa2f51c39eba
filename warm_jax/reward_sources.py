"""Which reward model a policy is selected or trained against: a member, WARM M, or ENS M.

Where it sits: best-of-N picks candidates with several of these (one sampling pass, many
selectors), RL optimises one of them. A source is named and built from a spec that gin can
write literally:

  '/runs/members/member_3'                       one RM (a member dir, or a WARM checkpoint
                                                 written by `python -m warm_jax.average`)
  ['/runs/members/member_0', '/runs/.../member_1']   ENS: the mean of the members' rewards
                                                 (M forward passes, PAPER.md's baseline)
  {'ens': [...]}                                 the same, explicitly
  {'warm': [...]}                                WARM: the uniform weight average, merged in
                                                 memory once (one forward pass)

Paths are anything `checkpoints.load_params` reads (model dir -> latest step).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from warm_jax import checkpoints as ckpt_lib

COMBINES = ("ens", "warm")


@dataclasses.dataclass(frozen=True)
class RewardSource:
  """A named reward: the mean reward of `paths` (ens) or the reward of their average (warm).

  A single path is the same under both combines.
  """

  name: str
  paths: tuple[str, ...]
  combine: str = "ens"

  def __post_init__(self):
    if not self.paths:
      raise ValueError(f"reward source {self.name!r} has no checkpoint paths")
    if self.combine not in COMBINES:
      raise ValueError(f"reward source {self.name!r}: combine={self.combine!r}, use one of "
                       f"{COMBINES}")
    if len(set(self.paths)) != len(self.paths):
      raise ValueError(f"reward source {self.name!r} lists a checkpoint twice ({self.paths}): "
                       "each member once")

  def load(self) -> list[Any]:
    """The host params trees to score with (their rewards are averaged): one per member for
    ENS, one merged tree for WARM."""
    trees = [ckpt_lib.load_params(p) for p in self.paths]
    if self.combine == "warm" and len(trees) > 1:
      from warm_jax.merging import merge_params
      return [merge_params("uniform", trees, head="reward_head")]
    return trees


def parse_reward_source(name: str, spec: Any) -> RewardSource:
  """One source from a gin-friendly spec (see the module docstring)."""
  if isinstance(spec, RewardSource):
    return spec
  if isinstance(spec, str):
    return RewardSource(name=name, paths=(spec,))
  if isinstance(spec, Mapping):
    if len(spec) != 1 or next(iter(spec)) not in COMBINES:
      raise ValueError(f"reward source {name!r}: a dict spec must have exactly one key, "
                       f"'ens' or 'warm', mapping to a list of paths; got {dict(spec)}")
    combine, paths = next(iter(spec.items()))
    return RewardSource(name=name, paths=tuple(_paths(name, paths)), combine=combine)
  if isinstance(spec, Sequence):
    return RewardSource(name=name, paths=tuple(_paths(name, spec)))
  raise ValueError(f"reward source {name!r}: spec {spec!r} is not a path, a list of paths or "
                   "{'ens'|'warm': [paths]}")


def _paths(name: str, paths: Any) -> list[str]:
  if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
    raise ValueError(f"reward source {name!r}: expected a list of checkpoint paths, got "
                     f"{paths!r}")
  return list(paths)


def parse_reward_sources(specs: Mapping[str, Any]) -> list[RewardSource]:
  """Named sources from {name: spec}; at least one."""
  if not specs:
    raise ValueError("no reward models given: bind e.g. REWARD_MODELS = "
                     "{'member_0': '/runs/members/member_0', 'warm_2': {'warm': [...]}}")
  return [parse_reward_source(str(name), spec) for name, spec in specs.items()]


def score_with_source(scorer: Any, trees: Sequence[Any], tokens: np.ndarray,
                      mask: np.ndarray, response_mask: np.ndarray | None = None) -> np.ndarray:
  """[n] mean reward of the (placed) trees on [n, L] sequences (ENS when several);
  response_mask [n, L] marks the response tokens (the log-prob readout reads them)."""
  return np.mean([scorer.rewards(tree, tokens, mask, response_mask) for tree in trees], axis=0)
