"""Benchmark 11: the policy side's programs over row slices vs over the whole batch (CPU).

Where it sits: best-of-N samples a pool per prompt and scores it with every selector
(`policy.bon`); every RL step samples a batch of 128 responses and scores it with the policy,
the KL reference and the reward (`policy.rl.rollout`). Three settings decide how those
programs use a CPU's cache and how long their loops run, each keeping the numbers (tests:
tests/test_sampling.py, tests/test_rl.py, tests/test_row_slices.py):

- `SamplingConfig.loop_rows`: rows per decoding loop. A `lax.while_loop` runs until its slowest
  row has ended, so one loop over 128 rows runs ~max_new_tokens steps for every row; loops of
  32 stop as their own rows end.
- best-of-N's `score_batch_size`: rows per reward-model scoring call.
- RL's scoring passes over `TrainerConfig.microbatches` row slices (`core.row_slices`).

This times each pair in one process on a demo run's SFT policy and prompts (the lengths a
trained policy samples, EOS included: a random-init policy never ends its responses), with a
random-init reward model of the run's readout (its arithmetic does not depend on its
weights), and prints each ratio.

  bash launch/demo.sh   # once: writes runs/demo/{sft,data/clean}
  bench/.venv/bin/python -m bench.policy_slices                  # --run_dir runs/demo
  bench/.venv/bin/python -m bench.policy_slices --repeats 3 --json /tmp/slices.json
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import numpy as np

from bench import common

MAX_NEW_TOKENS, TEMPERATURE = 48, 0.9


def _inputs(run_dir: str, rows: int):
  from warm_jax.core import checkpoints as ckpt_lib
  from warm_jax.data.datasets import load_arrays
  from warm_jax.data import data_dir as data_dir_lib
  sft, data = os.path.join(run_dir, "sft"), os.path.join(run_dir, "data", "clean")
  if not (os.path.isdir(sft) and os.path.isdir(data)):
    sys.exit(f"error: {sft} or {data} is missing: run `bash launch/demo.sh` first (or pass "
             "--run_dir of a finished experiment run)")
  meta = data_dir_lib.read_meta(data)
  prompts = load_arrays(data, kind="prompts", split="train", vocab_size=meta["vocab_size"])
  index = np.arange(rows) % len(prompts["prompt_tokens"])
  return (ckpt_lib.load_params(sft), prompts["prompt_tokens"][index],
          prompts["prompt_mask"][index], meta)


def measure(*, run_dir: str, repeats: int, pool: int = 512, batches=(64, 128),
            loop_rows: int = 32, score_batches=(64, 16), rl_batch: int = 128,
            rl_slices: int = 8, max_new_tokens: int = MAX_NEW_TOKENS) -> list[dict]:
  """One row per program: its rate over the whole batch and over row slices (same run)."""
  import jax
  import jax.numpy as jnp
  from warm_jax.core.partitioning import Partitioner
  from warm_jax.models import LanguageModel, RewardModel
  from warm_jax.policy import rl
  from warm_jax.policy.rl import rollout
  from warm_jax.policy.sampling import Sampler, SamplingConfig, candidate_sequences
  from warm_jax.rm.scoring import RewardScorer, unboxed_init
  params, tokens, mask, meta = _inputs(run_dir, pool)
  config = common.preset_config("tiny", vocab_size=meta["vocab_size"])
  rm_config = common.preset_config("tiny", vocab_size=meta["vocab_size"],
                                   reward_readout="hidden_logprob", logprob_window=64)
  partitioner = Partitioner()
  rows = []

  def row(program, setting_a, setting_b, unit, a, b, per):
    rows.append({"program": program, "whole": setting_a, "sliced": setting_b, "unit": unit,
                 "whole_rate": per / a.best, "sliced_rate": per / b.best,
                 "ratio": a.best / b.best, "load": f"{a.load} / {b.load}"})

  # -- decoding: one loop over the batch vs loops of 32 rows ------------------------------------
  samples = None
  for batch in batches:
    timings = []
    for rows_per_loop in (None, loop_rows):
      sampler = Sampler(model_config=config, partitioner=partitioner, batch_size=batch,
                        config=SamplingConfig(max_new_tokens=max_new_tokens,
                                              temperature=TEMPERATURE, loop_rows=rows_per_loop),
                        max_positions=meta.get("seq_len"), closing_eos=True)
      placed = sampler.place(params)
      out = {}
      timings.append(common.time_calls(lambda: out.update(s=sampler.sample(
          placed, tokens, mask, seed=0)), repeats=repeats))
      samples = out["s"]
    row(f"decoding, batch {batch}", "1 loop", f"{batch // loop_rows} loops of {loop_rows}",
        "responses/s", *timings, pool)
  # -- best-of-N scoring: 64 rows a call vs 16 ------------------------------------------------
  seq_tokens, seq_mask, seq_response = candidate_sequences(tokens, mask, samples.tokens,
                                                           samples.mask)
  rm = RewardModel(rm_config)
  rm_params = unboxed_init(rm, 1)
  timings = []
  for batch in score_batches:
    scorer = RewardScorer(model_config=rm_config, partitioner=partitioner, batch_size=batch)
    placed = scorer.place(rm_params)
    timings.append(common.time_calls(lambda: scorer.rewards(placed, seq_tokens, seq_mask,
                                                            seq_response), repeats=repeats))
  row("best-of-N RM scoring", f"{score_batches[0]} rows a call",
      f"{score_batches[1]} rows a call", "sequences/s", *timings, pool)
  # -- RL's scoring program on a 128-row rollout: whole vs 8 slices ------------------------------
  batch = rl_batch
  policy = jax.tree_util.tree_map(jnp.asarray, params)
  args = (policy, policy, None, None, [rm_params], 0.0, 1.0, jnp.asarray(tokens[:batch]),
          jnp.asarray(mask[:batch]), jnp.asarray(samples.tokens[:batch]),
          jnp.asarray(samples.mask[:batch]))
  timings = []
  for slices in (1, rl_slices):
    score = jax.jit(functools.partial(
        rollout._score_rollout, lm=LanguageModel(config), rm=rm, vm=None,
        temperature=TEMPERATURE, partitioner=partitioner, eos_id=1, row_slices=slices,
        config=rl.RLConfig(baseline="leave_one_out", samples_per_prompt=4, kl_coef=0.003)))
    timings.append(common.time_calls(lambda: jax.block_until_ready(score(*args)),
                                     repeats=repeats))
  row(f"RL rollout scoring, batch {batch}", "1 pass",
      f"{rl_slices} slices of {batch // rl_slices}", "rollouts/s", *timings, 1)
  return rows


def table(rows: list[dict]) -> str:
  return common.markdown_table(
      ["program", "whole batch", "row slices", "unit", "whole", "sliced", "sliced / whole",
       "load"],
      [[r["program"], r["whole"], r["sliced"], r["unit"], r["whole_rate"], r["sliced_rate"],
        r["ratio"], r["load"]] for r in rows])


def main(argv=None) -> None:
  common.configure_jax_for_benchmarks()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run_dir", default="runs/demo",
                      help="a finished experiment run (its sft/ and data/clean/)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", help="also save the rows here")
  args = parser.parse_args(argv)
  print(common.header("The policy side over row slices vs the whole batch"))
  rows = measure(run_dir=args.run_dir, repeats=args.repeats)
  print(table(rows))
  common.write_json(args.json, rows)


if __name__ == "__main__":
  main()
