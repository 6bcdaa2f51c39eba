"""Which reward model a policy is selected or trained against: a member, WARM M, or ENS M.

Where it sits: best-of-N picks candidates with several of these (one sampling pass, many
selectors), RL optimises one of them. A source is named and built from a spec that gin can
write literally:

  '/runs/members/member_3'                       one RM (a member dir, or a WARM checkpoint
                                                 written by `python -m warm_jax.average`)
  ['/runs/members/member_0', '/runs/.../member_1']   ENS: the mean of the members' rewards
                                                 (M forward passes, docs/paper.md's baseline)
  {'ens': [...]}                                 the same, explicitly
  {'warm': [...]}                                WARM: the uniform weight average, merged in
                                                 memory once (one forward pass)
  {'wco': [...]}                                 Coste et al.'s worst-case optimisation: the
                                                 min over the members' rewards
  {'uwo': [...], 'lambda': 0.5}                  Coste et al.'s uncertainty-weighted
                                                 optimisation: mean - lambda * variance over
                                                 the members (Coste: 0.5 best-of-N, 0.1 RL)

Paths are anything `checkpoints.load_params` reads (model dir -> latest step). ENS, WCO and UWO
are prediction ensembles (M forward passes, `combine_member_rewards` of the members' rewards);
WARM is one model. The variance is the population one (ddof 0) over the M members' rewards of
each sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib

COMBINES = ("ens", "warm", "wco", "uwo")
PREDICTION_ENSEMBLES = ("ens", "wco", "uwo")  # combine the members' rewards (M passes)


def combine_member_rewards(rewards: Any, combine: str, uwo_lambda: float = 0.0) -> Any:
  """[M, n] members' rewards -> [n]: mean ('ens', and 'warm', whose one merged tree gives
  M = 1), min ('wco') or mean - uwo_lambda * population variance ('uwo'). numpy or jax."""
  xp = jnp if isinstance(rewards, jax.Array) else np
  if combine in ("ens", "warm"):
    return xp.mean(rewards, axis=0)
  if combine == "wco":
    return xp.min(rewards, axis=0)
  if combine == "uwo":
    return xp.mean(rewards, axis=0) - uwo_lambda * xp.var(rewards, axis=0)
  raise ValueError(f"combine={combine!r}: use one of {COMBINES}")


@dataclasses.dataclass(frozen=True)
class RewardSource:
  """A named reward from the checkpoints `paths`: the mean of their rewards (ens), the reward
  of their weight average (warm), the min of their rewards (wco) or their mean - uwo_lambda *
  variance (uwo). A single path is that RM under every combine.
  """

  name: str
  paths: tuple[str, ...]
  combine: str = "ens"
  uwo_lambda: float | None = None

  def __post_init__(self):
    if not self.paths:
      raise ValueError(f"reward source {self.name!r} has no checkpoint paths")
    if self.combine not in COMBINES:
      raise ValueError(f"reward source {self.name!r}: combine={self.combine!r}, use one of "
                       f"{COMBINES}")
    if len(set(self.paths)) != len(self.paths):
      raise ValueError(f"reward source {self.name!r} lists a checkpoint twice ({self.paths}): "
                       "each member once")
    if self.combine == "uwo" and (self.uwo_lambda is None or not self.uwo_lambda >= 0):
      raise ValueError(f"reward source {self.name!r}: uwo needs 'lambda' >= 0, got "
                       f"{self.uwo_lambda!r}: write {{'uwo': [paths], 'lambda': 0.5}} (Coste et "
                       "al.: 0.5 for best-of-N, 0.1 for RL)")
    if self.combine != "uwo" and self.uwo_lambda is not None:
      raise ValueError(f"reward source {self.name!r}: 'lambda' belongs to 'uwo' only, not "
                       f"{self.combine!r}")

  def combine_rewards(self, rewards: Any) -> Any:
    """[M, n] rewards of the `load()` trees -> [n] (`combine_member_rewards`)."""
    return combine_member_rewards(rewards, self.combine, self.uwo_lambda or 0.0)

  def load(self) -> list[Any]:
    """The host params trees to score with (their rewards are combined by `combine_rewards`):
    one per member for ENS, WCO and UWO, one merged tree for WARM."""
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
    combines = [k for k in spec if k in COMBINES]
    extra = set(spec) - set(combines) - {"lambda"}
    if len(combines) != 1 or extra:
      raise ValueError(f"reward source {name!r}: a dict spec must have exactly one key of "
                       f"{COMBINES} mapping to a list of paths (and 'lambda' for 'uwo'); got "
                       f"{dict(spec)}")
    combine = combines[0]
    return RewardSource(name=name, paths=tuple(_paths(name, spec[combine])), combine=combine,
                        uwo_lambda=spec.get("lambda"))
  if isinstance(spec, Sequence):
    return RewardSource(name=name, paths=tuple(_paths(name, spec)))
  raise ValueError(f"reward source {name!r}: spec {spec!r} is not a path, a list of paths or "
                   "{'ens'|'warm'|'wco'|'uwo': [paths]}")


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
                      mask: np.ndarray, response_mask: np.ndarray | None = None, *,
                      source: RewardSource | None = None) -> np.ndarray:
  """[n] reward of the (placed) trees on [n, L] sequences: combined by `source`
  (`RewardSource.combine_rewards`), or their mean (ENS when several) without one;
  response_mask [n, L] marks the response tokens (the log-prob readout reads them)."""
  rewards = np.stack([scorer.rewards(tree, tokens, mask, response_mask) for tree in trees])
  return source.combine_rewards(rewards) if source is not None else rewards.mean(axis=0)
