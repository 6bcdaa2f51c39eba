"""The on-policy RM data (`warm_jax.policy.on_policy`): splits of policy-sample comparisons,
labels from the gold reward (checked against an independent Bradley-Terry computation),
corruption of training labels only and exact, response masks, determinism, refusals, and the
evaluation's id_policy / ood_policy subsets read from it.

A tiny world is built in-process; two randomly initialised tiny LanguageModels stand in for
the SFT checkpoints (their samples are noise; the gold reward scores any text).
"""

import dataclasses
import hashlib
import json
import math
import os

import numpy as np
import pytest

from test_policy_pairs import TINY, TINY_WORLD, _save_run_dir, _tree_digest
from warm_jax.data import data_dir as dd
from warm_jax.policy import on_policy as op
from warm_jax.data import preferences as prefs
from warm_jax.data.gold_reward import count_words, gold_reward
from warm_jax.models import LanguageModel, RewardModel


def _run(setup, out, **overrides):
  kwargs = dict(output_dir=out, data_dir=setup["data"], model_config=TINY,
                train_policies=[("sft_a", setup["sft_a"], 1.0, 2), ("sft_b", setup["sft_b"], 1.0, 2)],
                id_policy=[("sft", setup["sft_b"], 0.9, 3)],
                ood_policies=[("pre", setup["sft_a"], 1.0, 2), ("sft", setup["sft_b"], 1.3, 2)],
                pairs_per_post=4, id_policy_pairs_per_post=2, ood_pairs_per_post=2,
                corruption_rate=0.25, max_new_tokens=10, batch_size=32, seed=0)
  kwargs.update(overrides)
  return op.build_on_policy_data(**kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from warm_jax.data.build import build_dataset
  base = tmp_path_factory.mktemp("on_policy")
  data = str(base / "data")
  build_dataset(output_dir=data, world=prefs.WorldConfig(**TINY_WORLD))
  setup = dict(base=base, data=data,
               sft_a=_save_run_dir(str(base / "sft_a"), LanguageModel(TINY), data_dir=data, seed=1),
               sft_b=_save_run_dir(str(base / "sft_b"), LanguageModel(TINY), data_dir=data, seed=2))
  setup["data_digest"] = _tree_digest(data)
  setup["out"] = str(base / "rm_data")
  setup["stats"] = _run(setup, setup["out"])
  return setup


def _records(setup, setting, split):
  return dd.load_records(os.path.join(setup["out"], setting), kind="preferences", split=split)


@pytest.mark.slow
def test_splits_come_from_their_posts_and_policies(setup):
  meta = dd.read_meta(setup["data"])
  posts = {s: {p.post_id for p in op.world_posts(setup["data"], meta=meta, split=s)}
           for s in ("rm_train", "id_val", "ood")}
  expected_posts = {"rm_train": "rm_train", "id_val": "id_val", "id_policy": "id_val",
                    "ood_policy": "ood"}
  generators = {"rm_train": {"sft_a@T1", "sft_b@T1"}, "id_val": {"sft_a@T1", "sft_b@T1"},
                "id_policy": {"sft@T0.9"}, "ood_policy": {"pre@T1", "sft@T1.3"}}
  for split, world_split in expected_posts.items():
    records = _records(setup, "clean", split)
    assert records and {r["post_id"] for r in records} <= posts[world_split]
    assert {r[f"generator_{s}"] for r in records for s in "ab"} <= generators[split]
  # at most PAIRS_PER_POST pairs per post, never the same pair twice
  records = _records(setup, "clean", "rm_train")
  per_post = {}
  for r in records:
    per_post.setdefault(r["post_id"], set()).add(frozenset((r["summary_a"], r["summary_b"])))
  assert max(map(len, per_post.values())) <= 4
  assert sum(map(len, per_post.values())) == len(records)
  # the generator OOD split is the data dir's, unchanged
  assert _records(setup, "clean", "ood") == dd.load_records(setup["data"], kind="preferences",
                                                            split="ood")
  assert _tree_digest(setup["data"]) == setup["data_digest"]  # the input was only read


@pytest.mark.slow
def test_labels_are_bradley_terry_on_the_gold_reward(setup):
  posts = dd.load_posts(os.path.join(setup["out"], "clean"))
  gaps, labels = [], []
  for split in ("rm_train", "id_val", "id_policy", "ood_policy"):
    for r in _records(setup, "clean", split):
      post = posts[r["post_id"]]
      for side in "ab":
        assert r[f"gold_{side}"] == gold_reward(post=post, summary_text=r[f"summary_{side}"])
        assert r[f"length_{side}"] == count_words(r[f"summary_{side}"])
      assert r["summary_a"] != r["summary_b"] and r["gold_a"] != r["gold_b"]
      assert r["gold_label"] == int(r["gold_b"] > r["gold_a"]) and not r["corrupted"]
      gaps.append(r["gold_a"] - r["gold_b"])
      labels.append(r["label"])
  stats = setup["stats"]["settings"]["clean"]["splits"]["rm_train"]
  train = _records(setup, "clean", "rm_train")
  g = np.array([r["gold_a"] - r["gold_b"] for r in train])
  assert stats["bt_expected_noise_rate"] == pytest.approx(np.mean(1 / (1 + np.exp(np.abs(g)))))
  assert stats["label_noise_rate"] == pytest.approx(np.mean(
      [r["label"] != r["gold_label"] for r in train]))
  assert stats["equal_length_rate"] == pytest.approx(np.mean(
      [r["length_a"] == r["length_b"] for r in train]))


def test_bradley_terry_sampling_matches_its_expectation_on_many_pairs():
  """build_sample_pairs with hand-made candidates of spread-out gold: the label noise rate is
  within 4 standard errors of mean(sigmoid(-|gap|)), and a fair coin orders the sides."""
  from warm_jax.data import world
  posts = world.generate_posts(seed=3, n=400)
  rng = np.random.default_rng(0)
  candidates = {}
  for p in posts:
    words = p.reference.split() + p.text.split()[:25]
    candidates[p.post_id] = [("x", " ".join(rng.choice(words, size=int(rng.integers(3, 20)))))
                             for _ in range(6)]
  pairs = prefs.build_sample_pairs(split="rm_train", posts=posts, candidates=candidates,
                                   pairs_per_post=5, temperature=1.0, seed=0)
  gaps = np.array([p.gold_a - p.gold_b for p in pairs])
  expected = np.mean(1 / (1 + np.exp(np.abs(gaps))))
  measured = np.mean([p.label != p.gold_label for p in pairs])
  assert len(pairs) > 1500
  assert abs(measured - expected) < 4 * math.sqrt(expected * (1 - expected) / len(pairs))
  assert abs(np.mean(gaps > 0) - 0.5) < 4 * math.sqrt(0.25 / len(pairs))
  # the length knob, when set, forces the share of "longer is better" among the pairs kept
  forced = prefs.build_sample_pairs(split="rm_train", posts=posts, candidates=candidates,
                                    pairs_per_post=3, temperature=1.0, seed=0,
                                    longer_is_better_rate=0.9)
  longer_better = np.mean([(p.length_a > p.length_b) == (p.gold_a > p.gold_b) for p in forced])
  assert longer_better == pytest.approx(0.9, abs=0.05)
  assert all(p.length_a != p.length_b for p in forced)


@pytest.mark.slow
def test_corruption_swaps_exactly_a_quarter_of_the_training_labels_only(setup):
  clean, corrupt = _records(setup, "clean", "rm_train"), _records(setup, "corrupt", "rm_train")
  assert [(r["summary_a"], r["summary_b"]) for r in clean] == [
      (r["summary_a"], r["summary_b"]) for r in corrupt]
  flipped = [c["label"] != k["label"] for c, k in zip(clean, corrupt)]
  assert sum(flipped) == round(0.25 * len(clean))
  assert flipped == [r["corrupted"] for r in corrupt]
  assert all(r["clean_label"] == c["label"] for r, c in zip(corrupt, clean))
  for split in ("id_val", "id_policy", "ood", "ood_policy"):
    assert _records(setup, "clean", split) == _records(setup, "corrupt", split)
  assert setup["stats"]["settings"]["corrupt"]["corruption_rate"] == 0.25


@pytest.mark.slow
def test_arrays_hold_response_masks_on_the_summary_and_eos(setup):
  from warm_jax.data.datasets import load_vocabulary, preference_dataset
  out = os.path.join(setup["out"], "corrupt")
  vocab = load_vocabulary(out)
  records = dd.load_records(out, kind="preferences", split="rm_train")
  arrays = preference_dataset(data_dir=out, split="rm_train", shuffle=False).features
  for i in range(len(records)):
    r = records[i]
    chosen = r["summary_a"] if r["label"] == 0 else r["summary_b"]
    row = arrays["chosen_tokens"][i]
    summary = row[arrays["chosen_response_mask"][i] == 1].tolist()
    assert summary == vocab.encode(chosen) + [vocab.eos_id]
  corrupted = preference_dataset(data_dir=out, split="rm_train", pairs="corrupted",
                                 shuffle=False).features
  assert len(corrupted["corrupted"]) == sum(r["corrupted"] for r in records)
  assert corrupted["corrupted"].all()
  with pytest.raises(dd.DataDirError, match="no corrupted pairs"):
    preference_dataset(data_dir=os.path.join(setup["out"], "clean"), split="rm_train",
                       pairs="corrupted")


@pytest.mark.slow
def test_same_seed_same_bytes_and_a_finished_dir_is_returned(setup):
  again = str(setup["base"] / "again")
  _run(setup, again)
  for setting in ("clean", "corrupt"):
    assert _tree_digest(os.path.join(again, setting)) == _tree_digest(
        os.path.join(setup["out"], setting))
  assert _run(setup, setup["out"]) == setup["stats"]  # the same request: nothing rebuilt
  with pytest.raises(op.OnPolicyDataError, match="differing: pairs_per_post"):
    _run(setup, setup["out"], pairs_per_post=3)
  other = str(setup["base"] / "seed1")
  _run(setup, other, seed=1)
  assert _records(setup, "clean", "rm_train") != dd.load_records(
      os.path.join(other, "clean"), kind="preferences", split="rm_train")


@pytest.mark.slow
def test_generator_share_mixes_in_generator_pairs(setup):
  out = str(setup["base"] / "mixed")
  _run(setup, out, generator_share=0.25)
  records = dd.load_records(os.path.join(out, "clean"), kind="preferences", split="rm_train")
  world_gens = {r["generator_a"] for r in dd.load_records(setup["data"], kind="preferences",
                                                          split="rm_train")}
  n_gen = sum(r["generator_a"] in world_gens for r in records)
  n_policy = len(records) - n_gen
  assert n_gen == round(0.25 / 0.75 * n_policy) > 0
  with pytest.raises(op.OnPolicyDataError, match="lower GENERATOR_SHARE"):
    _run(setup, str(setup["base"] / "too_many"), generator_share=0.9)
  assert not os.path.exists(setup["base"] / "too_many")


@pytest.mark.slow
def test_refusals_name_the_input_and_write_nothing(setup):
  base = setup["base"]
  cases = [
      (dict(train_policies=None), "TRAIN_POLICIES is not set"),
      (dict(id_policy=[("a/b", setup["sft_b"], 0.9, 2)]), "without '@', '/'"),
      (dict(ood_policies=[("x", setup["sft_b"], 0.0, 2)]), "temperature 0.0 must be > 0"),
      (dict(train_policies=[("x", setup["sft_a"], 1.0, 2), ("x", setup["sft_b"], 1.0, 2)]),
       "names a source twice"),
      (dict(generator_share=1.0), "GENERATOR_SHARE"),
      (dict(pairs_per_post=0), "PAIRS_PER_POST"),
      (dict(id_policy=[("sft", str(base / "nowhere"), 0.9, 2)]), "does not exist"),
      (dict(id_policy=[("sft", _save_run_dir(str(base / "rm_run"), RewardModel(TINY),
                                             data_dir=setup["data"]), 0.9, 2)]),
       "reward model"),
      (dict(model_config=dataclasses.replace(TINY, vocab_size=512)), "vocab_size is 512"),
      (dict(max_new_tokens=500), "exceeds the model's max_len"),
      (dict(output_dir=os.path.join(setup["data"], "inside")), "overlaps DATA_DIR"),
  ]
  for overrides, match in cases:
    out = overrides.pop("output_dir", str(base / "refused"))
    with pytest.raises((op.OnPolicyDataError, dd.DataDirError, ValueError), match=match):
      _run(setup, out, **overrides)
    assert not os.path.exists(out)
  from warm_jax.data.build import build_dataset
  corrupt = str(base / "corrupt_world")
  build_dataset(output_dir=corrupt, world=prefs.WorldConfig(**TINY_WORLD, corruption_rate=0.25))
  with pytest.raises(op.OnPolicyDataError, match="built with corrupted labels"):
    _run(setup, str(base / "refused"), data_dir=corrupt)


@pytest.mark.slow
def test_the_evaluation_reads_id_policy_and_ood_policy_with_post_clusters(setup):
  from warm_jax.evaluate import load_subsets
  subsets = load_subsets(os.path.join(setup["out"], "corrupt"), seq_len=128, vocab_size=1024)
  assert list(subsets) == ["train_clean", "train_corrupt", "id_val", "id_policy", "ood",
                           "ood_policy"]
  records = _records(setup, "corrupt", "id_policy")
  ids = [r["post_id"] for r in records]
  groups = subsets["id_policy"].groups
  for i in range(len(ids)):  # same post <=> same cluster
    for j in range(len(ids)):
      assert (groups[i] == groups[j]) == (ids[i] == ids[j])
  assert "chosen_response_mask" in subsets["ood_policy"].arrays
