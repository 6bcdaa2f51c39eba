"""`python -m warm_jax.experiment`: the whole paper pipeline as resumable stages.

  python -m warm_jax.experiment --gin_file=gin/experiments/warm_synthetic_tldr.gin \
      --output_dir=runs/demo [--gin.SCALE="'tiny'"] [--gin.NAME=VALUE ...] [--dry_run]

--dry_run prints the stages and their commands without running or writing anything.
gin/experiments/ holds the embedded default, its tiny smoke variant, the real-data TL;DR
experiment (warm_tldr_real.gin) and the ablations (ablations/*.gin, which set OVERRIDES).

Where it sits: on top of everything. Each stage is one of the gin-configured programs of the
codebase (`python -m warm_jax.data.build`, `warm_jax.train` with a stage gin file,
`warm_jax.evaluate`, ...), run as a subprocess with the stage's gin files and a few overrides,
writing its own dir under OUTPUT. A stage whose dir holds the driver's `STAGE_DONE` marker is
skipped on a rerun; an interrupted one is rerun and resumes from its own checkpoints. The exact
command of every stage is recorded in OUTPUT/commands.sh, so any stage can be rerun by hand.

Stages (the embedded default; the scale preset picks sizes and steps):
  data/clean               the synthetic world: posts, pre-training corpus, SFT examples,
                           generator pairs, best-of-N / RL prompts
  pretrain, sft            LM pre-training, SFT keeping the Baklava checkpoints
  rm_data                  the RMs' data: comparisons of the SFT checkpoints' own samples
                           (`warm_jax.data.on_policy`), labels clean and 25% corrupted
                           (rm_data/{clean,corrupt}); held-out id_policy (the final SFT policy
                           at T=0.9) and ood_policy (other policies, high temperatures)
  probe/{clean,corrupt}    the shared linear-probed head
  members/{clean,corrupt}  M diverse RMs (lr x dropout x data order x Baklava SFT step)
  pairs/*                  the LMC diversity pairs (one hyper-parameter changed) and two
                           from-scratch RMs (Remark 1)
  eval/{clean,corrupt}     accuracy tables, LMC curves, accuracy vs M, WA-ENS histograms
  average/warm_<M>         WARM M: the M best clean members (ranked on ID val by eval/clean)
                           averaged into one plain orbax checkpoint (`warm_jax.average`)
  bon                      best-of-N from the SFT policy, selected by every member, WARM M and
                           ENS M, judged by the oracle
  rl/<reward>              REINFORCE (the default: leave-one-out baseline) + KL against each
                           reward in `rl_rewards` (best single member, ENS M, WARM M); each eval
                           also logs the members' disagreement (`rl_disagreement_members`)
  win_rates                oracle win rates between the RL policies at their best steps
Then OUTPUT/metrics.json, OUTPUT/report.md and OUTPUT/plots/ (`warm_jax.report`).

Stages after eval/clean take arguments known only then (the member ranking, the RL runs' best
steps): their commands are resolved when they start and added to commands.sh. Every stage
shares one persistent XLA compile cache (OUTPUT/cache/jax) and one timed matmul for MFU, and
writes the model FLOPs its programs ran to its STAGE_FLOPS.json (`warm_jax.flops`): the
report's per-stage profile (wall, CPU, FLOPs, MFU; `stage_profile`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from warm_jax.checkpoints import AVERAGE_CHECKPOINT_SUBDIR, atomic_write_text, read_json
from warm_jax.cli_errors import print_error

STAGE_DONE = "STAGE_DONE"
# Reward names '<kind>_<M>' of the top M members (ExperimentPlan.reward_spec): WARM (weight
# average), ENS (mean reward), Coste et al.'s WCO (min) and UWO (mean - lambda * variance, with
# Coste's lambda: 0.5 for best-of-N, 0.1 for RL)
ENSEMBLE_KINDS = ("warm", "ens", "wco", "uwo")
UWO_LAMBDA = {"bon": 0.5, "rl": 0.1}
RL_TEMPERATURE = 0.9  # the best-of-N / RL sampling temperature (gin/bon.gin, gin/rl.gin; paper)


class StageFailed(RuntimeError):
  """A stage exited non-zero; its log says why. Rerunning the experiment resumes it."""


SETTINGS = ("clean", "corrupt")
DIVERSITY_SOURCES = ("all", "data_order", "learning_rate", "dropout", "baklava")


@dataclasses.dataclass(frozen=True)
class ExperimentScale:
  """Sizes and steps of one scale of the experiment (gin: `run_experiment.scales`)."""

  model_gin: str
  data_gin: str
  pretrain_steps: int
  pretrain_batch: int
  sft_steps: int
  sft_batch: int
  baklava_steps: tuple[int, ...]
  rm_steps: int
  rm_batch: int
  num_members: int
  learning_rates: tuple[float, ...]
  dropout_rates: tuple[float, ...]
  warm_ms: tuple[int, ...]
  scratch_rm_steps: int
  corruption_rate: float = 0.25
  # the corrupted setting's memorisation regime (None: as the clean setting): it may train on
  # the pairs of the first corrupt_train_posts RM-train posts only, for corrupt_rm_steps, over
  # corrupt_learning_rates, so that its members see many epochs (the paper's 10k steps x 128
  # are ~14 epochs) within a CPU budget (docs/experiment.md, "The corrupted setting")
  corrupt_train_posts: int | None = None
  corrupt_rm_steps: int | None = None
  corrupt_learning_rates: tuple[float, ...] | None = None
  vmapped_members: bool = True
  # sequential microbatches per training step (same gradient; TrainerConfig.microbatches): on
  # CPU, small microbatches keep each layer's [batch, heads, length, length] attention scores
  # in cache, 1.3-2x faster per step for the tiny decoder (docs/experiment.md, "Budgets")
  lm_microbatches: int = 1  # pre-training and SFT
  rm_microbatches: int = 1  # reward models (members, LMC pairs)
  # RM training batches of pairs of similar length cut to their bucket's width (same losses,
  # ~1.5x faster on the tiny decoder; warm_jax/data/batching.py); None: full width
  rm_length_buckets: tuple[int, ...] | None = None
  rl_microbatches: int = 1
  eval_batch: int = 64
  # the LMC curves' interpolation weights (lambda = weight of the second endpoint)
  lmc_lambdas: tuple[float, ...] = tuple(i / 10 for i in range(11))
  eval_max_pairs: int | None = None  # per evaluation subset (a seeded sample); None: all
  # the selection orders of accuracy vs M (fig. 10); each costs M - 2 weight averages scored
  eval_vs_m_orders: tuple[str, ...] = ("best_to_worst", "worst_to_best", "random", "greedy")
  extra_data_bindings: tuple[str, ...] = ()
  # the reward models' readout (TransformerConfig.reward_readout): 'hidden' (the last hidden
  # state, the paper's head) or 'hidden_logprob' (+ the response tokens' log-probs under the
  # RM's own LM head; docs/reward_models.md)
  reward_readout: str = "hidden"
  # the log-prob readout's window (TransformerConfig.logprob_window): LM logits only at the
  # last positions of each sequence, which hold its response; None: at every position
  logprob_window: int | None = None
  # the on-policy RM data (`warm_jax.data.on_policy`, synthetic data): rm_train / id_val pairs
  # of samples of the SFT checkpoints at the Baklava steps (rm_samples_per_post in all, split
  # evenly over the steps) at rm_policy_temperature; id_policy pairs of the final SFT policy at
  # the best-of-N / RL temperature (0.9); ood_policy pairs of the pre-trained-only model at
  # T=1 and the first and last Baklava SFT checkpoints at ood_policy_temperature
  rm_samples_per_post: int = 6
  rm_pairs_per_post: int = 5
  rm_policy_temperature: float = 1.0
  id_policy_samples_per_post: int = 4
  id_policy_pairs_per_post: int = 3
  ood_policy_temperature: float = 1.3
  ood_policy_samples_per_policy: int = 2
  ood_policy_pairs_per_post: int = 3
  generator_share: float = 0.0  # share of rm_train / id_val pairs from the world's generators
  # policy side (docs/paper.md figs 6-9); bon_prompts=0 / rl_steps=0 skip those stages
  max_new_tokens: int = 48
  # best-of-N, RL and win rates only (None: max_new_tokens, which also sets the on-policy RM
  # data's samples): prompt + these + 1 closing EOS must fit the data's SEQ_LEN (they are
  # checked; docs/policy.md, "Positions")
  policy_max_new_tokens: int | None = None
  bon_prompts: int = 64
  bon_n_max: int = 16
  policy_batch: int = 64
  rl_steps: int = 100
  rl_batch: int = 32
  rl_learning_rate: float = 1e-4
  rl_kl_coef: float = 0.003
  rl_value_warmup: int = 10
  rl_policy_warmup: int = 0  # policy updates of linear lr warm-up (gin/rl.gin POLICY_WARMUP_STEPS)
  # the REINFORCE baseline (gin/rl.gin BASELINE): 'value' (the paper's value model) or
  # 'leave_one_out' (RLOO over rl_samples_per_prompt responses per prompt; no value model, so
  # rl_value_warmup must be 0); docs/policy.md, "The default's RL schedule"
  rl_baseline: str = "value"
  rl_samples_per_prompt: int = 1
  rl_eval_every: int = 10
  rl_eval_prompts: int = 64
  rl_rewards: tuple[str, ...] = ("best_member", "ens_2", "warm_2", "warm_6")
  rl_kl_coefs: tuple[float, ...] = ()  # the alpha sweep: every reward x alpha (rl/<reward>_kl<a>)
  win_rate_prompts: int = 128
  # the SFT steps the members start from (None: every Baklava step, the paper's Baklava);
  # baklava_steps still give the LMC Baklava pair and the on-policy data's policies
  member_sft_steps: tuple[int, ...] | None = None
  # the diversity ablation: which sources make the M members differ ('all', or only one of
  # 'data_order', 'learning_rate', 'dropout', 'baklava'; the others fixed at member 0's)
  member_diversity: str = "all"
  # the data: 'synthetic' (the embedded world, with its oracle) or 'tldr' (OpenAI's human
  # comparisons from run_experiment.tldr_manual_dir; no oracle, so no corrupted setting, BoN
  # or RL: the RM evaluations run against the human labels)
  data_source: str = "synthetic"

  def __post_init__(self):
    for name in ("pretrain_steps", "sft_steps", "rm_steps", "num_members", "scratch_rm_steps"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ExperimentScale.{name}={getattr(self, name)}: must be positive")
    if any(s > self.sft_steps or s <= 0 for s in self.baklava_steps):
      raise ValueError(f"ExperimentScale.baklava_steps={self.baklava_steps}: each must be an "
                       f"SFT step in 1..{self.sft_steps}")
    if self.member_sft_steps is not None and not set(self.member_sft_steps) <= set(
        self.baklava_steps):
      raise ValueError(f"ExperimentScale.member_sft_steps={self.member_sft_steps}: each must be "
                       f"one of baklava_steps {self.baklava_steps} (the kept SFT checkpoints)")
    if self.sft_steps not in self.baklava_steps:
      raise ValueError(f"ExperimentScale.baklava_steps={self.baklava_steps} must include the "
                       f"last SFT step {self.sft_steps} (the probe's backbone)")
    if len(self.learning_rates) < 2 or len(self.baklava_steps) < 2:
      raise ValueError("the LMC diversity pairs need >= 2 learning_rates and >= 2 "
                       "baklava_steps")
    if self.rm_steps % 2:
      raise ValueError(f"ExperimentScale.rm_steps={self.rm_steps}: must be even (the "
                       "'two checkpoints of one run' pair uses the half-way checkpoint)")
    if self.corrupt_rm_steps is not None and (self.corrupt_rm_steps <= 0
                                              or self.corrupt_rm_steps % 2):
      raise ValueError(f"ExperimentScale.corrupt_rm_steps={self.corrupt_rm_steps}: None or a "
                       "positive even number")
    if self.corrupt_learning_rates is not None and len(self.corrupt_learning_rates) < 2:
      raise ValueError("ExperimentScale.corrupt_learning_rates: None or >= 2 rates (the "
                       "corrupted setting's LMC pair)")
    for m in self.warm_ms:
      if not 2 <= m <= self.num_members:
        raise ValueError(f"ExperimentScale.warm_ms={self.warm_ms}: each M must be in "
                         f"2..num_members={self.num_members}")
    for name in self.rl_rewards:
      kind, _, m = name.partition("_")
      if name != "best_member" and not (kind in ENSEMBLE_KINDS and m.isdigit() and
                                        2 <= int(m) <= self.num_members):
        raise ValueError(f"ExperimentScale.rl_rewards: {name!r} is not 'best_member' or "
                         f"'<kind>_<M>' with kind in {ENSEMBLE_KINDS} and M in "
                         f"2..{self.num_members}")
    if self.member_diversity not in DIVERSITY_SOURCES:
      raise ValueError(f"ExperimentScale.member_diversity={self.member_diversity!r}: use one of "
                       f"{DIVERSITY_SOURCES}")
    for batch, micro in (("pretrain_batch", "lm_microbatches"), ("sft_batch", "lm_microbatches"),
                         ("rm_batch", "rm_microbatches"), ("rl_batch", "rl_microbatches")):
      if getattr(self, micro) < 1 or getattr(self, batch) % getattr(self, micro):
        raise ValueError(f"ExperimentScale.{micro}={getattr(self, micro)} must be >= 1 and "
                         f"divide {batch}={getattr(self, batch)}")
    if (len(self.lmc_lambdas) < 3 or self.lmc_lambdas[0] != 0.0 or self.lmc_lambdas[-1] != 1.0
        or list(self.lmc_lambdas) != sorted(set(self.lmc_lambdas))):
      raise ValueError(f"ExperimentScale.lmc_lambdas={self.lmc_lambdas}: increasing, from 0.0 "
                       "to 1.0, with at least one interior point")
    if self.reward_readout not in ("hidden", "hidden_logprob"):
      raise ValueError(f"ExperimentScale.reward_readout={self.reward_readout!r}: 'hidden' or "
                       "'hidden_logprob'")
    if self.logprob_window is not None and self.logprob_window <= self.max_new_tokens:
      raise ValueError(f"ExperimentScale.logprob_window={self.logprob_window}: the RMs read "
                       f"sampled responses of up to max_new_tokens={self.max_new_tokens} "
                       f"tokens; use a window >= {self.max_new_tokens + 1}, or None")
    if self.rm_samples_per_post < len(self.baklava_steps):
      raise ValueError(f"ExperimentScale.rm_samples_per_post={self.rm_samples_per_post}: at "
                       f"least one sample per Baklava step ({len(self.baklava_steps)})")
    if self.data_source not in ("synthetic", "tldr"):
      raise ValueError(f"ExperimentScale.data_source={self.data_source!r}: 'synthetic' or "
                       "'tldr'")
    if self.data_source == "tldr" and (self.bon_prompts or self.rl_steps):
      raise ValueError("ExperimentScale: real TL;DR data has no oracle to judge best-of-N or "
                       "RL; set bon_prompts=0 and rl_steps=0 (or judge with a control RM by "
                       "running gin/bon.gin with CONTROL_RM yourself)")
    if any(a < 0 for a in self.rl_kl_coefs):
      raise ValueError(f"ExperimentScale.rl_kl_coefs={self.rl_kl_coefs}: must be >= 0")
    if self.policy_max_new_tokens is not None and self.policy_max_new_tokens <= 0:
      raise ValueError(f"ExperimentScale.policy_max_new_tokens={self.policy_max_new_tokens}: "
                       "None or positive")
    if self.rl_baseline not in ("value", "leave_one_out", "none"):
      raise ValueError(f"ExperimentScale.rl_baseline={self.rl_baseline!r}: use 'value', "
                       "'leave_one_out' or 'none'")
    if self.rl_baseline == "leave_one_out" and (self.rl_samples_per_prompt < 2 or
                                                 self.rl_value_warmup):
      raise ValueError(f"ExperimentScale: rl_baseline='leave_one_out' needs "
                       f"rl_samples_per_prompt >= 2 (got {self.rl_samples_per_prompt}) and "
                       f"rl_value_warmup=0 (got {self.rl_value_warmup}: there is no value model)")
    if self.rl_samples_per_prompt < 1 or self.rl_batch % self.rl_samples_per_prompt:
      raise ValueError(f"ExperimentScale.rl_batch={self.rl_batch} must be a multiple of "
                       f"rl_samples_per_prompt={self.rl_samples_per_prompt}")
    if self.rl_policy_warmup < 0:
      raise ValueError(f"ExperimentScale.rl_policy_warmup={self.rl_policy_warmup}: must be >= 0")
    if self.rl_steps and self.rl_eval_every <= 0:
      raise ValueError("ExperimentScale.rl_eval_every must be positive (the win rates compare "
                       "the RL policies at their best evaluated step)")


@dataclasses.dataclass
class Stage:
  """One program of the pipeline. `argv` is a list, or a function returning it for stages whose
  arguments come from earlier stages' outputs (called when the stage starts)."""

  name: str
  argv: list[str] | Callable[[], list[str]]
  output: str
  after: tuple[str, ...] = ()  # stages that must be done first (ExperimentPlan.stages sets it)

  @property
  def done_path(self) -> str:
    return os.path.join(self.output, STAGE_DONE)

  @property
  def resolved(self) -> bool:
    return not callable(self.argv)

  def resolve(self) -> list[str]:
    if callable(self.argv):
      self.argv = list(self.argv())
    return self.argv


def _gin(name: str, value: Any) -> str:
  return f"--gin.{name}={value!r}" if isinstance(value, str) else f"--gin.{name}={value}"


def _py(module: str, *args: str) -> list[str]:
  return [sys.executable, "-m", module, *args]


class ExperimentPlan:
  """The stages of one experiment and where each writes."""

  def __init__(self, *, output_dir: str, scale: ExperimentScale, seed: int = 0,
               world_seed: int | None = None, tldr_manual_dir: str | None = None):
    self.out, self.scale, self.seed = os.path.abspath(output_dir), scale, seed
    # the synthetic world's seed (its posts, generator pairs and label draws), apart from the
    # training SEED; None: the data gin's WORLD_SEED (0)
    self.world_seed = world_seed
    self.tldr_manual_dir = tldr_manual_dir
    if scale.data_source == "tldr" and not tldr_manual_dir:
      raise ValueError("this experiment reads the real TL;DR comparisons: pass "
                       "--gin.TLDR_MANUAL_DIR=\"'/path/to/openai_tldr'\" (the dir that holds "
                       "OpenAI's summarize-from-feedback files; see docs/data.md)")

  @property
  def on_policy(self) -> bool:
    """Whether the RMs train on comparisons of policy samples (`warm_jax.data.on_policy`;
    synthetic data: the labels need the oracle). Real TL;DR data has its human comparisons."""
    return self.scale.data_source == "synthetic"

  @property
  def settings(self) -> tuple[str, ...]:
    """The label settings: clean and 25%-corrupted (synthetic); the human labels (real)."""
    return SETTINGS if self.scale.data_source == "synthetic" else ("clean",)

  def _data_bindings(self) -> list[str]:
    if self.scale.data_source != "tldr":
      return [] if self.world_seed is None else [_gin("WORLD_SEED", self.world_seed)]
    return [_gin("PREFERENCE_TASK", "tldr_comparisons"), _gin("SFT_TASK", "tldr_sft"),
            _gin("TLDR_MANUAL_DIR", os.path.abspath(self.tldr_manual_dir)),
            _gin("TLDR_DATA_DIR", self.path("data", "tfds"))]

  def path(self, *parts: str) -> str:
    return os.path.join(self.out, *parts)

  def data_dir(self, setting: str = "clean") -> str:
    """The data build (pre-training corpus, SFT examples, prompts; real data: the RM pairs)."""
    return self.path("data", setting)

  def rm_data_dir(self, setting: str) -> str:
    """The reward models' DATA_DIR: the on-policy RM data of the setting (synthetic), or the
    data build (real data)."""
    return self.path("rm_data", setting) if self.on_policy else self.data_dir(setting)

  def _model(self) -> list[str]:
    """The model gin file and the reward readout: every stage that builds a model gets both
    (a LanguageModel ignores the readout)."""
    window = ([] if self.scale.logprob_window is None else
              [_gin("TransformerConfig.logprob_window", self.scale.logprob_window)])
    return [f"--gin_file={self.scale.model_gin}",
            _gin("TransformerConfig.reward_readout", self.scale.reward_readout), *window]

  def _train(self, stage_gin: str, *bindings: str) -> list[str]:
    return _py("warm_jax.train", *self._model(), f"--gin_file={stage_gin}", *bindings)

  def rm_steps(self, setting: str) -> int:
    s = self.scale
    return s.corrupt_rm_steps if setting == "corrupt" and s.corrupt_rm_steps else s.rm_steps

  def learning_rates(self, setting: str) -> tuple[float, ...]:
    s = self.scale
    return tuple(s.corrupt_learning_rates if setting == "corrupt" and s.corrupt_learning_rates
                 else s.learning_rates)

  def _rm_common(self, setting: str) -> list[str]:
    s = self.scale
    steps = self.rm_steps(setting)
    out = [_gin("DATA_DIR", self.rm_data_dir(setting)), _gin("SFT_DIR", self.path("sft")),
           _gin("PROBE_DIR", self.path("probe", setting)), _gin("TRAIN_STEPS", steps),
           _gin("BATCH_SIZE", s.rm_batch), _gin("SEED", self.seed),
           _gin("LEARNING_RATES", self.learning_rates(setting)),
           _gin("DROPOUT_RATES", tuple(s.dropout_rates)),
           _gin("SFT_STEPS", self.member_sft_steps),
           _gin("TrainerConfig.save_every", steps // 2),
           _gin("TrainerConfig.microbatches", s.rm_microbatches),
           _gin("LENGTH_BUCKETS", None if s.rm_length_buckets is None
                else tuple(s.rm_length_buckets))]
    if setting == "corrupt":  # accuracy on the corrupted training pairs along training
      out.append("--gin.{}.extra_eval_datasets={{'train_corrupt': "
                 "@train_corrupt/preference_dataset()}}".format(
                     "train_reward_members" if s.vmapped_members else "train_reward_model"))
    return out

  @property
  def member_sft_steps(self) -> tuple[int, ...]:
    """The SFT steps the members' sweep draws from (member_sft_steps, else Baklava's)."""
    return tuple(self.scale.member_sft_steps or self.scale.baklava_steps)

  def on_policy_sources(self) -> dict[str, list[tuple[str, str, float, int]]]:
    """The policies the on-policy RM data samples: TRAIN_POLICIES (the Baklava SFT steps),
    ID_POLICY (the final SFT policy at the best-of-N / RL temperature), OOD_POLICIES."""
    s = self.scale
    steps = sorted(s.baklava_steps)
    base, extra = divmod(s.rm_samples_per_post, len(steps))
    train = [(f"sft_{step}", self._sft_step_dir(step), s.rm_policy_temperature,
              base + (1 if k < extra else 0)) for k, step in enumerate(reversed(steps))]
    ood = [("pretrain", self.path("pretrain"), 1.0, s.ood_policy_samples_per_policy)]
    ood += [(f"sft_{step}", self._sft_step_dir(step), s.ood_policy_temperature,
             s.ood_policy_samples_per_policy) for step in sorted({steps[0], steps[-1]})]
    return {"TRAIN_POLICIES": train[::-1],
            "ID_POLICY": [("sft", self.path("sft"), RL_TEMPERATURE,
                           s.id_policy_samples_per_post)],
            "OOD_POLICIES": ood}

  def _sft_step_dir(self, step: int) -> str:
    return (self.path("sft") if step == self.scale.sft_steps else
            self.path("sft", "checkpoints", str(step)))

  def stages(self) -> list[Stage]:
    s, out = self.scale, []
    for setting in (("clean",) if self.on_policy else self.settings):
      rate = 0.0 if setting == "clean" else s.corruption_rate
      out.append(Stage(f"data/{setting}", _py(
          "warm_jax.data.build", f"--gin_file={s.data_gin}",
          f"--output_dir={self.data_dir(setting)}", _gin("CORRUPTION_RATE", rate),
          *self._data_bindings(), *s.extra_data_bindings), self.data_dir(setting)))
    out.append(Stage("pretrain", self._train(
        "gin/pretrain.gin", _gin("DATA_DIR", self.data_dir("clean")),
        _gin("MODEL_DIR", self.path("pretrain")), _gin("TRAIN_STEPS", s.pretrain_steps),
        _gin("BATCH_SIZE", s.pretrain_batch), _gin("SEED", self.seed),
        _gin("TrainerConfig.microbatches", s.lm_microbatches)), self.path("pretrain")))
    sft_every = math.gcd(*s.baklava_steps)  # every Baklava step must be a saved checkpoint
    out.append(Stage("sft", self._train(
        "gin/sft.gin", _gin("DATA_DIR", self.data_dir("clean")),
        _gin("PRETRAIN_DIR", self.path("pretrain")), _gin("MODEL_DIR", self.path("sft")),
        _gin("TRAIN_STEPS", s.sft_steps), _gin("BATCH_SIZE", s.sft_batch),
        _gin("SAVE_EVERY", sft_every), _gin("SEED", self.seed),
        _gin("TrainerConfig.microbatches", s.lm_microbatches)), self.path("sft")))
    if self.on_policy:
      sources = self.on_policy_sources()
      out.append(Stage("rm_data", _py(
          "warm_jax.data.on_policy", *self._model(), "--gin_file=gin/data/on_policy.gin",
          _gin("DATA_DIR", self.data_dir("clean")), _gin("OUTPUT_DIR", self.path("rm_data")),
          *(f"--gin.{k}={v!r}" for k, v in sources.items()),
          _gin("PAIRS_PER_POST", s.rm_pairs_per_post),
          _gin("ID_POLICY_PAIRS_PER_POST", s.id_policy_pairs_per_post),
          _gin("OOD_PAIRS_PER_POST", s.ood_policy_pairs_per_post),
          _gin("GENERATOR_SHARE", s.generator_share),
          _gin("CORRUPTION_RATE", s.corruption_rate),
          _gin("CORRUPT_TRAIN_POSTS", s.corrupt_train_posts),
          _gin("MAX_NEW_TOKENS", s.max_new_tokens), _gin("BATCH_SIZE", s.policy_batch),
          _gin("SEED", self.seed)), self.path("rm_data")))
    for setting in self.settings:
      out.append(Stage(f"probe/{setting}", self._train(
          "gin/linear_probe.gin", _gin("DATA_DIR", self.rm_data_dir(setting)),
          _gin("SFT_DIR", self.path("sft")), _gin("MODEL_DIR", self.path("probe", setting))),
          self.path("probe", setting)))
    for setting in self.settings:
      members_dir = self.path("members", setting)
      sweep = self._member_sweep_bindings()
      if s.vmapped_members:
        out.append(Stage(f"members/{setting}", self._train(
            "gin/rm_members.gin", *self._rm_common(setting), *sweep,
            _gin("MEMBERS_DIR", members_dir), _gin("NUM_MEMBERS", s.num_members)), members_dir))
      else:
        for i in range(s.num_members):
          out.append(Stage(f"members/{setting}/member_{i}", self._train(
              "gin/rm.gin", *self._rm_common(setting), *sweep, _gin("MEMBERS_DIR", members_dir),
              _gin("MEMBER_INDEX", i)), os.path.join(members_dir, f"member_{i}")))
    out += self._pair_stages()
    for setting in self.settings:
      out.append(Stage(f"eval/{setting}", _py(
          "warm_jax.evaluate", *self._model(), "--gin_file=gin/evaluate.gin",
          _gin("DATA_DIR", self.rm_data_dir(setting)),
          _gin("MEMBERS_DIR", self.path("members", setting)),
          _gin("OUTPUT_DIR", self.path("eval", setting)), _gin("WARM_MS", tuple(s.warm_ms)),
          _gin("BATCH_SIZE", s.eval_batch), _gin("MAX_PAIRS", s.eval_max_pairs),
          _gin("LMC_LAMBDAS", tuple(s.lmc_lambdas)),
          _gin("VS_M_ORDERS", tuple(s.eval_vs_m_orders)),
          f"--gin.LMC_PAIRS={self.lmc_pairs(setting)!r}"), self.path("eval", setting)))
    out += self._policy_stages()
    names = [stage.name for stage in out]
    for stage in out:
      stage.after = tuple(dep for dep in stage_dependencies(stage.name, names) if dep != stage.name)
    return out

  # -- WARM checkpoints and the policy side (figs 6-9) -----------------------------------------
  def ranked_members(self, setting: str = "clean") -> list[str]:
    """Member dirs best first, by the ID-val ranking eval/<setting> computed."""
    path = self.path("eval", setting, "eval.json")
    with open(path) as f:
      ranking = json.load(f)["table"]["ranking"]
    return [self.path("members", setting, name) for name in ranking]

  def warm_dir(self, m: int) -> str:
    return self.path("average", f"warm_{m}", AVERAGE_CHECKPOINT_SUBDIR)

  def reward_spec(self, name: str, *, stage: str = "rl") -> Any:
    """The gin spec of a reward (warm_jax.reward_sources): a member, or '<kind>_<M>' of the
    top M members: WARM M, ENS M, WCO M or UWO M (with Coste's lambda for `stage`)."""
    ranked = self.ranked_members()
    if name == "best_member":
      return ranked[0]
    kind, m = name.split("_")
    if kind == "warm":
      return self.warm_dir(int(m))
    if kind == "wco":
      return {"wco": ranked[:int(m)]}
    if kind == "uwo":
      return {"uwo": ranked[:int(m)], "lambda": UWO_LAMBDA[stage]}
    return ranked[:int(m)]

  def rl_disagreement_members(self, reward: str) -> list[str] | None:
    """The members whose disagreement RL logs at each eval (gin/rl.gin DISAGREEMENT_MEMBERS;
    M more RM passes per eval): WARM M's (and ENS / WCO / UWO M's) own top M members; the
    best member's are the top 2, the same members that flag warm_2 and ens_2, so the runs of
    one M are read against one flagger (best-of-N gives the best member max(warm_ms))."""
    ranked = self.ranked_members()
    members = ranked[:2] if reward == "best_member" else ranked[:int(reward.split("_")[1])]
    return members if len(members) >= 2 else None

  def rl_runs(self) -> list[tuple[str, str, float]]:
    """(run name, reward name, KL coefficient) of every RL stage."""
    s = self.scale
    if not s.rl_kl_coefs:
      return [(reward, reward, s.rl_kl_coef) for reward in s.rl_rewards]
    return [(f"{reward}_kl{alpha:g}", reward, alpha) for alpha in s.rl_kl_coefs
            for reward in s.rl_rewards]

  def rl_run_names(self) -> list[str]:
    return [run for run, _, _ in self.rl_runs()] if self.scale.rl_steps else []

  def _warm_ms_needed(self) -> list[int]:
    ms = set(self.scale.warm_ms) if self.scale.bon_prompts else set()
    ms |= {int(n.split("_")[1]) for n in self.scale.rl_rewards if n.startswith("warm_")}
    return sorted(ms) if (self.scale.bon_prompts or self.scale.rl_steps) else []

  def _policy_common(self) -> list[str]:
    s = self.scale
    new = s.max_new_tokens if s.policy_max_new_tokens is None else s.policy_max_new_tokens
    return [_gin("DATA_DIR", self.data_dir("clean")), _gin("SEED", self.seed),
            _gin("MAX_NEW_TOKENS", new)]

  def _policy_stages(self) -> list[Stage]:
    s, out = self.scale, []
    for m in self._warm_ms_needed():
      out.append(Stage(f"average/warm_{m}", lambda m=m: _py(
          "warm_jax.average", "--inputs", *self.ranked_members()[:m],
          "--output", self.warm_dir(m), "--overwrite"), self.path("average", f"warm_{m}")))
    if s.bon_prompts:
      def bon_argv():
        ranked = self.ranked_members()
        models = {os.path.basename(p): p for p in ranked}
        for m in s.warm_ms:  # WCO / UWO reuse the members' rewards: a combine each
          for kind in ENSEMBLE_KINDS:
            models[f"{kind}_{m}"] = self.reward_spec(f"{kind}_{m}", stage="bon")
        # Member disagreement (bon.py step 6): a WARM M checkpoint is flagged by the M members
        # it averages, the best member by the members of the largest M (all are selectors, so
        # their rewards are reused); ENS / WCO / UWO M use their own members.
        flags = {f"warm_{m}": ranked[:m] for m in s.warm_ms}
        if s.warm_ms:
          flags[os.path.basename(ranked[0])] = ranked[:max(s.warm_ms)]
        return _py("warm_jax.train", *self._model(), "--gin_file=gin/bon.gin",
                   *self._policy_common(), _gin("SFT_DIR", self.path("sft")),
                   _gin("OUTPUT_DIR", self.path("bon")), _gin("N_MAX", s.bon_n_max),
                   _gin("NUM_PROMPTS", s.bon_prompts), _gin("BATCH_SIZE", s.policy_batch),
                   f"--gin.REWARD_MODELS={models!r}",
                   f"--gin.DISAGREEMENT_MEMBERS={flags!r}")
      out.append(Stage("bon", bon_argv, self.path("bon")))
    if s.rl_steps:
      for run, reward, kl_coef in self.rl_runs():
        out.append(Stage(f"rl/{run}", lambda run=run, reward=reward, kl_coef=kl_coef: _py(
            "warm_jax.train", *self._model(), "--gin_file=gin/rl.gin",
            *self._policy_common(), _gin("SFT_DIR", self.path("sft")),
            _gin("MODEL_DIR", self.path("rl", run)),
            f"--gin.REWARD_MODEL={self.reward_spec(reward)!r}",
            f"--gin.DISAGREEMENT_MEMBERS={self.rl_disagreement_members(reward)!r}",
            _gin("TRAIN_STEPS", s.rl_steps), _gin("BATCH_SIZE", s.rl_batch),
            _gin("LEARNING_RATE", s.rl_learning_rate), _gin("KL_COEF", kl_coef),
            _gin("VALUE_WARMUP_STEPS", s.rl_value_warmup),
            _gin("POLICY_WARMUP_STEPS", s.rl_policy_warmup),
            _gin("BASELINE", s.rl_baseline), _gin("SAMPLES_PER_PROMPT", s.rl_samples_per_prompt),
            _gin("EVAL_EVERY", s.rl_eval_every), _gin("SAVE_EVERY", s.rl_eval_every),
            _gin("NUM_EVAL_PROMPTS", s.rl_eval_prompts),
            _gin("TrainerConfig.microbatches", s.rl_microbatches)), self.path("rl", run)))
      if s.rl_rewards and s.win_rate_prompts:
        def win_argv():
          from warm_jax.win_rates import FINAL_SUFFIX, best_checkpoint
          runs = self.rl_run_names()
          policies = {run: best_checkpoint(self.path("rl", run)) for run in runs}
          # each run at its final step too (its latest checkpoint): best vs final on these
          # held-out prompts measures the fall after the peak without the bias of picking
          # the peak on the eval prompts
          policies.update({f"{run}{FINAL_SUFFIX}": self.path("rl", run) for run in runs})
          policies["sft"] = self.path("sft")
          return _py("warm_jax.train", *self._model(),
                     "--gin_file=gin/win_rates.gin", *self._policy_common(),
                     _gin("OUTPUT_DIR", self.path("win_rates")),
                     _gin("PROMPT_OFFSET", s.rl_eval_prompts),
                     _gin("NUM_PROMPTS", s.win_rate_prompts),
                     _gin("BATCH_SIZE", s.policy_batch), f"--gin.POLICIES={policies!r}")
        out.append(Stage("win_rates", win_argv, self.path("win_rates")))
    return out

  def _member_sweep_bindings(self) -> list[str]:
    """Overrides of the members' sweep for the diversity ablation (none for 'all')."""
    source = self.scale.member_diversity
    if source == "all":
      return []
    base, s = self.base_member(), self.scale
    pools = {"learning_rate": ("LEARNING_RATES", tuple(s.learning_rates), (base.learning_rate,)),
             "dropout": ("DROPOUT_RATES", tuple(s.dropout_rates), (base.dropout_rate,)),
             "baklava": ("SFT_STEPS", tuple(s.baklava_steps), (base.sft_step,))}
    if source in pools and len(set(pools[source][1])) < s.num_members:
      raise ValueError(
          f"ExperimentScale.member_diversity={source!r} with num_members={s.num_members}: the "
          f"pool {pools[source][1]} has fewer distinct values than members, so two members "
          "would be identical (the other sources are fixed); give the pool at least "
          "num_members values in OVERRIDES, or fewer members")
    out = [_gin(macro, full if name == source else fixed)
           for name, (macro, full, fixed) in pools.items()]
    out.append(f"--gin.MemberSweep.vary_data_order={source == 'data_order'}")
    out.append("--gin.MemberSweep.cycle_pools=True")  # M distinct values of the varied pool
    return out

  # -- LMC diversity pairs (fig. 3) and Remark 1 ---------------------------------------------
  def base_member(self):
    from warm_jax.members import MemberSweep, draw_member
    s = self.scale
    return draw_member(MemberSweep(learning_rates=s.learning_rates,
                                   dropout_rates=s.dropout_rates,
                                   sft_steps=self.member_sft_steps, seed=self.seed), 0)

  def pair_variants(self) -> dict[str, dict[str, Any]]:
    """Member 0 with exactly one hyper-parameter changed, per diversity level."""
    s, base = self.scale, self.base_member()
    other_lr = next(lr for lr in s.learning_rates if lr != base.learning_rate)
    other_step = next(st for st in s.baklava_steps if st != base.sft_step)
    return {"data_order": {"data_seed": base.data_seed + 1},
            "learning_rate": {"learning_rate": other_lr},
            "baklava": {"sft_step": other_step}}

  def scratch_variants(self) -> dict[str, dict[str, Any]]:
    """Remark 1's two RMs: one random init (no pre-training), two data orders."""
    base = self.base_member()
    return {name: {"data_seed": base.data_seed + 100 + shift, "from_scratch": True}
            for name, shift in (("scratch_a", 0), ("scratch_b", 1))}

  def _pair_stages(self) -> list[Stage]:
    s = self.scale
    scratch_steps = [_gin("TRAIN_STEPS", s.scratch_rm_steps),
                     _gin("TrainerConfig.save_every", s.scratch_rm_steps)]
    if s.vmapped_members:  # one program per group, as the members (same RMs, less time)
      return [Stage("pairs/shared_start", self._train(
                  "gin/rm_members.gin", *self._rm_common("clean"),
                  _gin("MEMBERS_DIR", self.path("pairs")), _gin("NUM_MEMBERS", 1),
                  f"--gin.MEMBER_VARIANTS={self.pair_variants()!r}"),
                  self.path("pairs", "shared_start")),
              Stage("pairs/scratch", self._train(
                  "gin/rm_members.gin", *self._rm_common("clean"), *scratch_steps,
                  _gin("MEMBERS_DIR", self.path("pairs")), _gin("NUM_MEMBERS", 1),
                  f"--gin.MEMBER_VARIANTS={self.scratch_variants()!r}"),
                  self.path("pairs", "scratch"))]
    stages = []
    for name, overrides in self.pair_variants().items():
      out = self.path("pairs", name)
      stages.append(Stage(f"pairs/{name}", self._train(
          "gin/rm.gin", *self._rm_common("clean"), _gin("MEMBERS_DIR", self.path("pairs")),
          _gin("MEMBER_DIR", out), f"--gin.MEMBER_OVERRIDES={overrides!r}"), out))
    for name, overrides in self.scratch_variants().items():
      out = self.path("pairs", name)
      overrides = {k: v for k, v in overrides.items() if k != "from_scratch"}
      stages.append(Stage(f"pairs/{name}", self._train(
          "gin/rm.gin", *self._rm_common("clean"), _gin("MEMBERS_DIR", self.path("pairs")),
          _gin("MEMBER_DIR", out), _gin("FROM_SCRATCH", True), *scratch_steps,
          f"--gin.MEMBER_OVERRIDES={overrides!r}"), out))
    return stages

  def lmc_pairs(self, setting: str) -> dict[str, tuple[str, str]]:
    member0 = self.path("members", setting, "member_0")
    if setting == "corrupt":
      return {"two_members": (member0, self.path("members", setting, "member_1"))}
    half = os.path.join(member0, "checkpoints", str(self.scale.rm_steps // 2))
    pairs = {"checkpoints_of_one_run": (half, member0)}
    for name in ("data_order", "learning_rate", "baklava"):
      pairs[f"two_{name}s" if name != "baklava" else "two_baklava_inits"] = (
          member0, self.path("pairs", name))
    pairs["from_scratch"] = (self.path("pairs", "scratch_a"), self.path("pairs", "scratch_b"))
    return pairs


def stage_dependencies(name: str, names: Sequence[str]) -> tuple[str, ...]:
  """The stages (among `names`) that `name` reads: what the scheduler waits for before
  starting it. One table for the whole pipeline; a stage it does not know is refused."""
  def having(prefix: str) -> list[str]:
    return [n for n in names if n == prefix or n.startswith(prefix + "/")]

  kind, _, rest = name.partition("/")
  setting = rest.split("/")[0]
  if kind == "data":
    deps = []
  elif kind == "pretrain":
    deps = ["data/clean"]
  elif kind == "sft":
    deps = ["pretrain"]
  elif kind == "rm_data":
    deps = ["sft", "pretrain", "data/clean"]
  elif kind == "probe":
    deps = ["sft", f"data/{setting}"] + having("rm_data")
  elif kind == "members":
    deps = [f"probe/{setting}"]
  elif kind == "pairs":
    deps = ["probe/clean"]
  elif kind == "eval":
    deps = having(f"members/{setting}") + having("rm_data") + (
        having("pairs") if setting == "clean" else [])
  elif kind == "average":
    deps = ["eval/clean"]
  elif kind in ("bon", "rl"):
    deps = ["eval/clean", "sft"] + having("average")
  elif kind == "win_rates":
    deps = having("rl") + ["sft"]
  else:
    raise ValueError(f"stage {name!r} has no entry in experiment.stage_dependencies")
  return tuple(d for d in deps if d in names)


def stage_environment(cache_dir: str) -> dict[str, str]:
  """The environment every stage runs in: one persistent XLA compile cache for the whole
  experiment (the two settings, the LMC pairs and the RL runs compile the same programs; every
  program is cached, however fast it compiled: the tiny scale's ~130 compiles of ~0.4 s each
  are a third of its time, and caching them all cut it from 200 s to 133 s) and
  the FLOP/s of one timed matmul, so that each stage's MFU uses the same reference."""
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  if "WARM_JAX_MATMUL_FLOPS" not in env:
    from warm_jax import flops as flops_lib
    env["WARM_JAX_MATMUL_FLOPS"] = repr(flops_lib.measure_matmul_flops())
  return env


def _run_subprocess(stage: Stage, log_path: str, env: Mapping[str, str] | None,
                    running: dict[str, subprocess.Popen] | None = None) -> tuple[int, float]:
  """Runs the stage's command; returns (exit code, CPU seconds of it and its children)."""
  with open(log_path, "w") as log:
    proc = subprocess.Popen(stage.argv, stdout=log, stderr=subprocess.PIPE, text=True,
                            cwd=_repo_root(), env=None if env is None else dict(env))
    if running is not None:
      running[stage.name] = proc
    for line in proc.stderr:  # child progress lines are shown, everything is logged
      log.write(line)
      if line.startswith("[") or line.startswith("error"):
        print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (stages may overlap)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _run_in_process(stage: Stage, log_path: str, env: Mapping[str, str] | None) -> int:
  """Runs `python -m MODULE ARGS` as MODULE.main(ARGS) in this process: no interpreter, JAX
  and TensorFlow start-up per stage (seconds each, most of a tiny stage's time). Logging goes
  to the stage's log; progress lines still reach the console."""
  import contextlib
  import importlib
  import gin
  import jax
  if stage.argv[1:2] != ["-m"]:
    raise ValueError(f"stage {stage.name}: in-process stages must be `python -m MODULE ...`")
  from warm_jax import flops as flops_lib
  if env is not None:
    for key in ("WARM_JAX_MATMUL_FLOPS",):
      if key in env:
        os.environ[key] = env[key]
    if env.get("JAX_COMPILATION_CACHE_DIR"):
      jax.config.update("jax_compilation_cache_dir", env["JAX_COMPILATION_CACHE_DIR"])
      jax.config.update("jax_persistent_cache_min_compile_time_secs",
                        float(env.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0)))
  root = logging.getLogger()
  saved_levels = [(h, h.level) for h in root.handlers]
  handler = logging.FileHandler(log_path, mode="w")
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  for h, _ in saved_levels:  # the console shows progress lines and errors, the log the rest
    h.setLevel(logging.ERROR)
  root.addHandler(handler)
  # the stage's own profile: this process's counter from zero, written by the stage's gin_main
  flops_lib.COUNTER.reset()
  saved_flops_file = os.environ.get(flops_lib.STAGE_FLOPS_ENV)
  os.environ[flops_lib.STAGE_FLOPS_ENV] = stage_flops_path(stage)
  cwd = os.getcwd()
  try:
    os.chdir(_repo_root())
    gin.clear_config()
    with open(log_path + ".stdout", "w") as out, contextlib.redirect_stdout(out):
      return int(importlib.import_module(stage.argv[2]).main(list(stage.argv[3:])) or 0)
  except SystemExit as e:
    return int(e.code or 0) if not isinstance(e.code, str) else 1
  finally:
    os.chdir(cwd)
    if saved_flops_file is None:
      os.environ.pop(flops_lib.STAGE_FLOPS_ENV, None)
    else:
      os.environ[flops_lib.STAGE_FLOPS_ENV] = saved_flops_file
    flops_lib.COUNTER.reset()
    gin.clear_config()
    root.removeHandler(handler)
    handler.close()
    for h, level in saved_levels:
      h.setLevel(level)


def run_stages(stages: Sequence[Stage], *, log_dir: str, env: Mapping[str, str] | None = None,
               on_resolve: Callable[[], None] | None = None, in_process: bool = False,
               parallel: int = 1) -> dict[str, dict[str, float]]:
  """Runs the stages, skipping finished ones; returns {stage: its STAGE_DONE record}.

  Each stage is a subprocess (isolated: its memory is returned, a crash is contained) unless
  `in_process`, which calls the stage's main() here, one at a time (the tiny smoke scale:
  start-up dominates). `parallel` > 1 runs up to that many subprocess stages at once, each
  started when every stage in its `after` is done, in plan order: two tiny-decoder stages
  on 2 CPU cores share them better than one does (XLA keeps ~1.5 cores busy on these shapes).
  A failed stage stops the others (they resume on the rerun) and raises StageFailed.
  """
  import concurrent.futures
  os.makedirs(log_dir, exist_ok=True)
  parallel = 1 if in_process else max(1, int(parallel))
  records: dict[str, dict[str, float]] = {}
  t_start = time.time()
  total = len(stages)
  index = {stage.name: k for k, stage in enumerate(stages, 1)}
  def label(stage: Stage) -> str:
    return f"[experiment] stage {index[stage.name]}/{total} {stage.name}"

  def log_path(stage: Stage) -> str:
    return os.path.join(log_dir, stage.name.replace("/", "_") + ".log")

  pending = []
  resolved_done = False
  for stage in stages:
    if os.path.exists(stage.done_path):
      with open(stage.done_path) as f:
        records[stage.name] = json.load(f)
      print(f"{label(stage)}: done already ({records[stage.name]['wall_s']:.0f}s), skipped",
            file=sys.stderr, flush=True)
      if not stage.resolved:  # its inputs exist: resolve it so commands.sh keeps its command
        try:
          stage.resolve()
          resolved_done = True
        except Exception:  # pylint: disable=broad-except
          logging.warning("could not resolve the command of the finished stage %s for "
                          "commands.sh", stage.name, exc_info=True)
    else:
      pending.append(stage)
  if resolved_done and on_resolve is not None:
    on_resolve()
  known = {stage.name for stage in stages}
  running_procs: dict[str, subprocess.Popen] = {}

  def run_one(stage: Stage) -> tuple[int, float, float, float]:
    from warm_jax import flops as flops_lib
    flops_path = stage_flops_path(stage)
    if os.path.exists(flops_path):  # an earlier, interrupted run's: this run writes its own
      os.remove(flops_path)
    t0 = time.time()
    if in_process:
      cpu0 = _cpu_seconds()
      code = _run_in_process(stage, log_path(stage), env)
      cpu = _cpu_seconds() - cpu0
    else:
      stage_env = dict(os.environ if env is None else env)
      stage_env[flops_lib.STAGE_FLOPS_ENV] = flops_path
      code, cpu = _run_subprocess(stage, log_path(stage), stage_env, running_procs)
    return code, cpu, t0, time.time()

  failure = None
  with (concurrent.futures.ThreadPoolExecutor(max_workers=parallel) if parallel > 1
        else _InlineExecutor()) as pool:
    futures: dict[concurrent.futures.Future, Stage] = {}
    while pending or futures:
      if failure is None:
        for stage in list(pending):
          if len(futures) >= parallel:
            break
          if any(dep in known and dep not in records for dep in stage.after):
            continue
          pending.remove(stage)
          if not stage.resolved:  # on this (the scheduling) thread only
            stage.resolve()
            if on_resolve:
              on_resolve()
          others = ", ".join(futures[f].name for f in futures)
          print(f"{label(stage)}: running "
                f"({time.time() - t_start:.0f}s into the experiment"
                + (f"; beside {others})" if others else ")"), file=sys.stderr, flush=True)
          futures[pool.submit(run_one, stage)] = stage
      if not futures:
        if failure is None and pending:  # cannot happen with the plan's table; guard anyway
          raise StageFailed(f"stages {[s.name for s in pending]} wait on stages that never ran")
        break
      done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        stage = futures.pop(future)
        code, cpu, t0, t1 = future.result()
        if code != 0:
          if failure is None:
            failure = (f"stage {stage.name} failed (exit {code}); its log is {log_path(stage)}; "
                       "fix the cause and rerun the same command: finished stages are skipped "
                       "and this one resumes")
            for name, proc in list(running_procs.items()):
              if proc.poll() is None and name != stage.name:
                proc.terminate()  # it resumes from its own checkpoints on the rerun
          continue
        record = {"wall_s": round(t1 - t0, 2), "cpu_s": round(cpu, 2),
                  "start": round(t0, 2), "end": round(t1, 2)}
        record.update(_flops_fields(stage))
        os.makedirs(stage.output, exist_ok=True)
        atomic_write_text(stage.done_path, json.dumps(record) + "\n")
        records[stage.name] = record
        if parallel > 1:
          print(f"{label(stage)}: done in "
                f"{record['wall_s']:.0f}s", file=sys.stderr, flush=True)
  if failure is not None:
    raise StageFailed(failure)
  return records


class _InlineExecutor:
  """Runs each submitted stage at once in the calling thread (parallel=1: in-process stages
  stay on the main thread, where signals, profilers and JAX's state expect them)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def submit(self, fn, *args):
    import concurrent.futures
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args))
    except BaseException as e:  # re-raised by future.result() in the scheduler
      future.set_exception(e)
    return future


def stage_flops_path(stage: Stage) -> str:
  """Where a stage's program writes its model FLOPs (`flops.write_stage_flops`)."""
  from warm_jax.flops import STAGE_FLOPS_FILE
  return os.path.join(stage.output, STAGE_FLOPS_FILE)


def _flops_fields(stage: Stage) -> dict[str, float]:
  """The STAGE_DONE fields of the stage's STAGE_FLOPS.json: its model FLOPs and the reference
  FLOP/s its MFU is read against; none when the stage counted nothing (no model program ran,
  or its program does not count: FLOPs unknown)."""
  try:
    counted = read_json(stage_flops_path(stage))
  except (OSError, ValueError):
    logging.warning("unreadable %s: the stage's FLOPs are unknown", stage_flops_path(stage),
                    exc_info=True)
    return {}
  if not counted:
    return {}
  out = {"flops": float(counted["flops"])}
  if counted.get("reference_flop_per_s"):
    out["reference_flop_per_s"] = float(counted["reference_flop_per_s"])
  return out


def stage_profile(records: Mapping[str, Mapping[str, float]], names: Sequence[str],
                  total_wall_s: float | None = None) -> dict[str, dict[str, float]]:
  """metrics.json's `flops` and `mfu`: per stage, the model FLOPs its programs counted and
  MFU = FLOPs / its wall seconds / the reference FLOP/s (the timed matmul the driver hands
  down, WARM_JAX_MATMUL_FLOPS: on CPU one 2048^3 float32 matmul using every core; on
  accelerators x devices), the same reference as the stages' perf/mfu. Stages without a count
  are left out (unknown). 'total': the counted stages' FLOPs, and their MFU over the
  experiment's wall time (`experiment_wall_seconds`) when given."""
  flops, mfu, reference = {}, {}, None
  for name in names:
    record = records.get(name) or {}
    if record.get("flops") is None:
      continue
    flops[name] = record["flops"]
    if record.get("reference_flop_per_s") and record.get("wall_s"):
      reference = reference or record["reference_flop_per_s"]
      mfu[name] = record["flops"] / record["wall_s"] / record["reference_flop_per_s"]
  if flops:
    flops["total"] = sum(flops.values())
    if reference and total_wall_s:
      mfu["total"] = flops["total"] / total_wall_s / reference
  return {"flops": flops, "mfu": mfu}


def experiment_wall_seconds(records: Mapping[str, Mapping[str, float]]) -> float:
  """Wall seconds during which at least one stage ran: the length of the union of the stages'
  [start, end] intervals (overlapping stages count once; the idle time between a stopped run
  and its resumption not at all). Markers without times (older runs) add their wall_s."""
  intervals, extra = [], 0.0
  for record in records.values():
    if "start" in record and "end" in record:
      intervals.append((record["start"], record["end"]))
    else:
      extra += record["wall_s"]
  total, cur_start, cur_end = 0.0, None, None
  for start, end in sorted(intervals):
    if cur_end is None or start > cur_end:
      if cur_end is not None:
        total += cur_end - cur_start
      cur_start, cur_end = start, end
    else:
      cur_end = max(cur_end, end)
  if cur_end is not None:
    total += cur_end - cur_start
  return round(total + extra, 2)


def _cpu_seconds() -> float:
  """CPU seconds (user + system) of this process and its finished children: a stage's cost
  that, unlike wall time, does not grow when other jobs share the machine."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def _repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_commands(stages: Sequence[Stage], path: str) -> None:
  lines = ["#!/usr/bin/env bash", "# The stages of this experiment, in order (run from the "
           "repository root).", "set -euo pipefail"]
  for stage in stages:
    lines.append(f"# {stage.name}")
    if stage.resolved:
      lines.append(" ".join(shlex.quote(a) for a in ["python", *stage.argv[1:]]))
    else:
      lines.append("# (its arguments come from earlier stages: written when it starts)")
  atomic_write_text(path, "\n".join(lines) + "\n")


def run_experiment(*, output_dir: str | None, scale: str = "default",
                   scales: Mapping[str, Mapping[str, Any]], seed: int = 0,
                   world_seed: int | None = None,
                   in_process: bool = False, parallel_stages: int = 1,
                   tldr_manual_dir: str | None = None,
                   overrides: Mapping[str, Any] | None = None,
                   dry_run: bool = False) -> dict[str, Any] | ExperimentPlan:
  """Runs (or resumes) every stage, then writes metrics.json, report.md and plots/.

  seed: the training seed (SEED: inits, data orders, the member sweep, sampling).
  world_seed: the synthetic world's seed (WORLD_SEED: posts, generator pairs, label draws);
    None keeps the data gin's (0).
  in_process: run the stages in this process instead of one subprocess each (see
    `run_stages`); the tiny smoke scale does, to fit its budget.
  parallel_stages: run up to this many independent stages at once (subprocess mode; see
    `run_stages` and `stage_dependencies`); the embedded default uses 2 on 2 cores.
  overrides: ExperimentScale fields replacing the preset's (the ablations in
    gin/experiments/ablations/ set these, so they compose with any SCALE).
  dry_run: print the stages and their commands and return the plan; nothing is run or written.
  """
  from warm_jax import report
  if not output_dir:
    raise ValueError("--output_dir is required")
  if int(parallel_stages) < 1:
    raise ValueError(f"PARALLEL_STAGES={parallel_stages}: must be >= 1")
  if scale not in scales:
    raise ValueError(f"SCALE={scale!r} is not one of the presets {sorted(scales)}")
  fields = {**scales[scale], **dict(overrides or {})}
  unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ExperimentScale)})
  if unknown:
    raise ValueError(f"unknown experiment scale field(s) {unknown} in SCALE={scale!r} or "
                     f"OVERRIDES; the fields are those of warm_jax.experiment.ExperimentScale")
  preset = ExperimentScale(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in fields.items()})
  plan = ExperimentPlan(output_dir=output_dir, scale=preset, seed=seed, world_seed=world_seed,
                        tldr_manual_dir=tldr_manual_dir)
  stages = plan.stages()
  if dry_run:
    print(f"# {len(stages)} stages of SCALE={scale!r} into {plan.out}")
    for stage in stages:
      print(f"# {stage.name}")
      print(" ".join(shlex.quote(a) for a in ["python", *stage.argv[1:]]) if stage.resolved
            else "#   (arguments from earlier stages: resolved when it starts)")
    return plan
  os.makedirs(plan.out, exist_ok=True)
  write_commands(stages, plan.path("commands.sh"))
  records = run_stages(stages, log_dir=plan.path("logs"),
                       env=stage_environment(plan.path("cache", "jax")),
                       on_resolve=lambda: write_commands(stages, plan.path("commands.sh")),
                       in_process=in_process, parallel=parallel_stages)
  timings = {stage.name: records[stage.name]["wall_s"] for stage in stages}
  timings["stages_sum"] = round(sum(timings.values()), 2)
  # the experiment's wall time: stages that overlapped count once (experiment_wall_seconds)
  timings["total"] = experiment_wall_seconds(records)
  metrics = report.collect_metrics(plan, timings=timings, scale_name=scale)
  metrics["seed"], metrics["world_seed"] = seed, world_seed
  metrics["cpu_s"] = {stage.name: records[stage.name]["cpu_s"] for stage in stages
                      if records[stage.name].get("cpu_s") is not None}
  metrics["cpu_s"]["total"] = round(sum(metrics["cpu_s"].values()), 2)
  # the profile: model FLOPs per stage and MFU over its wall time (`stage_profile`)
  metrics.update(stage_profile(records, [stage.name for stage in stages], timings["total"]))
  metrics["parallel_stages"] = 1 if in_process else parallel_stages
  metrics["load_average"] = list(os.getloadavg())
  report.write_report(plan.out, metrics)
  print(f"[experiment] done: {plan.path('report.md')}", file=sys.stderr, flush=True)
  return metrics


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import gin_main
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, output = [], None
  for arg in argv:
    if arg.startswith("--output_dir="):
      output = arg.split("=", 1)[1]
    elif arg == "--dry_run":
      rest.append("--gin.run_experiment.dry_run=True")
    else:
      rest.append(arg)
  if output is not None:
    rest.append(f"--gin.OUTPUT_DIR={output!r}")
  logging.getLogger().setLevel("INFO")
  try:
    return gin_main(rest, entry="run_experiment", doc=__doc__,
                    example="--gin_file=gin/experiments/warm_synthetic_tldr.gin "
                            "--output_dir=runs/demo")
  except RuntimeError as e:
    # `python -m` runs this file as __main__: the configurable raises the StageFailed of the
    # imported warm_jax.experiment module, a different class object than this file's.
    from warm_jax import experiment as module
    if not isinstance(e, (StageFailed, module.StageFailed)):
      raise
    print_error(str(e).splitlines()[0])
    return 1


if __name__ == "__main__":
  sys.exit(main())
