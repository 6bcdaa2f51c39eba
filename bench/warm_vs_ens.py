"""Benchmark 5: WARM vs ENS at inference -- reward scoring for best-of-N at N = 16.

Where it sits: best-of-N (`warm_jax/policy/bon.py`) scores every candidate with each selector through
`RewardScorer` and `reward_sources.score_with_source`. WARM M is one averaged RM (merged once,
`merging.merge_params`), so a candidate costs one forward pass whatever M; ENS M averages M
RMs' rewards, M forward passes. This measures, in one run and with one compiled scorer, the
scoring throughput of WARM M and ENS M for M = 2, 6, 10 on P prompts x 16 candidates, plus
the one-off cost of the in-memory merge that WARM pays before scoring.

  bench/.venv/bin/python -m bench.warm_vs_ens                  # small preset, 16 prompts x 16
  bench/.venv/bin/python -m bench.warm_vs_ens --preset tiny --prompts 64

Candidates are full-length random sequences (prompt 96 + response 32 tokens, the BoN stage's
shape after `trim_padding` when responses run to the end); members are one init plus small
random perturbations (cost does not depend on the values). The table also gives how often WARM
and ENS pick the same best-of-16 candidate: a check that both scored the same candidates (with
random members it says nothing about quality; the experiment's BoN stage measures that).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from bench import common

N = 16
PROMPT_LEN, RESPONSE_LEN = 96, 32


@dataclasses.dataclass
class ScoringResult:
  preset: str
  num_members: int
  num_prompts: int
  n: int
  seq_len: int
  warm_s: float
  ens_s: float
  merge_s: float
  bon_agreement: float
  load: str

  @property
  def sequences(self) -> int:
    return self.num_prompts * self.n

  @property
  def warm_speedup(self) -> float:
    return self.ens_s / self.warm_s

  @property
  def warm_speedup_with_merge(self) -> float:
    return self.ens_s / (self.warm_s + self.merge_s)


def make_members(*, config, num_members: int, noise: float, seed: int = 0) -> list:
  """M reward models: one init plus independent Gaussian perturbations (host numpy)."""
  import jax
  from warm_jax.models import RewardModel
  from warm_jax.rm.scoring import unboxed_init
  init = unboxed_init(RewardModel(config), seed)
  members = []
  for i in range(num_members):
    rng = np.random.default_rng([seed, i])
    members.append(jax.tree_util.tree_map(
        lambda x: np.asarray(x, np.float32) + noise * rng.standard_normal(np.shape(x),
                                                                          np.float32), init))
  return members


def measure(*, preset: str, members_list=(2, 6, 10), num_prompts: int = 16, n: int = N,
            repeats: int = 2, batch_size: int = 64, partitioner=None,
            prompt_len: int = PROMPT_LEN, response_len: int = RESPONSE_LEN,
            vocab_size: int = common.VOCAB_SIZE, model_overrides: dict | None = None,
            noise: float = 0.002) -> list[ScoringResult]:
  """WARM M and ENS M scoring of num_prompts x n candidates, for each M (one scorer)."""
  import jax
  from warm_jax.policy import bon
  from warm_jax.merging import merge_params
  from warm_jax.policy.reward_sources import score_with_source
  from warm_jax.rm.scoring import RewardScorer

  seq_len = prompt_len + response_len
  config = common.preset_config(preset, vocab_size=vocab_size, **{
      "max_len": max(seq_len, common.preset_fields(preset)["max_len"]),
      **(model_overrides or {})})
  scorer = RewardScorer(model_config=config,
                        partitioner=partitioner or common.single_device_partitioner(),
                        batch_size=batch_size)
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, vocab_size, (num_prompts * n, seq_len)).astype(np.int32)
  mask = np.ones_like(tokens)
  all_members = make_members(config=config, num_members=max(members_list), noise=noise)
  placed = [scorer.place(tree) for tree in all_members]
  jax.block_until_ready(placed)
  scorer.rewards(placed[0], tokens[:batch_size], mask[:batch_size])  # compile once
  results = []
  for m in members_list:
    load_before = common.load_average()
    t0 = time.perf_counter()
    warm_tree = merge_params("uniform", all_members[:m], head="reward_head")
    warm = scorer.place(warm_tree)
    jax.block_until_ready(warm)
    merge_s = time.perf_counter() - t0
    warm_scores, ens_scores = {}, {}

    def score_warm():
      warm_scores["r"] = score_with_source(scorer, [warm], tokens, mask)

    def score_ens():
      ens_scores["r"] = score_with_source(scorer, placed[:m], tokens, mask)

    warm_t = common.time_calls(score_warm, repeats=repeats, warmup=0)
    ens_t = common.time_calls(score_ens, repeats=repeats, warmup=0)
    pick_warm = bon.best_of_n_indices(warm_scores["r"].reshape(num_prompts, n), n)
    pick_ens = bon.best_of_n_indices(ens_scores["r"].reshape(num_prompts, n), n)
    results.append(ScoringResult(
        preset=preset, num_members=m, num_prompts=num_prompts, n=n, seq_len=seq_len,
        warm_s=warm_t.median, ens_s=ens_t.median, merge_s=merge_s,
        bon_agreement=float(np.mean(pick_warm == pick_ens)),
        load=f"{load_before:.1f}-{common.load_average():.1f}"))
    print(f"  M={m}: WARM {warm_t.median:.2f} s, ENS {ens_t.median:.2f} s", file=sys.stderr,
          flush=True)
  return results


def table(results: list[ScoringResult]) -> str:
  return common.markdown_table(
      ["preset", "M", "prompts x N", "tokens per candidate", "WARM candidates/s",
       "ENS candidates/s", "WARM / ENS", "merge once (s)", "WARM / ENS incl. merge",
       "same BoN choice", "load"],
      [[r.preset, r.num_members, f"{r.num_prompts} x {r.n}", r.seq_len,
        r.sequences / r.warm_s, r.sequences / r.ens_s, f"**{r.warm_speedup:.2f}x**", r.merge_s,
        f"{r.warm_speedup_with_merge:.2f}x", f"{r.bon_agreement:.0%}", r.load]
       for r in results])


def main(argv=None) -> None:
  common.configure_jax_for_benchmarks()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
  parser.add_argument("--members", nargs="+", type=int, default=[2, 6, 10])
  parser.add_argument("--prompts", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--json", help="also save the rows here")
  args = parser.parse_args(argv)
  print(common.header(f"WARM vs ENS: reward scoring for best-of-{N}"))
  results = measure(preset=args.preset, members_list=args.members, num_prompts=args.prompts,
                    repeats=args.repeats)
  print(table(results))
  common.write_json(args.json, [dict(dataclasses.asdict(r), warm_speedup=r.warm_speedup)
                                for r in results])


if __name__ == "__main__":
  main()
