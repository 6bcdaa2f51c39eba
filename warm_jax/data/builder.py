"""The data build as a library: world -> text, tokenizer and token arrays in one data dir.

`build_dataset` is what `python -m warm_jax.data.build` (the command line, `warm_jax.data.build`)
runs through gin; its steps and the dir's layout are in that module's docstring and
docs/data.md. Also here: the statistics the build writes (`world_stats`, `token_stats`) and
`tokenizer_corpus`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from warm_jax.core import run_dir
from warm_jax.data import data_dir as data_dir_lib
from warm_jax.data import preferences as prefs
from warm_jax.data import world
from warm_jax.data.tokenizer import TokenizerConfig, train_sentencepiece

SYNTHETIC_LM_TASK = "synthetic_tldr_lm"
SYNTHETIC_SFT_TASK = "synthetic_tldr_sft"
SYNTHETIC_PREFERENCE_TASK = "synthetic_tldr_preferences"
SYNTHETIC_PROMPT_TASK = "synthetic_tldr_prompts"
REAL_PREFERENCE_TASK = "tldr_comparisons"
REAL_SFT_TASK = "tldr_sft"
# Our split -> the real task's split. valid1 (validation) is the in-distribution held-out set;
# valid2 (test) stands in for OOD, as the paper's OOD set is not in the public release.
REAL_TASK_SPLITS: Mapping[str, Mapping[str, str]] = {
    REAL_PREFERENCE_TASK: {"rm_train": "train", "id_val": "validation", "ood": "test"},
    REAL_SFT_TASK: {"train": "train", "validation": "validation"},
}
GENERATORS = (*world.GENERATORS, prefs.POLICY_GENERATOR)


class BuildError(ValueError):
  """The output dir cannot be (re)built as asked; nothing was written."""


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
def tokenizer_corpus(splits: prefs.WorldSplits) -> list[str]:
  """The texts the tokenizer learns from: everything a training stage trains on."""
  return [*splits.pretrain_texts,
          *(f"{e.prompt} {e.target}" for e in splits.sft_examples),
          *(s for p in splits.rm_train for s in (p.summary_a, p.summary_b))]


def text_records(splits: prefs.WorldSplits, *, with_pairs: bool = True, with_sft: bool = True
                 ) -> dict[str, list[dict[str, Any]]]:
  """Record-file stem -> records. Validation splits use the ID validation posts. Without
  pairs / sft (their arrays come from the real TL;DR tasks) those files are not written."""
  val_start, n_val = splits.config.post_ranges()["id_val"]
  val_posts = world.generate_posts(seed=splits.config.seed, n=n_val, start=val_start)
  records = {
      "lm.train": [{"text": text} for text in splits.pretrain_texts],
      "lm.validation": [{"text": world.format_example(p.text, p.reference)} for p in val_posts],
      "sft.train": [{"post_id": e.post_id, "prompt": e.prompt, "target": e.target}
                    for e in splits.sft_examples],
      "sft.validation": [{"post_id": p.post_id, "prompt": p.prompt, "target": p.reference}
                         for p in val_posts],
      "prompts.train": [{"post_id": p.post_id, "prompt": p.prompt, "reference": p.reference}
                        for p in splits.prompt_posts],
      "prompts.validation": [{"post_id": p.post_id, "prompt": p.prompt,
                              "reference": p.reference} for p in val_posts],
      data_dir_lib.POSTS_NAME: [data_dir_lib.post_record(p) for p in splits.posts.values()],
  }
  if not with_sft:
    del records["sft.train"], records["sft.validation"]
  if with_pairs:
    for split in prefs.SPLIT_NAMES:
      records[f"preferences.{split}"] = [data_dir_lib.pair_record(p)
                                         for p in splits.pairs(split)]
  return records


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def world_stats(splits: prefs.WorldSplits) -> dict[str, Any]:
  """`preferences.stats` regrouped by statistic, {statistic: {split: value}}, plus
  label_gold_disagreement_rate: the final labels (after corruption) that disagree with the
  gold sign, i.e. what an RM trained on the split is told wrongly."""
  flat = prefs.stats(splits)
  out: dict[str, Any] = {"gold_by_generator": {}}
  for key, value in flat.items():
    group, name = key.split("/", 1)
    if group == "gold_by_generator":
      out["gold_by_generator"][name] = value
    elif group in prefs.SPLIT_NAMES:
      out.setdefault(name, {})[group] = value
  for split in prefs.SPLIT_NAMES:
    pairs = splits.pairs(split)
    if pairs:
      out.setdefault("label_gold_disagreement_rate", {})[split] = float(
          np.mean([p.label != p.gold_label for p in pairs]))
  return out


def _summary(values: np.ndarray) -> dict[str, float]:
  if not len(values):
    return {"mean": None, "p99": None, "max": None}
  return {"mean": round(float(np.mean(values)), 2),
          "p99": round(float(np.percentile(values, 99)), 2), "max": int(np.max(values))}


def token_stats(kind: str, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Tokens per example (real tokens, from the masks) and prompt truncations of one split."""
  out: dict[str, Any] = {}
  if kind == "lm":
    out["windows"] = int(len(arrays["tokens"]))
    return out
  out["examples"] = int(len(next(iter(arrays.values()))))
  if kind == "sft":
    out["tokens"] = _summary(arrays["mask"].sum(axis=1))
    out["target_tokens"] = _summary(arrays["loss_mask"].sum(axis=1))
  elif kind == "preferences":
    out["chosen_tokens"] = _summary(arrays["chosen_mask"].sum(axis=1))
    out["rejected_tokens"] = _summary(arrays["rejected_mask"].sum(axis=1))
  else:
    out["tokens"] = _summary(arrays["prompt_mask"].sum(axis=1))
  truncated = arrays[data_dir_lib.NUM_TRUNCATED]
  out["truncated_examples"] = int(np.count_nonzero(truncated))
  out["truncated_tokens"] = int(truncated.sum())
  return out


# ---------------------------------------------------------------------------------------------
# The output dir
# ---------------------------------------------------------------------------------------------
def _check_output_dir(output_dir: str, *, overwrite: bool) -> None:
  if not os.path.lexists(output_dir):
    return
  if not os.path.isdir(output_dir):
    raise BuildError(f"--output_dir {output_dir} exists and is not a directory: choose another "
                     "path")
  if not os.listdir(output_dir):
    return  # an empty dir (e.g. made by a launcher) is simply filled
  complete = os.path.isfile(os.path.join(output_dir, data_dir_lib.STATS_FILE))
  if not complete and not os.path.isfile(os.path.join(output_dir, data_dir_lib.META_FILE)):
    raise BuildError(f"--output_dir {output_dir} exists, is not empty and is not a data dir "
                     "written by warm_jax.data.build: choose another path or remove it "
                     "(nothing was written)")
  if not overwrite:
    raise BuildError(f"{output_dir} already holds a {'complete' if complete else 'partial'} "
                     "data build: pass --overwrite to replace it (the old dir stays until the "
                     "new one is complete), or choose another --output_dir")


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------
def _export_arrays(*, tmp_dir: str, kind: str, tasks: Mapping[str, str],
                   task_splits: Mapping[str, Mapping[str, str]], seq_len: int, prompt_len: int,
                   synthetic_preferences: bool, tokens: dict[str, Any]
                   ) -> dict[str, dict[str, np.ndarray]]:
  """Writes arrays/<kind>.<split>.npz for every split of `kind`; fills tokens[name] with the
  split's token statistics."""
  from warm_jax.data import converters, synthetic_tasks  # deferred: TensorFlow
  out = {}
  for split in data_dir_lib.SPLITS[kind]:
    passthrough = (synthetic_tasks.metadata_feature_specs()
                   if kind == "preferences" and synthetic_preferences else None)
    task_split = task_splits.get(kind, {}).get(split, split)
    name = data_dir_lib.dataset_name(kind, split)
    if kind == "lm":
      arrays, doc_tokens = converters.lm_task_arrays(tasks[kind], split=task_split,
                                                     seq_len=seq_len)
      tokens[name] = {"documents": int(len(doc_tokens)),
                      "tokens_per_document": _summary(doc_tokens),
                      "dropped_tokens": int(doc_tokens.sum() - arrays["tokens"].size)}
    else:
      arrays = converters.task_arrays(tasks[kind], kind=kind, split=task_split,
                                      seq_len=seq_len, prompt_len=prompt_len,
                                      passthrough_features=passthrough)
    n = len(next(iter(arrays.values())))
    if kind == "preferences":
      for feature, dtype in data_dir_lib.PREFERENCE_METADATA.items():
        if feature not in arrays:  # real pairs: no gold reward, generators, corruption flags
          fill = np.nan if dtype.startswith("float") else data_dir_lib.UNKNOWN_INT
          arrays[feature] = np.full(n, fill, dtype)
      arrays["pair_index"] = np.arange(n, dtype=np.int32)
    elif kind == "prompts":
      arrays[data_dir_lib.PROMPT_INDEX] = np.arange(n, dtype=np.int32)
    path = data_dir_lib.arrays_path(tmp_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, **arrays)
    out[name] = arrays
    tokens[name] = {**token_stats(kind, arrays), **tokens.get(name, {})}
  return out


def build_dataset(*, output_dir: str, world: prefs.WorldConfig = prefs.WorldConfig(),
                  tokenizer: TokenizerConfig = TokenizerConfig(), seq_len: int = 128,
                  prompt_len: int = 96, preference_task: str = SYNTHETIC_PREFERENCE_TASK,
                  sft_task: str = SYNTHETIC_SFT_TASK, tldr_manual_dir: str | None = None,
                  tldr_data_dir: str | None = None, overwrite: bool = False,
                  write_operative_gin: bool = False) -> dict[str, Any]:
  """Builds the data dir `output_dir` (atomically) and returns its statistics.

  Args:
    output_dir: the data dir to create; must not hold a build unless `overwrite`.
    world: sizes, seeds and knobs of the synthetic world.
    tokenizer: the SentencePiece settings (vocab_size = the stages' VOCAB_SIZE).
    seq_len: L of the lm, sft and preference arrays (SEQ_LEN); prompt_len: P of the prompt
      arrays (PROMPT_LEN).
    preference_task / sft_task: the seqio task whose arrays the preferences / sft splits hold:
      the synthetic world's (default) or the real "tldr_comparisons" / "tldr_sft", prepared
      from `tldr_manual_dir` into `tldr_data_dir` (see warm_jax.data.tldr).
    write_operative_gin: also write DIR/config.gin (gin's operative config; CLI use).
  """
  from warm_jax.data import synthetic_tasks  # deferred: TensorFlow
  import seqio
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # the input pipeline never takes accelerators

  for name, task, allowed in (("preference_task", preference_task,
                               (SYNTHETIC_PREFERENCE_TASK, REAL_PREFERENCE_TASK)),
                              ("sft_task", sft_task, (SYNTHETIC_SFT_TASK, REAL_SFT_TASK))):
    if task not in allowed:
      raise BuildError(f"build_dataset.{name}={task!r}: use one of {allowed}")
  if seq_len <= 0 or prompt_len <= 0 or prompt_len >= seq_len:
    raise BuildError(f"seq_len={seq_len}, prompt_len={prompt_len}: need 0 < PROMPT_LEN < "
                     "SEQ_LEN (a prompt plus its summary must fit SEQ_LEN)")
  output_dir = os.path.abspath(output_dir)
  _check_output_dir(output_dir, overwrite=overwrite)
  synthetic_preferences = preference_task == SYNTHETIC_PREFERENCE_TASK
  if not synthetic_preferences:  # the pairs come from the real task: skip the world's
    world = dataclasses.replace(world, n_train_pairs=0, n_val_pairs=0, n_ood_pairs=0)
  tmp_dir = run_dir.staging_dir(output_dir)
  seconds: dict[str, float] = {}
  t_start = time.perf_counter()
  try:
    # -- 1. the world, as text --------------------------------------------------------------
    t = time.perf_counter()
    splits = prefs.build_splits(config=world)
    seconds["world"] = time.perf_counter() - t
    t = time.perf_counter()
    records = text_records(splits, with_pairs=synthetic_preferences,
                           with_sft=sft_task == SYNTHETIC_SFT_TASK)
    for name, recs in records.items():
      data_dir_lib.write_jsonl(data_dir_lib.text_path(tmp_dir, name), recs)
    seconds["text_files"] = time.perf_counter() - t
    logging.info("world: %d pre-training docs, %d SFT, %d/%d/%d pairs (%.1fs)",
                 len(splits.pretrain_texts), len(splits.sft_examples), len(splits.rm_train),
                 len(splits.id_val), len(splits.ood), seconds["world"])

    # -- 2. the tokenizer ------------------------------------------------------------------
    t = time.perf_counter()
    train_sentencepiece(texts=tokenizer_corpus(splits),
                        model_prefix=os.path.join(tmp_dir, data_dir_lib.SPM_PREFIX),
                        config=tokenizer)
    seconds["tokenizer"] = time.perf_counter() - t
    vocabulary = seqio.SentencePieceVocabulary(
        os.path.join(tmp_dir, data_dir_lib.SPM_MODEL_FILE))

    # -- 3. seqio tasks -> arrays ----------------------------------------------------------
    t = time.perf_counter()
    synthetic_tasks.register_synthetic_tasks(tmp_dir, vocabulary=vocabulary,
                                             generators=GENERATORS)
    if not synthetic_preferences or sft_task != SYNTHETIC_SFT_TASK:
      from warm_jax.data import tldr_tasks  # deferred: TFDS builders
      tldr_tasks.register_tldr_tasks(vocabulary, data_dir=tldr_data_dir,
                                     manual_dir=tldr_manual_dir)
    tasks = {"lm": SYNTHETIC_LM_TASK, "sft": sft_task, "preferences": preference_task,
             "prompts": SYNTHETIC_PROMPT_TASK}
    task_splits = {kind: REAL_TASK_SPLITS.get(task, {}) for kind, task in tasks.items()}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    tokens: dict[str, Any] = {}
    for kind in data_dir_lib.SPLITS:
      arrays.update(_export_arrays(tmp_dir=tmp_dir, kind=kind, tasks=tasks,
                                   task_splits=task_splits, seq_len=seq_len,
                                   prompt_len=prompt_len,
                                   synthetic_preferences=synthetic_preferences,
                                   tokens=tokens))
    seconds["arrays"] = time.perf_counter() - t
    logging.info("tokenized and converted %d arrays (%.1fs)", len(arrays), seconds["arrays"])

    # -- 4. meta, config, stats ------------------------------------------------------------
    meta = {
        "format_version": data_dir_lib.FORMAT_VERSION,
        "vocab_size": tokenizer.vocab_size, "seq_len": seq_len, "prompt_len": prompt_len,
        "spm_model": data_dir_lib.SPM_MODEL_FILE, "generators": list(GENERATORS),
        "tasks": tasks, "task_splits": task_splits,
        "world_config": dataclasses.asdict(world),
        "tokenizer_config": dataclasses.asdict(tokenizer),
        "arrays": {name: {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                          for k, v in a.items()} for name, a in arrays.items()},
    }
    run_dir.write_json(os.path.join(tmp_dir, data_dir_lib.META_FILE), meta)
    if write_operative_gin:
      import gin  # deferred: the library works without gin
      with open(os.path.join(tmp_dir, data_dir_lib.CONFIG_FILE), "w", encoding="utf-8") as f:
        f.write(gin.operative_config_str())
    # Examples per split as trained on: documents for lm, array rows for the others.
    sizes = {name: (tokens[name]["documents"] if name.startswith("lm.") else
                    int(len(next(iter(a.values()))))) for name, a in arrays.items()}
    sizes.update({f"{name}_windows": tokens[name]["windows"] for name in arrays
                  if name.startswith("lm.")})
    sizes[data_dir_lib.POSTS_NAME] = len(records[data_dir_lib.POSTS_NAME])
    stats: dict[str, Any] = {
        "format_version": data_dir_lib.FORMAT_VERSION,
        "preference_task": preference_task, "sft_task": sft_task, "sizes": sizes,
    }
    if synthetic_preferences:
      stats.update(world_stats(splits))
    stats["tokens"] = tokens
    seconds["total"] = time.perf_counter() - t_start
    stats["build_seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    run_dir.write_json(os.path.join(tmp_dir, data_dir_lib.STATS_FILE), stats)
    run_dir.install_dir(tmp_dir, output_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  logging.info("data dir %s complete (%.1fs)", output_dir, seconds["total"])
  return run_dir.finite_or_none(stats)
