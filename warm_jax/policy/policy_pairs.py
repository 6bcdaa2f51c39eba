"""`python -m warm_jax.data.policy_pairs`: OOD preference pairs with high-temperature samples of
the SFT policy, written as an extra evaluation split.

  python -m warm_jax.data.policy_pairs --gin_file=gin/models/small.gin \
      --gin_file=gin/data/policy_pairs.gin --gin.DATA_DIR="'D'" --gin.POLICY_DIR="'SFT'" \
      --gin.OUTPUT_DIR="'OUT'" [--gin.POLICY_TEMPERATURE=1.3] [--gin.NUM_PAIRS=1000]

Where it sits: after SFT, before the RM evaluation. The data build runs before any policy
exists, so its OOD split holds generator candidates only; the paper's OOD set was sampled from
policies at high temperature. This stage closes that gap without touching the data dir:
1. Checks the inputs: DATA_DIR is a complete synthetic-world build (real TL;DR data has no
   gold reward); POLICY_DIR is a LanguageModel checkpoint of the configured shape (the SFT
   stage's MODEL_DIR, a checkpoints/<step> dir or a plain params dir), trained on a data dir
   with the same tokenizer (its config.gin's DATA_DIR is compared with DATA_DIR).
2. Takes the held-out posts of the world's OOD split (or, POSTS_SPLIT='id_val', the ID
   validation posts; never the RM-train posts, checked) from DATA_DIR/text/posts.jsonl.
3. Builds the pairs with the data build's own code, `preferences.build_ood_pairs`, on its own
   random stream (`preferences.POLICY_PAIRS_SPLIT`): `ModelPolicySampler` (the KV-cache
   `Sampler` at POLICY_TEMPERATURE) writes SAMPLES_PER_POST summaries per post; each candidate
   of a pair is one of them with probability POLICY_RATE, else a summary of the world's OOD
   generator mix; labels are Bradley-Terry on the gold reward at the data dir's label
   temperature (no corruption). LONGER_IS_BETTER_RATE (default None: no rejection) can force
   the share of pairs where the longer summary is the better one, as the data build does.
4. Writes OUTPUT_DIR in the data dir layout (`data_dir`), so the existing readers work on it:
     meta.json, stats.json, config.gin, spm.model / spm.vocab (copied from DATA_DIR)
     text/preferences.ood.jsonl   the pairs (same records as every preference split)
     text/posts.jsonl             the posts they are about (for the gold reward)
     text/policy_samples.jsonl    every policy sample with its gold reward and length
     arrays/preferences.ood.npz   the token arrays, made through the same seqio task and
                                  converter as the data build's preference splits
     DONE                         completion marker (written last)
   The one preference split is named `ood` on disk (the loaders know that name):
   `datasets.preference_dataset(data_dir=OUT, split="ood")` reads it, and the RM evaluation
   (`warm_jax.evaluate`, POLICY_PAIRS_DIR) reports it as the subset `ood_policy`.
   stats.json: num_pairs, label_noise_rate (and what Bradley-Terry predicts),
   length_label_corr (the spurious feature's correlation with the label, as in the data
   build's stats.json), policy_pair_share, policy_samples.mean_gold, per pair type, and the
   data dir's own train / ID / OOD values beside them (`data_dir_reference`).
The dir is written as OUT.tmp-XXXX and renamed into place when complete; a finished OUT is
returned as is when asked again with the same request, refused with another one unless
OVERWRITE=True. DATA_DIR and POLICY_DIR are only read.
"""

from __future__ import annotations

import dataclasses
import json
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
from warm_jax.data import preferences as prefs
from warm_jax.data import world
from warm_jax.data.gold_reward import count_words, gold_reward
# The policy-sample stages' shared pieces (also this module's API, as before they moved).
from warm_jax.policy.policy_samples import (KIND, SPLIT, ModelPolicySampler, PolicyPairsError,
                                            check_data_dir, check_model_fits, check_output_dir,
                                            check_policy_dir, check_policy_params,
                                            encode_prompts, export_preference_arrays,
                                            file_digest, real_path, world_posts)

SUBSET_NAME = prefs.POLICY_PAIRS_SPLIT  # what the RM evaluation calls it: 'ood_policy'
DONE_FILE = run_dir.DONE
SAMPLES_NAME = "policy_samples"
POSTS_SPLITS = ("ood", "id_val")
_SAMPLE_FIELDS = {"post_id": str, "sample": int, "text": str, "gold": (int, float),
                  "words": int, "tokens": int, "ended": bool}
COMMAND = ("python -m warm_jax.data.policy_pairs --gin_file=gin/models/small.gin "
           "--gin_file=gin/data/policy_pairs.gin --gin.DATA_DIR=\"'D'\" "
           "--gin.POLICY_DIR=\"'SFT'\" --gin.OUTPUT_DIR=\"'OUT'\"")


def held_out_posts(data_dir: str, *, meta: Mapping[str, Any], posts_split: str
                   ) -> list[world.Post]:
  """The posts of the world's `posts_split` ('ood' or 'id_val'), in the world's order, read
  from DATA_DIR/text/posts.jsonl; checked disjoint from the RM-train pairs' posts."""
  if posts_split not in POSTS_SPLITS:
    raise PolicyPairsError(f"POSTS_SPLIT={posts_split!r}: use one of {POSTS_SPLITS} (held-out "
                           "posts; the RM-train posts are never used)")
  posts = world_posts(data_dir, meta=meta, split=posts_split)
  if not posts:
    raise PolicyPairsError(f"DATA_DIR's world has no {posts_split} posts (WorldConfig "
                           f"{'n_ood_posts' if posts_split == 'ood' else 'n_val_posts'}=0): "
                           "use a data build with held-out posts or another POSTS_SPLIT")
  rm_train_posts = {r["post_id"] for r in data_dir_lib.load_records(
      data_dir, kind="preferences", split="rm_train")}
  overlap = sorted(rm_train_posts & {p.post_id for p in posts})
  if overlap:
    raise data_dir_lib.DataDirError(f"{data_dir}: {len(overlap)} {posts_split} posts (first "
                                    f"{overlap[0]}) are RM-train posts: rebuild the data dir")
  return posts


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def _is_policy(generator: str) -> bool:
  return generator == prefs.POLICY_GENERATOR


def split_statistics(*, pairs: Sequence[prefs.PreferencePair], temperature: float,
                     samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """stats.json's statistics of the pairs and the policy samples (module docstring)."""
  n_policy = np.array([_is_policy(p.generator_a) + _is_policy(p.generator_b) for p in pairs])
  out: dict[str, Any] = {"num_pairs": len(pairs)}
  out.update(prefs.pair_split_stats(pairs, temperature=temperature))
  out["label_gold_disagreement_rate"] = float(np.mean([p.label != p.gold_label
                                                      for p in pairs]))
  out["policy_pair_share"] = float(np.mean(n_policy >= 1))
  out["policy_vs_policy_share"] = float(np.mean(n_policy == 2))
  gold = np.array([s["gold"] for s in samples], np.float64)
  words = np.array([s["words"] for s in samples], np.float64)
  in_pairs = [g for p in pairs for g, gen in ((p.gold_a, p.generator_a),
                                              (p.gold_b, p.generator_b)) if _is_policy(gen)]
  out["policy_samples"] = {
      "count": len(samples),
      "mean_gold": float(gold.mean()) if len(gold) else float("nan"),
      "std_gold": float(gold.std()) if len(gold) else float("nan"),
      "mean_gold_in_pairs": float(np.mean(in_pairs)) if in_pairs else float("nan"),
      "mean_words": float(words.mean()) if len(words) else float("nan"),
      "mean_tokens": float(np.mean([s["tokens"] for s in samples])) if samples else float("nan"),
      "eos_rate": float(np.mean([s["ended"] for s in samples])) if samples else float("nan"),
      "distinct_rate": len({(s["post_id"], s["text"]) for s in samples}) / max(len(samples), 1),
      "words_gold_corr": (float(np.corrcoef(words, gold)[0, 1])
                          if len(gold) > 1 and words.std() > 0 and gold.std() > 0
                          else float("nan")),
  }
  by_type = {}
  for name, k in (("policy_vs_policy", 2), ("policy_vs_generator", 1),
                  ("generator_vs_generator", 0)):
    chosen = [p for p, c in zip(pairs, n_policy) if c == k]
    if chosen:
      by_type[name] = {"num_pairs": len(chosen),
                       **prefs.pair_split_stats(chosen, temperature=temperature)}
  out["by_pair_type"] = by_type
  gold_by_generator: dict[str, list[float]] = {}
  for p in pairs:
    gold_by_generator.setdefault(p.generator_a, []).append(p.gold_a)
    gold_by_generator.setdefault(p.generator_b, []).append(p.gold_b)
  out["gold_by_generator"] = {k: float(np.mean(v)) for k, v in sorted(gold_by_generator.items())}
  return out


def _data_dir_reference(data_dir: str) -> dict[str, Any]:
  """The data build's own values of the same statistics, per split, for comparison."""
  with open(os.path.join(data_dir, data_dir_lib.STATS_FILE), encoding="utf-8") as f:
    stats = json.load(f)
  keys = ("label_noise_rate", "bt_expected_noise_rate", "length_label_corr",
          "length_gold_corr", "longer_is_better_rate")
  return {k: stats[k] for k in keys if k in stats}


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
def build_policy_pairs(*, output_dir: str | None, data_dir: str | None,
                       policy_dir: str | None, model_config: Any, temperature: float = 1.3,
                       num_pairs: int | None = None, posts_split: str = "ood",
                       policy_rate: float = 0.75, samples_per_post: int = 4,
                       longer_is_better_rate: float | None = None, max_new_tokens: int = 48,
                       batch_size: int = 64, seed: int = 0, overwrite: bool = False,
                       partitioner: Any = None, write_operative_gin: bool = False
                       ) -> dict[str, Any]:
  """Builds OUTPUT_DIR (module docstring) and returns its statistics.

  Args:
    output_dir: the new dir (never inside DATA_DIR or POLICY_DIR).
    data_dir: the synthetic-world data dir the policy was trained on (read only).
    policy_dir: the SFT stage's MODEL_DIR (latest checkpoint), a <step> or a params dir.
    model_config: the policy's TransformerConfig (gin/models/*.gin).
    temperature: the policy's sampling temperature (POLICY_TEMPERATURE; the paper's OOD
      samples are high-temperature ones).
    num_pairs: pairs to write (None: as many as the data dir's split of those posts).
    posts_split: 'ood' (default) or 'id_val': whose held-out posts are summarised.
    policy_rate: probability that a pair's candidate is a policy sample (else a summary of
      the world's OOD generator mix); 1.0 makes every pair policy vs policy.
    samples_per_post: policy samples drawn per post (the candidates' pool).
    longer_is_better_rate: None keeps the pairs' natural length/gold relation; a rate rejects
      pairs as the data build's length knob does.
    max_new_tokens, batch_size: sampling length and rows per compiled sampling call.
    seed: the pairs' and the samples' seed (same seed, same bytes).
    overwrite: replace a finished OUTPUT_DIR built with other settings.
  """
  t_start = time.perf_counter()
  meta = check_data_dir(data_dir)
  params_path = check_policy_dir(policy_dir, data_dir=data_dir)
  prompt_len, seq_len = check_model_fits(meta, model_config=model_config,
                                        max_new_tokens=max_new_tokens, data_dir=data_dir,
                                        error=PolicyPairsError)
  base = prefs.WorldConfig(**meta["world_config"])
  if num_pairs is None:
    num_pairs = base.n_ood_pairs if posts_split == "ood" else base.n_val_pairs
  try:
    config = dataclasses.replace(
        base, seed=seed, n_ood_pairs=num_pairs, ood_policy_rate=policy_rate,
        policy_temperature=temperature, policy_samples_per_post=samples_per_post,
        ood_longer_is_better_rate=longer_is_better_rate, corruption_rate=0.0)
  except ValueError as e:
    raise PolicyPairsError(f"bad policy-pairs setting: {e}") from None
  if num_pairs < 1:
    raise PolicyPairsError(f"NUM_PAIRS={num_pairs}: must be >= 1")
  request = {
      "data_dir": real_path(data_dir), "policy_params": real_path(params_path),
      "model_config": dataclasses.asdict(model_config), "temperature": temperature,
      "num_pairs": num_pairs, "posts_split": posts_split, "policy_rate": policy_rate,
      "samples_per_post": samples_per_post, "longer_is_better_rate": longer_is_better_rate,
      "max_new_tokens": max_new_tokens, "seed": seed,
  }
  finished = check_output_dir(output_dir, inputs={"DATA_DIR": data_dir,
                                                  "POLICY_DIR": policy_dir},
                              kind=KIND, what="policy-pairs", request=request,
                              overwrite=overwrite)
  if finished is not None:
    return finished
  posts = held_out_posts(data_dir, meta=meta, posts_split=posts_split)

  from warm_jax.core import checkpoints as ckpt_lib
  from warm_jax.data.datasets import load_vocabulary
  seconds: dict[str, float] = {}
  params = ckpt_lib.load_params(params_path)
  check_policy_params(params, model_config=model_config, params_path=params_path)
  vocabulary = load_vocabulary(data_dir)
  sampler = ModelPolicySampler(params=params, model_config=model_config, vocabulary=vocabulary,
                               prompt_len=prompt_len, max_new_tokens=max_new_tokens,
                               partitioner=partitioner, batch_size=batch_size)
  seconds["load"] = time.perf_counter() - t_start

  # -- the pairs, by the data build's code -----------------------------------------------------
  t = time.perf_counter()
  try:
    pairs, pool = prefs.build_ood_pairs(config=config, posts=posts, policy_sampler=sampler,
                                        split=prefs.POLICY_PAIRS_SPLIT)
  except RuntimeError as e:  # the length knob found no pair
    raise PolicyPairsError(f"{e} (here: LONGER_IS_BETTER_RATE, SAMPLES_PER_POST)") from None
  seconds["sample"] = sampler.seconds
  seconds["pairs"] = time.perf_counter() - t - sampler.seconds
  by_id = {p.post_id: p for p in posts}
  samples = []
  if pool is not None:
    k = config.policy_samples_per_post
    for i, post in enumerate(posts):
      for j, text in enumerate(pool[post.post_id]):
        row = i * k + j
        samples.append({"post_id": post.post_id, "sample": j, "text": text,
                        "gold": gold_reward(post=by_id[post.post_id], summary_text=text),
                        "words": count_words(text), "tokens": int(sampler.last_lengths[row]),
                        "ended": bool(sampler.last_ended[row])})
  statistics = split_statistics(pairs=pairs, temperature=config.temperature, samples=samples)

  # -- the dir -------------------------------------------------------------------------------
  output_dir = os.path.abspath(output_dir)
  tmp_dir = run_dir.staging_dir(output_dir)
  try:
    t = time.perf_counter()
    for name in (data_dir_lib.SPM_MODEL_FILE, f"{data_dir_lib.SPM_PREFIX}.vocab"):
      if os.path.isfile(os.path.join(data_dir, name)):
        shutil.copyfile(os.path.join(data_dir, name), os.path.join(tmp_dir, name))
    split_name = data_dir_lib.dataset_name("preferences", SPLIT)
    data_dir_lib.write_jsonl(data_dir_lib.text_path(tmp_dir, split_name),
                             [data_dir_lib.pair_record(p) for p in pairs])
    data_dir_lib.write_jsonl(data_dir_lib.text_path(tmp_dir, data_dir_lib.POSTS_NAME),
                             [data_dir_lib.post_record(p) for p in posts])
    data_dir_lib.write_jsonl(data_dir_lib.text_path(tmp_dir, SAMPLES_NAME), samples)
    generators = data_dir_lib.generator_names(meta)
    arrays = export_preference_arrays(tmp_dir, generators=generators, seq_len=seq_len,
                                      prompt_len=prompt_len)
    seconds["arrays"] = time.perf_counter() - t
    out_meta = {
        "format_version": data_dir_lib.FORMAT_VERSION, "kind": KIND,
        "vocab_size": meta["vocab_size"], "seq_len": seq_len, "prompt_len": prompt_len,
        "spm_model": data_dir_lib.SPM_MODEL_FILE, "generators": list(generators),
        "tasks": {"preferences": meta["tasks"]["preferences"]},
        "splits": {"preferences": [SPLIT]}, "subset_name": SUBSET_NAME,
        "source": {"data_dir": real_path(data_dir), "policy_dir": real_path(policy_dir),
                   "policy_params": real_path(params_path),
                   "spm_sha256": file_digest(os.path.join(data_dir,
                                                           data_dir_lib.SPM_MODEL_FILE))},
        # world_config: the data dir's world; pair_config: what built these pairs (its seed
        # is SEED, the counts and knobs this stage's).
        "request": request, "world_config": meta["world_config"],
        "pair_config": dataclasses.asdict(config),
        "arrays": {split_name: {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                                for k, v in arrays.items()}},
    }
    run_dir.write_json(os.path.join(tmp_dir, data_dir_lib.META_FILE), out_meta)
    if write_operative_gin:
      import gin
      with open(os.path.join(tmp_dir, data_dir_lib.CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(gin.operative_config_str())
    seconds["total"] = time.perf_counter() - t_start
    stats = {
        "format_version": data_dir_lib.FORMAT_VERSION, "kind": KIND,
        "subset_name": SUBSET_NAME, "posts_split": posts_split, "num_posts": len(posts),
        "policy_temperature": temperature, "label_temperature": config.temperature,
        "sizes": {split_name: len(pairs), data_dir_lib.POSTS_NAME: len(posts),
                  SAMPLES_NAME: len(samples)},
        **statistics,
        "data_dir_reference": _data_dir_reference(data_dir),
        "tokens": {split_name: builder.token_stats("preferences", arrays)},
        "sampled_tokens_per_s": (float(sampler.last_lengths.sum()) / seconds["sample"]
                                 if seconds.get("sample") else None),
        "build_seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    stats = run_dir.finite_or_none(stats)
    run_dir.write_json(os.path.join(tmp_dir, data_dir_lib.STATS_FILE), stats)
    run_dir.write_json(os.path.join(tmp_dir, DONE_FILE), {"num_pairs": len(pairs),
                                                   "wall_s": round(seconds["total"], 2)})
    run_dir.install_dir(tmp_dir, output_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  logging.info("policy pairs: %d pairs in %s (%.1fs); label noise %.3f, length-label corr "
               "%+.3f, policy samples' mean gold %.2f, pairs with a policy sample %.2f",
               len(pairs), output_dir, seconds["total"], stats["label_noise_rate"],
               stats["length_label_corr"] or float("nan"),
               stats["policy_samples"]["mean_gold"] or float("nan"), stats["policy_pair_share"])
  return stats


# ---------------------------------------------------------------------------------------------
# Reading (the RM evaluation)
# ---------------------------------------------------------------------------------------------
def load_policy_pairs(path: str, *, data_dir: str, seq_len: int | None = None,
                      vocab_size: int | None = None) -> dict[str, np.ndarray]:
  """The preference arrays (tokens, masks, metadata) of a finished policy-pairs dir, checked to
  share DATA_DIR's tokenizer (the RMs evaluated on it read DATA_DIR's tokens)."""
  from warm_jax.data.datasets import load_arrays
  if not os.path.isdir(path):
    raise PolicyPairsError(f"POLICY_PAIRS_DIR {path} does not exist: build it with `{COMMAND}`")
  meta = data_dir_lib.read_meta(path)
  if meta.get("kind") != KIND or not os.path.isfile(os.path.join(path, DONE_FILE)):
    raise PolicyPairsError(f"POLICY_PAIRS_DIR {path} is not a finished policy-pairs dir (no "
                           f"kind={KIND!r} in meta.json or no {DONE_FILE}): build it with "
                           f"`{COMMAND}`")
  spm = os.path.join(data_dir, data_dir_lib.SPM_MODEL_FILE)
  if os.path.isfile(spm) and meta["source"]["spm_sha256"] != file_digest(spm):
    raise PolicyPairsError(f"POLICY_PAIRS_DIR {path} was built from {meta['source']['data_dir']}"
                           f", whose tokenizer differs from DATA_DIR {data_dir}'s: build the "
                           "policy pairs from the data dir the reward models were trained on")
  arrays = load_arrays(path, kind="preferences", split=SPLIT, length=seq_len,
                       vocab_size=vocab_size)
  pair_posts = {r["post_id"] for r in data_dir_lib.load_records(path, kind="preferences",
                                                                split=SPLIT)}
  trained = {r["post_id"] for r in data_dir_lib.load_records(data_dir, kind="preferences",
                                                             split="rm_train")}
  if pair_posts & trained:
    raise PolicyPairsError(f"POLICY_PAIRS_DIR {path} has pairs about {len(pair_posts & trained)}"
                           f" RM-train posts of DATA_DIR {data_dir} (first: "
                           f"{sorted(pair_posts & trained)[0]}): it was built from another "
                           "world; build it from the data dir the reward models were trained on")
  return arrays
