"""Batched, sharded reward scoring: rewards (and probe features) for many sequences.

Where it sits: everything that *uses* a reward model rather than training it goes through
`RewardScorer`: the linear probe (features of the SFT backbone), the RM evaluations (rewards of
chosen/rejected on each subset, for members, WARM and ENS), LMC curves (many interpolated
params through one compiled program), and best-of-N (rewards of N candidates per prompt).
Params are placed once on the partitioner's shardings; the last batch is padded and the padding
dropped, so any number of sequences can be scored with one compiled shape.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from warm_jax.core import flops as flops_lib
from warm_jax.models import RewardModel, TransformerConfig
from warm_jax.models.heads import check_response_window, init_inputs
from warm_jax.core.partitioning import Partitioner


class RewardScorer:
  """Scores [n, length] token arrays with a reward model's params.

  Args:
    model_config: the reward model's shape (dropout is never applied here).
    partitioner: mesh and rules for params and batches.
    batch_size: sequences per compiled call (a multiple of the partitioner's batch divisor).
  """

  def __init__(self, *, model_config: TransformerConfig, partitioner: Partitioner,
               batch_size: int = 64):
    if batch_size % partitioner.batch_divisor:
      raise ValueError(f"scoring batch_size {batch_size} is not divisible by the "
                       f"{partitioner.batch_divisor} batch devices")
    self.model = RewardModel(model_config)
    self.model_config = model_config
    self.partitioner, self.batch_size = partitioner, batch_size
    boxed = jax.eval_shape(lambda: self.model.init(jax.random.key(0),
                                                   *init_inputs(self.model)))
    self.param_shardings = partitioner.param_shardings(boxed["params"])
    self.abstract_params = nn.unbox(boxed["params"])
    batch_sharding = partitioner.batch_sharding(2)

    def rewards(params, tokens, mask, response_mask):
      with partitioner.activation_rules():
        return self.model.apply({"params": params}, tokens, mask, response_mask)

    def features(params, tokens, mask, response_mask):
      with partitioner.activation_rules():
        return self.model.apply({"params": params}, tokens, mask, response_mask,
                                method=RewardModel.features)

    out = partitioner.batch_sharding(1)
    inputs = (self.param_shardings, batch_sharding, batch_sharding, batch_sharding)
    self._rewards = jax.jit(rewards, in_shardings=inputs, out_shardings=out)
    self._features = jax.jit(features, in_shardings=inputs,
                             out_shardings=partitioner.batch_sharding(2))

  def check_params(self, params: Any, *, name: str) -> None:
    """Refuses params that do not fit this reward model (a checkpoint of another architecture:
    the first differing leaf is named) or that hold NaN/inf (a diverged run)."""
    from warm_jax.core import checkpoints as ckpt_lib
    expected = ckpt_lib.flatten_params(self.abstract_params)
    got = ckpt_lib.flatten_params(params)
    fix = ("the checkpoint comes from another architecture; use the model gin file it was "
           "trained with")
    for path in sorted(set(expected) | set(got)):
      if path not in got:
        raise ckpt_lib.CheckpointError(f"{name} has no leaf {path}, which the reward model "
                                       f"needs: {fix}")
      if path not in expected:
        raise ckpt_lib.CheckpointError(f"{name} has a leaf {path}, which the reward model "
                                       f"does not: {fix}")
      if tuple(np.shape(got[path])) != tuple(expected[path].shape):
        raise ckpt_lib.CheckpointError(
            f"{name} leaf {path} has shape {tuple(np.shape(got[path]))} but the reward model "
            f"expects {tuple(expected[path].shape)}: {fix}")
    for path, value in got.items():
      ckpt_lib.check_finite_leaf(name, path, value)

  def place(self, params: Any) -> Any:
    """Host or device params -> arrays on this scorer's shardings (do it once per model)."""
    return jax.tree_util.tree_map(lambda x, s: jax.device_put(np.asarray(x) if not isinstance(
        x, jax.Array) else x, s), params, self.param_shardings)

  def _response_mask(self, mask: np.ndarray, response_mask: np.ndarray | None) -> np.ndarray:
    if response_mask is not None:
      if np.shape(response_mask) != np.shape(mask):
        raise ValueError(f"response_mask has shape {np.shape(response_mask)} but mask has "
                         f"{np.shape(mask)}: give one response mask per token")
      if self.model_config.reads_logprobs:
        check_response_window(mask, response_mask, self.model_config.logprob_window,
                              name="the sequences to score")
      return np.asarray(response_mask)
    if self.model_config.reads_logprobs:
      raise ValueError("this reward model reads response log-probabilities "
                       "(TransformerConfig.reward_readout='hidden_logprob'): pass "
                       "response_mask (1 on the summary tokens and EOS); preference arrays of "
                       "a data dir built before response masks existed lack them: rebuild it")
    return np.zeros_like(mask)  # not read by the 'hidden' readout

  def _run(self, fn, params, tokens: np.ndarray, mask: np.ndarray,
           response_mask: np.ndarray | None) -> np.ndarray:
    """Calls `fn` once per distinct row (`distinct_rows`: the pairs of one post share their
    summaries: 26-45% of the rows of a whole on-policy subset and 18-28% of a 1,000-pair sample
    of one are repeats, world seed 0), over batches of rows
    sorted by where their real tokens end, each batch cut to the bucketed width of its longest
    row (`trimmed_width`). The model is causal and reads a row at its last real token (and the
    response tokens before it), so the columns after it cannot change the result: this only
    skips work (~30% of it on the synthetic pairs, whose sides are 60-125 of 128 tokens)."""
    if len(tokens) == 0:
      return np.zeros((0,), np.float32)
    response_mask = self._response_mask(mask, response_mask)
    first, inverse = distinct_rows(tokens, mask, response_mask)
    if len(first) < len(tokens):
      out = self._run_rows(fn, params, tokens[first], mask[first], response_mask[first])
      return out[inverse]
    return self._run_rows(fn, params, tokens, mask, response_mask)

  def _run_rows(self, fn, params, tokens: np.ndarray, mask: np.ndarray,
                response_mask: np.ndarray) -> np.ndarray:
    n = len(tokens)
    ends = real_token_ends(mask)
    order = np.argsort(ends, kind="stable")
    result = None
    with self.partitioner.mesh_context():
      for start in range(0, n, self.batch_size):
        rows = order[start:start + self.batch_size]
        width = trimmed_width(int(ends[rows].max()), tokens.shape[1])
        t, m, r = tokens[rows, :width], mask[rows, :width], response_mask[rows, :width]
        pad = self.batch_size - len(rows)
        if pad:
          t = np.concatenate([t, np.zeros((pad,) + t.shape[1:], t.dtype)])
          m = np.concatenate([m, np.ones((pad,) + m.shape[1:], m.dtype)])
          r = np.concatenate([r, np.zeros((pad,) + r.shape[1:], r.dtype)])
        batch = self.partitioner.shard_batch({"t": t, "m": m, "r": r}, self.batch_size)
        out = np.asarray(jax.device_get(fn(params, batch["t"], batch["m"], batch["r"])))
        flops_lib.count("score", self.batch_size * self.model_config.reward_forward_flops(width))
        out = out[:len(rows)]
        if result is None:
          result = np.empty((n,) + out.shape[1:], out.dtype)
        result[rows] = out
    return result

  def rewards(self, params: Any, tokens: np.ndarray, mask: np.ndarray,
              response_mask: np.ndarray | None = None) -> np.ndarray:
    """[n] rewards read at each sequence's last real token (and, under the log-prob readout,
    from the response tokens where response_mask is 1); params from `place`."""
    return self._run(self._rewards, params, tokens, mask, response_mask)

  def features(self, params: Any, tokens: np.ndarray, mask: np.ndarray,
               response_mask: np.ndarray | None = None) -> np.ndarray:
    """[n, d_model] final hidden state at each sequence's last real token ([n, d_model + 3]
    with the log-prob readout's features: `RewardModel.features`)."""
    return self._run(self._features, params, tokens, mask, response_mask)

  def pair_rewards(self, params: Any, arrays: dict[str, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(r_chosen, r_rejected) for preference arrays (chosen_/rejected_ tokens, masks and,
    when present, response masks)."""
    return tuple(self.rewards(params, arrays[f"{side}_tokens"], arrays[f"{side}_mask"],
                              arrays.get(f"{side}_response_mask"))
                 for side in ("chosen", "rejected"))


def distinct_rows(*arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(first, inverse) over the rows of same-length arrays [n, ...] taken together: `first`
  [k] the index of the first occurrence of each distinct row (in order of first occurrence),
  `inverse` [n] the position in `first` of each row's copy, so rows == rows[first][inverse].
  Rows are compared on their exact values (a scorer's output for a row depends only on it)."""
  n = len(arrays[0])

  def exact_ints(a):  # integers as they are, floats by their bits: equal rows stay equal
    a = np.ascontiguousarray(np.asarray(a).reshape(n, -1))
    if a.dtype.kind == "f":
      a = a.astype(np.float64).view(np.int64)
    return a.astype(np.int64)

  flat = np.concatenate([exact_ints(a) for a in arrays], axis=1)
  if n == 0:
    return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
  keys = np.ascontiguousarray(flat).view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1])))
  _, first, inverse = np.unique(keys[:, 0], return_index=True, return_inverse=True)
  order = np.argsort(first, kind="stable")  # distinct rows in order of first occurrence
  rank = np.empty_like(order)
  rank[order] = np.arange(len(order))
  return first[order], rank[inverse.reshape(-1)]


def real_token_ends(mask: np.ndarray) -> np.ndarray:
  """[n] one past the last real (mask != 0) column of each row; 0 for a row with none."""
  real = np.asarray(mask) != 0
  last = real.shape[1] - np.argmax(real[:, ::-1], axis=1)
  return np.where(real.any(axis=1), last, 0)


def trimmed_width(end: int, length: int) -> int:
  """The width a batch whose rows end by `end` is cut to: `end` rounded up to a quarter of the
  full length (at least 32 columns), so at most 4 compiled shapes per sequence length."""
  quantum = max(32, length // 4)
  return min(length, max(quantum, -(-end // quantum) * quantum))


def unboxed_init(model: nn.Module, seed: int = 0) -> Any:
  """Fresh host params of `model` (no logical-axis boxes)."""
  variables = model.init(jax.random.key(seed), *init_inputs(model))
  return jax.device_get(nn.unbox(variables)["params"])

