"""RM evaluations against independent computations: accuracy, ENS, WARM, LMC, vs-M, pairs."""

import jax
import numpy as np
import pytest

from conftest import tiny_config
from warm_jax.rm import evaluation as ev
from warm_jax.models import RewardModel
from warm_jax.core.partitioning import Partitioner
from warm_jax.rm.scoring import RewardScorer, unboxed_init

SEQ = 10


def test_pair_accuracy_counts_ties_and_follows_the_target():
  rc, rr = np.array([1.0, 0.0, 2.0, 3.0]), np.array([0.0, 0.0, 5.0, 1.0])
  assert ev.pair_accuracy(rc, rr, np.zeros(4, int)) == 0.75  # the tie counts as correct
  assert ev.pair_accuracy(rc, rr, np.array([1, 1, 1, 0])) == 0.75  # 0<=1? no; tie; 5>=2; 3>=1


def _arrays(rng, n, vocab=40):
  def side():
    tokens = rng.integers(3, vocab, (n, SEQ)).astype(np.int32)
    mask = np.ones_like(tokens)
    lengths = rng.integers(4, SEQ + 1, n)
    mask[np.arange(SEQ)[None] >= lengths[:, None]] = 0
    return tokens * mask, mask
  ct, cm = side()
  rt, rm = side()
  return {"chosen_tokens": ct, "chosen_mask": cm, "rejected_tokens": rt, "rejected_mask": rm}


def _splits(seed=0):
  rng = np.random.default_rng(seed)
  train = _arrays(rng, 24)
  train["corrupted"] = (np.arange(24) % 4 == 0).astype(np.int32)
  id_val, ood = _arrays(rng, 16), _arrays(rng, 16)
  id_val["gold_label"] = rng.integers(0, 2, 16).astype(np.int32)
  ood["gold_label"] = rng.integers(0, 2, 16).astype(np.int32)
  return train, id_val, ood


@pytest.fixture(scope="module")
def setup():
  cfg = tiny_config()
  members = [unboxed_init(RewardModel(cfg), seed) for seed in range(3)]
  scorer = RewardScorer(model_config=cfg, partitioner=Partitioner(
      mesh_shape={"data": 2}, devices=jax.devices()[:2]), batch_size=8)
  train, id_val, ood = _splits()
  subsets = ev.subsets_from_splits(rm_train=train, id_val=id_val, ood=ood)
  return cfg, members, ev.Evaluator(scorer=scorer, subsets=subsets), (train, id_val, ood)


def _direct_rewards(cfg, params, tokens, mask):
  return np.asarray(RewardModel(cfg).apply({"params": params}, tokens, mask))


def _direct_accuracy(cfg, params, arrays, target):
  rc = _direct_rewards(cfg, params, arrays["chosen_tokens"], arrays["chosen_mask"])
  rr = _direct_rewards(cfg, params, arrays["rejected_tokens"], arrays["rejected_mask"])
  good = np.where(target == 0, rc >= rr, rr >= rc)
  return float(good.mean())


def test_subsets_split_train_by_corruption_and_use_gold_for_val(setup):
  _, _, evaluator, (train, id_val, ood) = setup
  s = evaluator.subsets
  assert len(s["train_clean"]) == 18 and len(s["train_corrupt"]) == 6
  np.testing.assert_array_equal(s["train_corrupt"].arrays["chosen_tokens"],
                                train["chosen_tokens"][::4])
  np.testing.assert_array_equal(s["id_val"].target, id_val["gold_label"])


def test_max_pairs_keeps_a_seeded_sample_of_each_subset_in_data_order():
  train, id_val, ood = _splits()
  full = ev.subsets_from_splits(rm_train=train, id_val=id_val, ood=ood)
  small = ev.subsets_from_splits(rm_train=train, id_val=id_val, ood=ood, max_pairs=10)
  again = ev.subsets_from_splits(rm_train=train, id_val=id_val, ood=ood, max_pairs=10)
  assert {k: len(v) for k, v in small.items()} == {"train_clean": 10, "train_corrupt": 6,
                                                   "id_val": 10, "ood": 10}
  for name, subset in small.items():
    rows = [int(np.flatnonzero((full[name].arrays["chosen_tokens"] == r).all(1))[0])
            for r in subset.arrays["chosen_tokens"]]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)  # a subset, in data order
    np.testing.assert_array_equal(subset.target, full[name].target[rows])
    np.testing.assert_array_equal(subset.arrays["chosen_tokens"],
                                  again[name].arrays["chosen_tokens"])  # deterministic
  with pytest.raises(ValueError, match="max_pairs=0"):
    ev.subsets_from_splits(rm_train=train, id_val=id_val, ood=ood, max_pairs=0)


def test_uniform_averages_are_scored_once_per_set_of_members(setup, monkeypatch):
  _, members, evaluator, _ = setup
  evaluator.__dict__.pop("_wa_cache", None)
  calls = []
  real = evaluator.rewards
  monkeypatch.setattr(evaluator, "rewards", lambda p: calls.append(1) or real(p))
  member_rewards = [real(p) for p in members]
  a = evaluator.uniform_wa_rewards(members, (0, 2), member_rewards)
  b = evaluator.uniform_wa_rewards(members, (2, 0), member_rewards)
  single = evaluator.uniform_wa_rewards(members, (1,), member_rewards)
  assert len(calls) == 1 and a is b and single is member_rewards[1]
  direct = real(ev.weight_average([members[0], members[2]]))
  for name in direct:
    np.testing.assert_allclose(a[name][0], direct[name][0], rtol=1e-6)
  evaluator.__dict__.pop("_wa_cache", None)


@pytest.mark.slow
def test_table_members_warm_and_ens_match_direct_computation(setup):
  cfg, members, evaluator, _ = setup
  table = evaluator.table(members, ms=[2, 3])
  for i, params in enumerate(members):
    for name, subset in evaluator.subsets.items():
      assert table["rows"][f"member_{i}"][name] == pytest.approx(
          _direct_accuracy(cfg, params, subset.arrays, subset.target))
  top2 = [int(n.split("_")[1]) for n in table["ranking"][:2]]
  mean_params = jax.tree_util.tree_map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2,
                                       members[top2[0]], members[top2[1]])
  ood = evaluator.subsets["ood"]
  assert table["rows"]["warm_2"]["ood"] == pytest.approx(
      _direct_accuracy(cfg, mean_params, ood.arrays, ood.target))
  rc = np.mean([_direct_rewards(cfg, members[i], ood.arrays["chosen_tokens"],
                                ood.arrays["chosen_mask"]) for i in top2], 0)
  rr = np.mean([_direct_rewards(cfg, members[i], ood.arrays["rejected_tokens"],
                                ood.arrays["rejected_mask"]) for i in top2], 0)
  assert table["rows"]["ens_2"]["ood"] == pytest.approx(ev.pair_accuracy(rc, rr, ood.target))
  # Ranking is best first on ID val.
  accs = [table["rows"][n]["id_val"] for n in table["ranking"]]
  assert accs == sorted(accs, reverse=True)


def test_lmc_curve_endpoints_line_and_ens(setup):
  cfg, members, evaluator, _ = setup
  curve = evaluator.lmc_curve(members[0], members[1], lambdas=(0.0, 0.5, 1.0))
  acc0 = evaluator.accuracy(evaluator.rewards(members[0]))
  acc1 = evaluator.accuracy(evaluator.rewards(members[1]))
  for s in evaluator.subsets:
    assert curve["wa"][s][0] == acc0[s] and curve["wa"][s][-1] == acc1[s]
    assert curve["line"][s][1] == pytest.approx((acc0[s] + acc1[s]) / 2)
    assert curve["ens"][s][0] == acc0[s] and curve["ens"][s][-1] == acc1[s]
  half = jax.tree_util.tree_map(lambda a, b: (np.asarray(a) + np.asarray(b)) / 2,
                                members[0], members[1])
  ood = evaluator.subsets["ood"]
  assert curve["wa"]["ood"][1] == pytest.approx(_direct_accuracy(cfg, half, ood.arrays,
                                                                 ood.target))
  assert curve["bump"]["ood"] == pytest.approx(curve["wa"]["ood"][1] - curve["line"]["ood"][1])


def test_accuracy_vs_m_and_pairs(setup):
  _, members, evaluator, _ = setup
  rewards = [evaluator.rewards(p) for p in members]
  vs_m = evaluator.accuracy_vs_m(members, rewards, {"given": [2, 0, 1]})
  assert vs_m["given"]["m"] == [1, 2, 3]
  assert vs_m["given"]["wa"][0] == evaluator.accuracy(rewards[2])
  pairs = evaluator.wa_minus_ens_over_pairs(members, rewards)
  assert pairs["pairs"] == [[0, 1], [0, 2], [1, 2]]
  assert all(len(v) == 3 for v in pairs["diff"].values())


def test_real_token_ends_and_trimmed_widths():
  from warm_jax.rm.scoring import real_token_ends, trimmed_width
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0]])
  assert real_token_ends(mask).tolist() == [2, 4, 0, 3]
  assert [trimmed_width(e, 128) for e in (0, 1, 32, 33, 96, 97, 128)] == [32, 32, 32, 64, 96,
                                                                          128, 128]
  assert trimmed_width(5, 16) == 16  # never wider than the sequences
  assert trimmed_width(300, 1024) == 512  # quarters of the length: 256, 512, 768, 1024


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [8, 16])
def test_scoring_rows_of_mixed_lengths_matches_the_model_on_full_width(batch_size):
  """The scorer sorts rows by length and cuts each batch's trailing padding; rewards and
  features must equal the model's on the untouched full-width rows, in the input order."""
  cfg = tiny_config(max_len=128)
  params = unboxed_init(RewardModel(cfg), 3)
  rng = np.random.default_rng(0)
  n, length = 19, 128  # batches cut to 32, 64, 96 or 128 columns
  ends = rng.integers(3, length + 1, n)
  ends[3], ends[7], ends[9] = length, 8, 40
  tokens = rng.integers(1, cfg.vocab_size, (n, length)).astype(np.int32)
  mask = (np.arange(length)[None] < ends[:, None]).astype(np.int32)
  tokens = tokens * mask
  scorer = RewardScorer(model_config=cfg, partitioner=Partitioner(), batch_size=batch_size)
  placed = scorer.place(params)
  expected = _direct_rewards(cfg, params, tokens, mask)
  np.testing.assert_allclose(scorer.rewards(placed, tokens, mask), expected, atol=1e-5)
  features = np.asarray(RewardModel(cfg).apply({"params": params}, tokens, mask,
                                               method=RewardModel.features))
  np.testing.assert_allclose(scorer.features(placed, tokens, mask), features, atol=1e-5)


def test_unknown_vs_m_order_is_refused_before_anything_is_read(tmp_path):
  from warm_jax.evaluate import evaluate_reward_models
  with pytest.raises(ValueError, match=r"VS_M_ORDERS has unknown orders \['best_first'\]"):
    # the data and members dirs do not exist: the order is refused before they are opened
    evaluate_reward_models(output_dir=str(tmp_path / "out"), data_dir=str(tmp_path / "none"),
                           model_config=tiny_config(), members_dir=str(tmp_path / "none"),
                           vs_m_orders=("best_first",))
  assert not (tmp_path / "out").exists()


def test_distinct_rows_is_an_exact_factorisation():
  from warm_jax.rm.scoring import distinct_rows
  rng = np.random.default_rng(1)
  base = rng.integers(0, 4, (6, 5)).astype(np.int32)
  picks = rng.integers(0, 6, 40)
  tokens, masks = base[picks], (base[picks] > 0).astype(np.float32)
  first, inverse = distinct_rows(tokens, masks)
  np.testing.assert_array_equal(tokens[first][inverse], tokens)
  np.testing.assert_array_equal(masks[first][inverse], masks)
  # first occurrences, in order, and no two kept rows alike (a brute-force count)
  assert list(first) == sorted(first)
  distinct = {tuple(t) + tuple(m) for t, m in zip(tokens, masks)}
  assert len(first) == len(distinct)
  assert all(p == min(np.flatnonzero(picks == picks[p])) for p in first)
  # rows that differ only in the mask are different rows
  t = np.zeros((2, 3), np.int32)
  m = np.array([[1, 1, 0], [1, 1, 1]], np.int32)
  assert len(distinct_rows(t, m)[0]) == 2


def test_repeated_rows_are_scored_once_and_get_the_same_reward(monkeypatch):
  """Pairs of one post share their summaries: the scorer runs the model on each distinct row
  once and hands every copy its reward (equal to the model's on that row)."""
  cfg = tiny_config(max_len=64)
  params = unboxed_init(RewardModel(cfg), 4)
  rng = np.random.default_rng(2)
  base = rng.integers(1, cfg.vocab_size, (5, 64)).astype(np.int32)
  ends = np.array([10, 64, 33, 20, 47])
  base_mask = (np.arange(64)[None] < ends[:, None]).astype(np.int32)
  picks = np.array([0, 1, 0, 2, 3, 1, 4, 0, 2, 2, 3])
  tokens, mask = base[picks] * base_mask[picks], base_mask[picks]
  scorer = RewardScorer(model_config=cfg, partitioner=Partitioner(), batch_size=8)
  seen = []
  run_rows = scorer._run_rows
  monkeypatch.setattr(scorer, "_run_rows",
                      lambda fn, p, t, *a: seen.append(len(t)) or run_rows(fn, p, t, *a))
  got = scorer.rewards(scorer.place(params), tokens, mask)
  assert seen == [5]
  np.testing.assert_allclose(got, _direct_rewards(cfg, params, tokens, mask), atol=1e-5)


def test_scoring_counts_one_forward_pass_per_scored_row_at_the_batch_width():
  """The stage profile's count of RewardScorer: every compiled call scores batch_size rows
  (padding included) at its trimmed width; a forward pass without the LM head per token,
  counted here from the real params' non-embedding decoder leaves."""
  from warm_jax.core import flops as flops_lib
  cfg = tiny_config(max_len=16)
  params = unboxed_init(RewardModel(cfg), 0)
  scorer = RewardScorer(model_config=cfg, partitioner=Partitioner(), batch_size=8)
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (20, 16)).astype(np.int32)
  flops_lib.COUNTER.reset()
  scorer.rewards(scorer.place(params), tokens, np.ones_like(tokens))
  leaves = jax.tree_util.tree_flatten_with_path(params["decoder"])[0]
  decoder = sum(int(np.prod(np.shape(x))) for path, x in leaves
                if "embed" not in jax.tree_util.keystr(path))
  per_row = 16 * (2 * decoder + 4 * cfg.num_layers * 16 * cfg.d_model)  # full-width rows
  # 20 distinct rows in 3 calls of 8 (the last padded)
  assert flops_lib.COUNTER.programs() == {"score": {"flops": pytest.approx(3 * 8 * per_row),
                                                    "calls": 3}}
