"""Policy-sample OOD pairs (`warm_jax.policy.policy_pairs`): determinism, the data dir format the
existing loaders read, labels from the gold reward, held-out posts, refusals, and the
`ood_policy` subset of the RM evaluation.

One tiny world is built in-process (the tiny data config's sizes) and a randomly initialised
tiny LanguageModel (gin/models/tiny.gin's shape) is saved as the "SFT" run dir; its samples are
noise, which is all these checks need (the gold reward scores any text).
"""

import dataclasses
import hashlib
import json
import math
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.data import data_dir as dd
from warm_jax.policy import policy_pairs as pp
from warm_jax.data import preferences as prefs
from warm_jax.data import world
from warm_jax.data.gold_reward import count_words, gold_reward
from warm_jax.models import LanguageModel, RewardModel, TransformerConfig

TINY = TransformerConfig(vocab_size=1024, d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
                         max_len=256)
# gin/data/synthetic_tldr_tiny.gin's world with fewer pairs (the evaluation scores them all).
TINY_WORLD = dict(n_pretrain_posts=300, n_sft_posts=64, n_train_posts=32, n_train_pairs=32,
                  n_val_posts=16, n_val_pairs=16, n_ood_posts=16, n_ood_pairs=16, n_prompts=16)
# A fast, small run: 16 OOD posts x 4 samples of at most 12 tokens, 32 pairs.
RUN = dict(model_config=TINY, temperature=1.3, num_pairs=32, max_new_tokens=12, batch_size=32)


def _random_params(module, seed):
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(
      jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(leaf.dtype)
    return 1.0 + 0.1 * noise if ckpt_lib._path_str(path).endswith("scale") else 0.3 * noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _save_run_dir(path, module, *, data_dir, seed=0):
  """A train-run-like dir: checkpoints/1/params, config.gin naming DATA_DIR, DONE."""
  ckpt_lib.save_params(_random_params(module, seed), os.path.join(path, "checkpoints", "1",
                                                                  "params"))
  with open(os.path.join(path, "config.gin"), "w") as f:
    f.write(f"DATA_DIR = '{data_dir}'\nsft_dataset.data_dir = %DATA_DIR\n")
  with open(os.path.join(path, "DONE"), "w") as f:
    json.dump({"step": 1}, f)
  return path


def _tree_digest(path):
  digest = hashlib.sha256()
  for root, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      with open(os.path.join(root, name), "rb") as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  from warm_jax.data.build import build_dataset
  base = tmp_path_factory.mktemp("policy_pairs")
  data = str(base / "data")
  build_dataset(output_dir=data, world=prefs.WorldConfig(**TINY_WORLD))
  sft = _save_run_dir(str(base / "sft"), LanguageModel(TINY), data_dir=data)
  data_digest = _tree_digest(data)
  out_a, out_b, out_c = (str(base / name) for name in ("pairs_a", "pairs_b", "pairs_seed1"))
  stats_a = pp.build_policy_pairs(output_dir=out_a, data_dir=data, policy_dir=sft, **RUN)
  pp.build_policy_pairs(output_dir=out_b, data_dir=data, policy_dir=sft, **RUN)
  pp.build_policy_pairs(output_dir=out_c, data_dir=data, policy_dir=sft, seed=1, **RUN)
  return dict(base=base, data=data, sft=sft, out=out_a, out_b=out_b, out_seed1=out_c,
              stats=stats_a, data_digest=data_digest)


def _records(out):
  return dd.load_records(out, kind="preferences", split="ood")


# -- determinism and format ----------------------------------------------------------------------
@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_pairs(setup):
  for rel in ("text/preferences.ood.jsonl", "text/policy_samples.jsonl", "text/posts.jsonl",
              "arrays/preferences.ood.npz", "spm.model"):
    with open(os.path.join(setup["out"], rel), "rb") as a, \
        open(os.path.join(setup["out_b"], rel), "rb") as b:
      assert a.read() == b.read(), rel
  samples = [dd.read_jsonl(dd.text_path(out, pp.SAMPLES_NAME), fields={"text": str})
             for out in (setup["out"], setup["out_seed1"])]
  assert [s["text"] for s in samples[0]] != [s["text"] for s in samples[1]]
  assert _records(setup["out"]) != _records(setup["out_seed1"])


@pytest.mark.slow
def test_output_is_a_data_dir_the_existing_loaders_read(setup):
  from warm_jax.data.datasets import load_vocabulary, preference_dataset
  out, stats = setup["out"], setup["stats"]
  records = _records(out)  # validated against the preference record schema
  assert len(records) == stats["num_pairs"] == RUN["num_pairs"]
  ds = preference_dataset(data_dir=out, split="ood", seq_len=128, vocab_size=1024,
                          shuffle=False)
  arrays = ds.features
  assert arrays["chosen_tokens"].shape == (len(records), 128)
  meta = dd.read_meta(out)
  generators = dd.generator_names(meta)
  vocab = load_vocabulary(out)
  for i, r in enumerate(records):
    chosen_side = "a" if r["label"] == 0 else "b"
    rejected_side = "b" if chosen_side == "a" else "a"
    assert arrays["chosen_gold"][i] == pytest.approx(r[f"gold_{chosen_side}"], abs=1e-5)
    assert generators[arrays["rejected_generator"][i]] == r[f"generator_{rejected_side}"]
    assert arrays["gold_label"][i] == int(r[f"gold_{rejected_side}"] > r[f"gold_{chosen_side}"])
    assert arrays["corrupted"][i] == 0 and arrays["pair_index"][i] == i
    # The chosen row is prompt + chosen summary + EOS, tokenised by the data dir's tokenizer.
    row = arrays["chosen_tokens"][i][arrays["chosen_mask"][i] == 1].tolist()
    assert row[-1] == vocab.eos_id
    summary_ids = vocab.encode(r["summary_a"] if chosen_side == "a" else r["summary_b"])
    assert row[len(row) - 1 - len(summary_ids):-1] == summary_ids
  assert pp.SUBSET_NAME == "ood_policy" and meta["kind"] == pp.KIND
  assert os.path.isfile(os.path.join(out, pp.DONE_FILE))
  assert not [n for n in os.listdir(setup["base"]) if ".tmp-" in n]


@pytest.mark.slow
def test_prompts_encode_like_the_data_builds_prompt_arrays(setup):
  from warm_jax.data.datasets import load_arrays, load_vocabulary
  data = setup["data"]
  records = dd.load_records(data, kind="prompts", split="validation")
  built = load_arrays(data, kind="prompts", split="validation")
  prompt_len = built["prompt_tokens"].shape[1]
  for p_len in (prompt_len, 40):  # 40: the start of every post is cut
    tokens, mask, truncated = pp.encode_prompts(load_vocabulary(data),
                                                [r["prompt"] for r in records],
                                                prompt_len=p_len)
    np.testing.assert_array_equal(tokens, built["prompt_tokens"][:, -p_len:])
    np.testing.assert_array_equal(mask, built["prompt_mask"][:, -p_len:])
    if p_len == prompt_len:
      np.testing.assert_array_equal(truncated, built["num_truncated"])


# -- labels, statistics, posts ------------------------------------------------------------------
@pytest.mark.slow
def test_gold_rewards_labels_and_stats_recomputed_independently(setup):
  out, stats = setup["out"], setup["stats"]
  posts = dd.load_posts(setup["data"])
  records = _records(out)
  for r in records:
    post = posts[r["post_id"]]
    for side in "ab":
      assert r[f"gold_{side}"] == gold_reward(post=post, summary_text=r[f"summary_{side}"])
      assert r[f"length_{side}"] == count_words(r[f"summary_{side}"])
    assert r["gold_a"] != r["gold_b"] and r["summary_a"] != r["summary_b"]
    assert r["gold_label"] == int(r["gold_b"] > r["gold_a"])
    assert r["label"] == r["clean_label"] and not r["corrupted"]
  gaps = np.array([r["gold_a"] - r["gold_b"] for r in records])
  labels = np.array([r["label"] for r in records])
  gold = np.array([r["gold_label"] for r in records])
  assert stats["label_noise_rate"] == pytest.approx(np.mean(labels != gold))
  assert stats["bt_expected_noise_rate"] == pytest.approx(
      np.mean(1 / (1 + np.exp(np.abs(gaps)))))  # T = 1, the data dir's label temperature
  len_gap = np.array([r["length_a"] - r["length_b"] for r in records], float)
  assert stats["length_label_corr"] == pytest.approx(
      np.corrcoef(len_gap, (labels == 0).astype(float))[0, 1])
  n_policy = np.array([(r["generator_a"] == "policy") + (r["generator_b"] == "policy")
                       for r in records])
  assert stats["policy_pair_share"] == pytest.approx(np.mean(n_policy >= 1))
  assert 0 < stats["policy_pair_share"] <= 1
  samples = dd.read_jsonl(dd.text_path(out, pp.SAMPLES_NAME), fields=pp._SAMPLE_FIELDS)
  assert len(samples) == stats["policy_samples"]["count"] == 16 * 4
  rescored = [gold_reward(post=posts[s["post_id"]], summary_text=s["text"]) for s in samples]
  assert stats["policy_samples"]["mean_gold"] == pytest.approx(np.mean(rescored))
  assert all(s["tokens"] <= RUN["max_new_tokens"] for s in samples)
  # Every policy-sample side of a pair is one of its post's samples.
  pool = {}
  for s in samples:
    pool.setdefault(s["post_id"], set()).add(s["text"])
  for r in records:
    for side in "ab":
      if r[f"generator_{side}"] == "policy":
        assert r[f"summary_{side}"] in pool[r["post_id"]]


@pytest.mark.slow
def test_bradley_terry_noise_matches_its_expectation_on_many_pairs(setup):
  """build_ood_pairs (the code policy_pairs runs) with a cheap sampler, 3000 pairs: the label
  noise rate is within 4 standard errors of the Bradley-Terry prediction computed from gold
  rewards re-scored here."""
  meta = dd.read_meta(setup["data"])
  posts = pp.held_out_posts(setup["data"], meta=meta, posts_split="ood")

  def sampler(prompts, temperature, rng):  # word salad of the post: gold from -inf.. to high
    by_prompt = {p.prompt: p for p in posts}
    out = []
    for prompt in prompts:
      words = by_prompt[prompt].reference.split() + by_prompt[prompt].text.split()[:30]
      out.append(" ".join(rng.choice(words, size=int(rng.integers(3, 25)))))
    return out

  config = dataclasses.replace(prefs.WorldConfig(**meta["world_config"]), n_ood_pairs=3000,
                               ood_policy_rate=0.75, ood_longer_is_better_rate=None)
  pairs, pool = prefs.build_ood_pairs(config=config, posts=posts, policy_sampler=sampler,
                                      split=prefs.POLICY_PAIRS_SPLIT)
  by_id = {p.post_id: p for p in posts}
  gaps = np.array([gold_reward(post=by_id[p.post_id], summary_text=p.summary_a)
                   - gold_reward(post=by_id[p.post_id], summary_text=p.summary_b)
                   for p in pairs])
  expected = np.mean(1 / (1 + np.exp(np.abs(gaps) / config.temperature)))
  measured = np.mean([p.label != int(g < 0) for p, g in zip(pairs, gaps)])
  assert abs(measured - expected) < 4 * math.sqrt(expected * (1 - expected) / len(pairs))
  assert len(pool) == len(posts)
  # Its own random stream: not the data dir's OOD pairs replayed.
  ood, _ = prefs.build_ood_pairs(config=config, posts=posts, policy_sampler=sampler)
  assert [p.summary_a for p in ood[:50]] != [p.summary_a for p in pairs[:50]]


@pytest.mark.slow
@pytest.mark.parametrize("split", ["ood", "id_val"])
def test_posts_are_held_out_and_never_rm_train(setup, split):
  data = setup["data"]
  posts = pp.held_out_posts(data, meta=dd.read_meta(data), posts_split=split)
  train = {r["post_id"] for r in dd.load_records(data, kind="preferences", split="rm_train")}
  split_posts = {r["post_id"] for r in dd.load_records(data, kind="preferences", split=split)}
  assert {p.post_id for p in posts} == split_posts and not split_posts & train
  used = {r["post_id"] for r in _records(setup["out"])}
  assert used <= split_posts if split == "ood" else not used & split_posts
  with pytest.raises(pp.PolicyPairsError, match="POSTS_SPLIT"):
    pp.held_out_posts(data, meta=dd.read_meta(data), posts_split="rm_train")


# -- refusals ------------------------------------------------------------------------------------
def _refused(setup, match, **overrides):
  kwargs = dict(output_dir=str(setup["base"] / "refused"), data_dir=setup["data"],
                policy_dir=setup["sft"], **RUN)
  kwargs.update(overrides)
  with pytest.raises((pp.PolicyPairsError, dd.DataDirError), match=match):
    pp.build_policy_pairs(**kwargs)
  assert not os.path.exists(setup["base"] / "refused")


@pytest.mark.slow
def test_refuses_bad_policy_dirs(setup):
  base = setup["base"]
  _refused(setup, "POLICY_DIR is not set", policy_dir=None)
  _refused(setup, "does not exist", policy_dir=str(base / "nowhere"))
  os.makedirs(base / "empty_run", exist_ok=True)
  _refused(setup, "no orbax checkpoint", policy_dir=str(base / "empty_run"))
  rm = _save_run_dir(str(base / "rm_run"), RewardModel(TINY), data_dir=setup["data"])
  _refused(setup, "reward model", policy_dir=rm)
  _refused(setup, r"shape \(1024, 32\) but the configured model's is \(1024, 64\)|"
                  r"another architecture",
           policy_dir=_save_run_dir(str(base / "narrow"), LanguageModel(
               dataclasses.replace(TINY, d_model=32)), data_dir=setup["data"]))
  # Trained on a data dir whose tokenizer differs from DATA_DIR's.
  other = base / "other_data"
  os.makedirs(other, exist_ok=True)
  with open(other / dd.SPM_MODEL_FILE, "wb") as f:
    f.write(b"another tokenizer")
  foreign = str(base / "foreign_sft")
  shutil.copytree(setup["sft"], foreign)
  with open(os.path.join(foreign, "config.gin"), "w") as f:
    f.write(f"DATA_DIR = '{other}'\n")
  _refused(setup, "whose tokenizer differs", policy_dir=foreign)
  _refused(setup, "vocab_size", model_config=dataclasses.replace(TINY, vocab_size=512))


@pytest.mark.slow
def test_refuses_bad_data_and_output_dirs_and_never_touches_inputs(setup):
  base = setup["base"]
  _refused(setup, "DATA_DIR is not set", data_dir=None)
  _refused(setup, "does not exist", data_dir=str(base / "no_data"))
  _refused(setup, "policy-pairs output, not a data build", data_dir=setup["out"])
  with pytest.raises(pp.PolicyPairsError, match="overlaps DATA_DIR"):
    pp.build_policy_pairs(output_dir=os.path.join(setup["data"], "pairs"),
                          data_dir=setup["data"], policy_dir=setup["sft"], **RUN)
  # A finished OUTPUT_DIR: the same request returns its stats untouched; another is refused.
  before = _tree_digest(setup["out"])
  again = pp.build_policy_pairs(output_dir=setup["out"], data_dir=setup["data"],
                                policy_dir=setup["sft"], **RUN)
  assert again == json.load(open(os.path.join(setup["out"], dd.STATS_FILE)))
  with pytest.raises(pp.PolicyPairsError, match="temperature.*OVERWRITE"):
    pp.build_policy_pairs(output_dir=setup["out"], data_dir=setup["data"],
                          policy_dir=setup["sft"], **{**RUN, "temperature": 2.0})
  assert _tree_digest(setup["out"]) == before
  os.makedirs(base / "foreign_out", exist_ok=True)
  with open(base / "foreign_out" / "notes.txt", "w") as f:
    f.write("mine")
  with pytest.raises(pp.PolicyPairsError, match="not a policy-pairs dir"):
    pp.build_policy_pairs(output_dir=str(base / "foreign_out"), data_dir=setup["data"],
                          policy_dir=setup["sft"], **RUN)
  assert _tree_digest(setup["data"]) == setup["data_digest"]


@pytest.mark.slow
def test_cli_refusal_is_one_clear_line(setup):
  proc = run_cli(["-m", "warm_jax.data.policy_pairs", "--gin_file=gin/models/tiny.gin",
                  "--gin_file=gin/data/policy_pairs.gin", f"--gin.DATA_DIR='{setup['data']}'",
                  f"--gin.POLICY_DIR='{setup['base'] / 'nowhere'}'",
                  f"--gin.OUTPUT_DIR='{setup['base'] / 'cli_out'}'"], timeout=120)
  assert proc.returncode == 1, proc.stderr
  assert "POLICY_DIR" in proc.stderr and "does not exist" in proc.stderr
  assert not os.path.exists(setup["base"] / "cli_out")


# -- the RM evaluation ---------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluation_adds_the_ood_policy_subset(setup):
  from warm_jax import evaluate
  from warm_jax.core.partitioning import Partitioner
  base = setup["base"]
  members = [str(base / f"rm_{i}") for i in range(2)]
  for i, path in enumerate(members):
    ckpt_lib.save_params(_random_params(RewardModel(TINY), 10 + i), path)
  partitioner = Partitioner(mesh_shape={"data": 2}, devices=jax.devices()[:2])
  common = dict(data_dir=setup["data"], model_config=TINY, member_paths=members, ms=(2,),
                batch_size=32, seq_len=128, vocab_size=1024, partitioner=partitioner)
  result = evaluate.evaluate_reward_models(
      output_dir=str(base / "eval"), policy_pairs_dir=setup["out"],
      lmc_pairs={"ab": tuple(members)}, **common)
  n = setup["stats"]["num_pairs"]
  assert result["subset_sizes"]["ood_policy"] == n
  arrays = pp.load_policy_pairs(setup["out"], data_dir=setup["data"], seq_len=128)
  for i, path in enumerate(members):
    params = ckpt_lib.load_params(path)
    rc, rr = (np.asarray(RewardModel(TINY).apply({"params": params},
                                                 arrays[f"{side}_tokens"],
                                                 arrays[f"{side}_mask"]))
              for side in ("chosen", "rejected"))
    direct = np.mean(np.where(arrays["gold_label"] == 0, rc >= rr, rr >= rc))
    # A sharded and an unsharded forward may differ in the last bits: near-ties may flip.
    near_ties = np.mean(np.abs(rc - rr) < 1e-4)
    assert abs(result["table"]["rows"][f"rm_{i}"]["ood_policy"] - direct) <= near_ties + 1e-9
  for row in ("warm_2", "ens_2"):
    assert "ood_policy" in result["table"]["rows"][row]
  assert len(result["lmc"]["ab"]["wa"]["ood_policy"]) == 11
  assert "ood_policy" in result["wa_minus_ens"]["diff"]
  for plot in ("lmc_ood_policy.png", "accuracy_vs_m_ood_policy.png"):
    assert os.path.getsize(base / "eval" / "plots" / plot) > 0
  # VS_M_ORDERS=() asks for no accuracy-vs-M curve: the rest is evaluated and written.
  quick = evaluate.evaluate_reward_models(
      output_dir=str(base / "eval_no_orders"), vs_m_orders=(), max_pairs_per_subset=16,
      pairs_histogram=False, **common)
  assert "vs_m" not in quick and set(quick["table"]["rows"]) == {"rm_0", "rm_1", "warm_2",
                                                                    "ens_2"}
  with open(base / "eval_no_orders" / "eval.json") as f:
    assert "vs_m" not in json.load(f)
  assert not list((base / "eval_no_orders" / "plots").glob("accuracy_vs_m_*"))
  # Without POLICY_PAIRS_DIR: the subsets are what they were.
  plain = evaluate.load_subsets(setup["data"], seq_len=128, vocab_size=1024)
  with_policy = evaluate.load_subsets(setup["data"], seq_len=128, vocab_size=1024,
                                      policy_pairs_dir=setup["out"])
  assert list(plain) == ["train_clean", "id_val", "ood"]  # no corrupted labels in this world
  assert list(with_policy) == [*plain, "ood_policy"]
  for name, subset in plain.items():
    np.testing.assert_array_equal(subset.target, with_policy[name].target)
  # A policy-pairs dir from a world with another tokenizer is refused.
  other = base / "other_tok_data"
  shutil.copytree(setup["data"], other)
  with open(other / dd.SPM_MODEL_FILE, "ab") as f:
    f.write(b"\0")
  with pytest.raises(pp.PolicyPairsError, match="tokenizer differs"):
    pp.load_policy_pairs(setup["out"], data_dir=str(other))
