"""Benchmark 6: decoding tokens/s with the KV cache vs recomputing the sequence, batch 1..32.

Where it sits: best-of-N and RL sample from the policy with `warm_jax.policy.sampling` (a jitted
`lax.while_loop` over a `KVCache`); `SamplingConfig(use_cache=False)` is the reference that
recomputes the whole (fixed-size, masked) sequence every step. This runs both, in one process,
through `sampling.benchmark_decoding` (random init params, random full-length prompts, EOS off
so every row generates max_new_tokens, compile excluded, best of `repeats` calls), for each
batch size, and reports the cache's speedup and how throughput scales with the batch.

  bench/.venv/bin/python -m bench.decoding                        # tiny, batch 1, 2, 4, ..., 32
  bench/.venv/bin/python -m bench.decoding --presets tiny small --batches 1 8 32

The hardware bound (`roofline`): one decoding step must read every weight (the LM head
included) and, for every row, the keys and values of every cache slot (the cache has a static
length, prompt + new tokens, and each step attends over all of it under a mask), and compute
the forward FLOPs of one token per row at that context. So a step takes at least
max(bytes / read bandwidth, FLOPs / matmul rate); both rates are timed in the same run (a
jitted sum over an array of the step's byte count, so caches help it exactly as much as they
can help the step; a 2048^3 matmul). `roofline tokens/s` = batch / that time, and the table
gives the KV-cache side as a fraction of it. The FLOP-limited rate alone (what a roofline
ignoring memory would promise) is reported beside it.
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
    row.update(roofline(config, batch_size=batch, cache_length=prompt_len + max_new_tokens,
                        tokens_per_s=row["cache_tokens_per_s"]))
    rows.append(row)
    print(f"  {preset} batch {batch}: cache {row['cache_tokens_per_s']:,.0f} tok/s, "
          f"recompute {row['no_cache_tokens_per_s']:,.0f} tok/s", file=sys.stderr, flush=True)
  return rows


def step_bytes(config, *, batch_size: int, cache_length: int) -> int:
  """Bytes one cached decoding step reads at least: every weight (stored float32) and every
  row's keys and values in every layer at the cache's full length (compute dtype)."""
  import numpy as np
  from warm_jax.models.config import DTYPES
  itemsize = np.dtype(DTYPES[config.dtype]).itemsize
  kv = (2 * config.num_layers * batch_size * cache_length * config.kv_heads
        * config.per_head_dim * itemsize)
  return 4 * config.num_params() + kv


def read_rate(num_bytes: int, *, repeats: int = 5) -> float:
  """Bytes/s of a jitted sum over a float32 array of `num_bytes` (best of `repeats`): the rate
  at which this device reads a working set of that size."""
  import jax
  import jax.numpy as jnp
  values = jnp.ones((max(num_bytes // 4, 1),), jnp.float32)
  total = jax.jit(jnp.sum)
  timing = common.time_calls(lambda: total(values).block_until_ready(), repeats=repeats)
  return values.nbytes / timing.best


def roofline(config, *, batch_size: int, cache_length: int, tokens_per_s: float
             ) -> dict[str, float]:
  """The hardware bound of cached decoding at this batch (see the module docstring): memory-
  and FLOP-limited tokens/s, the bound (the smaller) and `tokens_per_s` as a fraction of it."""
  from warm_jax.core import flops
  num_bytes = step_bytes(config, batch_size=batch_size, cache_length=cache_length)
  bandwidth = read_rate(num_bytes)
  matmul = flops.measure_matmul_flops(dtype=config.dtype, repeats=3)
  step_flops = batch_size * config.forward_flops_per_token(cache_length)
  memory_bound = batch_size * bandwidth / num_bytes
  flop_bound = batch_size * matmul / step_flops
  bound = min(memory_bound, flop_bound)
  return {"step_bytes": num_bytes, "read_bytes_per_s": bandwidth, "matmul_flops_per_s": matmul,
          "memory_bound_tokens_per_s": memory_bound, "flop_bound_tokens_per_s": flop_bound,
          "roofline_tokens_per_s": bound, "of_roofline": tokens_per_s / bound}


def table(rows: list[dict]) -> str:
  first = {}
  for r in rows:
    first.setdefault(r["preset"], r)
  return common.markdown_table(
      ["preset", "params", "batch", "prompt + new", "KV cache tokens/s", "recompute tokens/s",
       "cache / recompute", "cache tokens/s vs batch 1", "MB read per step",
       "read GB/s (same size)", "memory-bound tokens/s", "FLOP-bound tokens/s",
       "cache vs roofline", "load"],
      [[r["preset"], f"{r['num_params'] / 1e6:.2f}M", r["batch_size"],
        f"{r['prompt_len']} + {r['max_new_tokens']}", r["cache_tokens_per_s"],
        r["no_cache_tokens_per_s"], f"**{r['speedup']:.1f}x**",
        f"{r['cache_tokens_per_s'] / first[r['preset']]['cache_tokens_per_s']:.1f}x",
        r["step_bytes"] / 1e6, r["read_bytes_per_s"] / 1e9, r["memory_bound_tokens_per_s"],
        r["flop_bound_tokens_per_s"], f"{r['of_roofline']:.0%}", r["load"]] for r in rows])


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
