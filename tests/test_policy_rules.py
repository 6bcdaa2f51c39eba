"""The policy side's shared rules: every program that decodes or scores refuses prompts + new
tokens beyond the positions the models were trained on (with the numbers), and a response cut
at max_new_tokens is read by a reward model closed with EOS, the same in best-of-N, RL and win
rates (`sampling.close_unfinished`)."""

import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from test_bon import PROMPT_LEN, make_policy_data_dir, random_params, save_random_model
from warm_jax.policy import bon, rl, win_rates
from warm_jax.data import data_dir as dd
from warm_jax.data.datasets import prompt_dataset
from warm_jax.data.vocab import EOS_ID, PAD_ID
from warm_jax.models import LanguageModel, RewardModel
from warm_jax.core.optimizers import OptimizerConfig
from warm_jax.core.partitioning import Partitioner
from warm_jax.policy.sampling import (Sampler, SamplingConfig, candidate_sequences,
                                      check_positions, close_unfinished, trained_positions)
from warm_jax.rm.scoring import RewardScorer
from warm_jax.core.trainer import TrainerConfig


def _mask(lengths, width):
  """Left-padded prompt masks with these real lengths."""
  mask = np.zeros((len(lengths), width), np.int32)
  for i, n in enumerate(lengths):
    mask[i, width - n:] = 1
  return mask


def test_check_positions_counts_capped_prompts_and_refuses_prompts_with_no_room():
  mask = _mask([7, 10, 9], 12)
  assert check_positions(mask, max_new_tokens=6, limit=16, source="S", program="P") == 0
  # 10 + 6 = 16 > 15: one prompt's responses will be capped (at 5 new tokens), no error
  assert check_positions(mask, max_new_tokens=6, limit=15, source="S", program="P") == 1
  # the closing EOS a reward model reads after an unfinished response takes one more
  assert check_positions(mask, max_new_tokens=6, limit=16, source="S", program="P",
                         closing_eos=True) == 1
  assert check_positions(mask, max_new_tokens=6, limit=11, source="S", program="P") == 3
  with pytest.raises(ValueError) as e:  # 10 + 1 new token > 10: no room at all
    check_positions(mask, max_new_tokens=6, limit=10, source="SEQ_LEN of x", program="best-of-N")
  msg = str(e.value)
  for part in ("best-of-N", "10 real tokens + 1 new token = 11 positions",
               "trained on 10 (SEQ_LEN of x)", "1 of 3 prompts leave no room", "larger SEQ_LEN"):
    assert part in msg, (part, msg)
  with pytest.raises(ValueError, match=r"\+ 1 closing EOS.* = 12 positions.*1 of 3 prompts"):
    check_positions(mask, max_new_tokens=6, limit=11, source="S", program="P",
                    closing_eos=True)


def test_trained_positions_come_from_the_data_dir_and_are_capped_by_max_len(tmp_path):
  small, large = tiny_config(max_len=32), tiny_config(max_len=64)
  assert trained_positions(large) == (64, "TransformerConfig.max_len 64")
  assert trained_positions((large, small))[0] == 32
  data = str(tmp_path / "d")
  os.makedirs(data)
  for name, content in ((dd.META_FILE, {"format_version": dd.FORMAT_VERSION, "seq_len": 24}),
                        (dd.STATS_FILE, {})):
    with open(os.path.join(data, name), "w") as f:
      json.dump(content, f)
  limit, source = trained_positions(large, data_dir=data)
  assert limit == 24 and "SEQ_LEN" in source and data in source
  # A model shorter than the data's sequences: its max_len is the limit.
  assert trained_positions(tiny_config(max_len=16), data_dir=data)[0] == 16


@pytest.mark.parametrize("closing_eos", [False, True])
def test_sampler_cuts_each_response_where_its_prompt_reaches_the_trained_positions(closing_eos):
  """A row's response stops at max_new_tokens or where prompt + response (+ the closing EOS)
  reach max_positions, whichever comes first: long prompts get shorter, unfinished responses,
  short prompts are untouched (the same tokens as with no limit)."""
  cfg = tiny_config()
  params = jax.device_get(LanguageModel(cfg).init(jax.random.key(0), np.ones((1, 2), np.int32),
                                                  np.ones((1, 2), np.int32))["params"])
  params = jax.tree_util.tree_map(np.asarray, params)
  from flax import linen as nn
  params = nn.unbox(params)
  config = SamplingConfig(max_new_tokens=6, eos_id=None if not closing_eos else EOS_ID)
  capped = Sampler(model_config=cfg, partitioner=Partitioner(), batch_size=8, config=config,
                   max_positions=12, closing_eos=closing_eos)
  free = Sampler(model_config=cfg, partitioner=Partitioner(), batch_size=8, config=config)
  real = [7, 3, 10, 5, 9]
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (5, 12)).astype(np.int32)
  mask = _mask(real, 12)
  got = capped.sample(capped.place(params), tokens * mask, mask, seed=3)
  ref = free.sample(free.place(params), tokens * mask, mask, seed=3)
  budget = np.minimum(6, 12 - np.array(real) - int(closing_eos))
  assert (got.lengths <= budget).all()
  for i, b in enumerate(budget):
    n = int(ref.lengths[i])
    if n <= b:  # the limit does not bind: the same response
      np.testing.assert_array_equal(got.tokens[i], ref.tokens[i])
    else:  # cut at the limit: the first b tokens of the free response, unfinished
      assert got.lengths[i] == b and not got.ended[i]
      np.testing.assert_array_equal(got.tokens[i, :b], ref.tokens[i, :b])
  assert (budget < 6).any() and (budget == 6).any()
  with pytest.raises(ValueError, match="leave no room"):
    capped.sample(capped.place(params), tokens, _mask([12, 3], 12), seed=0)


@pytest.fixture(scope="module")
def short_data(tmp_path_factory):
  """A policy data dir whose meta.json says the models trained on PROMPT_LEN positions: its
  longest prompts leave no room for a response."""
  data = make_policy_data_dir(str(tmp_path_factory.mktemp("short") / "data"))
  with open(os.path.join(data, dd.META_FILE)) as f:
    meta = json.load(f)
  meta["seq_len"] = PROMPT_LEN
  with open(os.path.join(data, dd.META_FILE), "w") as f:
    json.dump(meta, f)
  return data


def test_bon_rl_and_win_rates_check_positions_up_front(short_data, tmp_path):
  cfg = tiny_config(vocab_size=320, max_len=32)
  longest = int(np.load(dd.arrays_path(short_data, "prompts.train"))["prompt_mask"].sum(
      -1).max())
  assert longest == PROMPT_LEN  # the posts are longer than the prompt window
  sampling = SamplingConfig(max_new_tokens=6)
  need = f"{PROMPT_LEN} real tokens \\+ 1 new token"
  limit = f"trained on {PROMPT_LEN} \\(SEQ_LEN of {short_data}"
  with pytest.raises(ValueError, match=f"best-of-N: prompts of up to {need} \\+ 1 closing EOS.*"
                                       f"{limit}.*no room"):
    bon.best_of_n(output_dir=str(tmp_path / "bon"), data_dir=short_data, sft_path="unused",
                  reward_models={"a": "unused"}, model_config=cfg, sampling=sampling, n_max=2,
                  batch_size=8, prompt_len=PROMPT_LEN, vocab_size=320)
  with pytest.raises(ValueError, match=f"RL \\(train prompts\\): prompts of up to {need}.*"
                                       f"{limit}"):
    rl.train_policy(
        model_dir=str(tmp_path / "rl"), sft_path="unused", reward_model="unused",
        model_config=cfg, optimizer=OptimizerConfig(), trainer_config=TrainerConfig(
            train_steps=1, batch_size=8), data_dir=short_data, sampling=sampling,
        dataset=prompt_dataset(data_dir=short_data, split="train", prompt_len=PROMPT_LEN),
        write_config=False)
  with pytest.raises(ValueError, match=f"win rates: prompts of up to {need} = "
                                       f"{PROMPT_LEN + 1} positions.*{limit}"):
    win_rates.policy_win_rates(output_dir=str(tmp_path / "wr"), data_dir=short_data,
                               policies={"a": "x", "b": "y"}, model_config=cfg,
                               sampling=sampling, prompt_len=PROMPT_LEN, vocab_size=320)


def test_close_unfinished_appends_eos_only_to_unfinished_responses():
  tokens = np.array([[5, 6, 7, 8], [5, EOS_ID, PAD_ID, PAD_ID], [9, 9, 9, EOS_ID]], np.int32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], np.int32)
  for xp in (np, jax.numpy):
    out_t, out_m = (np.asarray(a) for a in close_unfinished(xp.asarray(tokens),
                                                            xp.asarray(mask), EOS_ID))
    np.testing.assert_array_equal(out_t[:, :4], tokens)
    np.testing.assert_array_equal(out_m[:, :4], mask)
    np.testing.assert_array_equal(out_t[:, 4], [EOS_ID, PAD_ID, PAD_ID])
    np.testing.assert_array_equal(out_m[:, 4], [1, 0, 0])
  same = close_unfinished(tokens, mask, None)
  assert same[0] is tokens and same[1] is mask


@pytest.mark.slow
def test_an_unfinished_response_is_scored_by_one_rule_in_bon_rl_and_win_rates(tmp_path):
  """Row 0 was cut at max_new_tokens, row 1 ended with EOS: every path's RM reward equals an
  independent forward pass over the unpadded prompt + response (+ EOS for row 0)."""
  cfg = tiny_config(vocab_size=40, max_len=32, num_layers=1)
  rm = RewardModel(cfg)
  rm_params = random_params(rm, 3)
  rng = np.random.default_rng(0)
  p_len, t_len = 6, 5
  prompt_mask = _mask([6, 4], p_len)
  prompt = np.where(prompt_mask == 1, rng.integers(3, 40, (2, p_len)), PAD_ID).astype(np.int32)
  response = np.array([[7, 8, 9, 10, 11], [12, 13, EOS_ID, PAD_ID, PAD_ID]], np.int32)
  response_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)

  def independent(row):
    p = prompt[row][prompt_mask[row] == 1]
    r = list(response[row][response_mask[row] == 1]) + ([EOS_ID] if row == 0 else [])
    seq = np.concatenate([p, r]).astype(np.int32)[None]
    rmask = np.concatenate([np.zeros(len(p)), np.ones(len(r))]).astype(np.int32)[None]
    return float(rm.apply({"params": rm_params}, seq, np.ones_like(seq), rmask)[0])

  expected = np.array([independent(0), independent(1)])
  # Best-of-N: `candidate_sequences` then the scorer (what bon.best_of_n does).
  scorer = RewardScorer(model_config=cfg, partitioner=Partitioner(), batch_size=8)
  placed = scorer.place(rm_params)
  got_bon = scorer.rewards(placed, *candidate_sequences(prompt, prompt_mask, response,
                                                        response_mask, eos_id=EOS_ID))
  # RL: the jitted rollout scoring's proxy reward.
  lm = LanguageModel(cfg)
  policy = random_params(lm, 1)
  _, _, rows = rl._score_rollout(
      policy, policy, None, None, [rm_params], 0.0, 1.0, prompt, prompt_mask, response,
      response_mask, lm=lm, rm=rm, vm=None, temperature=1.0,
      config=rl.RLConfig(baseline="none"), partitioner=Partitioner(), eos_id=EOS_ID)
  # Win rates (and best-of-N) judged by a control RM.
  path = str(tmp_path / "control")
  from warm_jax.core import checkpoints as ckpt_lib
  from warm_jax.policy.oracle import ControlRewardOracle
  ckpt_lib.save_params(rm_params, path)
  oracle = ControlRewardOracle(scorer=scorer, params_path=path, eos_id=EOS_ID)
  got_win = oracle.score(prompt_tokens=prompt, prompt_mask=prompt_mask,
                         response_tokens=response, response_mask=response_mask)
  for got in (got_bon, np.asarray(rows["proxy"]), got_win):
    np.testing.assert_allclose(got, expected, atol=2e-5)
  # Without the rule, the unfinished row would be read at a non-EOS state: another reward.
  raw = scorer.rewards(placed, *candidate_sequences(prompt, prompt_mask, response,
                                                    response_mask, eos_id=None))
  assert abs(raw[0] - expected[0]) > 1e-4
  assert raw[1] == pytest.approx(expected[1], abs=2e-5)
  # RL against Coste et al.'s objectives over two RMs: min (WCO) and mean - lambda * var (UWO)
  # of the two RMs' rewards, each read by the same rule.
  other = random_params(rm, 4)
  second = scorer.rewards(scorer.place(other), *candidate_sequences(
      prompt, prompt_mask, response, response_mask))
  both = np.stack([expected, second])
  for combine, want in (("wco", both.min(0)),
                        ("uwo", both.mean(0) - 0.1 * ((both[0] - both[1]) / 2) ** 2)):
    _, _, rows = rl._score_rollout(
        policy, policy, None, None, [rm_params, other], 0.0, 1.0, prompt, prompt_mask,
        response, response_mask, lm=lm, rm=rm, vm=None, temperature=1.0,
        config=rl.RLConfig(baseline="none"), partitioner=Partitioner(), eos_id=EOS_ID,
        reward_combine=(combine, 0.1))
    np.testing.assert_allclose(np.asarray(rows["proxy"]), want, atol=2e-5)
