"""`python -m warm_jax.data.on_policy`: the reward models' data, comparisons of policy samples.

  python -m warm_jax.data.on_policy --gin_file=gin/models/tiny.gin \
      --gin_file=gin/data/on_policy.gin --gin.DATA_DIR="'D'" --gin.OUTPUT_DIR="'OUT'" \
      --gin.TRAIN_POLICIES="[('sft_200', 'SFT/checkpoints/200', 1.0, 3), ('sft_400', 'SFT', 1.0, 3)]" \
      --gin.ID_POLICY="[('sft', 'SFT', 0.9, 4)]" \
      --gin.OOD_POLICIES="[('pretrain', 'PRE', 1.0, 2), ('sft', 'SFT', 1.3, 2)]"

Where it sits: after SFT, before the linear probe. The paper's reward models (Stiennon et al.'s
comparisons) and Coste et al.'s are trained on comparisons of *policy samples*; the world's
generator pairs are another distribution, in which "longer is better" is a shortcut that the
policy's own samples reverse (docs/data.md, "Why on-policy RM data"). This stage samples the
policies, pairs the samples of each post and labels each pair by Bradley-Terry on the gold
reward, at the world's label temperature:

  split       posts (of DATA_DIR's world)  candidates                               labels
  rm_train    RM-train posts               TRAIN_POLICIES' samples (e.g. the SFT    BT; in the
                                           checkpoints at the Baklava steps, T=1),  'corrupt'
                                           + GENERATOR_SHARE of generator pairs     setting an
                                                                                    exact 25%
                                                                                    swapped
  id_val      ID-validation posts          the same policies and recipe             BT (clean)
  id_policy   ID-validation posts          ID_POLICY: the final SFT policy at the   BT (clean)
                                           best-of-N / RL temperature (0.9)
  ood         OOD posts                    DATA_DIR's generator OOD split, as is    (its own)
  ood_policy  OOD posts                    OOD_POLICIES: other policies (pre-trained BT (clean)
                                           only, early SFT) and high temperatures

A pair is two distinct summaries of one post with different gold rewards, up to
PAIRS_PER_POST (ID_POLICY_PAIRS_PER_POST, OOD_PAIRS_PER_POST) per post
(`preferences.build_sample_pairs`); no pair is dropped for its lengths unless
LONGER_IS_BETTER_RATE (an ablation knob) asks for it. Accuracy on every held-out split is
measured against the gold sign. Samples that reach MAX_NEW_TOKENS without EOS are kept as
text; their summary gets the EOS every summary gets when it is tokenised, as in the data build.

Writes OUTPUT_DIR (atomically: OUTPUT_DIR.tmp-XXXX renamed when complete):
  clean/, corrupt/      one data dir per setting (`data_dir` layout: meta.json, stats.json,
                        spm.model, text/preferences.<split>.jsonl, text/posts.jsonl,
                        arrays/preferences.<split>.npz with response masks), identical but for
                        the corrupted training labels; the RM stages' DATA_DIR
  policy_samples.jsonl  every sample: split, source, post_id, text, gold, words, tokens, ended
  meta.json             the request (sources, sizes, seed) and the settings
  stats.json            per split: label noise (and Bradley-Terry's prediction), length-label
                        correlation, equal-length share, longer-is-better rate, pair types;
                        per source: mean gold, words, EOS rate, distinct rate; build seconds
  DONE                  written last
A finished OUTPUT_DIR is returned as is for the same request and refused for another one
unless OVERWRITE=True. DATA_DIR and the policies are only read.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from warm_jax.core import run_dir
from warm_jax.data import builder
from warm_jax.data import data_dir as data_dir_lib
from warm_jax.policy import policy_samples
from warm_jax.data import preferences as prefs
from warm_jax.data import world
from warm_jax.data.gold_reward import count_words

KIND = "on_policy_rm_data"
DONE_FILE = run_dir.DONE
SAMPLES_FILE = "policy_samples.jsonl"
SAMPLED_SPLITS = ("rm_train", "id_val", "id_policy", "ood_policy")
SPLITS = ("rm_train", "id_val", "ood", "id_policy", "ood_policy")
_WORLD_POSTS = {"rm_train": "rm_train", "id_val": "id_val", "id_policy": "id_val",
                "ood_policy": "ood"}
_SAMPLING_STREAM = 41
_GENERATOR_MIX_STREAM = 42
COMMAND = ("python -m warm_jax.data.on_policy --gin_file=gin/models/tiny.gin "
           "--gin_file=gin/data/on_policy.gin --gin.DATA_DIR=\"'D'\" --gin.OUTPUT_DIR=\"'OUT'\" "
           "--gin.TRAIN_POLICIES=... --gin.ID_POLICY=... --gin.OOD_POLICIES=...")


class OnPolicyDataError(ValueError):
  """An input of the on-policy RM data stage is missing or does not match; nothing written."""


@dataclasses.dataclass(frozen=True)
class PolicySource:
  """One policy whose samples become candidates: a LanguageModel checkpoint sampled at a
  temperature, `samples_per_post` summaries per post."""

  name: str
  path: str
  temperature: float
  samples_per_post: int

  def __post_init__(self):
    if not self.name or any(c in self.name for c in "@/ "):
      raise OnPolicyDataError(f"policy source name {self.name!r}: a non-empty name without "
                              "'@', '/' or spaces")
    if not self.temperature > 0:
      raise OnPolicyDataError(f"policy source {self.name!r}: temperature {self.temperature} "
                              "must be > 0")
    if self.samples_per_post < 1:
      raise OnPolicyDataError(f"policy source {self.name!r}: samples_per_post "
                              f"{self.samples_per_post} must be >= 1")

  @property
  def generator(self) -> str:
    """The name its samples carry as a pair's generator: '<name>@T<temperature>'."""
    return f"{self.name}@T{self.temperature:g}"


def parse_sources(spec: Any, *, macro: str) -> tuple[PolicySource, ...]:
  """Sources from a gin list of (name, path, temperature, samples_per_post) tuples or
  PolicySource objects; at least one, names unique."""
  if not spec:
    raise OnPolicyDataError(f"{macro} is not set: pass --gin.{macro}=\"[('name', '/path/to/"
                            "policy', temperature, samples_per_post)]\"")
  out = []
  for item in spec:
    if isinstance(item, PolicySource):
      out.append(item)
      continue
    if not isinstance(item, (list, tuple)) or len(item) != 4:
      raise OnPolicyDataError(f"{macro}: {item!r} is not (name, path, temperature, "
                              "samples_per_post)")
    name, path, temperature, k = item
    out.append(PolicySource(name=str(name), path=str(path), temperature=float(temperature),
                            samples_per_post=int(k)))
  names = [s.name for s in out]
  if len(set(names)) != len(names):
    raise OnPolicyDataError(f"{macro} names a source twice: {names}")
  return tuple(out)


def world_posts(data_dir: str, *, meta: Mapping[str, Any], split: str) -> list[world.Post]:
  """The posts of the world's split ('rm_train', 'id_val' or 'ood') in the world's order,
  read from DATA_DIR/text/posts.jsonl."""
  posts = policy_samples.world_posts(data_dir, meta=meta, split=split)
  if not posts:
    raise OnPolicyDataError(f"DATA_DIR {data_dir}'s world has no {split} posts: use a data "
                            "build with RM-train, validation and OOD posts")
  return posts


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def split_stats(pairs: Sequence[prefs.PreferencePair], *, temperature: float
                ) -> dict[str, Any]:
  """A split's statistics: `preferences.pair_split_stats`, the pair count and its pair types
  (which generators met: 'sft_200@T1 vs sft_400@T1', ...)."""
  if not pairs:
    return {"num_pairs": 0}
  out: dict[str, Any] = {"num_pairs": len(pairs)}
  out.update(prefs.pair_split_stats(pairs, temperature=temperature))
  out["label_gold_disagreement_rate"] = float(np.mean([p.label != p.gold_label for p in pairs]))
  types = collections.Counter(" vs ".join(sorted((p.generator_a, p.generator_b)))
                              for p in pairs)
  out["pair_types"] = {k: v / len(pairs) for k, v in sorted(types.items())}
  return out


def sample_stats(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Per (split, source): count, gold mean/std, words, tokens, EOS rate, distinct rate and
  the words-gold correlation (within the pool: the length feature's sign among samples)."""
  groups: dict[str, list[Mapping[str, Any]]] = collections.defaultdict(list)
  for s in samples:
    groups[f"{s['split']}/{s['source']}"].append(s)
  out = {}
  for key, group in sorted(groups.items()):
    gold = np.array([s["gold"] for s in group], np.float64)
    words = np.array([s["words"] for s in group], np.float64)
    out[key] = {
        "count": len(group), "mean_gold": float(gold.mean()), "std_gold": float(gold.std()),
        "mean_words": float(words.mean()),
        "mean_tokens": float(np.mean([s["tokens"] for s in group])),
        "eos_rate": float(np.mean([s["ended"] for s in group])),
        "distinct_rate": len({(s["post_id"], s["text"]) for s in group}) / len(group),
        "words_gold_corr": (float(np.corrcoef(words, gold)[0, 1])
                            if words.std() > 0 and gold.std() > 0 else float("nan")),
    }
  return out


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
def _generator_pairs(data_dir: str, split: str, *, count: int, seed: int
                     ) -> list[prefs.PreferencePair]:
  """`count` pairs drawn (seeded, without replacement) from DATA_DIR's generator split."""
  records = data_dir_lib.load_records(data_dir, kind="preferences", split=split)
  if count > len(records):
    raise OnPolicyDataError(f"GENERATOR_SHARE asks for {count} generator pairs of {split} but "
                            f"DATA_DIR has {len(records)}: lower GENERATOR_SHARE or build more "
                            "generator pairs (N_TRAIN_PAIRS)")
  rng = np.random.default_rng([seed, _GENERATOR_MIX_STREAM, SPLITS.index(split)])
  rows = np.sort(rng.choice(len(records), size=count, replace=False)) if count else []
  fields = {f.name for f in dataclasses.fields(prefs.PreferencePair)}
  return [prefs.PreferencePair(**{k: v for k, v in records[int(i)].items() if k in fields})
          for i in rows]


def _sample(sources: Sequence[PolicySource], posts: Sequence[world.Post], *, split: str,
            seed: int, params_cache: dict[str, Any], make_sampler: Any
            ) -> tuple[dict[str, list[tuple[str, str]]], list[dict[str, Any]]]:
  """Every source's samples of every post: ({post_id: [(generator, text)]}, sample records)."""
  from warm_jax.data.gold_reward import gold_reward
  candidates: dict[str, list[tuple[str, str]]] = {p.post_id: [] for p in posts}
  records = []
  for k, source in enumerate(sources):
    sampler = make_sampler(source, params_cache)
    prompts = [post.prompt for post in posts for _ in range(source.samples_per_post)]
    rng = np.random.default_rng([seed, _SAMPLING_STREAM, SAMPLED_SPLITS.index(split), k])
    texts = sampler(prompts, source.temperature, rng)
    for row, text in enumerate(texts):
      post = posts[row // source.samples_per_post]
      candidates[post.post_id].append((source.generator, text))
      records.append({"split": split, "source": source.generator, "post_id": post.post_id,
                      "text": text, "gold": gold_reward(post=post, summary_text=text),
                      "words": count_words(text), "tokens": int(sampler.last_lengths[row]),
                      "ended": bool(sampler.last_ended[row])})
  return candidates, records


def build_on_policy_data(*, output_dir: str | None, data_dir: str | None, model_config: Any,
                         train_policies: Any, id_policy: Any, ood_policies: Any,
                         pairs_per_post: int = 5, id_policy_pairs_per_post: int = 3,
                         ood_pairs_per_post: int = 3, generator_share: float = 0.0,
                         corruption_rate: float = 0.25,
                         corrupt_train_posts: int | None = None,
                         longer_is_better_rate: float | None = None,
                         max_new_tokens: int = 48, batch_size: int = 64, seed: int = 0,
                         overwrite: bool = False, partitioner: Any = None,
                         write_operative_gin: bool = False) -> dict[str, Any]:
  """Builds OUTPUT_DIR (module docstring) and returns its statistics.

  Args:
    output_dir: the new dir (never inside DATA_DIR).
    data_dir: the world's data build (posts, generator splits, tokenizer); read only.
    model_config: the policies' TransformerConfig (gin/models/*.gin).
    train_policies, id_policy, ood_policies: (name, path, temperature, samples_per_post)
      lists (`parse_sources`): the candidates of rm_train and id_val, of id_policy, and of
      ood_policy.
    pairs_per_post / id_policy_pairs_per_post / ood_pairs_per_post: most pairs per post.
    generator_share: share of the rm_train and id_val pairs taken from DATA_DIR's generator
      pairs (0: every pair compares policy samples).
    corruption_rate: the 'corrupt' setting's share of swapped training labels (paper: 0.25).
    corrupt_train_posts: None (the corrupted setting trains on the same pairs as the clean
      one) or K: its rm_train keeps the pairs of the first K RM-train posts, so that its
      members can see many epochs of it (the memorisation regime) within a CPU budget; the
      corruption count is exact on that set. Its held-out splits are the clean setting's.
    longer_is_better_rate: None (no pair dropped for its lengths) or the ablation's rate.
    max_new_tokens, batch_size: sampling length and rows per compiled sampling call.
    seed: the samples', pairs' and corruption's seed (same seed, same bytes).
    overwrite: replace a finished OUTPUT_DIR built for another request.
  """
  t_start = time.perf_counter()
  sources = {"train": parse_sources(train_policies, macro="TRAIN_POLICIES"),
             "id_policy": parse_sources(id_policy, macro="ID_POLICY"),
             "ood": parse_sources(ood_policies, macro="OOD_POLICIES")}
  for name, value in (("PAIRS_PER_POST", pairs_per_post),
                      ("ID_POLICY_PAIRS_PER_POST", id_policy_pairs_per_post),
                      ("OOD_PAIRS_PER_POST", ood_pairs_per_post)):
    if int(value) < 1:
      raise OnPolicyDataError(f"{name}={value}: must be >= 1")
  if not 0.0 <= generator_share < 1.0:
    raise OnPolicyDataError(f"GENERATOR_SHARE={generator_share}: must lie in [0, 1)")
  if not 0.0 <= corruption_rate <= 1.0:
    raise OnPolicyDataError(f"CORRUPTION_RATE={corruption_rate}: must lie in [0, 1]")
  if corrupt_train_posts is not None and corrupt_train_posts < 1:
    raise OnPolicyDataError(f"CORRUPT_TRAIN_POSTS={corrupt_train_posts}: None or >= 1")
  if longer_is_better_rate is not None and not 0.0 <= longer_is_better_rate <= 1.0:
    raise OnPolicyDataError(f"LONGER_IS_BETTER_RATE={longer_is_better_rate}: None or in [0, 1]")
  meta = policy_samples.check_data_dir(data_dir)
  if meta["world_config"].get("corruption_rate", 0.0):
    raise OnPolicyDataError(f"DATA_DIR {data_dir} was built with corrupted labels "
                            f"(CORRUPTION_RATE={meta['world_config']['corruption_rate']}): "
                            "pass the clean build; this stage corrupts its own training set")
  prompt_len, seq_len = policy_samples.check_model_fits(meta, model_config=model_config,
                                        max_new_tokens=max_new_tokens, data_dir=data_dir,
                                        error=OnPolicyDataError)
  params_paths = {source.path: policy_samples.check_policy_dir(source.path, data_dir=data_dir)
                  for group in sources.values() for source in group}
  request = {
      "data_dir": os.path.realpath(data_dir),
      "sources": {k: [dataclasses.asdict(s) | {"path": os.path.realpath(s.path)} for s in v]
                  for k, v in sources.items()},
      "model_config": dataclasses.asdict(model_config), "pairs_per_post": pairs_per_post,
      "id_policy_pairs_per_post": id_policy_pairs_per_post,
      "ood_pairs_per_post": ood_pairs_per_post, "generator_share": generator_share,
      "corruption_rate": corruption_rate, "corrupt_train_posts": corrupt_train_posts,
      "longer_is_better_rate": longer_is_better_rate,
      "max_new_tokens": max_new_tokens, "seed": seed,
  }
  inputs = {"DATA_DIR": data_dir, **{f"policy {s.name}'s dir": s.path
                                      for group in sources.values() for s in group}}
  finished = policy_samples.check_output_dir(
      output_dir, inputs=inputs, kind=KIND, what="on-policy RM data", request=request,
      overwrite=overwrite, error=OnPolicyDataError)
  if finished is not None:
    return finished

  from warm_jax.core import checkpoints as ckpt_lib
  from warm_jax.data.datasets import load_vocabulary
  vocabulary = load_vocabulary(data_dir)

  def make_sampler(source: PolicySource, cache: dict[str, Any]) -> Any:
    path = params_paths[source.path]
    if path not in cache:
      params = ckpt_lib.load_params(path)
      policy_samples.check_policy_params(params, model_config=model_config, params_path=path)
      cache[path] = params
    return policy_samples.ModelPolicySampler(
        params=cache[path], model_config=model_config, vocabulary=vocabulary,
        prompt_len=prompt_len, max_new_tokens=max_new_tokens, partitioner=partitioner,
        batch_size=batch_size, max_positions=min(seq_len, model_config.max_len))

  temperature = float(meta["world_config"]["temperature"])
  posts = {s: world_posts(data_dir, meta=meta, split=s) for s in ("rm_train", "id_val", "ood")}
  seconds: dict[str, float] = {}
  cache: dict[str, Any] = {}
  pairs: dict[str, list[prefs.PreferencePair]] = {}
  samples: list[dict[str, Any]] = []
  recipe = {"rm_train": (sources["train"], pairs_per_post),
            "id_val": (sources["train"], pairs_per_post),
            "id_policy": (sources["id_policy"], id_policy_pairs_per_post),
            "ood_policy": (sources["ood"], ood_pairs_per_post)}
  for split in SAMPLED_SPLITS:
    t = time.perf_counter()
    split_sources, per_post = recipe[split]
    split_posts = posts[_WORLD_POSTS[split]]
    candidates, records = _sample(split_sources, split_posts, split=split, seed=seed,
                                  params_cache=cache, make_sampler=make_sampler)
    samples += records
    pairs[split] = prefs.build_sample_pairs(
        split=split, posts=split_posts, candidates=candidates, pairs_per_post=per_post,
        temperature=temperature, seed=seed, longer_is_better_rate=longer_is_better_rate)
    if split in ("rm_train", "id_val") and generator_share > 0:
      count = round(generator_share / (1 - generator_share) * len(pairs[split]))
      pairs[split] += _generator_pairs(data_dir, split, count=count, seed=seed)
    if not pairs[split]:
      raise OnPolicyDataError(f"no {split} pair: the policies' samples of every post have "
                              "equal gold rewards; sample more per post (samples_per_post) or "
                              "at a higher temperature")
    seconds[f"sample_{split}"] = round(time.perf_counter() - t, 2)
    logging.info("on-policy data: %s: %d samples, %d pairs (%.1fs)", split, len(records),
                 len(pairs[split]), seconds[f"sample_{split}"])
  ood = _generator_pairs(data_dir, "ood", count=len(data_dir_lib.load_records(
      data_dir, kind="preferences", split="ood")), seed=seed)
  generators = list(data_dir_lib.generator_names(meta)) + sorted(
      {s.generator for group in sources.values() for s in group})
  settings = {"clean": 0.0, "corrupt": corruption_rate}

  output_dir = os.path.abspath(output_dir)
  tmp_dir = run_dir.staging_dir(output_dir)
  try:
    t = time.perf_counter()
    stats: dict[str, Any] = {"kind": KIND, "settings": {}, "label_temperature": temperature}
    for setting, rate in settings.items():
      train = pairs["rm_train"]
      if setting == "corrupt" and corrupt_train_posts is not None:
        kept = {p.post_id for p in posts["rm_train"][:corrupt_train_posts]}
        train = [p for p in train if p.post_id in kept]
      split_pairs = dict(pairs, ood=ood, rm_train=prefs.corrupt(train, rate=rate, seed=seed))
      stats["settings"][setting] = _write_setting(
          os.path.join(tmp_dir, setting), data_dir=data_dir, meta=meta, pairs=split_pairs,
          posts=[p for s in ("rm_train", "id_val", "ood") for p in posts[s]],
          generators=generators, seq_len=seq_len, prompt_len=prompt_len,
          corruption_rate=rate, temperature=temperature, request=request)
    data_dir_lib.write_jsonl(os.path.join(tmp_dir, SAMPLES_FILE), samples)
    seconds["write"] = round(time.perf_counter() - t, 2)
    seconds["total"] = round(time.perf_counter() - t_start, 2)
    stats["samples"] = sample_stats(samples)
    stats["build_seconds"] = seconds
    run_dir.write_json(os.path.join(tmp_dir, data_dir_lib.META_FILE), {
        "format_version": data_dir_lib.FORMAT_VERSION, "kind": KIND, "request": request,
        "settings": {k: {"dir": k, "corruption_rate": v} for k, v in settings.items()}})
    run_dir.write_json(os.path.join(tmp_dir, data_dir_lib.STATS_FILE), stats)
    if write_operative_gin:
      import gin
      with open(os.path.join(tmp_dir, data_dir_lib.CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(gin.operative_config_str())
    run_dir.write_json(os.path.join(tmp_dir, DONE_FILE), {"wall_s": seconds["total"]})
    run_dir.install_dir(tmp_dir, output_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  train = stats["settings"]["clean"]["splits"]["rm_train"]
  logging.info("on-policy data in %s (%.1fs): rm_train %d pairs, label noise %.3f, length-label "
               "corr %+.3f, equal lengths %.2f", output_dir, seconds["total"],
               train["num_pairs"], train["label_noise_rate"], train["length_label_corr"],
               train["equal_length_rate"])
  return stats


def _write_setting(path: str, *, data_dir: str, meta: Mapping[str, Any],
                   pairs: Mapping[str, Sequence[prefs.PreferencePair]],
                   posts: Sequence[world.Post], generators: Sequence[str], seq_len: int,
                   prompt_len: int, corruption_rate: float, temperature: float,
                   request: Mapping[str, Any]) -> dict[str, Any]:
  """One setting's data dir (data_dir layout); returns its stats."""
  os.makedirs(path)
  for name in (data_dir_lib.SPM_MODEL_FILE, f"{data_dir_lib.SPM_PREFIX}.vocab"):
    if os.path.isfile(os.path.join(data_dir, name)):
      shutil.copyfile(os.path.join(data_dir, name), os.path.join(path, name))
  data_dir_lib.write_jsonl(data_dir_lib.text_path(path, data_dir_lib.POSTS_NAME),
                           [data_dir_lib.post_record(p) for p in posts])
  arrays_meta, token_stats, split_stats_out = {}, {}, {}
  for split in SPLITS:
    name = data_dir_lib.dataset_name("preferences", split)
    data_dir_lib.write_jsonl(data_dir_lib.text_path(path, name),
                             [data_dir_lib.pair_record(p) for p in pairs[split]])
    arrays = policy_samples.export_preference_arrays(path, generators=generators,
                                                   seq_len=seq_len, prompt_len=prompt_len,
                                                   split=split)
    arrays_meta[name] = {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                         for k, v in arrays.items()}
    token_stats[name] = builder.token_stats("preferences", arrays)
    split_stats_out[split] = split_stats(pairs[split], temperature=temperature)
  world_config = dict(meta["world_config"], corruption_rate=corruption_rate)
  run_dir.write_json(os.path.join(path, data_dir_lib.META_FILE), {
      "format_version": data_dir_lib.FORMAT_VERSION, "kind": KIND,
      "vocab_size": meta["vocab_size"], "seq_len": seq_len, "prompt_len": prompt_len,
      "spm_model": data_dir_lib.SPM_MODEL_FILE, "generators": list(generators),
      "tasks": {"preferences": meta["tasks"]["preferences"]},
      "splits": {"preferences": list(SPLITS)}, "world_config": world_config,
      "source": {"data_dir": os.path.realpath(data_dir),
                 "spm_sha256": policy_samples.file_digest(
                     os.path.join(data_dir, data_dir_lib.SPM_MODEL_FILE))},
      "request": dict(request), "arrays": arrays_meta})
  stats = {"format_version": data_dir_lib.FORMAT_VERSION, "kind": KIND,
           "corruption_rate": corruption_rate, "splits": split_stats_out,
           "tokens": token_stats}
  run_dir.write_json(os.path.join(path, data_dir_lib.STATS_FILE), stats)
  return stats
