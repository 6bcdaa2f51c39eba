"""The linear probe: fit the shared scalar reward head on the frozen SFT backbone.

Where it sits: between SFT and the RM members (docs/paper.md, "The method", step 1). Every member
starts from an SFT checkpoint (Baklava: possibly a different step of one SFT run) *plus this one
head*, so that the members differ only where fine-tuning moved them and averaging their heads is
well defined (docs/data.md, the first prototype's lesson 4).

With the backbone frozen, the Bradley-Terry loss of a linear head r = w . phi(x, y) + b is a
logistic regression on feature differences: -log sigmoid(w . (phi+ - phi-)); the bias cancels
and is set to 0. phi is `RewardModel.features`: the last hidden state, plus the three log-prob
features under the 'hidden_logprob' readout (then w is split into reward_head/kernel and
reward_head/logprob_kernel). Features are computed once (one sharded forward pass over the pairs) and the
L2-regularised problem is solved by Newton's method in float64, which converges in a few steps
and is exact to the tolerance; no learning rate to tune.

Writes OUTPUT/params (a plain orbax PyTree of the full reward model: SFT decoder + fitted head),
OUTPUT/probe.json (train/validation accuracy and loss, iterations) and OUTPUT/DONE.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.core import run_dir
from warm_jax.data.batching import ArrayDataset
from warm_jax.models import RewardModel, TransformerConfig
from warm_jax.models.heads import LOGPROB_FEATURES
from warm_jax.core.partitioning import Partitioner
from warm_jax.rm.scoring import RewardScorer, unboxed_init

PARAMS_SUBDIR = "params"
HEAD_KERNEL = ("reward_head", "kernel")
HEAD_BIAS = ("reward_head", "bias")


@dataclasses.dataclass(frozen=True)
class ProbeFit:
  kernel: np.ndarray  # [d]
  iterations: int
  train_loss: float
  train_accuracy: float


def _bt_loss_grad_hess(w: np.ndarray, diff: np.ndarray, l2: float):
  margin = diff @ w
  # -log sigmoid(m) = log1p(exp(-m)), computed stably.
  loss = np.mean(np.logaddexp(0.0, -margin)) + 0.5 * l2 * w @ w
  p = 1.0 / (1.0 + np.exp(margin))  # = sigmoid(-m) = -d loss / d m
  grad = -(diff * p[:, None]).mean(0) + l2 * w
  weights = p * (1.0 - p)
  hess = (diff * weights[:, None]).T @ diff / len(diff) + l2 * np.eye(len(w))
  return loss, grad, hess


def fit_bradley_terry_head(features_chosen: np.ndarray, features_rejected: np.ndarray, *,
                           l2: float = 1e-3, max_iters: int = 100, tol: float = 1e-10
                           ) -> ProbeFit:
  """argmin_w mean(-log sigmoid(w . (phi+ - phi-))) + l2/2 |w|^2 by damped Newton steps."""
  if len(features_chosen) == 0:
    raise ValueError("the linear probe got no preference pairs")
  diff = (features_chosen - features_rejected).astype(np.float64)
  w = np.zeros(diff.shape[1])
  loss, grad, hess = _bt_loss_grad_hess(w, diff, l2)
  iterations = 0
  for iterations in range(1, max_iters + 1):
    step = np.linalg.solve(hess, grad)
    t = 1.0
    while True:  # backtracking keeps each step a descent step
      new_w = w - t * step
      new_loss, new_grad, new_hess = _bt_loss_grad_hess(new_w, diff, l2)
      if new_loss <= loss - 1e-4 * t * grad @ step or t < 1e-6:
        break
      t *= 0.5
    converged = loss - new_loss < tol
    w, loss, grad, hess = new_w, new_loss, new_grad, new_hess
    if converged or np.linalg.norm(grad) < tol:
      break
  accuracy = float(np.mean(diff @ w >= 0))
  return ProbeFit(kernel=w, iterations=iterations, train_loss=float(loss),
                  train_accuracy=accuracy)


def reward_model_from_sft(sft_params: Any, model_config: TransformerConfig, *, seed: int = 0
                          ) -> Any:
  """RM params: every decoder leaf from the SFT LM, a fresh reward head."""
  fresh = unboxed_init(RewardModel(model_config), seed)
  params, _ = ckpt_lib.init_from_checkpoint(fresh, sft_params, [(r"reward_head/.*", None)],
                                            source_name="SFT checkpoint")
  return params


def linear_probe(*, sft_path: str, output_dir: str, model_config: TransformerConfig,
                 train_data: ArrayDataset, eval_data: ArrayDataset | None = None,
                 partitioner: Partitioner | None = None, batch_size: int = 64,
                 l2: float = 1e-3) -> dict[str, Any]:
  """Fits the head on `train_data` pairs with the SFT backbone frozen; writes OUTPUT (atomic)."""
  if not output_dir:
    raise ValueError("output_dir is not set: pass --gin.MODEL_DIR=\"'/path'\"")
  if run_dir.is_done(output_dir):
    logging.info("linear probe already done in %s", output_dir)
    with open(os.path.join(output_dir, "probe.json")) as f:
      return json.load(f)
  t0 = time.time()
  partitioner = partitioner or Partitioner()
  params = reward_model_from_sft(ckpt_lib.load_params(sft_path), model_config)
  scorer = RewardScorer(model_config=model_config, partitioner=partitioner,
                        batch_size=batch_size)
  placed = scorer.place(params)
  feats = {name: _pair_features(scorer, placed, data.features)
           for name, data in (("train", train_data), ("eval", eval_data)) if data is not None}
  fit = fit_bradley_terry_head(*feats["train"], l2=l2)
  params["reward_head"] = head_params(fit.kernel, model_config)
  report = {"sft_path": sft_path, "l2": l2, "iterations": fit.iterations,
            "train_loss": fit.train_loss, "train_accuracy": fit.train_accuracy,
            "num_train_pairs": len(feats["train"][0])}
  if "eval" in feats:
    margin = (feats["eval"][0] - feats["eval"][1]) @ fit.kernel
    report["eval_accuracy"] = float(np.mean(margin >= 0))
    report["eval_loss"] = float(np.mean(np.logaddexp(0.0, -margin)))
  report["wall_s"] = round(time.time() - t0, 2)
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    ckpt_lib.save_params(params, os.path.join(output_dir, PARAMS_SUBDIR), force=True)
    ckpt_lib.atomic_write_text(os.path.join(output_dir, "probe.json"),
                               json.dumps(report, indent=2) + "\n")
    run_dir.write_done(output_dir, {"wall_s": report["wall_s"]})
  logging.info("linear probe: %s", report)
  return report


def head_params(kernel: np.ndarray, model_config: TransformerConfig) -> dict[str, np.ndarray]:
  """The reward head's leaves from a probe's kernel over `RewardModel.features` ([d_model],
  or [d_model + 3] with the log-prob readout, whose last 3 entries weigh the log-prob
  features); the bias is 0 (Bradley-Terry cannot see it)."""
  kernel = np.asarray(kernel, np.float32)
  d = model_config.d_model
  expected = d + (len(LOGPROB_FEATURES) if model_config.reads_logprobs else 0)
  if kernel.shape != (expected,):
    raise ValueError(f"probe kernel of shape {kernel.shape}: the reward head of this model "
                     f"reads {expected} features")
  head = {"kernel": kernel[:d, None], "bias": np.zeros((1,), np.float32)}
  if model_config.reads_logprobs:
    head["logprob_kernel"] = kernel[d:, None]
  return head


def _pair_features(scorer: RewardScorer, params: Any, arrays: dict[str, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
  return tuple(scorer.features(params, arrays[f"{side}_tokens"], arrays[f"{side}_mask"],
                               arrays.get(f"{side}_response_mask"))
               for side in ("chosen", "rejected"))


@dataclasses.dataclass(frozen=True)
class ProbedRewardModelInit:
  """Initial params of an RM member: decoder from an SFT checkpoint (any step: Baklava), the
  reward head from the linear probe, so every member shares the probed head.

  Attributes:
    sft_path: SFT model dir / checkpoints/<step> dir / params dir.
    probe_path: the linear probe's output dir (or its params dir).
  """

  sft_path: str
  probe_path: str

  def __call__(self, trainer: Any) -> Any:
    fresh = trainer.init_state().params
    params, report = ckpt_lib.init_from_checkpoint(
        fresh, ckpt_lib.load_params(self.sft_path), [(r"reward_head/.*", None)],
        source_name=self.sft_path)
    missing = [p for p in report["fresh"] if p.startswith("decoder/")]
    if missing:
      raise ckpt_lib.CheckpointError(f"SFT checkpoint {self.sft_path} lacks {missing[0]}: it "
                                     "is not a backbone of this reward model")
    head = ckpt_lib.load_params(self.probe_path)["reward_head"]  # resolves OUTPUT/params
    params, _ = ckpt_lib.init_from_checkpoint(params, {"reward_head": head},
                                              [(r"decoder/.*", None)],
                                              source_name=self.probe_path)
    return params
