"""seqio tasks over the splits of a built synthetic-world data dir.

Where it sits: `python -m warm_jax.data.build` writes the world's splits as JSONL
(`data_dir`), registers these tasks on them and exports every split through the converters of
`converters` into the arrays the trainer loads; the tasks are the canonical tokenisation path.
`register_synthetic_tasks(data_dir)` registers (or re-registers, pointing at another dir):

  task name                     splits                   features (after preprocessing)
  synthetic_tldr_lm             train, validation        targets (post + TL;DR + ref, EOS)
  synthetic_tldr_sft            train, validation        inputs (prompt), targets (ref, EOS)
  synthetic_tldr_preferences    rm_train, id_val, ood    inputs, chosen, rejected (EOS) plus
                                (+ id_policy, ood_policy the per-pair metadata of
                                in on-policy RM dirs)    `data_dir.PREFERENCE_METADATA`
  synthetic_tldr_prompts        train, validation        inputs (prompt, no EOS)

Read them with `converters.get_model_dataset` / `task_arrays` (trim_output_features=False,
so prompts are truncated from the left by the converter, never from the right by seqio).
The real-data counterparts are `tldr_tasks` ("tldr_comparisons", "tldr_sft"); the build's
PREFERENCE_TASK / SFT_TASK gin macros choose between them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from warm_jax.data import data_dir as data_dir_lib

TASK_NAMES: Mapping[str, str] = {
    "lm": "synthetic_tldr_lm",
    "sft": "synthetic_tldr_sft",
    "preferences": "synthetic_tldr_preferences",
    "prompts": "synthetic_tldr_prompts",
}
PREFERENCE_TASK_NAME = TASK_NAMES["preferences"]
SFT_TASK_NAME = TASK_NAMES["sft"]
_TF_DTYPES = {"int32": tf.int32, "float32": tf.float32}
# Metadata computed by the task; pair_index is added by the export (it is the row number).
TASK_METADATA = tuple(k for k in data_dir_lib.PREFERENCE_METADATA if k != "pair_index")


def metadata_feature_specs() -> dict[str, seqio.FeatureConverter.FeatureSpec]:
  """The preference task's metadata as scalar pass-through features of the converter."""
  return {k: seqio.FeatureConverter.FeatureSpec(
      dtype=_TF_DTYPES[data_dir_lib.PREFERENCE_METADATA[k]], rank=0) for k in TASK_METADATA}


def _columns(kind: str, records: Sequence[Mapping], generator_ids: Mapping[str, int]
             ) -> dict[str, tf.Tensor]:
  def col(name, dtype, fn=None):
    return tf.constant([fn(r) if fn else r[name] for r in records], dtype=dtype,
                       shape=[len(records)])

  if kind == "lm":
    return {"text": col("text", tf.string)}
  if kind == "sft":
    return {"prompt": col("prompt", tf.string), "target": col("target", tf.string)}
  if kind == "prompts":
    return {"prompt": col("prompt", tf.string)}
  out = {name: col(name, tf.string) for name in ("prompt", "summary_a", "summary_b")}
  out.update({name: col(name, tf.int32) for name in ("label", "clean_label", "length_a",
                                                     "length_b")})
  out["corrupted"] = col("corrupted", tf.int32, lambda r: int(r["corrupted"]))
  out.update({name: col(name, tf.float32) for name in ("gold_a", "gold_b")})
  for side in ("a", "b"):
    out[f"generator_{side}"] = col(None, tf.int32,
                                   lambda r, s=side: generator_ids[r[f"generator_{s}"]])
  return out


def _source(data_dir: str, kind: str, generators: Sequence[str]) -> seqio.FunctionDataSource:
  generator_ids = {name: i for i, name in enumerate(generators)}

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    name = data_dir_lib.dataset_name(kind, split)
    records = data_dir_lib.read_jsonl(data_dir_lib.text_path(data_dir, name),
                                      fields=data_dir_lib.RECORD_FIELDS[kind])
    unknown = {r[f"generator_{s}"] for r in records for s in "ab"} - set(generator_ids) \
        if kind == "preferences" else set()
    if unknown:
      raise data_dir_lib.DataFormatError(
          f"{data_dir_lib.text_path(data_dir, name)} names generators {sorted(unknown)} that "
          f"{data_dir_lib.META_FILE} does not list ({list(generators)}): rebuild the data dir")
    ds = tf.data.Dataset.from_tensor_slices(_columns(kind, records, generator_ids))
    if shuffle_files:
      ds = ds.shuffle(max(len(records), 1), seed=seed)
    return ds

  return seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=data_dir_lib.all_splits(kind))


@seqio.map_over_dataset
def pairs_to_preferences(ex: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """A world pair (a/b frame, label = index of the preferred) -> inputs/chosen/rejected and
  the metadata of `data_dir.PREFERENCE_METADATA` in the chosen/rejected frame."""
  a_chosen = tf.equal(ex["label"], 0)

  def pick(a, b):
    return tf.where(a_chosen, ex[a], ex[b]), tf.where(a_chosen, ex[b], ex[a])

  chosen, rejected = pick("summary_a", "summary_b")
  chosen_gold, rejected_gold = pick("gold_a", "gold_b")
  chosen_gen, rejected_gen = pick("generator_a", "generator_b")
  chosen_len, rejected_len = pick("length_a", "length_b")
  agrees = tf.cast(chosen_gold > rejected_gold, tf.int32)
  clean_agrees = tf.where(tf.equal(ex["corrupted"], 1), 1 - agrees, agrees)
  return {
      "inputs": ex["prompt"], "chosen": chosen, "rejected": rejected,
      "corrupted": ex["corrupted"], "gold_label": 1 - agrees, "label_agrees_gold": agrees,
      "clean_label_agrees_gold": clean_agrees,
      "chosen_gold": chosen_gold, "rejected_gold": rejected_gold,
      "chosen_generator": chosen_gen, "rejected_generator": rejected_gen,
      "chosen_length": chosen_len, "rejected_length": rejected_len,
  }


def _add_task(name: str, **kwargs) -> seqio.Task:
  seqio.TaskRegistry.remove(name)  # re-registering (another data dir) replaces
  return seqio.TaskRegistry.add(name, **kwargs)


def register_synthetic_tasks(data_dir: str, *, vocabulary: seqio.Vocabulary | None = None,
                             generators: Sequence[str] | None = None) -> dict[str, seqio.Task]:
  """Registers the four tasks on the JSONL files of `data_dir`; returns kind -> task.

  vocabulary: defaults to `seqio.SentencePieceVocabulary(<data_dir>/spm.model)`.
  generators: generator id -> name; defaults to meta.json's list.
  """
  if vocabulary is None:
    model = os.path.join(data_dir, data_dir_lib.SPM_MODEL_FILE)
    if not os.path.isfile(model):
      raise data_dir_lib.DataDirError(
          f"{model} does not exist: build the data dir with `{data_dir_lib.BUILD_COMMAND}`")
    vocabulary = seqio.SentencePieceVocabulary(model)
  if generators is None:
    generators = data_dir_lib.generator_names(data_dir_lib.read_meta(data_dir))
  text = functools.partial(seqio.Feature, vocabulary=vocabulary, add_eos=False)
  eos = functools.partial(seqio.Feature, vocabulary=vocabulary, add_eos=True)
  tokenize = [seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder()]
  tasks = {
      "lm": _add_task(
          TASK_NAMES["lm"], source=_source(data_dir, "lm", generators),
          preprocessors=[functools.partial(seqio.preprocessors.rekey,
                                           key_map={"targets": "text"}),
                         *tokenize, seqio.preprocessors.append_eos],
          output_features={"targets": eos()}),
      "sft": _add_task(
          TASK_NAMES["sft"], source=_source(data_dir, "sft", generators),
          preprocessors=[functools.partial(seqio.preprocessors.rekey,
                                           key_map={"inputs": "prompt", "targets": "target"}),
                         *tokenize, seqio.preprocessors.append_eos_after_trim],
          output_features={"inputs": text(), "targets": eos()}),
      "preferences": _add_task(
          TASK_NAMES["preferences"], source=_source(data_dir, "preferences", generators),
          preprocessors=[pairs_to_preferences, *tokenize,
                         seqio.preprocessors.append_eos_after_trim],
          output_features={"inputs": text(), "chosen": eos(), "rejected": eos()}),
      "prompts": _add_task(
          TASK_NAMES["prompts"], source=_source(data_dir, "prompts", generators),
          preprocessors=[functools.partial(seqio.preprocessors.rekey,
                                           key_map={"inputs": "prompt"}), *tokenize],
          output_features={"inputs": text()}),
  }
  return tasks
