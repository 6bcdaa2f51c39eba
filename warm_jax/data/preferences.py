"""Preference pairs and the data splits of the synthetic world.

Where it sits in the pipeline: `build_splits` is the one entry point from the world
(`world.py`) to every training stage: the pre-training corpus (posts + reference TL;DRs), the
SFT examples (post -> reference), the reward-model pairs (train, ID validation, OOD), and the
held-out prompts for best-of-N and RL. Labels come from the gold reward (`gold_reward.py`).

How a pair is made (one numpy RNG per (seed, split, pair index), so a split is prefix-stable):
1. Take post j % n_posts of the split; draw two generator names from the split's mix (ID mix
   for train and ID val, OOD mix for OOD) and write a candidate with each. For OOD, when a
   `policy_sampler` is given, each candidate is instead a policy sample with probability
   `ood_policy_rate` (the paper's OOD set was sampled from policies at high temperature).
2. Reject the draw if the texts are equal, the gold rewards tie, or (when the split's
   longer-is-better knob is set) the lengths tie or "the longer one has the higher gold" does not
   match this pair's target; the target is True with probability `id_longer_is_better_rate`
   (train, ID val) or `ood_longer_is_better_rate` (OOD). This is the spurious feature: in ID,
   length mostly predicts the label; in OOD it is uninformative or mildly reversed.
3. Label by Bradley-Terry: P(a preferred) = sigmoid((gold_a - gold_b) / temperature); this is
   the natural label noise (13-16% of labels disagree with the gold sign at temperature 1).
4. Train only: exactly round(corruption_rate * n_train_pairs) pairs, chosen at random, get their
   label swapped and `corrupted=True` (the paper's 25% corruption experiments).
Accuracy on ID val and OOD is meant to be measured against the gold sign (`gold_label`).
`build_ood_pairs` is step 1-3 for OOD alone: the data build calls it without a sampler (no
policy exists yet); `warm_jax.policy.policy_pairs` calls it after SFT with the SFT model as the
sampler, on its own stream (`POLICY_PAIRS_SPLIT`), to write the `ood_policy` evaluation split.

Measured with the default WorldConfig (seed 0; `stats`): label noise 0.130 train / 0.146 ID val
/ 0.163 OOD (Bradley-Terry predicts 0.140 / 0.142 / 0.184); longer-is-better 0.80 / 0.81 / 0.42;
correlation of length_a - length_b with the label +0.36 train (+0.17 with 25% corruption) /
+0.40 ID val / -0.11 OOD. Mean gold per generator: reference 8.0, drop_1 6.0, drop_2 3.9,
drop_3 2.0, truncate 4.8, hallucinate 4.0, hallucinate_long 4.7, filler 5.9, repeat 4.9,
verbose 6.7. Build time on 1 CPU core: 5,000 train pairs ~2.8 s; the whole default build ~7 s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from warm_jax.data import world
from warm_jax.data.gold_reward import count_words, gold_reward

POLICY_GENERATOR = "policy"
SPLIT_NAMES = ("rm_train", "id_val", "ood")
# The OOD split of policy samples that `warm_jax.policy.policy_pairs` builds after SFT (its own
# random stream, so its pairs never replay the data dir's OOD pairs).
POLICY_PAIRS_SPLIT = "ood_policy"
_SPLIT_STREAMS = {"rm_train": 11, "id_val": 12, "ood": 13,
                  POLICY_PAIRS_SPLIT: 14}  # seed-sequence stream per split
# The on-policy RM data's pairs of policy samples (`build_sample_pairs`), one stream per split.
_SAMPLE_PAIR_STREAMS = {"rm_train": 31, "id_val": 32, "id_policy": 33, "ood_policy": 34}
_CORRUPTION_STREAM = 21
_POLICY_STREAM = 22
GOLD_TIE_TOLERANCE = 1e-9

# ID leans to reference/drop/truncate, OOD to filler/repeat/verbose/hallucinate_long; every
# generator appears in both so the true features are learnable from ID data.
DEFAULT_ID_MIX: Mapping[str, float] = {
    "reference": 0.16, "drop_1": 0.14, "drop_2": 0.11, "drop_3": 0.07, "truncate": 0.14,
    "hallucinate": 0.12, "hallucinate_long": 0.05, "filler": 0.08, "repeat": 0.07, "verbose": 0.06,
}
DEFAULT_OOD_MIX: Mapping[str, float] = {
    "reference": 0.06, "drop_1": 0.05, "drop_2": 0.04, "drop_3": 0.02, "truncate": 0.05,
    "hallucinate": 0.08, "hallucinate_long": 0.18, "filler": 0.18, "repeat": 0.17, "verbose": 0.17,
}


class PolicySampler(Protocol):
  """Samples one summary per prompt from a model: called as (prompts, temperature, rng)."""

  def __call__(self, prompts: Sequence[str], temperature: float,
               rng: np.random.Generator) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Sizes, seeds and knobs of the synthetic world's splits (posts of splits are disjoint)."""

  seed: int = 0
  n_pretrain_posts: int = 20_000
  n_sft_posts: int = 5_000
  n_train_posts: int = 2_000
  n_train_pairs: int = 5_000
  n_val_posts: int = 500
  n_val_pairs: int = 1_000
  n_ood_posts: int = 500
  n_ood_pairs: int = 1_000
  n_prompts: int = 500
  temperature: float = 1.0  # Bradley-Terry temperature of the labels
  corruption_rate: float = 0.0  # fraction of TRAIN labels swapped (paper: 0.25)
  # the length knob (an ablation): None rejects no pair for its lengths (the natural rate);
  # a rate forces the share of pairs where the longer summary is the better one
  id_longer_is_better_rate: float | None = None
  ood_longer_is_better_rate: float | None = None
  id_mix: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_ID_MIX))
  ood_mix: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_OOD_MIX))
  ood_policy_rate: float = 0.3  # share of OOD candidates from policy_sampler, when one is given
  policy_temperature: float = 1.0
  policy_samples_per_post: int = 4
  max_rejection_tries: int = 2_000

  def __post_init__(self):
    counts = ("n_pretrain_posts", "n_sft_posts", "n_train_posts", "n_train_pairs",
              "n_val_posts", "n_val_pairs", "n_ood_posts", "n_ood_pairs", "n_prompts")
    for name in counts:
      value = getattr(self, name)
      if not isinstance(value, int) or value < 0:
        raise ValueError(f"WorldConfig.{name}={value!r}: must be an int >= 0")
    for pairs, posts in (("n_train_pairs", "n_train_posts"), ("n_val_pairs", "n_val_posts"),
                         ("n_ood_pairs", "n_ood_posts")):
      if getattr(self, pairs) > 0 and getattr(self, posts) == 0:
        raise ValueError(f"WorldConfig.{pairs}={getattr(self, pairs)} needs posts: set "
                         f"{posts} >= 1 (or {pairs}=0)")
    for name in ("temperature", "policy_temperature"):
      if not getattr(self, name) > 0:
        raise ValueError(f"WorldConfig.{name}={getattr(self, name)!r}: must be > 0")
    for name in ("corruption_rate", "ood_policy_rate", "id_longer_is_better_rate",
                 "ood_longer_is_better_rate"):
      value = getattr(self, name)
      if value is None and name.endswith("longer_is_better_rate"):
        continue
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"WorldConfig.{name}={value!r}: must lie in [0, 1]"
                         + (" (or None to disable the length knob)"
                            if name.endswith("longer_is_better_rate") else ""))
    for name in ("policy_samples_per_post", "max_rejection_tries"):
      if getattr(self, name) < 1:
        raise ValueError(f"WorldConfig.{name}={getattr(self, name)!r}: must be >= 1")
    for name in ("id_mix", "ood_mix"):
      mix = getattr(self, name)
      unknown = [k for k in mix if k not in world.GENERATORS]
      if unknown:
        raise ValueError(f"WorldConfig.{name} has unknown generators {unknown}: use "
                         f"names from {sorted(world.GENERATORS)}")
      if any(w < 0 for w in mix.values()) or not sum(mix.values()) > 0:
        raise ValueError(f"WorldConfig.{name}={dict(mix)}: weights must be >= 0 with a "
                         "positive sum")

  def post_ranges(self) -> dict[str, tuple[int, int]]:
    """Split -> (first post index, number of posts); the ranges are disjoint."""
    sizes = (("pretrain", self.n_pretrain_posts), ("sft", self.n_sft_posts),
             ("rm_train", self.n_train_posts), ("id_val", self.n_val_posts),
             ("ood", self.n_ood_posts), ("prompts", self.n_prompts))
    ranges, start = {}, 0
    for name, n in sizes:
      ranges[name] = (start, n)
      start += n
    return ranges


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  """Two summaries of one post and which one the labeller preferred.

  label: index of the preferred summary (0: summary_a, 1: summary_b) -- what an RM trains on.
  clean_label: the Bradley-Terry label before corruption; corrupted: label != clean_label.
  gold_a / gold_b: gold rewards; length_a / length_b: words (gold_reward.count_words).
  """

  post_id: str
  prompt: str
  summary_a: str
  summary_b: str
  generator_a: str
  generator_b: str
  gold_a: float
  gold_b: float
  length_a: int
  length_b: int
  label: int
  clean_label: int
  corrupted: bool

  @property
  def chosen(self) -> str:
    return self.summary_b if self.label else self.summary_a

  @property
  def rejected(self) -> str:
    return self.summary_a if self.label else self.summary_b

  @property
  def gold_label(self) -> int:
    """Index of the summary with the higher gold reward (pairs never tie)."""
    return int(self.gold_b > self.gold_a)


@dataclasses.dataclass(frozen=True)
class SFTExample:
  post_id: str
  prompt: str  # post + " TL;DR:"
  target: str  # reference TL;DR


@dataclasses.dataclass(frozen=True)
class WorldSplits:
  """Everything the pipeline trains and evaluates on. `posts` maps post_id -> Post for every
  post of sft, rm_train, id_val, ood and prompts (to re-score any text with the gold reward)."""

  config: WorldConfig
  pretrain_texts: tuple[str, ...]
  sft_examples: tuple[SFTExample, ...]
  rm_train: tuple[PreferencePair, ...]
  id_val: tuple[PreferencePair, ...]
  ood: tuple[PreferencePair, ...]
  prompt_posts: tuple[world.Post, ...]
  posts: Mapping[str, world.Post]

  def pairs(self, split: str) -> tuple[PreferencePair, ...]:
    if split not in SPLIT_NAMES:
      raise ValueError(f"unknown split {split!r}: use one of {SPLIT_NAMES}")
    return getattr(self, split)


def _sigmoid(x: float) -> float:
  return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _normalized_mix(mix: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
  names = [k for k, w in mix.items() if w > 0]
  weights = np.array([mix[k] for k in names], dtype=np.float64)
  return names, weights / weights.sum()


def _sample_policy_pool(*, posts: Sequence[world.Post], config: WorldConfig,
                        policy_sampler: PolicySampler) -> dict[str, list[str]]:
  """policy_samples_per_post samples per post, in one batched call."""
  k = config.policy_samples_per_post
  prompts = [post.prompt for post in posts for _ in range(k)]
  rng = np.random.default_rng([config.seed, _POLICY_STREAM])
  samples = policy_sampler(prompts, config.policy_temperature, rng)
  if len(samples) != len(prompts) or not all(isinstance(s, str) for s in samples):
    raise ValueError(f"policy_sampler returned {len(samples)} items for {len(prompts)} "
                     "prompts: it must return one str per prompt, in order")
  return {post.post_id: list(samples[i * k:(i + 1) * k]) for i, post in enumerate(posts)}


def _build_pairs(*, split: str, posts: Sequence[world.Post], n_pairs: int,
                 mix: Mapping[str, float], longer_is_better_rate: float | None,
                 config: WorldConfig, policy_pool: Mapping[str, list[str]] | None
                 ) -> list[PreferencePair]:
  names, probs = _normalized_mix(mix)
  pairs = []
  for j in range(n_pairs):
    rng = np.random.default_rng([config.seed, _SPLIT_STREAMS[split], j])
    post = posts[j % len(posts)]
    target = None if longer_is_better_rate is None else bool(rng.random() < longer_is_better_rate)

    def candidate() -> tuple[str, str]:
      if policy_pool is not None and rng.random() < config.ood_policy_rate:
        samples = policy_pool[post.post_id]
        return POLICY_GENERATOR, samples[int(rng.integers(len(samples)))]
      name = names[int(rng.choice(len(names), p=probs))]
      return name, world.generate_summary(post=post, generator_name=name, rng=rng)

    for _ in range(config.max_rejection_tries):
      (gen_a, text_a), (gen_b, text_b) = candidate(), candidate()
      if text_a == text_b:
        continue
      gold_a = gold_reward(post=post, summary_text=text_a)
      gold_b = gold_reward(post=post, summary_text=text_b)
      if abs(gold_a - gold_b) <= GOLD_TIE_TOLERANCE:
        continue
      len_a, len_b = count_words(text_a), count_words(text_b)
      if target is not None and (
          len_a == len_b or ((len_a > len_b) == (gold_a > gold_b)) != target):
        continue
      break
    else:
      knob = ("ood_longer_is_better_rate" if split in ("ood", POLICY_PAIRS_SPLIT)
              else "id_longer_is_better_rate")
      raise RuntimeError(
          f"{split} pair {j} (post {post.post_id}): no candidate pair with distinct texts, "
          f"distinct gold rewards and longer_is_better={target} in "
          f"{config.max_rejection_tries} tries: give the mix more generators, move "
          f"WorldConfig.{knob} toward 0.5 (or None), or raise max_rejection_tries")
    p_a = _sigmoid((gold_a - gold_b) / config.temperature)
    label = 0 if rng.random() < p_a else 1
    pairs.append(PreferencePair(
        post_id=post.post_id, prompt=post.prompt, summary_a=text_a, summary_b=text_b,
        generator_a=gen_a, generator_b=gen_b, gold_a=gold_a, gold_b=gold_b,
        length_a=len_a, length_b=len_b, label=label, clean_label=label, corrupted=False))
  return pairs


def _corrupt(pairs: list[PreferencePair], *, rate: float, seed: int) -> list[PreferencePair]:
  """Swap the labels of exactly round(rate * len(pairs)) pairs chosen at random."""
  n_flip = round(rate * len(pairs))
  rng = np.random.default_rng([seed, _CORRUPTION_STREAM])
  flip = set(rng.choice(len(pairs), size=n_flip, replace=False).tolist()) if n_flip else set()
  return [dataclasses.replace(p, label=1 - p.label, corrupted=True) if i in flip else p
          for i, p in enumerate(pairs)]


def build_ood_pairs(*, config: WorldConfig, posts: Sequence[world.Post],
                    policy_sampler: PolicySampler | None = None, split: str = "ood"
                    ) -> tuple[list[PreferencePair], dict[str, list[str]] | None]:
  """config.n_ood_pairs OOD pairs over `posts`, as `build_splits` makes its OOD split.

  Candidates come from config.ood_mix; with a policy_sampler, each candidate is instead one of
  the post's config.policy_samples_per_post policy samples (drawn once, at
  config.policy_temperature) with probability config.ood_policy_rate. The length knob is
  config.ood_longer_is_better_rate; labels are Bradley-Terry at config.temperature, never
  corrupted. split: 'ood' (the data build) or POLICY_PAIRS_SPLIT (`policy_pairs`: the same
  recipe on its own random stream).

  Returns (pairs, policy pool: post_id -> its samples, or None when no sampler was used).
  """
  if split not in ("ood", POLICY_PAIRS_SPLIT):
    raise ValueError(f"build_ood_pairs split={split!r}: use 'ood' or {POLICY_PAIRS_SPLIT!r}")
  if config.n_ood_pairs > 0 and not posts:
    raise ValueError(f"build_ood_pairs: {config.n_ood_pairs} pairs asked but no posts given")
  policy_pool = None
  if policy_sampler is not None and config.ood_policy_rate > 0 and config.n_ood_pairs > 0:
    policy_pool = _sample_policy_pool(posts=posts, config=config,
                                      policy_sampler=policy_sampler)
  pairs = _build_pairs(split=split, posts=posts, n_pairs=config.n_ood_pairs,
                       mix=config.ood_mix, longer_is_better_rate=config.ood_longer_is_better_rate,
                       policy_pool=policy_pool, config=config)
  return pairs, policy_pool


def build_splits(*, config: WorldConfig,
                 policy_sampler: PolicySampler | None = None) -> WorldSplits:
  """All data of the synthetic world for `config` (deterministic given config.seed).

  policy_sampler: optional model sampler used for a share (config.ood_policy_rate) of the OOD
  candidates; without one the OOD pairs come from the OOD generator mix only.
  """
  ranges = config.post_ranges()

  def posts_of(split: str) -> list[world.Post]:
    start, n = ranges[split]
    return world.generate_posts(seed=config.seed, n=n, start=start)

  pretrain_texts = tuple(world.format_example(p.text, p.reference) for p in posts_of("pretrain"))
  sft_posts, train_posts, val_posts, ood_posts, prompt_posts = (
      posts_of(s) for s in ("sft", "rm_train", "id_val", "ood", "prompts"))
  rm_train = _build_pairs(split="rm_train", posts=train_posts, n_pairs=config.n_train_pairs,
                          mix=config.id_mix, longer_is_better_rate=config.id_longer_is_better_rate,
                          policy_pool=None, config=config)
  rm_train = _corrupt(rm_train, rate=config.corruption_rate, seed=config.seed)
  id_val = _build_pairs(split="id_val", posts=val_posts, n_pairs=config.n_val_pairs,
                        mix=config.id_mix, longer_is_better_rate=config.id_longer_is_better_rate,
                        policy_pool=None, config=config)
  ood, _ = build_ood_pairs(config=config, posts=ood_posts, policy_sampler=policy_sampler)
  all_posts = [*sft_posts, *train_posts, *val_posts, *ood_posts, *prompt_posts]
  return WorldSplits(
      config=config, pretrain_texts=pretrain_texts,
      sft_examples=tuple(SFTExample(post_id=p.post_id, prompt=p.prompt, target=p.reference)
                         for p in sft_posts),
      rm_train=tuple(rm_train), id_val=tuple(id_val), ood=tuple(ood),
      prompt_posts=tuple(prompt_posts), posts={p.post_id: p for p in all_posts})


def build_sample_pairs(*, split: str, posts: Sequence[world.Post],
                       candidates: Mapping[str, Sequence[tuple[str, str]]], pairs_per_post: int,
                       temperature: float, seed: int,
                       longer_is_better_rate: float | None = None) -> list[PreferencePair]:
  """Comparisons of the given summaries of each post (the on-policy RM data's pairs).

  For post j (in order), its candidates (generator name, text) are deduplicated by text (the
  first generator of a text is kept), scored by the gold reward, and up to `pairs_per_post`
  distinct pairs of candidates with different gold rewards are drawn at random without
  replacement (one RNG per (seed, split, j)); each pair's a/b order is a fair coin, its label
  Bradley-Terry at `temperature`, never corrupted (`corrupt` does that for training sets).
  Equal lengths are kept. longer_is_better_rate (a data knob for ablations, default None:
  no rejection): each pair slot draws whether the longer summary must be the better one and
  takes a pair of distinct lengths that matches, or stays empty when none does.

  split: 'rm_train', 'id_val', 'id_policy' or 'ood_policy' (its random stream).
  """
  if split not in _SAMPLE_PAIR_STREAMS:
    raise ValueError(f"build_sample_pairs split={split!r}: use one of "
                     f"{tuple(_SAMPLE_PAIR_STREAMS)}")
  if pairs_per_post < 1:
    raise ValueError(f"pairs_per_post={pairs_per_post}: must be >= 1")
  out = []
  for j, post in enumerate(posts):
    rng = np.random.default_rng([seed, _SAMPLE_PAIR_STREAMS[split], j])
    seen, cands = set(), []
    for generator, text in candidates.get(post.post_id, ()):
      if text not in seen:
        seen.add(text)
        cands.append((generator, text, gold_reward(post=post, summary_text=text),
                      count_words(text)))
    options = [(a, b) for a in range(len(cands)) for b in range(a + 1, len(cands))
               if abs(cands[a][2] - cands[b][2]) > GOLD_TIE_TOLERANCE]
    order = list(rng.permutation(len(options)))
    chosen = []
    if longer_is_better_rate is None:
      chosen = [options[k] for k in order[:pairs_per_post]]
    else:
      for _ in range(pairs_per_post):
        target = bool(rng.random() < longer_is_better_rate)
        for k in order:
          a, b = options[k]
          (_, _, ga, la), (_, _, gb, lb) = cands[a], cands[b]
          if la != lb and ((la > lb) == (ga > gb)) == target:
            chosen.append(options[k])
            order.remove(k)
            break
    for a, b in chosen:
      if rng.random() < 0.5:
        a, b = b, a
      (gen_a, text_a, gold_a, len_a), (gen_b, text_b, gold_b, len_b) = cands[a], cands[b]
      label = 0 if rng.random() < _sigmoid((gold_a - gold_b) / temperature) else 1
      out.append(PreferencePair(
          post_id=post.post_id, prompt=post.prompt, summary_a=text_a, summary_b=text_b,
          generator_a=gen_a, generator_b=gen_b, gold_a=gold_a, gold_b=gold_b,
          length_a=len_a, length_b=len_b, label=label, clean_label=label, corrupted=False))
  return out


def corrupt(pairs: Sequence[PreferencePair], *, rate: float, seed: int
            ) -> list[PreferencePair]:
  """Swaps the labels of exactly round(rate * len(pairs)) pairs chosen at random (seeded),
  marking them corrupted: the paper's label corruption of a training set."""
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"corruption rate {rate!r}: must lie in [0, 1]")
  return _corrupt(list(pairs), rate=rate, seed=seed)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation; NaN when either side is constant or there are < 2 points."""
  if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
    return float("nan")
  return float(np.corrcoef(x, y)[0, 1])


def pair_split_stats(pairs: Sequence[PreferencePair], *, temperature: float
                     ) -> dict[str, float]:
  """The per-split statistics of `stats` for one non-empty list of pairs (names without the
  split prefix): label_noise_rate, bt_expected_noise_rate, corruption_rate, length_label_corr,
  length_gold_corr, longer_is_better_rate, equal_length_rate (pairs whose sides have the same
  number of words)."""
  if not pairs:
    raise ValueError("pair_split_stats needs at least one pair")
  gold_gap = np.array([p.gold_a - p.gold_b for p in pairs])
  len_gap = np.array([p.length_a - p.length_b for p in pairs], dtype=np.float64)
  a_preferred = np.array([p.label == 0 for p in pairs], dtype=np.float64)
  a_gold_better = (gold_gap > 0).astype(np.float64)
  clean = np.array([p.clean_label for p in pairs])
  gold = np.array([p.gold_label for p in pairs])
  differ = len_gap != 0
  return {
      "label_noise_rate": float(np.mean(clean != gold)),
      "bt_expected_noise_rate": float(np.mean(
          [_sigmoid(-abs(g) / temperature) for g in gold_gap])),
      "corruption_rate": float(np.mean([p.corrupted for p in pairs])),
      "length_label_corr": _pearson(len_gap, a_preferred),
      "length_gold_corr": _pearson(len_gap, a_gold_better),
      "longer_is_better_rate": (float(np.mean((len_gap[differ] > 0) == (gold_gap[differ] > 0)))
                                if differ.any() else float("nan")),
      "equal_length_rate": float(np.mean(~differ)),
  }


def stats(splits: WorldSplits) -> dict[str, float]:
  """Flat, namespaced statistics of the splits (loggable as metrics).

  For each pair split S: S/size, S/label_noise_rate (clean labels that disagree with the gold
  sign), S/bt_expected_noise_rate (mean of sigmoid(-|gold gap| / T), what BT predicts),
  S/corruption_rate, S/length_label_corr (point-biserial = Pearson correlation of
  length_a - length_b with 1{a preferred}, final labels), S/length_gold_corr (same with the
  gold label), S/longer_is_better_rate (gold). Also sizes/* and gold_by_generator/<name>
  (mean gold reward of each generator's summaries over all pair splits).
  """
  temperature = splits.config.temperature
  out: dict[str, float] = {
      "sizes/pretrain_texts": float(len(splits.pretrain_texts)),
      "sizes/sft_examples": float(len(splits.sft_examples)),
      "sizes/prompts": float(len(splits.prompt_posts)),
  }
  gold_by_generator: dict[str, list[float]] = {}
  for split in SPLIT_NAMES:
    pairs = splits.pairs(split)
    out[f"sizes/{split}"] = float(len(pairs))
    if not pairs:
      continue
    for name, value in pair_split_stats(pairs, temperature=temperature).items():
      out[f"{split}/{name}"] = value
    for p in pairs:
      gold_by_generator.setdefault(p.generator_a, []).append(p.gold_a)
      gold_by_generator.setdefault(p.generator_b, []).append(p.gold_b)
  for name in sorted(gold_by_generator):
    out[f"gold_by_generator/{name}"] = float(np.mean(gold_by_generator[name]))
  return out
