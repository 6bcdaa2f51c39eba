"""`python -m warm_jax.data.build` and what it writes: text, tokenizer, arrays, stats; the seqio
tasks and converters behind the arrays; the TF-free loaders; refusals and bad inputs."""

import glob
import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from warm_jax.data import data_dir as dd
from warm_jax.data import datasets
from warm_jax.data.vocab import EOS_ID

TINY_GIN = "--gin_file=gin/data/synthetic_tldr_tiny.gin"
SEQ_LEN, PROMPT_LEN = 128, 96
STATS_BY_SPLIT = ("label_noise_rate", "label_gold_disagreement_rate", "bt_expected_noise_rate",
                  "corruption_rate",
                  "length_label_corr", "length_gold_corr", "longer_is_better_rate")


def run_build(*args):
  """The CLI's main() in this process (gin state cleared around it); returns the exit code."""
  import gin
  from warm_jax.data import build
  gin.clear_config()
  try:
    return build.main([TINY_GIN, *args])
  finally:
    gin.clear_config()


def _tree_bytes(root):
  out = {}
  for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
    if os.path.isfile(path) and os.path.basename(path) not in (dd.STATS_FILE, dd.CONFIG_FILE):
      name = os.path.relpath(path, root)
      if path.endswith(".npz"):
        with np.load(path) as npz:
          out[name] = {k: npz[k].tobytes() for k in npz.files}
      else:
        with open(path, "rb") as f:
          out[name] = f.read()
  return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("build") / "data")
  assert run_build(f"--output_dir={out}", "--gin.CORRUPTION_RATE=0.25") == 0
  return out


@pytest.fixture(scope="module")
def vocab(built):
  return datasets.load_vocabulary(built)


# ---------------------------------------------------------------------------------------------
# What the build writes
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_build_writes_text_tokenizer_arrays_meta_config_and_stats(built):
  for kind, splits in dd.SPLITS.items():
    for split in splits:
      assert os.path.isfile(dd.text_path(built, f"{kind}.{split}"))
      assert os.path.isfile(dd.arrays_path(built, f"{kind}.{split}"))
  for name in (dd.SPM_MODEL_FILE, "spm.vocab", dd.META_FILE, dd.CONFIG_FILE, dd.STATS_FILE,
               os.path.join(dd.TEXT_SUBDIR, "posts.jsonl")):
    assert os.path.isfile(os.path.join(built, name)), name
  assert not glob.glob(built + ".tmp-*")
  meta = dd.read_meta(built)
  assert (meta["vocab_size"], meta["seq_len"], meta["prompt_len"]) == (1024, SEQ_LEN, PROMPT_LEN)
  assert meta["world_config"]["corruption_rate"] == 0.25
  assert "CORRUPTION_RATE = 0.25" in open(os.path.join(built, dd.CONFIG_FILE)).read()

  stats = json.load(open(os.path.join(built, dd.STATS_FILE)))
  for key in (*STATS_BY_SPLIT, "sizes", "gold_by_generator", "tokens", "build_seconds"):
    assert key in stats, key
  for key in STATS_BY_SPLIT:
    assert set(stats[key]) == {"rm_train", "id_val", "ood"}, key
  assert stats["sizes"]["preferences.rm_train"] == 64 and stats["sizes"]["lm.train"] == 300
  assert stats["sizes"]["lm.train_windows"] == stats["tokens"]["lm.train"]["windows"]
  assert stats["corruption_rate"] == {"rm_train": 0.25, "id_val": 0.0, "ood": 0.0}
  assert stats["build_seconds"]["total"] > 0
  for name in ("sft.train", "preferences.ood", "prompts.train"):
    assert {"examples", "truncated_examples", "truncated_tokens"} <= set(stats["tokens"][name])
  assert stats["tokens"]["lm.train"]["documents"] == 300
  assert 70 < stats["tokens"]["sft.train"]["tokens"]["mean"] < 110  # ~one token per word

  # Independent recomputation from the JSONL records.
  pairs = dd.load_records(built, kind="preferences", split="rm_train")
  noise = np.mean([p["clean_label"] != p["gold_label"] for p in pairs])
  assert stats["label_noise_rate"]["rm_train"] == pytest.approx(noise)
  wrong = np.mean([p["label"] != p["gold_label"] for p in pairs])
  assert stats["label_gold_disagreement_rate"]["rm_train"] == pytest.approx(wrong)
  assert sum(p["corrupted"] for p in pairs) == 16
  assert all(p["label"] == 1 - p["clean_label"] for p in pairs if p["corrupted"])
  gap = np.array([p["length_a"] - p["length_b"] for p in pairs], float)
  a_preferred = np.array([p["label"] == 0 for p in pairs], float)
  assert stats["length_label_corr"]["rm_train"] == pytest.approx(np.corrcoef(gap, a_preferred)[0, 1])


@pytest.mark.slow
def test_posts_file_restores_the_world_posts_for_the_gold_reward(built):
  from warm_jax.data import world
  from warm_jax.data.gold_reward import gold_reward
  posts = dd.load_posts(built)
  pairs = dd.load_records(built, kind="preferences", split="ood")
  for p in pairs[:10]:
    post = posts[p["post_id"]]
    index = int(p["post_id"].split("-")[1])
    assert post == world.generate_post(seed=0, index=index)
    assert gold_reward(post=post, summary_text=p["summary_a"]) == p["gold_a"]


# ---------------------------------------------------------------------------------------------
# The arrays, through the TF-free loaders
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sft_loss_mask_covers_exactly_the_summary_and_eos(built, vocab):
  ds = datasets.sft_dataset(data_dir=built, split="train", shuffle=False, seq_len=SEQ_LEN,
                            vocab_size=1024)
  assert set(ds.features) == {"tokens", "mask", "loss_mask"}
  records = dd.load_records(built, kind="sft", split="train")
  assert ds.num_examples == len(records) == 64
  for row, record in enumerate(records):
    prompt, summary = vocab.encode(record["prompt"]), vocab.encode(record["target"]) + [EOS_ID]
    n = len(prompt) + len(summary)
    assert ds.features["tokens"][row].tolist() == prompt + summary + [0] * (SEQ_LEN - n)
    assert ds.features["mask"][row].tolist() == [1] * n + [0] * (SEQ_LEN - n)
    assert ds.features["loss_mask"][row].tolist() == (
        [0] * len(prompt) + [1] * len(summary) + [0] * (SEQ_LEN - n))
    assert ds.features["tokens"].dtype == np.int32


@pytest.mark.slow
def test_lm_windows_are_the_documents_joined_by_eos(built, vocab):
  ds = datasets.lm_dataset(data_dir=built, split="train", shuffle=False)
  stream = []
  for record in dd.load_records(built, kind="lm", split="train"):
    stream += vocab.encode(record["text"]) + [EOS_ID]
  windows = ds.features["tokens"]
  assert windows.shape == (len(stream) // SEQ_LEN, SEQ_LEN)
  assert windows.reshape(-1).tolist() == stream[:windows.size]
  assert ds.features["mask"].all() and ds.features["loss_mask"].all()


@pytest.mark.slow
def test_prompts_are_left_padded_for_decoding(built, vocab):
  ds = datasets.prompt_dataset(data_dir=built, split="train", shuffle=False,
                               prompt_len=PROMPT_LEN)
  assert set(ds.features) == {"prompt_tokens", "prompt_mask", "prompt_index"}
  records = dd.load_records(built, kind="prompts", split="train")
  for row, record in enumerate(records):
    prompt = vocab.encode(record["prompt"])
    pad = PROMPT_LEN - len(prompt)
    assert ds.features["prompt_tokens"][row].tolist() == [0] * pad + prompt
    assert ds.features["prompt_mask"][row].tolist() == [0] * pad + [1] * len(prompt)
    assert ds.features["prompt_index"][row] == row
    assert vocab.decode(prompt).endswith("TL;DR:")


@pytest.mark.slow
def test_preference_rows_and_metadata_match_the_records(built, vocab):
  ds = datasets.preference_dataset(data_dir=built, split="rm_train", shuffle=False,
                                   seq_len=SEQ_LEN)
  f = ds.features
  meta = dd.read_meta(built)
  for row, p in enumerate(dd.load_records(built, kind="preferences", split="rm_train")):
    a_chosen = p["label"] == 0
    chosen, rejected = (p["summary_a"], p["summary_b"])[::1 if a_chosen else -1]
    prompt = vocab.encode(p["prompt"])
    for side, text in (("chosen", chosen), ("rejected", rejected)):
      ids = prompt + vocab.encode(text) + [EOS_ID]
      assert f[f"{side}_tokens"][row].tolist() == ids + [0] * (SEQ_LEN - len(ids))
      assert f[f"{side}_mask"][row].sum() == len(ids)
    chosen_gold, rejected_gold = (p["gold_a"], p["gold_b"])[::1 if a_chosen else -1]
    assert f["chosen_gold"][row] == pytest.approx(chosen_gold)
    assert f["rejected_gold"][row] == pytest.approx(rejected_gold)
    assert f["gold_label"][row] == int(rejected_gold > chosen_gold)
    assert f["label_agrees_gold"][row] == int(p["label"] == p["gold_label"])
    assert f["clean_label_agrees_gold"][row] == int(p["clean_label"] == p["gold_label"])
    assert f["corrupted"][row] == int(p["corrupted"])
    generators = (p["generator_a"], p["generator_b"])[::1 if a_chosen else -1]
    assert [meta["generators"][f[f"{s}_generator"][row]] for s in ("chosen", "rejected")] == \
        list(generators)
    assert f["chosen_length"][row] == (p["length_a"] if a_chosen else p["length_b"])
    assert f["pair_index"][row] == row
  assert f["corrupted"].sum() == 16
  only = datasets.preference_dataset(data_dir=built, features=("chosen_tokens", "corrupted"))
  assert set(only.features) == {"chosen_tokens", "corrupted"}


@pytest.mark.slow
def test_array_dataset_batches_are_a_function_of_seed_and_step(built):
  a = datasets.sft_dataset(data_dir=built, seed=3)
  b = datasets.sft_dataset(data_dir=built, seed=3)
  c = datasets.sft_dataset(data_dir=built, seed=4)
  for step in (0, 7, 20):  # 20 * 8 > 64 examples: across epoch boundaries
    batch = a.batch(step, 8, process_index=0, process_count=1)
    assert batch["tokens"].shape == (8, SEQ_LEN)
    np.testing.assert_array_equal(batch["tokens"],
                                  b.batch(step, 8, process_index=0, process_count=1)["tokens"])
  assert not np.array_equal(a.batch(0, 8, process_index=0, process_count=1)["tokens"],
                            c.batch(0, 8, process_index=0, process_count=1)["tokens"])


# ---------------------------------------------------------------------------------------------
# seqio tasks and converters
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_seqio_tasks_and_converters_give_the_model_shapes(built):
  import seqio
  from warm_jax.data import converters, synthetic_tasks
  tasks = synthetic_tasks.register_synthetic_tasks(built)
  assert seqio.get_mixture_or_task("synthetic_tldr_preferences") is tasks["preferences"]
  raw = next(tasks["sft"].get_dataset({"inputs": SEQ_LEN, "targets": SEQ_LEN}, split="train",
                                      shuffle=False, trim_output_features=False)
             .as_numpy_iterator())
  assert raw["targets"][-1] == EOS_ID and EOS_ID not in raw["inputs"].tolist()
  expected = {
      "lm": {"tokens": (SEQ_LEN,), "mask": (SEQ_LEN,), "loss_mask": (SEQ_LEN,)},
      "sft": {"tokens": (SEQ_LEN,), "mask": (SEQ_LEN,), "loss_mask": (SEQ_LEN,),
              "num_truncated": ()},
      "preferences": {"chosen_tokens": (SEQ_LEN,), "chosen_mask": (SEQ_LEN,),
                      "rejected_tokens": (SEQ_LEN,), "rejected_mask": (SEQ_LEN,),
                      "chosen_response_mask": (SEQ_LEN,), "rejected_response_mask": (SEQ_LEN,),
                      "num_truncated": (), **{k: () for k in synthetic_tasks.TASK_METADATA}},
      "prompts": {"prompt_tokens": (PROMPT_LEN,), "prompt_mask": (PROMPT_LEN,),
                  "num_truncated": ()},
  }
  for kind, shapes in expected.items():
    converter, lengths = converters.converter_and_lengths(
        kind=kind, seq_len=SEQ_LEN, prompt_len=PROMPT_LEN,
        passthrough_features=(synthetic_tasks.metadata_feature_specs()
                              if kind == "preferences" else None))
    split = dd.SPLITS[kind][-1]
    ds = converters.get_model_dataset(synthetic_tasks.TASK_NAMES[kind], split=split,
                                      converter=converter, task_feature_lengths=lengths)
    assert {k: tuple(v.shape) for k, v in ds.element_spec.items()} == shapes, kind
    stored = np.load(dd.arrays_path(built, f"{kind}.{split}"))
    first = next(ds.as_numpy_iterator())
    for k in shapes:
      np.testing.assert_array_equal(first[k], stored[k][0])


def _convert(converter, lengths, example):
  import tensorflow as tf
  ds = tf.data.Dataset.from_tensors({k: tf.constant(v, tf.int32) for k, v in example.items()})
  return {k: v.tolist() for k, v in next(converter(ds, lengths).as_numpy_iterator()).items()}


def test_over_long_prompts_are_truncated_from_the_left_keeping_the_summary():
  from warm_jax.data import converters
  prompt = list(range(3, 13))  # 10 tokens
  sft = converters.PromptCompletionFeatureConverter()
  out = _convert(sft, {"inputs": 8, "targets": 8}, {"inputs": prompt, "targets": [20, 21, 1]})
  assert out == {"tokens": [8, 9, 10, 11, 12, 20, 21, 1], "mask": [1] * 8,
                 "loss_mask": [0] * 5 + [1] * 3, "num_truncated": 5}
  out = _convert(sft, {"inputs": 8, "targets": 8}, {"inputs": [3, 4], "targets": [20, 1]})
  assert out == {"tokens": [3, 4, 20, 1, 0, 0, 0, 0], "mask": [1] * 4 + [0] * 4,
                 "loss_mask": [0, 0, 1, 1, 0, 0, 0, 0], "num_truncated": 0}
  # A summary that fills the whole window leaves no room for the prompt.
  out = _convert(sft, {"inputs": 4, "targets": 4}, {"inputs": prompt, "targets": [20, 21, 22, 1]})
  assert out["tokens"] == [20, 21, 22, 1] and out["num_truncated"] == 10

  pref = converters.PreferenceFeatureConverter()
  out = _convert(pref, {"inputs": 8, "chosen": 8, "rejected": 8},
                 {"inputs": prompt, "chosen": [20, 1], "rejected": [30, 31, 32, 1]})
  assert out == {"chosen_tokens": [9, 10, 11, 12, 20, 1, 0, 0], "chosen_mask": [1] * 6 + [0] * 2,
                 "rejected_tokens": [9, 10, 11, 12, 30, 31, 32, 1],
                 "rejected_mask": [1] * 8, "num_truncated": 6,
                 "chosen_response_mask": [0, 0, 0, 0, 1, 1, 0, 0],
                 "rejected_response_mask": [0, 0, 0, 0, 1, 1, 1, 1]}

  prompts = converters.PromptFeatureConverter()
  assert _convert(prompts, {"inputs": 4}, {"inputs": prompt}) == {
      "prompt_tokens": [9, 10, 11, 12], "prompt_mask": [1] * 4, "num_truncated": 6}
  assert _convert(prompts, {"inputs": 4}, {"inputs": [5, 6]}) == {
      "prompt_tokens": [0, 0, 5, 6], "prompt_mask": [0, 0, 1, 1], "num_truncated": 0}


# ---------------------------------------------------------------------------------------------
# Reruns, determinism, atomicity
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rebuild_is_identical_refused_without_overwrite_and_short_seq_keeps_summaries(
    built, tmp_path, capsys):
  out = str(tmp_path / "again")
  assert run_build(f"--output_dir={out}", "--gin.CORRUPTION_RATE=0.25") == 0
  assert _tree_bytes(out) == _tree_bytes(built)  # same config, same bytes (paths aside)

  capsys.readouterr()
  assert run_build(f"--output_dir={out}") == 1
  assert "already holds a complete data build: pass --overwrite" in capsys.readouterr().err

  # --overwrite with a short SEQ_LEN: many prompts no longer fit and are cut from the left.
  short_seq, short_prompt = 64, 48
  assert run_build(f"--output_dir={out}", "--overwrite", f"--gin.SEQ_LEN={short_seq}",
                   f"--gin.PROMPT_LEN={short_prompt}") == 0
  assert not glob.glob(out + ".tmp-*") and not glob.glob(out + ".old-*")
  stats = json.load(open(os.path.join(out, dd.STATS_FILE)))
  assert stats["tokens"]["sft.train"]["truncated_examples"] == 64
  assert stats["tokens"]["preferences.rm_train"]["truncated_examples"] > 0
  vocab = datasets.load_vocabulary(out)
  sft = datasets.sft_dataset(data_dir=out, shuffle=False, seq_len=short_seq)
  for row, record in enumerate(dd.load_records(out, kind="sft", split="train")):
    summary = vocab.encode(record["target"]) + [EOS_ID]
    tokens, loss = sft.features["tokens"][row], sft.features["loss_mask"][row]
    assert tokens[loss == 1].tolist() == summary
    assert sft.features["mask"][row].all()  # the window is full: prompt tail + summary
    assert vocab.decode(tokens[:-len(summary)]).endswith("TL;DR:")
  truncated = np.load(dd.arrays_path(out, "preferences.ood"))
  pairs = dd.load_records(out, kind="preferences", split="ood")
  for row in np.nonzero(truncated["num_truncated"])[0][:10]:
    p = pairs[row]
    chosen = vocab.encode(p["summary_a"] if p["label"] == 0 else p["summary_b"]) + [EOS_ID]
    tokens = truncated["chosen_tokens"][row][truncated["chosen_mask"][row] == 1].tolist()
    assert tokens[-len(chosen):] == chosen
  with pytest.raises(dd.DataDirError, match="SEQ_LEN is 128 but .* holds sequences of 64"):
    datasets.sft_dataset(data_dir=out, seq_len=SEQ_LEN)
  with pytest.raises(dd.DataDirError, match="PROMPT_LEN is 96"):
    datasets.prompt_dataset(data_dir=out, prompt_len=PROMPT_LEN)


def test_a_failed_build_leaves_no_output_and_no_temporary_dir(tmp_path, capsys):
  out = str(tmp_path / "data")
  assert run_build(f"--output_dir={out}", "--gin.VOCAB_SIZE=50000") == 1
  assert "VOCAB_SIZE" in capsys.readouterr().err
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, code, message", [
    (["--gin.CORRUPTON_RATE=0.25"], 2, "CORRUPTON_RATE sets a macro that no configuration uses"),
    (["--gin.WorldConfig.n_pretrain_post=3"], 2, "n_pretrain_post"),
    (["--gin.WorldConfig.seed="], 2, "bad gin configuration"),
    (["--gin.CORRUPTION_RATE=1.5"], 1, "WorldConfig.corruption_rate=1.5"),
    (["--gin.PREFERENCE_TASK='nope'"], 1, "build_dataset.preference_task='nope'"),
    (["--gin.PROMPT_LEN=200"], 1, "PROMPT_LEN < SEQ_LEN"),
    (["--frobnicate"], 2, "unknown argument '--frobnicate'"),
])
def test_bad_configurations_are_clear_errors_and_write_nothing(tmp_path, capsys, args, code,
                                                              message):
  out = tmp_path / "data"
  assert run_build(f"--output_dir={out}", *args) == code
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_malformed_gin_file_names_the_file_and_line(tmp_path, capsys):
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'gin/data/synthetic_tldr_tiny.gin'\nWorldConfig.seed = = 3\n")
  assert run_build(f"--output_dir={tmp_path / 'data'}", f"--gin_file={bad}") == 2
  err = capsys.readouterr().err
  assert "bad gin configuration" in err and "bad.gin, line 2" in err
  assert not (tmp_path / "data").exists()


def test_missing_output_dir_flag_and_a_foreign_output_dir(tmp_path, capsys):
  assert run_build() == 2
  assert "no --output_dir given" in capsys.readouterr().err
  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("keep me")
  assert run_build(f"--output_dir={foreign}", "--overwrite") == 1
  assert "is not a data dir written by warm_jax.data.build" in capsys.readouterr().err
  assert os.listdir(foreign) == ["notes.txt"]


# ---------------------------------------------------------------------------------------------
# Bad data dirs
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_corrupt_jsonl_line_names_the_file_and_the_line(built, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(built, copy)
  path = dd.text_path(copy, "preferences.rm_train")
  lines = open(path).read().splitlines(keepends=True)
  lines[2] = lines[2][:40] + "\n"
  open(path, "w").write("".join(lines))
  with pytest.raises(dd.DataFormatError, match=rf"{path} line 3: not valid JSON"):
    dd.load_records(copy, kind="preferences", split="rm_train")
  from warm_jax.data import synthetic_tasks
  tasks = synthetic_tasks.register_synthetic_tasks(copy)
  with pytest.raises(dd.DataFormatError, match=rf"{path} line 3"):
    tasks["preferences"].get_dataset(None, split="rm_train", shuffle=False)
  record = json.loads(lines[0])
  record["gold_a"] = "high"
  lines[2] = json.dumps(record) + "\n"
  open(path, "w").write("".join(lines))
  with pytest.raises(dd.DataFormatError, match=r"line 3: field 'gold_a' is 'high', expected a "
                                                "number; the file is corrupt: rebuild"):
    dd.load_records(copy, kind="preferences", split="rm_train")


@pytest.mark.slow
def test_missing_incomplete_or_mismatched_data_dirs_say_what_to_do(built, tmp_path):
  with pytest.raises(dd.DataDirError, match="DATA_DIR is not set: build the data with "
                                            "`python -m warm_jax.data.build"):
    datasets.lm_dataset(data_dir=None)
  with pytest.raises(dd.DataDirError, match="does not exist: build it with `python -m "
                                            "warm_jax.data.build"):
    datasets.sft_dataset(data_dir=str(tmp_path / "nope"))
  partial = tmp_path / "partial"
  shutil.copytree(built, partial)
  os.remove(partial / dd.STATS_FILE)
  with pytest.raises(dd.DataDirError, match="not a complete data dir"):
    datasets.lm_dataset(data_dir=str(partial))
  with pytest.raises(dd.DataDirError, match="VOCAB_SIZE is 512 but the tokenizer of .* has 1024"):
    datasets.lm_dataset(data_dir=built, vocab_size=512)
  with pytest.raises(ValueError, match="unknown preferences split 'train'"):
    datasets.preference_dataset(data_dir=built, split="train")
  with pytest.raises(dd.DataDirError, match=r"has no feature\(s\) \['logits'\]"):
    datasets.preference_dataset(data_dir=built, features=("logits",))


# ---------------------------------------------------------------------------------------------
# The real-data path: one macro swaps the synthetic pairs for OpenAI's comparisons
# ---------------------------------------------------------------------------------------------
def _comparison(i, split, choice):
  """A line of OpenAI's summarize-from-feedback comparisons/*.json files."""
  return {"info": {"id": f"t3_{i}", "subreddit": "relationships", "title": f"Title {i}",
                   "post": f"My bf forgot my birthday {i} times.\n\nShould I be mad?"},
          "summaries": [{"text": f" bf forgot my birthday {i}", "policy": "ref"},
                        {"text": " am I overreacting?", "policy": "sup2"}],
          "choice": choice, "worker": f"w{i}", "batch": "batch3", "split": split}


@pytest.mark.slow
def test_task_macros_build_the_real_tldr_comparisons_and_posts(tmp_path):
  from warm_jax.data import tldr
  manual = tmp_path / "manual"
  (manual / "comparisons").mkdir(parents=True)
  rows = [("train", 0), ("train", 1), ("train", 0), ("valid1", 1), ("valid2", 0)]
  comparisons = [_comparison(i, split, choice) for i, (split, choice) in enumerate(rows)]
  (manual / "comparisons" / "batch3.json").write_text(
      "".join(json.dumps(c) + "\n" for c in comparisons))
  (manual / tldr.POSTS_SUBDIR).mkdir()
  for split, filename in tldr.POSTS_FILES.items():
    posts = [{"id": f"t3_{split}{i}", "subreddit": "pets", "title": "Dog",
              "post": f"Dog ate {i} socks.", "summary": f" dog ate {i} socks"} for i in range(2)]
    (manual / tldr.POSTS_SUBDIR / filename).write_text(
        "".join(json.dumps(p) + "\n" for p in posts))
  out = tmp_path / "data"
  assert run_build(f"--output_dir={out}", "--gin.PREFERENCE_TASK='tldr_comparisons'",
                   "--gin.SFT_TASK='tldr_sft'", f"--gin.TLDR_MANUAL_DIR='{manual}'",
                   f"--gin.TLDR_DATA_DIR='{tmp_path / 'tfds'}'") == 0
  stats = json.load(open(out / dd.STATS_FILE))
  assert stats["preference_task"] == "tldr_comparisons" and "label_noise_rate" not in stats
  assert [stats["sizes"][f"preferences.{s}"] for s in ("rm_train", "id_val", "ood")] == [3, 1, 1]
  assert stats["sizes"]["sft.train"] == 2 and stats["sizes"]["lm.train"] == 300
  assert not os.path.exists(dd.text_path(str(out), "preferences.rm_train"))
  assert not os.path.exists(dd.text_path(str(out), "sft.train"))
  vocab = datasets.load_vocabulary(str(out))
  pairs = datasets.preference_dataset(data_dir=str(out), shuffle=False)
  expected = {}
  for c in comparisons[:3]:
    info = c["info"]
    prompt = (f"SUBREDDIT: r/{info['subreddit']}\nTITLE: {info['title']}\nPOST: {info['post']}"
              "\nTL;DR:")
    expected[prompt + c["summaries"][c["choice"]]["text"]] = (
        prompt + c["summaries"][1 - c["choice"]]["text"])
  got = {}
  for row in range(pairs.num_examples):
    texts = [vocab.decode(pairs.features[f"{s}_tokens"][row][pairs.features[f"{s}_mask"][row]
                                                              == 1]) for s in ("chosen", "rejected")]
    got[texts[0]] = texts[1]
  assert got == expected  # byte fallback: capitals and newlines of real posts survive
  assert (pairs.features["gold_label"] == dd.UNKNOWN_INT).all()
  assert np.isnan(pairs.features["chosen_gold"]).all()
  sft = datasets.sft_dataset(data_dir=str(out), shuffle=False).features
  summaries = {vocab.decode(sft["tokens"][row][sft["loss_mask"][row] == 1]) for row in range(2)}
  assert summaries == {"dog ate 0 socks", "dog ate 1 socks"}
