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

The honest ceiling for narrow models: a 2048^3 matmul is the CPU's best case, but the tiny
(d_model 64) and small (128) presets multiply [tokens, 64] by [64, 64]-like operands, which no
BLAS runs at that rate. So each row also times **the step's own matmuls alone**: every
`dot_general` in the jitted train step's jaxpr (forward, backward, attention; found by walking
the jaxpr and its sub-jaxprs, `step_matmuls`), run at their own shapes and dtypes in one
compiled program of nothing else (`own_shape_rate`). Their FLOP/s is what this hardware gives
those shapes; `MFU (own shapes)` divides the model FLOP/s by it, and `matmul share` is the
dots-only time over the step time (the rest: softmax, norms, elementwise, the optimizer, the
step's dispatch). The step's time is also split into its forward, forward + backward and
optimizer update, each timed as its own jitted program (`StepBreakdown`).

The same matmuls are also timed as torch einsums in the same process (`torch_shape_rate`,
where torch is installed, as in bench/.venv): the BLAS behind TRL's `RewardTrainer` on the
shapes our step multiplies, so a gap to TRL can be split into the kernels and the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import string
import sys
import tempfile
from typing import Any, Callable

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
  own_shape_flops_per_s: float | None = None  # the step's dot_generals alone, at their shapes
  mfu_own_shapes: float | None = None
  matmul_share: float | None = None  # dots-only seconds / step seconds
  breakdown: "StepBreakdown | None" = None
  # The same dot_generals in torch (what TRL's step multiplies with), None without torch.
  torch_own_shape_flops_per_s: float | None = None


@dataclasses.dataclass
class StepBreakdown:
  """Median seconds of the step's parts, each its own jitted program on the same batch."""

  forward_s: float  # the loss alone
  grads_s: float  # forward + backward (the summed gradient)
  optimizer_s: float  # the optimizer update and the step's metrics, given the gradients
  dots_s: float  # the step's dot_generals alone, at their own shapes
  dots_flops: float  # their FLOPs (the jaxpr's count, beside the objective's analytic one)
  torch_dots_s: float | None = None  # the same dots as torch einsums (None: torch missing)


@dataclasses.dataclass(frozen=True)
class Matmul:
  """One dot_general of a traced program: operand shapes and dtypes, dimension numbers."""

  lhs_shape: tuple[int, ...]
  rhs_shape: tuple[int, ...]
  lhs_dtype: str
  rhs_dtype: str
  dimension_numbers: Any
  preferred_element_type: Any

  @property
  def flops(self) -> float:
    """2 x batch x contracted x free(lhs) x free(rhs): multiply-adds counted as two FLOPs."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = self.dimension_numbers
    def free(shape, *used):
      return math.prod(d for i, d in enumerate(shape) if not any(i in u for u in used))
    return (2.0 * math.prod(self.lhs_shape[i] for i in lhs_contract)
            * math.prod(self.lhs_shape[i] for i in lhs_batch)
            * free(self.lhs_shape, lhs_contract, lhs_batch)
            * free(self.rhs_shape, rhs_contract, rhs_batch))

  def einsum(self) -> str:
    """The dot as an einsum equation, e.g. 'abc,adc->abd': dot_general's output order
    (batch dims, then the lhs's free dims, then the rhs's)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = self.dimension_numbers
    letters = iter(string.ascii_letters)
    lhs, rhs = [""] * len(self.lhs_shape), [""] * len(self.rhs_shape)
    for i, j in (*zip(lhs_batch, rhs_batch), *zip(lhs_contract, rhs_contract)):
      lhs[i] = rhs[j] = next(letters)
    lhs = [c or next(letters) for c in lhs]
    rhs = [c or next(letters) for c in rhs]
    out = ([lhs[i] for i in lhs_batch]
           + [c for i, c in enumerate(lhs) if i not in (*lhs_contract, *lhs_batch)]
           + [c for j, c in enumerate(rhs) if j not in (*rhs_contract, *rhs_batch)])
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def step_matmuls(fn: Callable[..., Any], *args: Any) -> list[Matmul]:
  """Every dot_general `fn(*args)` executes, from its jaxpr (sub-jaxprs of jit, grad, remat,
  scan and cond included). A scan's body is listed once per trip, a cond's branches are all
  listed: the steps measured here have neither (one microbatch)."""
  import jax
  from jax.extend import core as jax_core

  found: list[Matmul] = []

  def walk(jaxpr, trips: int = 1) -> None:
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        lhs, rhs = (v.aval for v in eqn.invars)
        found.extend([Matmul(tuple(lhs.shape), tuple(rhs.shape), str(lhs.dtype), str(rhs.dtype),
                             eqn.params["dimension_numbers"],
                             eqn.params.get("preferred_element_type"))] * trips)
      inner = trips * (eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (list, tuple)) else (value,):
          if isinstance(sub, jax_core.ClosedJaxpr):
            walk(sub.jaxpr, inner)
          elif isinstance(sub, jax_core.Jaxpr):
            walk(sub, inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return found


def own_shape_rate(matmuls: list[Matmul], *, repeats: int = 5) -> tuple[float, float]:
  """(FLOP/s, median seconds) of one jitted program that runs exactly `matmuls` (random
  operands of their shapes and dtypes, every product returned so none is elided)."""
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  operands = [(jax.numpy.asarray(rng.standard_normal(m.lhs_shape), m.lhs_dtype),
               jax.numpy.asarray(rng.standard_normal(m.rhs_shape), m.rhs_dtype))
              for m in matmuls]

  @jax.jit
  def run(operands):
    return [jax.lax.dot_general(a, b, m.dimension_numbers,
                                preferred_element_type=m.preferred_element_type)
            for (a, b), m in zip(operands, matmuls)]

  timing = common.time_calls(lambda: jax.block_until_ready(run(operands)), repeats=repeats)
  return sum(m.flops for m in matmuls) / timing.median, timing.median


def torch_shape_rate(matmuls: list[Matmul], *, repeats: int = 5,
                     threads: int | None = None) -> tuple[float, float] | None:
  """(FLOP/s, median seconds) of the same matmuls as torch einsums (float32 operands, no
  autograd), or None where torch is not installed: what the BLAS behind TRL's step gives the
  shapes our step multiplies, timed in the same process as `own_shape_rate`."""
  try:
    import torch
  except ImportError:
    return None
  import numpy as np

  if threads:
    torch.set_num_threads(threads)
  rng = np.random.default_rng(0)
  operands = [(m.einsum(), torch.from_numpy(rng.standard_normal(m.lhs_shape, np.float32)),
               torch.from_numpy(rng.standard_normal(m.rhs_shape, np.float32)))
              for m in matmuls]

  def run():
    with torch.no_grad():
      return [torch.einsum(equation, a, b) for equation, a, b in operands]

  timing = common.time_calls(run, repeats=repeats)
  return sum(m.flops for m in matmuls) / timing.median, timing.median


def measure_train_step(*, preset: str, kind: str, batch_size: int, seq_len: int,
                       vocab_size: int, steps: int, matmul_flops_per_s: float,
                       partitioner=None, model_overrides: dict | None = None,
                       own_shapes: bool = True) -> StepResult:
  """Median step time of our jitted train step (`Trainer.train_step`) for one preset.

  kind: "rm" (PreferenceObjective: pairs, Bradley-Terry) or "lm" (LanguageModelObjective).
  matmul_flops_per_s: the hardware reference, timed by the caller in the same run.
  own_shapes: also time the step's parts (`StepBreakdown`) and its matmuls alone at their own
  shapes (the ceiling `mfu_own_shapes` divides by).
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
    breakdown = (step_breakdown(trainer, state, sharded, repeats=steps) if own_shapes
                 else None)
  flops_per_step = objective.train_flops_per_example(seq_len) * batch_size
  tokens_per_step = objective.tokens_per_example(seq_len) * batch_size
  model_flops_per_s = flops_per_step / timing.median
  result = StepResult(
      preset=preset, kind=kind, num_params=trainer.num_params, dtype=config.dtype,
      batch_size=batch_size, seq_len=seq_len, step_s=timing.median,
      tokens_per_s=tokens_per_step / timing.median, model_flops_per_s=model_flops_per_s,
      matmul_flops_per_s=matmul_flops_per_s,
      mfu=model_flops_per_s / matmul_flops_per_s, load=timing.load)
  if breakdown is not None:
    own_rate = breakdown.dots_flops / breakdown.dots_s
    result = dataclasses.replace(
        result, own_shape_flops_per_s=own_rate, mfu_own_shapes=model_flops_per_s / own_rate,
        matmul_share=breakdown.dots_s / timing.median, breakdown=breakdown,
        torch_own_shape_flops_per_s=(None if breakdown.torch_dots_s is None
                                     else breakdown.dots_flops / breakdown.torch_dots_s))
  return result


def step_breakdown(trainer, state, batch, *, repeats: int) -> StepBreakdown:
  """The step's parts: the loss, its gradient and the optimizer update each jitted alone on
  the same state and batch (what `Trainer._train_step_fn` chains), and the step's dot_generals
  alone (`step_matmuls`, `own_shape_rate`; their FLOP/s is dots_flops / dots_s)."""
  import jax
  from warm_jax.core.trainer import optimizer_step

  key = jax.random.key(0)
  objective = trainer.objective
  forward = jax.jit(lambda params, b: objective.loss(params, b, None)[0])
  grads = jax.jit(trainer._grads)
  g, sums = grads(state.params, batch, key)
  update = jax.jit(lambda st, g, s: optimizer_step(st, g, s, tx=trainer.tx,
                                                   schedule=trainer.schedule))

  def timed(fn) -> float:
    return common.time_calls(lambda: jax.block_until_ready(fn()), repeats=repeats).median

  matmuls = step_matmuls(trainer._train_step_fn, state, batch)
  _, dots_s = own_shape_rate(matmuls, repeats=repeats)
  # torch on as many threads as this process may use (XLA's CPU client uses them all).
  in_torch = torch_shape_rate(matmuls, repeats=repeats, threads=len(os.sched_getaffinity(0)))
  return StepBreakdown(
      forward_s=timed(lambda: forward(state.params, batch)),
      grads_s=timed(lambda: grads(state.params, batch, key)),
      optimizer_s=timed(lambda: update(state, g, sums)), dots_s=dots_s,
      dots_flops=sum(m.flops for m in matmuls),
      torch_dots_s=None if in_torch is None else in_torch[1])


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
  def opt(x, scale=1.0):
    return "-" if x is None else x / scale
  return common.markdown_table(
      ["preset", "step", "params", "dtype", "batch x seq", "s/step (median)", "tokens/s",
       "model GFLOP/s", "matmul GFLOP/s (same dtype, before/after)", "MFU",
       "own-shape matmul GFLOP/s", "MFU (own shapes)", "matmul share",
       "same matmuls in torch GFLOP/s", "load"],
      [[r.preset, r.kind.upper(), f"{r.num_params / 1e6:.2f}M", r.dtype,
        f"{r.batch_size} x {r.seq_len}" + (" pairs" if r.kind == "rm" else ""), r.step_s,
        r.tokens_per_s, r.model_flops_per_s / 1e9, r.matmul_flops_per_s / 1e9, r.mfu,
        opt(r.own_shape_flops_per_s, 1e9), opt(r.mfu_own_shapes), opt(r.matmul_share),
        opt(r.torch_own_shape_flops_per_s, 1e9), r.load]
       for r in results])


def breakdown_table(results: list[StepResult]) -> str:
  """Where a step's time goes: its parts, each timed alone (ms, and share of the step)."""
  rows = []
  for r in results:
    b = r.breakdown
    if b is None:
      continue
    def cell(seconds):
      return f"{seconds * 1e3:.1f} ({seconds / r.step_s:.0%})"
    rows.append([r.preset, r.kind.upper(), f"{r.step_s * 1e3:.1f}", cell(b.forward_s),
                 cell(b.grads_s - b.forward_s), cell(b.optimizer_s), cell(b.dots_s), r.load])
  return common.markdown_table(
      ["preset", "step", "step ms", "forward ms (share)", "backward ms (grads - forward)",
       "optimizer ms", "matmuls alone ms", "load"], rows)


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
  print()
  print(breakdown_table(results))
  common.write_json(args.json, [dataclasses.asdict(r) for r in results])


if __name__ == "__main__":
  main()
