"""Best-of-N and win rates: the argmax rule, the KL formula, the all-subsets estimator, win
rates with ties split, and the stage end to end on a hand-made data dir (no TensorFlow)."""

import itertools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from warm_jax.policy import bon, win_rates as wr
from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.models import LanguageModel, RewardModel

PROMPT_LEN = 20


def make_policy_data_dir(path, *, num_prompts=8, vocab_size=320):
  """A minimal data dir for best-of-N / RL: tokenizer, posts, prompts (text and arrays).

  Built from the world's own posts without seqio/TF: prompts are encoded with the trained
  SentencePiece model and left-truncated/padded to PROMPT_LEN like the real converter.
  """
  from warm_jax.data import data_dir as dd, world
  from warm_jax.data.tokenizer import TokenizerConfig, train_sentencepiece
  posts = world.generate_posts(seed=0, n=num_prompts * 2)
  os.makedirs(os.path.join(path, dd.TEXT_SUBDIR))
  vocab = train_sentencepiece(texts=[world.format_example(p.text, p.reference) for p in posts],
                              model_prefix=os.path.join(path, dd.SPM_PREFIX),
                              config=TokenizerConfig(vocab_size=vocab_size))
  dd.write_jsonl(dd.text_path(path, dd.POSTS_NAME), [dd.post_record(p) for p in posts])
  for split, chunk in (("train", posts[:num_prompts]), ("validation", posts[num_prompts:])):
    dd.write_jsonl(dd.text_path(path, f"prompts.{split}"), [
        {"post_id": p.post_id, "prompt": p.prompt, "reference": p.reference} for p in chunk])
    tokens = np.zeros((len(chunk), PROMPT_LEN), np.int32)
    mask = np.zeros_like(tokens)
    for i, post in enumerate(chunk):
      ids = vocab.encode(post.prompt)[-PROMPT_LEN:]
      tokens[i, PROMPT_LEN - len(ids):], mask[i, PROMPT_LEN - len(ids):] = ids, 1
    os.makedirs(os.path.join(path, dd.ARRAYS_SUBDIR), exist_ok=True)
    np.savez(dd.arrays_path(path, f"prompts.{split}"), prompt_tokens=tokens, prompt_mask=mask,
             prompt_index=np.arange(len(chunk), dtype=np.int32))
  for name, content in ((dd.META_FILE, {"format_version": dd.FORMAT_VERSION,
                                        "vocab_size": vocab.vocab_size}), (dd.STATS_FILE, {})):
    with open(os.path.join(path, name), "w") as f:
      json.dump(content, f)
  return path


def random_params(module, seed):
  """Params of `module` drawn with numpy (shapes from eval_shape: nothing to compile)."""
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(
      jax.random.key(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32)))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(leaf.dtype)
    return 1.0 + 0.1 * noise if ckpt_lib._path_str(path).endswith("scale") else 0.1 * noise

  return jax.tree_util.tree_map_with_path(draw, shapes)


def save_random_model(module, path, seed):
  ckpt_lib.save_params(random_params(module, seed), path)
  return path


def test_bon_picks_the_argmax_of_the_rm_among_the_first_n():
  rng = np.random.default_rng(0)
  rm = rng.integers(0, 5, (50, 8)).astype(float)  # many ties
  oracle = rng.normal(size=(50, 8))
  for n in (1, 2, 3, 8):
    idx = bon.best_of_n_indices(rm, n)
    for p in range(50):
      best = max(range(n), key=lambda j: (rm[p, j], -j))  # highest, earliest on ties
      assert idx[p] == best
  curves = bon.bon_curves(oracle=oracle, rm_scores={"a": rm, "b": -rm}, ns=[1, 4],
                          reference=oracle[:, 0])
  expected = np.mean([oracle[p, bon.best_of_n_indices(rm, 4)[p]] for p in range(50)])
  assert curves["selectors"]["a"]["oracle"][1] == pytest.approx(expected)
  assert curves["selectors"]["a"]["oracle"][0] == pytest.approx(oracle[:, 0].mean())
  with pytest.raises(ValueError, match="outside 1..8"):
    bon.best_of_n_indices(rm, 9)


def test_kl_of_best_of_n_formula_and_its_limit():
  assert bon.kl_best_of_n(1) == 0.0
  assert bon.kl_best_of_n(2) == pytest.approx(math.log(2) - 0.5)
  assert bon.kl_best_of_n(64) == pytest.approx(math.log(64) - 63 / 64)
  # Independently: BoN of a uniform distribution over M ranked outcomes puts probability
  # (i/M)^N - ((i-1)/M)^N on the i-th; its KL to uniform tends to log N - (N-1)/N.
  m = 200_000
  for n in (2, 8, 32):
    i = np.arange(1, m + 1)
    p = (i / m) ** n - ((i - 1) / m) ** n
    kl = float(np.sum(p * np.log(p * m + 1e-300)))
    assert kl == pytest.approx(bon.kl_best_of_n(n), abs=2e-3)
  assert bon.default_ns(64) == (1, 2, 4, 8, 16, 32, 64)
  assert bon.default_ns(48) == (1, 2, 4, 8, 16, 32, 48)


def test_all_subsets_estimate_equals_brute_force_enumeration():
  rng = np.random.default_rng(1)
  rm = rng.integers(0, 3, (4, 6)).astype(float)
  oracle = rng.normal(size=(4, 6))
  for n in (1, 2, 3, 6):
    brute = [np.mean([oracle[p, s[int(np.argmax(rm[p, list(s)]))]]
                      for s in itertools.combinations(range(6), n)]) for p in range(4)]
    np.testing.assert_allclose(bon.all_subsets_expectation(rm, oracle, n), brute, atol=1e-12)


def test_win_rates_split_ties_and_a_strategy_against_itself_is_one_half():
  rng = np.random.default_rng(2)
  x = rng.normal(size=300)
  same = wr.win_rate(x, x)
  assert same.rate == 0.5 and same.ties == 300 and same.low <= 0.5 <= same.high
  w = wr.win_rate(np.array([1.0, 2.0, 3.0, 0.0]), np.array([0.0, 2.0, 4.0, -1.0]),
                  method="wilson")
  assert (w.wins, w.ties, w.losses, w.rate) == (2, 1, 1, 0.625)
  # Two independent draws of one policy: 0.5 within the interval.
  other = wr.win_rate(rng.normal(size=400), rng.normal(size=400), seed=3)
  assert other.low < 0.5 < other.high
  # Wilson against a hand computation: 8 of 10 at 95% -> [0.4902, 0.9433].
  assert wr.wilson_interval(8, 10, 0.95) == pytest.approx((0.4902, 0.9433), abs=1e-4)
  # The grouped bootstrap resamples prompts: identical rows per prompt widen nothing here.
  a, b = rng.normal(size=40), rng.normal(size=40)
  grouped = wr.win_rate(np.repeat(a, 3), np.repeat(b, 3), groups=np.repeat(np.arange(40), 3))
  plain = wr.win_rate(a, b)
  assert grouped.rate == plain.rate and grouped.high - grouped.low == pytest.approx(
      plain.high - plain.low, abs=0.06)


@pytest.mark.slow
def test_best_of_n_stage_end_to_end(tmp_path):
  data = make_policy_data_dir(str(tmp_path / "data"))
  cfg = tiny_config(vocab_size=320, max_len=32)
  sft = save_random_model(LanguageModel(cfg), str(tmp_path / "sft"), 0)
  members = [save_random_model(RewardModel(cfg), str(tmp_path / f"rm_{i}"), i + 1)
             for i in range(2)]
  from warm_jax.policy.sampling import SamplingConfig
  result = bon.best_of_n(
      output_dir=str(tmp_path / "bon"), data_dir=data, sft_path=sft, model_config=cfg,
      reward_models={"rm_0": members[0], "rm_1": members[1], "ens_2": members,
                     "warm_2": {"warm": members}, "wco_2": {"wco": members},
                     "uwo_2": {"uwo": members, "lambda": 0.5}},
      sampling=SamplingConfig(max_new_tokens=6), n_max=4, batch_size=8,
      prompt_len=PROMPT_LEN, vocab_size=320)
  curves = result["curves"]
  assert curves["n"] == [1, 2, 4] and set(curves["selectors"]) == {
      "rm_0", "rm_1", "ens_2", "warm_2", "wco_2", "uwo_2", bon.ORACLE_BEST}
  scores = np.load(tmp_path / "bon" / bon.SCORES_FILE)
  assert scores["oracle"].shape == (8, 5)
  # The curve is the oracle of the RM's argmax, recomputed from the saved scores.
  for name in ("rm_0", "ens_2"):
    rm = scores[f"rm/{name}"][:, :4]
    for i, n in enumerate(curves["n"]):
      choice = bon.take_rows(scores["oracle"][:, :4], bon.best_of_n_indices(rm, n))
      assert curves["selectors"][name]["oracle"][i] == pytest.approx(choice.mean(), abs=1e-5)
  # The prediction ensembles from the members' rewards, recomputed with numpy: ENS the mean,
  # WCO the min, UWO the mean - 0.5 * the (population) variance.
  both = np.stack([scores["rm/rm_0"], scores["rm/rm_1"]]).astype(np.float64)
  np.testing.assert_allclose(scores["rm/ens_2"], both.mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(scores["rm/wco_2"], np.minimum(both[0], both[1]), atol=1e-6)
  spread = (both[0] - both[1]) ** 2 / 4
  np.testing.assert_allclose(scores["rm/uwo_2"], both.mean(0) - 0.5 * spread, rtol=1e-5,
                             atol=1e-6)
  assert result["reward_models"]["uwo_2"] == {"paths": members, "combine": "uwo",
                                              "lambda": 0.5}
  # ENS is the mean of the members' rewards; N = 1 is the first candidate for everyone.
  assert curves["selectors"]["ens_2"]["oracle"][0] == curves["selectors"]["rm_0"]["oracle"][0]
  for path in result["plots"]:
    assert os.path.getsize(path) > 0
  assert os.path.exists(tmp_path / "bon" / "DONE")
  # Member disagreement (curves.disagreement): ENS / WCO / UWO / {'warm': [...]} flag their
  # choices with their own two members (both scored as selectors), recomputed from the saved
  # rewards; rm_0 / rm_1 are single checkpoints without DISAGREEMENT_MEMBERS: none.
  dis = curves["disagreement"]
  assert set(dis["selectors"]) == {"ens_2", "warm_2", "wco_2", "uwo_2"} and not dis["skipped"]
  z = [(scores[k][:, :4] - scores[k][:, :4].mean()) / scores[k][:, :4].std()
       for k in ("rm/rm_0", "rm/rm_1")]
  spread = np.abs(z[0] - z[1]) / 2  # the population std of two values
  for name in ("ens_2", "warm_2"):
    entry = dis["selectors"][name]
    assert entry["members"] == members and len(entry["auroc"]) == 3
    choice = bon.best_of_n_indices(scores[f"rm/{name}"][:, :4], 4)
    assert entry["mean_disagreement"][2] == pytest.approx(
        bon.take_rows(spread, choice).mean(), rel=1e-4)
  assert os.path.exists(tmp_path / "bon" / "plots" / "bon_disagreement.png")
  saved = json.loads((tmp_path / "bon" / bon.RESULT_FILE).read_text())
  assert saved["curves"]["disagreement"]["selectors"]["warm_2"]["m"] == 2


def test_reward_source_specs_and_the_ensemble_objectives_against_numpy():
  from warm_jax.policy.reward_sources import combine_member_rewards, parse_reward_source
  rng = np.random.default_rng(4)
  rewards = rng.normal(size=(5, 30))
  for xp in (np, jnp):
    got = {c: np.asarray(combine_member_rewards(xp.asarray(rewards), c, 0.1))
           for c in ("ens", "wco", "uwo")}
    np.testing.assert_allclose(got["ens"], [np.mean(r) for r in rewards.T], rtol=1e-5)
    np.testing.assert_allclose(got["wco"], [min(r) for r in rewards.T], rtol=1e-6)
    var = [sum((x - np.mean(r)) ** 2 for x in r) / len(r) for r in rewards.T]
    np.testing.assert_allclose(got["uwo"], np.mean(rewards, 0) - 0.1 * np.array(var),
                               rtol=1e-5, atol=1e-6)
  assert parse_reward_source("w", {"wco": ["a", "b"]}).combine == "wco"
  uwo = parse_reward_source("u", {"uwo": ["a", "b"], "lambda": 0.1})
  assert (uwo.combine, uwo.uwo_lambda, uwo.paths) == ("uwo", 0.1, ("a", "b"))
  with pytest.raises(ValueError, match="uwo needs 'lambda'.*0.5 for best-of-N, 0.1 for RL"):
    parse_reward_source("u", {"uwo": ["a", "b"]})
  with pytest.raises(ValueError, match="'lambda' belongs to 'uwo' only"):
    parse_reward_source("e", {"ens": ["a", "b"], "lambda": 0.1})
  with pytest.raises(ValueError, match="exactly one key"):
    parse_reward_source("x", {"wco": ["a"], "uwo": ["b"], "lambda": 0.1})


def test_bon_gao_fit_and_paired_differences_match_brute_force():
  """Per selector: the oracle gain over the pool mean (every N-subset enumerated) fitted by
  d (a - b d) with the normal equations solved by hand; per pair and N: the mean paired
  per-prompt difference with s.e. = sd / sqrt(prompts) and a normal 95% interval."""
  rng = np.random.default_rng(5)
  prompts, pool = 40, 6
  oracle = rng.normal(size=(prompts, pool))
  rm = {"good": oracle + 0.5 * rng.normal(size=(prompts, pool)),
        "bad": rng.normal(size=(prompts, pool))}
  ns = [1, 2, 3, 6]
  curves = bon.bon_curves(oracle=oracle, rm_scores=rm, ns=ns, reference=oracle[:, 0])

  def brute(scores, n):  # [prompts] mean oracle of the RM's choice over every n-subset
    return np.array([np.mean([oracle[p, s[int(np.argmax(scores[p, list(s)]))]]
                              for s in itertools.combinations(range(pool), n)])
                     for p in range(prompts)])

  d = np.sqrt([math.log(n) - (n - 1) / n for n in ns])
  for name, scores in rm.items():
    gain = np.array([np.mean(brute(scores, n) - oracle.mean(1)) for n in ns])
    x1, x2 = d, -d * d
    a, b = np.linalg.solve([[x1 @ x1, x1 @ x2], [x1 @ x2, x2 @ x2]], [x1 @ gain, x2 @ gain])
    fit = curves["selectors"][name]["gao_fit"]
    assert (fit["a"], fit["b"]) == (pytest.approx(a), pytest.approx(b))
    if fit["peak_kl"] is not None:
      assert fit["peak_kl"] == pytest.approx((a / (2 * b)) ** 2)
      assert fit["peak_gain"] == pytest.approx(a * a / (4 * b))
  assert curves["pool_mean_oracle"] == pytest.approx(oracle.mean())
  assert set(curves["paired_differences"]) == {"good-bad"}
  for i, n in enumerate(ns):
    diff = brute(rm["good"], n) - brute(rm["bad"], n)
    got = curves["paired_differences"]["good-bad"][i]
    se = diff.std(ddof=1) / math.sqrt(prompts)
    assert got["diff"] == pytest.approx(diff.mean(), abs=1e-12)
    assert got["se"] == pytest.approx(se)
    assert (got["low"], got["high"]) == (pytest.approx(diff.mean() - 1.959964 * se),
                                         pytest.approx(diff.mean() + 1.959964 * se))
  # The informative selector gains; the gain of the uninformative one is noise around 0.
  assert curves["paired_differences"]["good-bad"][-1]["low"] > 0


def test_disagreement_auroc_ranks_and_correlations_against_brute_force():
  """AUROC = the fraction of (wrong, right) pairs where the wrong one has the higher
  disagreement, ties counted 1/2, enumerated pair by pair; Spearman = Pearson of mid-ranks."""
  from warm_jax.policy import disagreement as dis
  rng = np.random.default_rng(6)
  for trial in range(20):
    scores = rng.integers(0, 4, 30).astype(float)  # many ties
    labels = rng.random(30) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairs = [1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg]
    assert dis.auroc(scores, labels) == pytest.approx(np.mean(pairs), abs=1e-12)
  assert dis.auroc([1.0, 2.0, 3.0], [False, True, True]) == 1.0
  assert dis.auroc([1.0, 1.0], [False, True]) == 0.5
  assert dis.auroc([1.0, 2.0], [False, False]) is None  # one class: undefined
  # Mid-ranks by brute force: 1 + (# smaller) + (# equal - 1) / 2.
  x = rng.integers(0, 5, 25).astype(float)
  brute = [1 + np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x]
  np.testing.assert_allclose(dis.average_ranks(x), brute)
  y = x + rng.normal(size=25)
  assert dis.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
  assert dis.spearman(x, y) == pytest.approx(
      np.corrcoef(dis.average_ranks(x), dis.average_ranks(y))[0, 1])
  assert dis.pearson(x, np.zeros(25)) is None
  with pytest.raises(ValueError, match="labels shape"):
    dis.auroc([1.0, 2.0], [True])
  with pytest.raises(ValueError, match="non-finite"):
    dis.auroc([np.nan, 2.0], [True, False])


def test_disagreement_curves_of_the_chosen_candidates_match_numpy():
  """Per selector and N: the disagreement of its choice (std over members of the members'
  rewards standardised over the whole pool), the regret (best oracle of the first N minus the
  choice's) and 'wrong' (below the median oracle of the first N), recomputed loop by loop."""
  from warm_jax.policy import disagreement as dis
  rng = np.random.default_rng(7)
  prompts, pool, ns = 30, 8, [1, 2, 4, 8]
  oracle = rng.normal(size=(prompts, pool))
  members = {"a": 2.0 * oracle + rng.normal(size=(prompts, pool)),
             "b": oracle + 5.0 + rng.normal(size=(prompts, pool)),
             "c": rng.normal(size=(prompts, pool))}
  rm = {"ens": np.mean([members[k] for k in "abc"], axis=0), "a": members["a"]}
  curves = bon.disagreement_curves(oracle=oracle, rm_scores=rm, members={
      "ens": ["a", "b", "c"], "a": ["a", "b"]}, member_scores=members, ns=ns,
      skipped={"warm_3": "members not scored"})
  assert curves["skipped"] == {"warm_3": "members not scored"}
  checked = 0
  for name, names in (("ens", "abc"), ("a", "ab")):
    z = [(members[k] - members[k].mean()) / members[k].std() for k in names]
    entry = curves["selectors"][name]
    assert entry["m"] == len(names)
    for i, n in enumerate(ns):
      d, regret, wrong = [], [], []
      for p in range(prompts):
        j = max(range(n), key=lambda c: (rm[name][p, c], -c))
        d.append(np.sqrt(np.mean([(zk[p, j] - np.mean([zz[p, j] for zz in z])) ** 2
                                  for zk in z])))
        regret.append(max(oracle[p, :n]) - oracle[p, j])
        wrong.append(oracle[p, j] < sorted(oracle[p, :n])[n // 2] if n % 2 else
                     oracle[p, j] < np.mean(sorted(oracle[p, :n])[n // 2 - 1:n // 2 + 1]))
      assert entry["mean_disagreement"][i] == pytest.approx(np.mean(d))
      assert entry["mean_regret"][i] == pytest.approx(np.mean(regret))
      assert entry["wrong_rate"][i] == pytest.approx(np.mean(wrong))
      if n == 1:  # one candidate: no regret, nothing wrong, nothing to correlate
        assert (entry["pearson"][i], entry["auroc"][i]) == (None, None)
        continue
      assert entry["pearson"][i] == pytest.approx(np.corrcoef(d, regret)[0, 1])
      pairs = [1.0 if p > q else 0.5 if p == q else 0.0
               for p, w in zip(d, wrong) if w for q, v in zip(d, wrong) if not v]
      if pairs:
        checked += 1
        assert entry["auroc"][i] == pytest.approx(np.mean(pairs))
      else:  # no wrong choice at this N (a good selector at N = pool): undefined
        assert entry["auroc"][i] is None
  assert checked >= 5
  with pytest.raises(ValueError, match="not a selector"):
    bon.disagreement_curves(oracle=oracle, rm_scores=rm, members={"x": ["a", "b"]},
                            member_scores=members, ns=ns)
  with pytest.raises(ValueError, match="cannot be standardised"):
    dis.member_disagreement(np.stack([members["a"], np.ones((prompts, pool))]), ["a", "flat"])


def test_disagreement_members_are_checked_before_anything_runs():
  """DISAGREEMENT_MEMBERS: keys must be selectors, values >= 2 distinct paths; a selector with
  several paths defaults to its own members; REWARD_MODELS' order is kept."""
  from warm_jax.policy.reward_sources import parse_reward_sources
  sources = parse_reward_sources({"m0": "/m/0", "warm_2": "/avg/warm_2",
                                  "ens_2": ["/m/0", "/m/1"], "w": {"warm": ["/m/0", "/m/1"]}})
  got = bon._disagreement_members(sources, {"warm_2": ["/m/0", "/m/1"], "m0": ["/m/0", "/m/1"]})
  assert list(got) == ["m0", "warm_2", "ens_2", "w"] and got["ens_2"] == ["/m/0", "/m/1"]
  assert bon._disagreement_members(sources, None) == {"ens_2": ["/m/0", "/m/1"],
                                                      "w": ["/m/0", "/m/1"]}
  with pytest.raises(ValueError, match="DISAGREEMENT_MEMBERS names 'warm_6'.*not in "
                                       "REWARD_MODELS"):
    bon._disagreement_members(sources, {"warm_6": ["/m/0", "/m/1"]})
  with pytest.raises(ValueError, match=r"give a list of >= 2 member checkpoint paths"):
    bon._disagreement_members(sources, {"warm_2": "/m/0"})
  with pytest.raises(ValueError, match="lists a checkpoint twice"):
    bon._disagreement_members(sources, {"warm_2": ["/m/0", "/m/0"]})


def test_disagreement_is_skipped_with_a_reason_when_members_were_not_scored(caplog):
  """A {'warm': [...]} selector whose members are not selectors: its members' rewards do not
  exist in the stage, so no disagreement is computed for it (nothing faked), the reason is
  logged and written; a selector whose members were scored gets its curves."""
  rng = np.random.default_rng(8)
  count, per_prompt, n_max = 5, 5, 4
  by_path = {p: rng.normal(size=count * per_prompt) for p in ("/m/0", "/m/1")}
  rm_all = {"ens_2": rng.normal(size=(count, per_prompt)),
            "warm_3": rng.normal(size=(count, per_prompt))}
  oracle = rng.normal(size=(count, n_max))
  with caplog.at_level("INFO"):
    out = bon._disagreement(oracle, rm_all, by_path, {"ens_2": ["/m/0", "/m/1"],
                                                      "warm_3": ["/m/0", "/m/1", "/m/2"]},
                            [1, 2, 4], count=count, per_prompt=per_prompt, n_max=n_max)
  assert set(out["selectors"]) == {"ens_2"} and set(out["skipped"]) == {"warm_3"}
  assert "'/m/2'" in out["skipped"]["warm_3"] and "disagreement of warm_3 skipped" in caplog.text
  z = [(v.reshape(count, per_prompt)[:, :n_max] - v.reshape(count, per_prompt)[:, :n_max].mean())
       / v.reshape(count, per_prompt)[:, :n_max].std() for v in by_path.values()]
  assert out["selectors"]["ens_2"]["pool_mean_disagreement"] == pytest.approx(
      np.mean(np.abs(z[0] - z[1]) / 2))
  # A member with one reward for every candidate: skipped, not a crash after the sampling.
  by_path["/m/1"] = np.ones(count * per_prompt)
  out = bon._disagreement(oracle, rm_all, by_path, {"ens_2": ["/m/0", "/m/1"]}, [1, 2, 4],
                          count=count, per_prompt=per_prompt, n_max=n_max)
  assert not out["selectors"] and "one reward to every candidate" in out["skipped"]["ens_2"]


def test_report_table_of_member_disagreement(tmp_path):
  """collect_bon keeps curves.disagreement; report.md shows per selector the numbers at N_max,
  AUROC for every N > 1 ('-' where undefined) and the skipped selectors with their reason."""
  from warm_jax.pipeline import report_policy
  disagreement = {"n": [1, 2, 4], "selectors": {"warm_2": {
      "m": 2, "members": ["/m/0", "/m/1"], "pool_mean_disagreement": 0.4,
      "mean_disagreement": [0.4, 0.45, 0.5], "mean_regret": [0.0, 0.3, 0.6],
      "wrong_rate": [0.0, 0.25, 0.125], "pearson": [None, 0.31, 0.2],
      "spearman": [None, 0.28, 0.19], "auroc": [None, 0.61, None]}},
      "skipped": {"warm_6": "members ['/m/5'] were not scored"}}
  (tmp_path / "bon.json").write_text(json.dumps({
      "num_prompts": 8, "candidates": {}, "reward_models": {},
      "curves": {"n": [1, 2, 4], "kl": [0, 0.19, 0.64], "sft_sample_oracle": 0.0,
                 "selectors": {}, "win_rates": {}, "disagreement": disagreement}}))
  collected = report_policy.collect_bon(str(tmp_path))
  assert collected["disagreement"] == disagreement
  text = "\n".join(report_policy.tables_md({"bon": collected}))
  assert "| AUROC N=2 | AUROC N=4 |" in text and "AUROC N=1" not in text
  assert "| warm_2 (2) | 0.500 (0.400) | 0.12 | 0.20 / 0.19 | 0.61 | - |" in text
  assert "| warm_6 | skipped: members ['/m/5'] were not scored |" in text
