"""Benchmark 6: decoding tokens/s with the KV cache vs recomputing the sequence, batch 1..32.

Where it sits: best-of-N and RL sample from the policy with `warm_jax.policy.sampling` (a jitted
`lax.while_loop` over a `KVCache`); `SamplingConfig(use_cache=False)` is the reference that
recomputes the whole (fixed-size, masked) sequence every step. This runs both, in one process,
through `sampling.benchmark_decoding` (random init params, random full-length prompts, EOS off
so every row generates max_new_tokens, compile excluded, best of `repeats` calls), for each
batch size, and reports the cache's speedup and how throughput scales with the batch.

  bench/.venv/bin/python -m bench.decoding                        # tiny, batch 1, 2, 4, ..., 32
  bench/.venv/bin/python -m bench.decoding --presets tiny small --batches 1 8 32
"""

from __future__ import annotations

import argparse
import sys

from bench import common

PROMPT_LEN, MAX_NEW_TOKENS = 96, 48


def measure(*, preset: str, batches=(1, 2, 4, 8, 16, 32), prompt_len: int = PROMPT_LEN,
            max_new_tokens: int = MAX_NEW_TOKENS, repeats: int = 2, partitioner=None,
            vocab_size: int = common.VOCAB_SIZE, model_overrides: dict | None = None
            ) -> list[dict]:
  """One row per batch size: tokens/s with and without the cache (same params, same run)."""
  from warm_jax.policy.sampling import benchmark_decoding
  config = common.preset_config(preset, vocab_size=vocab_size, **{
      "max_len": max(prompt_len + max_new_tokens, common.preset_fields(preset)["max_len"]),
      **(model_overrides or {})})
  partitioner = partitioner or common.single_device_partitioner()
  rows = []
  for batch in batches:
    before = common.load_average()
    row = benchmark_decoding(model_config=config, batch_size=batch, prompt_len=prompt_len,
                             max_new_tokens=max_new_tokens, repeats=repeats,
                             partitioner=partitioner)
    row.update(preset=preset, load=f"{before:.1f}-{common.load_average():.1f}")
    rows.append(row)
    print(f"  {preset} batch {batch}: cache {row['cache_tokens_per_s']:,.0f} tok/s, "
          f"recompute {row['no_cache_tokens_per_s']:,.0f} tok/s", file=sys.stderr, flush=True)
  return rows


def table(rows: list[dict]) -> str:
  first = {}
  for r in rows:
    first.setdefault(r["preset"], r)
  return common.markdown_table(
      ["preset", "params", "batch", "prompt + new", "KV cache tokens/s", "recompute tokens/s",
       "cache / recompute", "cache tokens/s vs batch 1", "load"],
      [[r["preset"], f"{r['num_params'] / 1e6:.2f}M", r["batch_size"],
        f"{r['prompt_len']} + {r['max_new_tokens']}", r["cache_tokens_per_s"],
        r["no_cache_tokens_per_s"], f"**{r['speedup']:.1f}x**",
        f"{r['cache_tokens_per_s'] / first[r['preset']]['cache_tokens_per_s']:.1f}x",
        r["load"]] for r in rows])


def main(argv=None) -> None:
  common.configure_jax_for_benchmarks()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--presets", nargs="+", default=["tiny"], choices=["tiny", "small", "base"])
  parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--json", help="also save the rows here")
  args = parser.parse_args(argv)
  print(common.header("Decoding: KV cache vs recomputation, batch scaling"))
  rows = []
  for preset in args.presets:
    rows += measure(preset=preset, batches=args.batches, repeats=args.repeats)
  print(table(rows))
  common.write_json(args.json, rows)


if __name__ == "__main__":
  main()
