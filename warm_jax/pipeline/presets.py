"""The experiment's scale presets: every size, step count and recipe choice of a run.

Where it sits: the first piece of the pipeline driver (`warm_jax.pipeline`). An `ExperimentScale`
is what a preset in gin/experiments/*.gin (`run_experiment.scales`) plus the ablations'
OVERRIDES become; `plan.ExperimentPlan` turns it into stages.
"""

from __future__ import annotations

import dataclasses


STAGE_DONE = "STAGE_DONE"
# Reward names '<kind>_<M>' of the top M members (ExperimentPlan.reward_spec): WARM (weight
# average), ENS (mean reward), Coste et al.'s WCO (min) and UWO (mean - lambda * variance, with
# Coste's lambda: 0.5 for best-of-N, 0.1 for RL)
ENSEMBLE_KINDS = ("warm", "ens", "wco", "uwo")
# the name suffix of what is computed from the corrupted setting's members: RL runs
# rl/<reward>_corrupt and their WARM averages average/warm_<M>_corrupt
CORRUPT_SUFFIX = "_corrupt"
UWO_LAMBDA = {"bon": 0.5, "rl": 0.1}
RL_TEMPERATURE = 0.9  # the best-of-N / RL sampling temperature (gin/bon.gin, gin/rl.gin; paper)


class StageFailed(RuntimeError):
  """A stage exited non-zero; its log says why. Rerunning the experiment resumes it."""


SETTINGS = ("clean", "corrupt")
DIVERSITY_SOURCES = ("all", "data_order", "learning_rate", "dropout", "baklava")


# The training seed of the pretraining pair's second chain: the experiment's seed + this
# (ExperimentScale.pretraining_pair)
PRETRAINING_PAIR_SEED_OFFSET = 1000

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
  # rows per decoding loop of best-of-N, RL and win rates (SamplingConfig.loop_rows; None: the
  # whole sampling batch): a loop runs until its slowest row ends (~1.3-1.5x more samples a
  # second in loops of 32 on CPU, the same tokens; bench/RESULTS.md section 11)
  decode_loop_rows: int | None = None
  # rows per best-of-N reward-model scoring call (None: policy_batch; the same rewards)
  bon_score_batch: int | None = None
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
  # the on-policy RM data (`warm_jax.policy.on_policy`, synthetic data): rm_train / id_val pairs
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
  # RL against the corrupted setting's reward models (the paper's RL with 25% corrupted labels,
  # fig. 8, at its alpha 0.01): the reward names of rl_rewards, read from the members of the
  # 'corrupt' setting ranked by their ID-val accuracy, as the stages rl/<reward>_corrupt (WARM M
  # averaged in average/warm_<M>_corrupt); () skips them (docs/policy.md, "Best-of-N and RL
  # against the corrupted setting's reward models")
  rl_corrupt_rewards: tuple[str, ...] = ()
  rl_corrupt_kl_coef: float = 0.01
  # best-of-N with the corrupted setting's members as the selectors too (stage bon_corrupt: the
  # same prompts, seed, N and so the same pools as `bon`; every corrupted member, WARM / ENS /
  # WCO / UWO M of them, WARM M averaged in average/warm_<M>_corrupt); nothing without
  # bon_prompts, as rl_corrupt_rewards is nothing without rl_steps
  bon_corrupt: bool = False
  win_rate_prompts: int = 128
  # the SFT steps the members start from (None: every Baklava step, the paper's Baklava);
  # baklava_steps still give the LMC Baklava pair and the on-policy data's policies
  member_sft_steps: tuple[int, ...] | None = None
  # the reward models' own shared start (None: the policy's SFT, the paper's setup): a second
  # language model pre-trained for this many steps (same corpus, batch and seed) and fine-tuned
  # with the same SFT recipe, as the stages rm_pretrain and rm_sft; the probe, the members, the
  # LMC pairs and so every RM start from it, while the RM data, best-of-N, RL and the win rates
  # keep the policy's chain (docs/experiment.md, "The reward models' own start"). The embedded
  # default's preset sets 1,500 (gin/experiments/warm_synthetic_tldr.gin)
  rm_pretrain_steps: int | None = None
  # Remark 1's reason, where the from-scratch pair cannot show it (it stays at chance in the
  # budget): member 0's recipe from a second, independent pre-training and SFT of the RMs'
  # start (seed + PRETRAINING_PAIR_SEED_OFFSET), and the LMC curve between it and member 0 beside
  # a shared-start pair on the same pairs (stages pretraining_pair/*, pairs/two_pretrainings,
  # eval/pretraining_pair; docs/experiment.md, "Two pre-trainings")
  pretraining_pair: bool = False
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
    if self.rm_pretrain_steps is not None and self.rm_pretrain_steps <= 0:
      raise ValueError(f"ExperimentScale.rm_pretrain_steps={self.rm_pretrain_steps}: must be "
                       "positive, or None for RMs that start from the policy's SFT")
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
    for field in ("rl_rewards", "rl_corrupt_rewards"):
      for name in getattr(self, field):
        kind, _, m = name.partition("_")
        if name != "best_member" and not (kind in ENSEMBLE_KINDS and m.isdigit() and
                                          2 <= int(m) <= self.num_members):
          raise ValueError(f"ExperimentScale.{field}: {name!r} is not 'best_member' or "
                           f"'<kind>_<M>' with kind in {ENSEMBLE_KINDS} and M in "
                           f"2..{self.num_members}")
    if self.rl_corrupt_rewards and self.rl_steps and (self.data_source != "synthetic"
                                                      or self.corruption_rate <= 0):
      raise ValueError(f"ExperimentScale.rl_corrupt_rewards={self.rl_corrupt_rewards}: needs "
                       "the corrupted setting (synthetic data, corruption_rate > 0); set it to "
                       "()")
    if self.bon_corrupt and self.bon_prompts and (self.data_source != "synthetic"
                                                  or self.corruption_rate <= 0):
      raise ValueError("ExperimentScale.bon_corrupt=True: needs the corrupted setting "
                       "(synthetic data, corruption_rate > 0); set it to False")
    if self.rl_corrupt_kl_coef < 0:
      raise ValueError(f"ExperimentScale.rl_corrupt_kl_coef={self.rl_corrupt_kl_coef}: must "
                       "be >= 0")
    if self.member_diversity not in DIVERSITY_SOURCES:
      raise ValueError(f"ExperimentScale.member_diversity={self.member_diversity!r}: use one of "
                       f"{DIVERSITY_SOURCES}")
    for batch, micro in (("pretrain_batch", "lm_microbatches"), ("sft_batch", "lm_microbatches"),
                         ("rm_batch", "rm_microbatches"), ("rl_batch", "rl_microbatches")):
      if getattr(self, micro) < 1 or getattr(self, batch) % getattr(self, micro):
        raise ValueError(f"ExperimentScale.{micro}={getattr(self, micro)} must be >= 1 and "
                         f"divide {batch}={getattr(self, batch)}")
    if self.decode_loop_rows is not None:
      for batch in ("policy_batch", "rl_batch"):
        size = getattr(self, batch)
        if self.decode_loop_rows < 1 or size % min(self.decode_loop_rows, size):
          raise ValueError(f"ExperimentScale.decode_loop_rows={self.decode_loop_rows}: must be "
                           f">= 1 and divide {batch}={size} (or be at least it), or None")
    if self.bon_score_batch is not None and self.bon_score_batch < 1:
      raise ValueError(f"ExperimentScale.bon_score_batch={self.bon_score_batch}: >= 1 or None")
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
