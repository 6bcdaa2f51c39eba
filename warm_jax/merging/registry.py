"""What a merge method is, and the registry that finds one by name (mergekit style).

Where it sits: between the M reward-model runs and everything that uses their average. A merge
method declares its parameters (global ones such as `lam`, per-model ones such as `weights`),
how many members it takes and whether it needs the shared init; given those values it returns a
`MergePlan`. The plan is executed one leaf at a time by either engine:

  * `warm_jax.merging.streaming.average_checkpoints` -- from orbax checkpoints on disk, streaming
    (peak memory about one model, whatever M);
  * `warm_jax.merging.in_memory.merge_params` -- from trees already in memory (LMC curves at
    many lambdas, greedy soups), numpy or jax arrays.

Two kinds of plan cover every method: a `LinearPlan` (a convex combination of the members and
the init, which the streaming engine computes in bands of rows as a running weighted mean) and a
`LeafMerge` (a non-linear per-leaf rule such as SLERP, which needs whole leaves).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

# Coefficients of a convex combination may differ from a sum of 1 by float rounding only.
COEFFICIENT_SUM_TOLERANCE = 1e-9


class MergeConfigError(ValueError):
  """A merge method was asked for with missing, unknown or out-of-range parameters."""


@dataclasses.dataclass(frozen=True)
class MethodParam:
  """One parameter a merge method accepts.

  Attributes:
    name: the keyword (`lam`, `eta`, `weights`, ...), also the CLI flag `--NAME`.
    doc: one line for `--help` and docs/averaging.md.
    per_model: one value per member (a sequence as long as the inputs) instead of one value.
    required: the method cannot run without it.
  """

  name: str
  doc: str
  per_model: bool = False
  required: bool = False


@dataclasses.dataclass(frozen=True)
class LinearPlan:
  """theta = init_coefficient * theta_init + sum_i coefficients[i] * theta_i.

  Always a convex combination (non-negative coefficients summing to 1), so a running weighted
  mean in float32 computes it without overflow and the result stays in the members' hull.
  """

  coefficients: tuple[float, ...]
  init_coefficient: float = 0.0

  def __post_init__(self):
    everything = (*self.coefficients, self.init_coefficient)
    if any(not math.isfinite(c) or c < 0 for c in everything):
      raise MergeConfigError(f"LinearPlan coefficients {everything} must be finite and >= 0")
    if abs(sum(everything) - 1.0) > COEFFICIENT_SUM_TOLERANCE:
      raise MergeConfigError(f"LinearPlan coefficients {everything} must sum to 1")


class LeafMerge(abc.ABC):
  """A non-linear merge rule applied to one whole leaf at a time."""

  @abc.abstractmethod
  def merge_leaf(self, *, member: Callable[[int], Any], num_members: int, init: Any,
                 xp: Any) -> Any:
    """The merged leaf, in the accumulation dtype.

    Args:
      member: member(i) returns member i's leaf in the accumulation dtype; call it once per
        member, in increasing i (the streaming engine reads, hashes and checks it on the call).
      num_members: M.
      init: theta_init's leaf in the accumulation dtype (None if the method needs no init).
      xp: the array namespace of the leaves (numpy or jax.numpy).
    """


@dataclasses.dataclass(frozen=True)
class MergePlan:
  """What to compute, plus a JSON-able record of how it was decided (for the manifest).

  Exactly one of `linear` and `leaf_merge` is set.
  """

  method: str
  params: Mapping[str, Any]
  linear: LinearPlan | None = None
  leaf_merge: LeafMerge | None = None
  selection: Mapping[str, Any] | None = None

  def __post_init__(self):
    if (self.linear is None) == (self.leaf_merge is None):
      raise MergeConfigError(f"MergePlan for {self.method}: set exactly one of linear and "
                             "leaf_merge")


class MergeMethod(abc.ABC):
  """A merge method: declared parameters plus `plan`.

  Subclasses set the class attributes and implement `plan`, which receives only the declared
  parameters that the caller set (never None) and must validate their values.
  """

  name: ClassVar[str]
  summary: ClassVar[str]
  params: ClassVar[tuple[MethodParam, ...]] = ()
  needs_init: ClassVar[bool] = False
  # True when `plan` must read and evaluate the members (greedy); such a plan is made after the
  # inputs' trees are checked, every other plan before anything is read.
  evaluates_members: ClassVar[bool] = False
  min_members: ClassVar[int] = 1
  max_members: ClassVar[int | None] = None

  @abc.abstractmethod
  def plan(self, *, num_members: int, load_member: Callable[[int], Any] | None,
           **params: Any) -> MergePlan:
    """The plan for `num_members` members; `load_member(i)` gives member i's whole tree (only
    methods that must evaluate members, such as greedy, call it)."""

  def check(self, *, num_members: int, has_init: bool, **params: Any) -> dict[str, Any]:
    """Checks arity, init and parameter names without reading anything; returns the set
    parameters (None means unset)."""
    given = {k: v for k, v in params.items() if v is not None}
    known = {p.name for p in self.params}
    unknown = sorted(set(given) - known)
    if unknown:
      accepted = ", ".join(sorted(known)) or "none"
      raise MergeConfigError(
          f"method {self.name!r} takes no parameter {unknown[0]!r} (its parameters: "
          f"{accepted}); drop it or pick a method that uses it (see `--help`)")
    if num_members < self.min_members or (self.max_members is not None
                                          and num_members > self.max_members):
      wanted = (f"exactly {self.min_members}" if self.max_members == self.min_members
                else f"at least {self.min_members}" if self.max_members is None
                else f"{self.min_members} to {self.max_members}")
      raise MergeConfigError(f"method {self.name!r} takes {wanted} inputs, got {num_members}")
    if self.needs_init and not has_init:
      raise MergeConfigError(f"method {self.name!r} needs the shared init the members were "
                             "fine-tuned from: pass --init DIR (init=...)")
    if not self.needs_init and has_init:
      raise MergeConfigError(f"method {self.name!r} does not use an init; drop --init (the "
                             "methods that do: slerp, liti)")
    for p in self.params:
      if p.required and p.name not in given:
        raise MergeConfigError(f"method {self.name!r} needs {p.name}: {p.doc}")
      if p.per_model and p.name in given and len(given[p.name]) != num_members:
        raise MergeConfigError(f"{len(given[p.name])} {p.name} for {num_members} inputs: give "
                               f"one {p.name.rstrip('s')} per input, in the order of the inputs")
    return given

  def resolve(self, *, num_members: int, has_init: bool,
              load_member: Callable[[int], Any] | None = None, **params: Any) -> MergePlan:
    """`check`, then `plan` with the set parameters."""
    given = self.check(num_members=num_members, has_init=has_init, **params)
    return self.plan(num_members=num_members, load_member=load_member, **given)


_METHODS: dict[str, MergeMethod] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
  """Class decorator: adds a method to the registry under `cls.name`."""
  if cls.name in _METHODS:
    raise ValueError(f"merge method {cls.name!r} is registered twice")
  _METHODS[cls.name] = cls()
  return cls


def get_method(name: str) -> MergeMethod:
  if name not in _METHODS:
    raise MergeConfigError(f"unknown merge method {name!r}; choose one of "
                           f"{', '.join(sorted(_METHODS))}")
  return _METHODS[name]


def method_names() -> list[str]:
  return sorted(_METHODS)


def check_unit_interval(name: str, value: float) -> float:
  """Shared check of a lambda/eta-like parameter."""
  value = float(value)
  if not 0.0 <= value <= 1.0:
    raise MergeConfigError(f"{name}={value} is outside [0, 1]: {name} interpolates between two "
                           "points (extrapolation is not supported)")
  return value


def check_weights(weights: Sequence[float]) -> tuple[float, ...]:
  """Non-negative, finite, not all zero; returns them normalised to sum to 1."""
  weights = tuple(float(w) for w in weights)
  for i, w in enumerate(weights):
    if not math.isfinite(w) or w < 0:
      raise MergeConfigError(f"weight {i} is {w}: weights must be finite and >= 0 (a negative "
                             "weight extrapolates away from a member)")
  total = sum(weights)
  if total <= 0:
    raise MergeConfigError(f"weights {list(weights)} are all zero: give at least one member a "
                           "positive weight")
  return tuple(w / total for w in weights)
