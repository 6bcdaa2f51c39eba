"""Benchmark 2, against the hardware: MFU of our jitted RM and LM train steps.

Where it sits: the Trainer logs `perf/mfu` during every run; this measures the same step on its
own for the tiny, small and base (~110M) presets and divides the model FLOP/s by the FLOP/s of
a large matmul timed in the same run (right before and after each step measurement, averaged),
on the same device, in the model's compute dtype (XLA's CPU matmul already uses every core: it
is the honest ceiling here).

  bench/.venv/bin/python -m bench.mfu                       # tiny, small, base; RM and LM
  bench/.venv/bin/python -m bench.mfu --presets tiny small --steps 5 --json /tmp/mfu.json

FLOPs per step are the objectives' own counts (PaLM appendix B: 6 x matmul params per token +
the attention term; the RM has no LM head and reads two sequences per pair), the numbers the
Trainer's `perf/mfu` uses. Batches are full-length random tokens; the optimizer is the stages'
default (Adafactor, clipping at 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile

from bench import common

# Shapes per preset: (batch, seq_len, vocab). tiny/small are the CPU-demo shapes with the data
# vocabulary; base is the ~110M class (32k vocab) at a short sequence so that a step stays a
# few seconds on 2 cores.
SHAPES = {"tiny": (32, 128, 1024), "small": (32, 128, 1024), "base": (2, 128, 32000),
          "large": (1, 128, 32000)}


@dataclasses.dataclass
class StepResult:
  preset: str
  kind: str
  num_params: int
  dtype: str
  batch_size: int
  seq_len: int
  step_s: float
  tokens_per_s: float
  model_flops_per_s: float
  matmul_flops_per_s: float
  mfu: float
  load: str


def measure_train_step(*, preset: str, kind: str, batch_size: int, seq_len: int,
                       vocab_size: int, steps: int, matmul_flops_per_s: float,
                       partitioner=None, model_overrides: dict | None = None) -> StepResult:
  """Median step time of our jitted train step (`Trainer.train_step`) for one preset.

  kind: "rm" (PreferenceObjective: pairs, Bradley-Terry) or "lm" (LanguageModelObjective).
  matmul_flops_per_s: the hardware reference, timed by the caller in the same run.
  """
  import jax
  import numpy as np
  from warm_jax.core.objectives import LanguageModelObjective, PreferenceObjective
  from warm_jax.core.optimizers import OptimizerConfig
  from warm_jax.core.trainer import Trainer, TrainerConfig

  config = common.preset_config(preset, vocab_size=vocab_size, **{
      "max_len": max(seq_len, common.preset_fields(preset)["max_len"]),
      **(model_overrides or {})})
  if kind == "rm":
    objective = PreferenceObjective(config)
    batch = common.random_pairs(num_pairs=batch_size, seq_len=seq_len, vocab_size=vocab_size)
  elif kind == "lm":
    objective = LanguageModelObjective(config)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, vocab_size, (batch_size, seq_len)).astype(np.int32)
    batch = {"tokens": tokens, "mask": np.ones_like(tokens), "loss_mask": np.ones_like(tokens)}
  else:
    raise ValueError(f"kind={kind!r}: use 'rm' or 'lm'")
  with tempfile.TemporaryDirectory() as model_dir:  # the step never writes there
    trainer = Trainer(objective=objective, optimizer=OptimizerConfig(),
                      partitioner=partitioner or common.single_device_partitioner(),
                      config=TrainerConfig(train_steps=steps + 1, batch_size=batch_size,
                                           peak_flops_per_device=matmul_flops_per_s),
                      model_dir=model_dir, seq_len=seq_len)
    state = trainer.init_state()
    sharded = trainer.shard_batch(batch)

    def step():
      nonlocal state
      state, metrics = trainer.train_step(state, sharded)
      jax.block_until_ready(metrics)

    timing = common.time_calls(step, repeats=steps, warmup=1)
  flops_per_step = objective.train_flops_per_example(seq_len) * batch_size
  tokens_per_step = objective.tokens_per_example(seq_len) * batch_size
  return StepResult(
      preset=preset, kind=kind, num_params=trainer.num_params, dtype=config.dtype,
      batch_size=batch_size, seq_len=seq_len, step_s=timing.median,
      tokens_per_s=tokens_per_step / timing.median,
      model_flops_per_s=flops_per_step / timing.median,
      matmul_flops_per_s=matmul_flops_per_s,
      mfu=flops_per_step / timing.median / matmul_flops_per_s, load=timing.load)


def matmul_reference(dtype: str, *, size: int = 2048, repeats: int = 3) -> float:
  """FLOP/s of a [size]^3 matmul in `dtype` on the first device (best of `repeats`)."""
  from warm_jax.core import flops
  return flops.measure_matmul_flops(size=size, dtype=dtype, repeats=repeats)


def run(*, presets, kinds=("rm", "lm"), steps: int = 3, matmul_size: int = 2048,
        shapes: dict | None = None) -> list[StepResult]:
  """Every (preset, kind) step against the matmul of its compute dtype. The matmul is timed
  right before and right after each step measurement and the two are averaged, so that the
  reference sees the same load as the step it divides (the host is shared)."""
  shapes = shapes or SHAPES
  results = []
  for preset in presets:
    batch, seq, vocab = shapes[preset]
    dtype = common.preset_config(preset, vocab_size=vocab).dtype
    for kind in kinds:
      before = matmul_reference(dtype, size=matmul_size)
      r = measure_train_step(preset=preset, kind=kind, batch_size=batch, seq_len=seq,
                             vocab_size=vocab, steps=steps, matmul_flops_per_s=before)
      reference = 0.5 * (before + matmul_reference(dtype, size=matmul_size))
      results.append(dataclasses.replace(r, matmul_flops_per_s=reference,
                                         mfu=r.model_flops_per_s / reference))
      print(f"  {preset} {kind}: {r.step_s:.3f} s/step, MFU {results[-1].mfu:.3f}",
            file=sys.stderr, flush=True)
  return results


def table(results: list[StepResult]) -> str:
  return common.markdown_table(
      ["preset", "step", "params", "dtype", "batch x seq", "s/step (median)", "tokens/s",
       "model GFLOP/s", "matmul GFLOP/s (same dtype, before/after)", "MFU", "load"],
      [[r.preset, r.kind.upper(), f"{r.num_params / 1e6:.2f}M", r.dtype,
        f"{r.batch_size} x {r.seq_len}" + (" pairs" if r.kind == "rm" else ""), r.step_s,
        r.tokens_per_s, r.model_flops_per_s / 1e9, r.matmul_flops_per_s / 1e9, r.mfu, r.load]
       for r in results])


def main(argv=None) -> None:
  common.configure_jax_for_benchmarks()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--presets", nargs="+", default=["tiny", "small", "base"],
                      choices=list(SHAPES))
  parser.add_argument("--kinds", nargs="+", default=["rm", "lm"], choices=["rm", "lm"])
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the compile")
  parser.add_argument("--json", help="also save the rows here")
  args = parser.parse_args(argv)
  print(common.header("MFU of the RM and LM train steps vs a same-run matmul"))
  results = run(presets=args.presets, kinds=args.kinds, steps=args.steps)
  print(table(results))
  common.write_json(args.json, [dataclasses.asdict(r) for r in results])


if __name__ == "__main__":
  main()
