"""The judge of policy samples: the world's gold reward, or a control reward model.

Where it sits: best-of-N (`warm_jax.policy.bon`), RL (`warm_jax.policy.rl`) and win rates
(`warm_jax.policy.win_rates`) never trust the reward model they optimise; they report the oracle's
score of every sampled response. docs/paper.md: the paper's oracle is a PaLM labeller plus a larger
"control" RM; ours is exact on the synthetic task (`GoldOracle`: decode the response, parse it
against the post's latent facts) and a control RM on real TL;DR data (`ControlRewardOracle`).

Both take the same arrays: the prompts' rows (prompt_index into text/prompts.<split>.jsonl and
the left-padded prompt tokens) and the responses [n, T] with their masks (1 on generated
tokens, EOS included), and return [n] float scores. An unfinished response (no EOS: cut at
max_new_tokens) is judged as it is: the gold oracle reads its decoded text; the control RM
reads it closed with EOS (`sampling.close_unfinished`), as every other RM does.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from warm_jax.data import data_dir as data_dir_lib
from warm_jax.data import gold_reward as gold_lib
from warm_jax.data.datasets import load_vocabulary
from warm_jax.data.vocab import EOS_ID


class Oracle(Protocol):
  name: str

  def score(self, *, prompt_index: np.ndarray, prompt_tokens: np.ndarray,
            prompt_mask: np.ndarray, response_tokens: np.ndarray,
            response_mask: np.ndarray) -> np.ndarray: ...


def decode_responses(vocabulary: Any, response_tokens: np.ndarray,
                     response_mask: np.ndarray) -> list[str]:
  """Text of each response: its generated tokens (mask 1), cut at the first EOS."""
  return [vocabulary.decode([int(t) for t, m in zip(row, mask_row) if m])
          for row, mask_row in zip(np.asarray(response_tokens), np.asarray(response_mask))]


class GoldOracle:
  """`gold_reward(post, decoded text)` for the prompts of one split of a built data dir.

  Args:
    data_dir: a synthetic-world data dir (it holds text/posts.jsonl with the latent facts).
    split: the prompt split the prompt_index values refer to ('train' or 'validation').
  """

  name = "gold"

  def __init__(self, *, data_dir: str, split: str):
    self.vocabulary = load_vocabulary(data_dir)
    posts = data_dir_lib.load_posts(data_dir)
    records = data_dir_lib.load_records(data_dir, kind="prompts", split=split)
    missing = [r["post_id"] for r in records if r["post_id"] not in posts]
    if missing:
      raise data_dir_lib.DataDirError(
          f"{data_dir}: prompts.{split} names post {missing[0]} that text/posts.jsonl lacks "
          "(real TL;DR data has no latent facts): judge with a control reward model "
          "(ControlRewardOracle) instead of the gold reward")
    self.posts = [posts[r["post_id"]] for r in records]
    self.split = split

  def texts(self, response_tokens: np.ndarray, response_mask: np.ndarray) -> list[str]:
    return decode_responses(self.vocabulary, response_tokens, response_mask)

  def score(self, *, prompt_index: np.ndarray, response_tokens: np.ndarray,
            response_mask: np.ndarray, prompt_tokens: np.ndarray | None = None,
            prompt_mask: np.ndarray | None = None) -> np.ndarray:
    del prompt_tokens, prompt_mask
    prompt_index = np.asarray(prompt_index)
    if len(prompt_index) and (prompt_index.min() < 0 or prompt_index.max() >= len(self.posts)):
      raise ValueError(f"prompt_index values in [{prompt_index.min()}, {prompt_index.max()}] "
                       f"are outside prompts.{self.split} (0..{len(self.posts) - 1}): pass the "
                       "split the prompts were loaded from")
    texts = self.texts(response_tokens, response_mask)
    return np.array([gold_lib.gold_reward(post=self.posts[int(i)], summary_text=text)
                     for i, text in zip(prompt_index, texts)], np.float32)


class ControlRewardOracle:
  """A control reward model's score of prompt + response (the paper's oracle on real data).

  Args:
    scorer: a `RewardScorer` for the control RM's architecture.
    params_path: the control RM's checkpoint (model dir, step dir or params dir).
    eos_id: the sampler's EOS: an unfinished response is closed with it before the RM reads
      it (`sampling.close_unfinished`, the rule of best-of-N, RL and win rates).
  """

  name = "control_rm"

  def __init__(self, *, scorer: Any, params_path: str, eos_id: int | None = EOS_ID):
    from warm_jax.core import checkpoints as ckpt_lib
    self.scorer, self.eos_id = scorer, eos_id
    self.params = scorer.place(ckpt_lib.load_params(params_path))

  def score(self, *, prompt_tokens: np.ndarray, prompt_mask: np.ndarray,
            response_tokens: np.ndarray, response_mask: np.ndarray,
            prompt_index: np.ndarray | None = None) -> np.ndarray:
    del prompt_index
    from warm_jax.policy.sampling import candidate_sequences
    return self.scorer.rewards(self.params, *candidate_sequences(
        prompt_tokens, prompt_mask, response_tokens, response_mask, eos_id=self.eos_id))
