"""`greedy`: the greedy soup of model soups / DiWA's "restricted" selection (docs/paper.md, fig 10).

Members are scored alone with a caller-supplied `score_fn(params) -> float` (higher is better:
e.g. RM pairwise accuracy on a validation split -- not the split that is reported) and ranked
best first. The soup starts as the best member; each next member is added when the uniform
mean of the soup plus that member scores at least as well as the soup (ties keep the member, as
in DiWA), else it is skipped for good. The result is the uniform mean of the chosen members; the
plan records every score and decision for the manifest.

Memory: one member, the soup's running sum and one candidate soup (about three models); the
members are loaded one at a time, twice each, by `load_member`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from warm_jax.merging.registry import (LinearPlan, MergeConfigError, MergeMethod, MergePlan,
                                       MethodParam, register)


def _xp(x):
  import jax.numpy as jnp
  return jnp if isinstance(x, jax.Array) else np


def _score(score_fn, params, what: str) -> float:
  value = float(score_fn(params))
  if not math.isfinite(value):
    raise MergeConfigError(f"score_fn returned {value} for {what}: it must return a finite "
                           "validation score (higher is better)")
  return value


def greedy_selection(*, num_members: int, load_member: Callable[[int], Any],
                     score_fn: Callable[[Any], float], accumulate_dtype=np.float32
                     ) -> dict[str, Any]:
  """Runs the greedy soup; returns {'chosen', 'ranking', 'member_scores', 'steps',
  'soup_score'} (member indices refer to the order of the inputs)."""
  member_scores = [_score(score_fn, load_member(i), f"member {i}") for i in range(num_members)]
  ranking = sorted(range(num_members), key=lambda i: (-member_scores[i], i))
  best = ranking[0]
  soup_sum = jax.tree_util.tree_map(lambda x: _xp(x).asarray(x, accumulate_dtype),
                                    load_member(best))
  chosen, soup_score = [best], member_scores[best]
  steps = [{"member": best, "soup_score": soup_score, "accepted": True}]
  for i in ranking[1:]:
    member = load_member(i)
    n = len(chosen) + 1
    candidate = jax.tree_util.tree_map(
        lambda s, x: ((s + x.astype(accumulate_dtype)) / n).astype(x.dtype), soup_sum, member)
    score = _score(score_fn, candidate, f"the soup {chosen + [i]}")
    del candidate
    accepted = score >= soup_score
    steps.append({"member": i, "soup_score": score, "accepted": accepted})
    logging.info("greedy soup: member %d (alone %.6g) -> soup %.6g vs %.6g: %s", i,
                 member_scores[i], score, soup_score, "added" if accepted else "skipped")
    if accepted:
      soup_sum = jax.tree_util.tree_map(lambda s, x: s + x.astype(accumulate_dtype), soup_sum,
                                        member)
      chosen.append(i)
      soup_score = score
  return {"chosen": sorted(chosen), "ranking": ranking, "member_scores": member_scores,
          "steps": steps, "soup_score": soup_score}


@register
class Greedy(MergeMethod):
  name = "greedy"
  summary = ("DiWA / model-soups greedy selection: add members best-first while the soup's "
             "validation score does not drop; uniform mean of the chosen")
  params = (MethodParam("score_fn", "callable params -> validation score (higher is better); "
                                    "from Python or a gin reference (the command line "
                                    "alone cannot supply it)", required=True),)
  evaluates_members = True

  def plan(self, *, num_members, load_member=None, score_fn=None, **params):
    del params
    if not callable(score_fn):
      raise MergeConfigError(
          "method 'greedy' needs score_fn, a callable params -> validation score: bind "
          "average_checkpoints.score_fn in gin or pass it from Python (average_checkpoints / "
          "merge_params); the command line alone cannot supply it")
    if load_member is None:
      raise MergeConfigError("method 'greedy' needs load_member to evaluate the members")
    record = greedy_selection(num_members=num_members, load_member=load_member,
                              score_fn=score_fn)
    share = 1.0 / len(record["chosen"])
    coefficients = tuple(share if i in record["chosen"] else 0.0 for i in range(num_members))
    return MergePlan(method=self.name, params={}, linear=LinearPlan(coefficients=coefficients),
                     selection=record)
