"""The stage graph of one experiment: which programs run, with which gin files and overrides,
in which dirs, and what each stage depends on.

Where it sits: between the presets (`pipeline.presets`) and the scheduler
(`pipeline.scheduler`, which runs the stages this plan lists).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from warm_jax.core.checkpoints import AVERAGE_CHECKPOINT_SUBDIR
from warm_jax.pipeline.presets import (CORRUPT_SUFFIX, ENSEMBLE_KINDS,
                                       PRETRAINING_PAIR_SEED_OFFSET, RL_TEMPERATURE, SETTINGS,
                                       STAGE_DONE, UWO_LAMBDA, ExperimentScale)


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


def _reward_passes(reward: str) -> int:
  """Reward-model passes per RL rollout of an RL reward name: M for the prediction ensembles
  ('ens_M', 'wco_M', 'uwo_M'), one for a single member or WARM M."""
  kind, _, m = reward.partition("_")
  return int(m) if kind in ENSEMBLE_KINDS and kind != "warm" else 1


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
    """Whether the RMs train on comparisons of policy samples (`warm_jax.policy.on_policy`;
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

  def _rm_common(self, setting: str, *, sft_dir: str | None = None,
                 probe_dir: str | None = None) -> list[str]:
    """The bindings every RM training stage of `setting` shares; sft_dir / probe_dir: another
    start than the RMs' shared one (rm_sft_dir, probe/<setting>)."""
    s = self.scale
    steps = self.rm_steps(setting)
    out = [_gin("DATA_DIR", self.rm_data_dir(setting)),
           _gin("SFT_DIR", sft_dir or self.rm_sft_dir),
           _gin("PROBE_DIR", probe_dir or self.path("probe", setting)),
           _gin("TRAIN_STEPS", steps),
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

  @property
  def rm_sft_dir(self) -> str:
    """The reward models' shared start: the policy's SFT (the paper), or the RMs' own chain
    (`rm_sft`) when the scale sets rm_pretrain_steps. Every kept SFT step of it is a Baklava
    init."""
    return self.path("rm_sft" if self.scale.rm_pretrain_steps else "sft")

  def _language_model_stages(self, pretrain: str, sft: str, pretrain_steps: int, *,
                             seed: int | None = None) -> list[Stage]:
    """Pre-training then SFT into path(pretrain) / path(sft), keeping every Baklava step
    (seed: the chain's training seed, None: the experiment's)."""
    s = self.scale
    seed = self.seed if seed is None else seed
    sft_every = math.gcd(*s.baklava_steps)  # every Baklava step must be a saved checkpoint
    return [Stage(pretrain, self._train(
                "gin/pretrain.gin", _gin("DATA_DIR", self.data_dir("clean")),
                _gin("MODEL_DIR", self.path(pretrain)), _gin("TRAIN_STEPS", pretrain_steps),
                _gin("BATCH_SIZE", s.pretrain_batch), _gin("SEED", seed),
                _gin("TrainerConfig.microbatches", s.lm_microbatches)), self.path(pretrain)),
            Stage(sft, self._train(
                "gin/sft.gin", _gin("DATA_DIR", self.data_dir("clean")),
                _gin("PRETRAIN_DIR", self.path(pretrain)), _gin("MODEL_DIR", self.path(sft)),
                _gin("TRAIN_STEPS", s.sft_steps), _gin("BATCH_SIZE", s.sft_batch),
                _gin("SAVE_EVERY", sft_every), _gin("SEED", seed),
                _gin("TrainerConfig.microbatches", s.lm_microbatches)), self.path(sft))]

  def stages(self) -> list[Stage]:
    s, out = self.scale, []
    for setting in (("clean",) if self.on_policy else self.settings):
      rate = 0.0 if setting == "clean" else s.corruption_rate
      out.append(Stage(f"data/{setting}", _py(
          "warm_jax.data.build", f"--gin_file={s.data_gin}",
          f"--output_dir={self.data_dir(setting)}", _gin("CORRUPTION_RATE", rate),
          *self._data_bindings(), *s.extra_data_bindings), self.data_dir(setting)))
    out += self._language_model_stages("pretrain", "sft", s.pretrain_steps)
    if s.rm_pretrain_steps:  # the RMs' own shared start (presets: rm_pretrain_steps)
      out += self._language_model_stages("rm_pretrain", "rm_sft", s.rm_pretrain_steps)
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
          _gin("SFT_DIR", self.rm_sft_dir), _gin("MODEL_DIR", self.path("probe", setting))),
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
    if s.pretraining_pair:
      out += self._pretraining_pair_stages()
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

  @staticmethod
  def _setting_suffix(setting: str) -> str:
    return CORRUPT_SUFFIX if setting == "corrupt" else ""

  def warm_dir(self, m: int, setting: str = "clean") -> str:
    """WARM M's checkpoint: the average of the setting's top M members."""
    return self.path("average", f"warm_{m}{self._setting_suffix(setting)}",
                     AVERAGE_CHECKPOINT_SUBDIR)

  def reward_spec(self, name: str, *, stage: str = "rl", setting: str = "clean") -> Any:
    """The gin spec of a reward (warm_jax.policy.reward_sources): a member, or '<kind>_<M>' of the
    top M members: WARM M, ENS M, WCO M or UWO M (with Coste's lambda for `stage`); the members
    of `setting`, ranked by that setting's ID-val accuracy."""
    ranked = self.ranked_members(setting)
    if name == "best_member":
      return ranked[0]
    kind, m = name.split("_")
    if kind == "warm":
      return self.warm_dir(int(m), setting)
    if kind == "wco":
      return {"wco": ranked[:int(m)]}
    if kind == "uwo":
      return {"uwo": ranked[:int(m)], "lambda": UWO_LAMBDA[stage]}
    return ranked[:int(m)]

  def rl_disagreement_members(self, reward: str, setting: str = "clean") -> list[str] | None:
    """The members whose disagreement RL logs at each eval (gin/rl.gin DISAGREEMENT_MEMBERS;
    M more RM passes per eval): WARM M's (and ENS / WCO / UWO M's) own top M members; the
    best member's are the top 2, the same members that flag warm_2 and ens_2, so the runs of
    one M are read against one flagger (best-of-N gives the best member max(warm_ms))."""
    ranked = self.ranked_members(setting)
    members = ranked[:2] if reward == "best_member" else ranked[:int(reward.split("_")[1])]
    return members if len(members) >= 2 else None

  def rl_runs(self) -> list[tuple[str, str, float, str]]:
    """(run name, reward name, KL coefficient, setting of the members) of every RL stage: the
    clean members' rewards (at each alpha of the sweep, rl/<reward>_kl<alpha>) and the corrupted
    members' (rl/<reward>_corrupt, at rl_corrupt_kl_coef)."""
    s = self.scale
    if not s.rl_kl_coefs:
      runs = [(reward, reward, s.rl_kl_coef, "clean") for reward in s.rl_rewards]
    else:
      runs = [(f"{reward}_kl{alpha:g}", reward, alpha, "clean") for alpha in s.rl_kl_coefs
              for reward in s.rl_rewards]
    return runs + [(f"{reward}{CORRUPT_SUFFIX}", reward, s.rl_corrupt_kl_coef, "corrupt")
                   for reward in s.rl_corrupt_rewards]

  def rl_run_names(self) -> list[str]:
    return [run for run, *_ in self.rl_runs()] if self.scale.rl_steps else []

  def _warm_ms_needed(self, setting: str = "clean") -> list[int]:
    """The M of every WARM M checkpoint the policy stages read, for the setting's members."""
    s = self.scale
    runs_bon = s.bon_prompts and (setting == "clean" or s.bon_corrupt)
    ms = set(s.warm_ms) if runs_bon else set()
    if s.rl_steps:
      rewards = s.rl_corrupt_rewards if setting == "corrupt" else s.rl_rewards
      ms |= {int(n.split("_")[1]) for n in rewards if n.startswith("warm_")}
    return sorted(ms)

  def _policy_common(self) -> list[str]:
    s = self.scale
    new = s.max_new_tokens if s.policy_max_new_tokens is None else s.policy_max_new_tokens
    return [_gin("DATA_DIR", self.data_dir("clean")), _gin("SEED", self.seed),
            _gin("MAX_NEW_TOKENS", new),
            *([_gin("LOOP_ROWS", s.decode_loop_rows)] if s.decode_loop_rows else [])]

  def _policy_stages(self) -> list[Stage]:
    s, out = self.scale, []
    for setting in self.settings:
      suffix = self._setting_suffix(setting)
      for m in self._warm_ms_needed(setting):
        out.append(Stage(f"average/warm_{m}{suffix}", lambda m=m, setting=setting: _py(
            "warm_jax.average", "--inputs", *self.ranked_members(setting)[:m],
            "--output", self.warm_dir(m, setting), "--overwrite"),
            self.path("average", f"warm_{m}{suffix}")))
    # The scheduler starts the stages that are ready in plan order, so the policy stages come
    # longest first: the RL runs, those scoring with the most reward models (ENS M) first, then
    # best-of-N; the experiment then ends on a short stage instead of a long one running alone.
    if s.rl_steps:
      for run, reward, kl_coef, setting in sorted(
          self.rl_runs(), key=lambda rl_run: -_reward_passes(rl_run[1])):
        out.append(Stage(f"rl/{run}", lambda run=run, reward=reward, kl_coef=kl_coef,
                         setting=setting: _py(
            "warm_jax.train", *self._model(), "--gin_file=gin/rl.gin",
            *self._policy_common(), _gin("SFT_DIR", self.path("sft")),
            _gin("MODEL_DIR", self.path("rl", run)),
            f"--gin.REWARD_MODEL={self.reward_spec(reward, setting=setting)!r}",
            "--gin.DISAGREEMENT_MEMBERS="
            f"{self.rl_disagreement_members(reward, setting)!r}",
            _gin("TRAIN_STEPS", s.rl_steps), _gin("BATCH_SIZE", s.rl_batch),
            _gin("LEARNING_RATE", s.rl_learning_rate), _gin("KL_COEF", kl_coef),
            _gin("VALUE_WARMUP_STEPS", s.rl_value_warmup),
            _gin("POLICY_WARMUP_STEPS", s.rl_policy_warmup),
            _gin("BASELINE", s.rl_baseline), _gin("SAMPLES_PER_PROMPT", s.rl_samples_per_prompt),
            _gin("EVAL_EVERY", s.rl_eval_every), _gin("SAVE_EVERY", s.rl_eval_every),
            _gin("NUM_EVAL_PROMPTS", s.rl_eval_prompts),
            _gin("TrainerConfig.microbatches", s.rl_microbatches)), self.path("rl", run)))
    for setting in self.settings:  # `bon`, and `bon_corrupt` with ExperimentScale.bon_corrupt
      if s.bon_prompts and (setting == "clean" or s.bon_corrupt):
        out.append(Stage(os.path.basename(self.bon_dir(setting)),
                         lambda setting=setting: self._bon_argv(setting), self.bon_dir(setting)))
    if s.rl_steps:
      if s.rl_rewards and s.win_rate_prompts:
        def win_argv():
          from warm_jax.policy.win_rates import FINAL_SUFFIX, best_checkpoint
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

  def bon_dir(self, setting: str = "clean") -> str:
    """best-of-N's output: `bon` (the clean members select), `bon_corrupt` (the corrupted)."""
    return self.path(f"bon{self._setting_suffix(setting)}")

  def _bon_argv(self, setting: str) -> list[str]:
    """best-of-N with the setting's members, WARM / ENS / WCO / UWO M of them as selectors; the
    pools (prompts, seed, N) are the same for both settings."""
    s = self.scale
    ranked = self.ranked_members(setting)
    models = {os.path.basename(p): p for p in ranked}
    for m in s.warm_ms:  # WCO / UWO reuse the members' rewards: a combine each
      for kind in ENSEMBLE_KINDS:
        models[f"{kind}_{m}"] = self.reward_spec(f"{kind}_{m}", stage="bon", setting=setting)
    # Member disagreement (bon.py step 6): a WARM M checkpoint is flagged by the M members
    # it averages, the best member by the members of the largest M (all are selectors, so
    # their rewards are reused); ENS / WCO / UWO M use their own members.
    flags = {f"warm_{m}": ranked[:m] for m in s.warm_ms}
    if s.warm_ms:
      flags[os.path.basename(ranked[0])] = ranked[:max(s.warm_ms)]
    return _py("warm_jax.train", *self._model(), "--gin_file=gin/bon.gin",
               *self._policy_common(), _gin("SFT_DIR", self.path("sft")),
               _gin("OUTPUT_DIR", self.bon_dir(setting)), _gin("N_MAX", s.bon_n_max),
               _gin("NUM_PROMPTS", s.bon_prompts), _gin("BATCH_SIZE", s.policy_batch),
               *([_gin("SCORE_BATCH_SIZE", s.bon_score_batch)] if s.bon_score_batch
                 else []),
               f"--gin.REWARD_MODELS={models!r}",
               f"--gin.DISAGREEMENT_MEMBERS={flags!r}")

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
    from warm_jax.rm.members import MemberSweep, draw_member
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

  def _pretraining_pair_stages(self) -> list[Stage]:
    """Remark 1's reason at a scale where from-scratch RMs stay at chance: a second
    pre-training and SFT of the RMs' start (its own seed), its linear probe, member 0's recipe
    from it (`pairs/two_pretrainings`), and one evaluation of the LMC curves of that pair and of
    the two-data-orders pair on the same pairs (`eval/pretraining_pair`), so that their bumps
    are compared paired. Nothing else reads these stages."""
    s = self.scale
    chain = self._language_model_stages(
        "pretraining_pair/pretrain", "pretraining_pair/sft",
        s.rm_pretrain_steps or s.pretrain_steps,
        seed=self.seed + PRETRAINING_PAIR_SEED_OFFSET)
    sft, probe = self.path("pretraining_pair", "sft"), self.path("pretraining_pair", "probe")
    chain.append(Stage("pretraining_pair/probe", self._train(
        "gin/linear_probe.gin", _gin("DATA_DIR", self.rm_data_dir("clean")),
        _gin("SFT_DIR", sft), _gin("MODEL_DIR", probe)), probe))
    common = self._rm_common("clean", sft_dir=sft, probe_dir=probe)
    member = self.path("pairs", "two_pretrainings")
    if s.vmapped_members:
      argv = self._train("gin/rm_members.gin", *common, _gin("MEMBERS_DIR", self.path("pairs")),
                         _gin("NUM_MEMBERS", 1),
                         f"--gin.MEMBER_VARIANTS={ {'two_pretrainings': {}}!r}")
    else:
      argv = self._train("gin/rm.gin", *common, _gin("MEMBERS_DIR", self.path("pairs")),
                         _gin("MEMBER_DIR", member), "--gin.MEMBER_OVERRIDES={}")
    chain.append(Stage("pairs/two_pretrainings", argv, member))
    member0 = self.path("members", "clean", "member_0")
    pairs = {"two_data_orders": (member0, self.path("pairs", "data_order")),
             "two_pretrainings": (member0, member)}
    chain.append(Stage("eval/pretraining_pair", _py(
        "warm_jax.evaluate", *self._model(), "--gin_file=gin/evaluate.gin",
        _gin("DATA_DIR", self.rm_data_dir("clean")),
        _gin("OUTPUT_DIR", self.path("eval", "pretraining_pair")),
        _gin("BATCH_SIZE", s.eval_batch), _gin("MAX_PAIRS", s.eval_max_pairs),
        _gin("LMC_LAMBDAS", tuple(s.lmc_lambdas)), f"--gin.LMC_PAIRS={pairs!r}"),
        self.path("eval", "pretraining_pair")))
    return chain

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
  elif kind == "rm_pretrain":
    deps = ["data/clean"]
  elif kind == "rm_sft":
    deps = ["rm_pretrain"]
  elif kind == "rm_data":
    deps = ["sft", "pretrain", "data/clean"]
  elif kind == "probe":
    deps = ["sft", "rm_sft", f"data/{setting}"] + having("rm_data")
  elif kind == "members":
    deps = [f"probe/{setting}"]
  elif kind == "pretraining_pair":  # pretrain -> sft -> probe (on the RM data)
    deps = {"pretrain": ["data/clean"], "sft": ["pretraining_pair/pretrain"],
            "probe": ["pretraining_pair/sft", "data/clean"] + having("rm_data")}[rest]
  elif name == "pairs/two_pretrainings":
    deps = ["pretraining_pair/probe"]
  elif kind == "pairs":
    deps = ["probe/clean"]
  elif name == "eval/pretraining_pair":  # member 0, the data-order pair and the new one
    deps = having("members/clean") + having("rm_data") + [
        p for p in having("pairs")
        if p in ("pairs/shared_start", "pairs/data_order", "pairs/two_pretrainings")]
  elif kind == "eval":
    deps = having(f"members/{setting}") + having("rm_data") + (
        [p for p in having("pairs") if p != "pairs/two_pretrainings"]
        if setting == "clean" else [])
  elif kind == "average":  # the setting's ranking of its members
    deps = ["eval/corrupt" if name.endswith(CORRUPT_SUFFIX) else "eval/clean"]
  elif kind in ("bon", "rl", f"bon{CORRUPT_SUFFIX}"):  # its setting's members and averages
    corrupt = name.endswith(CORRUPT_SUFFIX)
    deps = ["eval/corrupt" if corrupt else "eval/clean", "sft"] + [
        a for a in having("average") if a.endswith(CORRUPT_SUFFIX) == corrupt]
  elif kind == "win_rates":
    deps = having("rl") + ["sft"]
  else:
    raise ValueError(f"stage {name!r} has no entry in experiment.stage_dependencies")
  return tuple(d for d in deps if d in names)
