"""The layout of a built data dir and its TF-free readers (text records, metadata, posts).

Where it sits: `python -m warm_jax.data.build` writes a data dir once; every later program
reads it: the seqio tasks (`synthetic_tasks`) read its JSONL files, the training stages read
its token arrays (`datasets`), best-of-N / RL / evaluation read its posts to score any text
with the gold reward (`load_posts`). Layout:

  DIR/meta.json             what readers need: format version, vocab size, sequence lengths,
                            generator ids, task names, the world and tokenizer configs
  DIR/stats.json            the measured statistics; written last, so its presence marks a
                            complete build (the build also installs DIR atomically)
  DIR/config.gin            the build's operative gin config
  DIR/spm.model, spm.vocab  the SentencePiece tokenizer
  DIR/text/<kind>.<split>.jsonl   one JSON record per example / pair (schemas: RECORD_FIELDS)
  DIR/text/posts.jsonl      every post of sft, rm_train, id_val, ood and prompts with its
                            latent facts (for the gold reward)
  DIR/arrays/<kind>.<split>.npz   fixed-shape int32/float32 arrays, one row per example

Kinds and their splits (`SPLITS`): lm (train = the pre-training corpus, validation = the ID
validation posts with their references), sft (train, validation: prompt -> reference),
preferences (rm_train, id_val, ood), prompts (train = the held-out best-of-N / RL prompts,
validation = the ID validation posts' prompts).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from warm_jax.data import world

FORMAT_VERSION = 1
META_FILE = "meta.json"
STATS_FILE = "stats.json"
CONFIG_FILE = "config.gin"
SPM_PREFIX = "spm"
SPM_MODEL_FILE = f"{SPM_PREFIX}.model"
TEXT_SUBDIR = "text"
ARRAYS_SUBDIR = "arrays"
POSTS_NAME = "posts"

SPLITS: Mapping[str, tuple[str, ...]] = {
    "lm": ("train", "validation"),
    "sft": ("train", "validation"),
    "preferences": ("rm_train", "id_val", "ood"),
    "prompts": ("train", "validation"),
}
# Preference splits only an on-policy RM data dir holds (`warm_jax.policy.on_policy`): pairs of
# the final SFT policy's samples at the best-of-N / RL temperature on the ID validation posts,
# and of several policies' high-temperature samples on the OOD posts.
ON_POLICY_SPLITS = ("id_policy", "ood_policy")
BUILD_COMMAND = ("python -m warm_jax.data.build --gin_file=gin/data/synthetic_tldr.gin "
                 "--output_dir=DIR")

_NUMBER = (int, float)
RECORD_FIELDS: Mapping[str, Mapping[str, Any]] = {
    "lm": {"text": str},
    "sft": {"post_id": str, "prompt": str, "target": str},
    "preferences": {
        "post_id": str, "prompt": str, "summary_a": str, "summary_b": str,
        "generator_a": str, "generator_b": str, "gold_a": _NUMBER, "gold_b": _NUMBER,
        "length_a": int, "length_b": int, "label": int, "clean_label": int, "corrupted": bool,
        "gold_label": int,
    },
    "prompts": {"post_id": str, "prompt": str, "reference": str},
    POSTS_NAME: {"post_id": str, "facts": dict, "surfaces": dict, "text": str,
                 "reference": str},
}

# Per-pair metadata stored beside the preference token arrays, in the chosen/rejected frame of
# the rows (name -> numpy dtype). Real-data pairs (tldr_comparisons) have no gold reward:
# there the ints are UNKNOWN_INT and the floats NaN.
PREFERENCE_METADATA: Mapping[str, str] = {
    "corrupted": "int32",  # 1: the training label was swapped by label corruption
    "gold_label": "int32",  # the truly better summary: 0 = chosen, 1 = rejected
    "label_agrees_gold": "int32",  # 1: chosen is truly better (= 1 - gold_label)
    "clean_label_agrees_gold": "int32",  # 1: the Bradley-Terry label before corruption agreed
    "chosen_gold": "float32", "rejected_gold": "float32",  # gold rewards
    "chosen_generator": "int32", "rejected_generator": "int32",  # ids into meta["generators"]
    "chosen_length": "int32", "rejected_length": "int32",  # words (gold_reward.count_words)
    "pair_index": "int32",  # line of the pair in text/preferences.<split>.jsonl, from 0
}
UNKNOWN_INT = -1
PROMPT_INDEX = "prompt_index"  # prompt arrays: line in text/prompts.<split>.jsonl, from 0
NUM_TRUNCATED = "num_truncated"  # prompt tokens removed to fit (sft, preferences, prompts)


class DataDirError(ValueError):
  """A data dir is missing, incomplete, from another format version, or does not match the
  stage's configuration (vocab size, sequence length)."""


class DataFormatError(ValueError):
  """A record file of a data dir is corrupt; the message names the file and the line."""


def dataset_name(kind: str, split: str) -> str:
  """'<kind>.<split>', the stem of the record and array files; validates both names."""
  if kind not in SPLITS:
    raise ValueError(f"unknown data kind {kind!r}: use one of {sorted(SPLITS)}")
  if split not in all_splits(kind):
    raise ValueError(f"unknown {kind} split {split!r}: use one of {all_splits(kind)}")
  return f"{kind}.{split}"


def all_splits(kind: str) -> tuple[str, ...]:
  """Every split name a dir may hold for `kind`: the data build's plus, for preferences, the
  on-policy RM data dir's ON_POLICY_SPLITS."""
  return SPLITS[kind] + (ON_POLICY_SPLITS if kind == "preferences" else ())


def text_path(data_dir: str, name: str) -> str:
  return os.path.join(data_dir, TEXT_SUBDIR, f"{name}.jsonl")


def arrays_path(data_dir: str, name: str) -> str:
  return os.path.join(data_dir, ARRAYS_SUBDIR, f"{name}.npz")


def _rebuild_hint(data_dir: str) -> str:
  return (f"rebuild it with `{BUILD_COMMAND.replace('DIR', data_dir)} --overwrite` (plus the "
          "gin flags it was built with)")


# ---------------------------------------------------------------------------------------------
# JSONL records
# ---------------------------------------------------------------------------------------------
def _json_value(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None  # JSON has no NaN/inf
  return value


def write_jsonl(path: str, records: Iterable[Mapping[str, Any]]) -> int:
  """Writes one compact JSON object per line; returns the number of records."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps({k: _json_value(v) for k, v in record.items()}, ensure_ascii=False,
                         separators=(",", ":")))
      f.write("\n")
      n += 1
  return n


def _type_name(expected: Any) -> str:
  if expected is _NUMBER:
    return "a number"
  return {str: "a string", int: "an integer", bool: "a boolean", dict: "an object"}[expected]


def _check_field(value: Any, expected: Any) -> bool:
  if expected is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):  # JSON true is not an integer here
    return False
  return isinstance(value, expected)


def read_jsonl(path: str, *, fields: Mapping[str, Any]) -> list[dict[str, Any]]:
  """Records of a JSONL file, each checked to hold `fields` (name -> type).

  Raises DataFormatError naming the file and the 1-based line of the first bad record.
  """
  if not os.path.isfile(path):
    raise DataDirError(f"record file {path} does not exist: build the data dir with "
                       f"`{BUILD_COMMAND}`")
  records = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      def fail(what: str) -> DataFormatError:
        return DataFormatError(f"{path} line {line_number}: {what}; the file is corrupt: "
                               f"{_rebuild_hint(os.path.dirname(os.path.dirname(path)))}")
      if not line.strip():
        raise fail("empty line")
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise fail(f"not valid JSON ({e.msg} at column {e.colno})") from None
      if not isinstance(record, dict):
        raise fail(f"expected a JSON object, got {type(record).__name__}")
      for name, expected in fields.items():
        if name not in record:
          raise fail(f"missing field {name!r}")
        if not _check_field(record[name], expected):
          raise fail(f"field {name!r} is {record[name]!r}, expected {_type_name(expected)}")
      records.append(record)
  return records


# ---------------------------------------------------------------------------------------------
# Conversions between the world's objects and records
# ---------------------------------------------------------------------------------------------
def pair_record(pair: Any) -> dict[str, Any]:
  """A `preferences.PreferencePair` as a record (all fields plus gold_label)."""
  return {
      "post_id": pair.post_id, "prompt": pair.prompt, "summary_a": pair.summary_a,
      "summary_b": pair.summary_b, "generator_a": pair.generator_a,
      "generator_b": pair.generator_b, "gold_a": pair.gold_a, "gold_b": pair.gold_b,
      "length_a": pair.length_a, "length_b": pair.length_b, "label": pair.label,
      "clean_label": pair.clean_label, "corrupted": pair.corrupted,
      "gold_label": pair.gold_label,
  }


def post_record(post: world.Post) -> dict[str, Any]:
  return {"post_id": post.post_id, "facts": dict(post.facts), "surfaces": dict(post.surfaces),
          "text": post.text, "reference": post.reference}


def post_from_record(record: Mapping[str, Any]) -> world.Post:
  return world.Post(post_id=record["post_id"], facts=dict(record["facts"]),
                    surfaces=dict(record["surfaces"]), text=record["text"],
                    reference=record["reference"])


# ---------------------------------------------------------------------------------------------
# Readers of a complete data dir
# ---------------------------------------------------------------------------------------------
def read_meta(data_dir: str | None) -> dict[str, Any]:
  """meta.json of a complete data dir; DataDirError (with the build command) otherwise."""
  if not data_dir:
    raise DataDirError("DATA_DIR is not set: build the data with "
                       f"`{BUILD_COMMAND}` and pass --gin.DATA_DIR=\"'DIR'\"")
  if not os.path.isdir(data_dir):
    raise DataDirError(f"data dir {data_dir} does not exist: build it with "
                       f"`{BUILD_COMMAND.replace('DIR', data_dir)}`")
  meta_file, stats_file = (os.path.join(data_dir, n) for n in (META_FILE, STATS_FILE))
  if not os.path.isfile(meta_file) or not os.path.isfile(stats_file):
    raise DataDirError(f"{data_dir} is not a complete data dir (no {META_FILE} or "
                       f"{STATS_FILE}): {_rebuild_hint(data_dir)}")
  try:
    with open(meta_file, encoding="utf-8") as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise DataFormatError(f"{meta_file} line {e.lineno}: not valid JSON ({e.msg}); "
                          f"{_rebuild_hint(data_dir)}") from None
  if meta.get("format_version") != FORMAT_VERSION:
    raise DataDirError(f"{data_dir} has data format version {meta.get('format_version')}, "
                       f"this code reads version {FORMAT_VERSION}: {_rebuild_hint(data_dir)}")
  return meta


def load_records(data_dir: str, *, kind: str, split: str) -> list[dict[str, Any]]:
  """The JSONL records of one split of a complete data dir, validated."""
  read_meta(data_dir)
  return read_jsonl(text_path(data_dir, dataset_name(kind, split)), fields=RECORD_FIELDS[kind])


def load_posts(data_dir: str) -> dict[str, world.Post]:
  """post_id -> Post for every post of the data dir's sft, RM, validation, OOD and prompt
  splits: what `gold_reward.gold_reward(post=..., summary_text=...)` needs."""
  read_meta(data_dir)
  records = read_jsonl(text_path(data_dir, POSTS_NAME), fields=RECORD_FIELDS[POSTS_NAME])
  return {r["post_id"]: post_from_record(r) for r in records}


def generator_names(meta: Mapping[str, Any]) -> Sequence[str]:
  """Generator id -> name, as used by the preference arrays' *_generator features."""
  return tuple(meta["generators"])
