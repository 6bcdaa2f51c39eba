"""Benchmark 3: M reward-model members in one vmapped program vs M sequential runs.

Where it sits: the member sweep runs either as one job per member (`gin/rm.gin`,
`members.train_reward_model`) or as one program with a leading member axis
(`gin/rm_members.gin`, `warm_jax.rm.vmapped_members`). Both do the same arithmetic (tested in
tests/test_vmapped_members.py); this measures what each costs on the same device, for
M = 2, 6, 10:

  sequential  one `Trainer` step program; member 1 runs its S steps, then member 2, ... (what
              M jobs on one device do, minus their process starts and M - 1 extra compiles)
  vmapped     `VmappedMembersTrainer`: S steps of the program that steps all M members at once

Both sides run each step as their training loop does: the host batches sharded onto the
device (each member its own rows), the jitted step (state donated), the metrics read back.
Member throughput = M x S member-steps / seconds, compile excluded (reported apart). The
optimizer is the stages' Adafactor; members differ in learning rate and dropout rate (traced
in the vmapped program; the sequential side uses one rate, which costs the same).

  bench/.venv/bin/python -m bench.vmapped_members                  # tiny (batch 8), small (32)
  bench/.venv/bin/python -m bench.vmapped_members --presets small --members 2 6 10 --steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np

from bench import common

# (batch per member, seq_len): the experiment driver's tiny and default RM scales.
SHAPES = {"tiny": (8, 128), "small": (32, 128), "base": (2, 128)}
LEARNING_RATES = (1e-4, 4e-4, 1e-3)  # gin/rm.gin's grid
DROPOUT_RATES = (0.05, 0.1)


@dataclasses.dataclass
class MembersResult:
  preset: str
  num_members: int
  batch_size: int
  seq_len: int
  steps: int
  sequential_s: float
  vmapped_s: float
  sequential_compile_s: float
  vmapped_compile_s: float
  load: str

  @property
  def sequential_member_steps_per_s(self) -> float:
    return self.num_members * self.steps / self.sequential_s

  @property
  def vmapped_member_steps_per_s(self) -> float:
    return self.num_members * self.steps / self.vmapped_s

  @property
  def speedup(self) -> float:
    return self.sequential_s / self.vmapped_s


def _member_rows(member: int, step: int, batch_size: int, num_pairs: int) -> np.ndarray:
  """Member m's rows at step s: its own data order."""
  return np.random.default_rng([member, step]).choice(num_pairs, batch_size, replace=False)


def measure(*, preset: str, num_members: int, batch_size: int, seq_len: int, steps: int,
            partitioner=None, vocab_size: int = common.VOCAB_SIZE,
            model_overrides: dict | None = None) -> MembersResult:
  """Sequential and vmapped wall time of `steps` steps of `num_members` members
  (model_overrides: TransformerConfig fields replacing the preset's, e.g. for a smoke run)."""
  import jax
  from warm_jax.models import RewardModel
  from warm_jax.core.objectives import PreferenceObjective
  from warm_jax.core.optimizers import OptimizerConfig
  from warm_jax.rm.scoring import unboxed_init
  from warm_jax.core.trainer import Trainer, TrainerConfig
  from warm_jax.rm.vmapped_members import VmappedMembersTrainer

  m = num_members
  config = common.preset_config(preset, vocab_size=vocab_size, **{
      "dropout_rate": DROPOUT_RATES[-1], **(model_overrides or {})})
  pairs = common.random_pairs(num_pairs=max(4 * batch_size, 64), seq_len=seq_len,
                              vocab_size=vocab_size)
  n = len(pairs["chosen_tokens"])
  host = lambda member, step: {k: v[_member_rows(member, step, batch_size, n)]
                               for k, v in pairs.items()}
  partitioner = partitioner or common.single_device_partitioner()
  trainer_config = TrainerConfig(train_steps=steps + 1, batch_size=batch_size)
  objective = PreferenceObjective(config)
  load_before = common.load_average()
  with tempfile.TemporaryDirectory() as tmp:  # nothing is written there
    # -- sequential: one member-level program, the members one after the other -------------
    seq = Trainer(objective=objective, optimizer=OptimizerConfig(learning_rate=4e-4),
                  partitioner=partitioner, config=trainer_config, model_dir=tmp,
                  seq_len=seq_len)
    init = unboxed_init(RewardModel(config))  # the same start for every member, both sides
    t0 = time.perf_counter()
    state, metrics = seq.train_step(seq.state_from_params(init), seq.shard_batch(host(0, 0)))
    jax.device_get(metrics)
    seq_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    for member in range(m):
      state = seq.state_from_params(init)
      for step in range(steps):
        state, metrics = seq.train_step(state, seq.shard_batch(host(member, step)))
        jax.device_get(metrics)
    sequential_s = time.perf_counter() - t0

    # -- vmapped: one program, every member per step ----------------------------------------
    vm = VmappedMembersTrainer(
        objective=objective, optimizer=OptimizerConfig(), partitioner=partitioner,
        config=trainer_config, member_dirs=[os.path.join(tmp, f"member_{i}") for i in range(m)],
        learning_rates=[LEARNING_RATES[i % len(LEARNING_RATES)] for i in range(m)],
        dropout_rates=[DROPOUT_RATES[i % len(DROPOUT_RATES)] for i in range(m)],
        seq_len=seq_len)
    t0 = time.perf_counter()
    state, metrics = vm.train_step(vm.state_from_params([init] * m),
                                   vm.stack_batches([host(i, 0) for i in range(m)]))
    jax.device_get(metrics)
    vm_compile = time.perf_counter() - t0
    state = vm.state_from_params([init] * m)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for step in range(steps):
      state, metrics = vm.train_step(state, vm.stack_batches([host(i, step) for i in range(m)]))
      jax.device_get(metrics)
    vmapped_s = time.perf_counter() - t0
  return MembersResult(preset=preset, num_members=m, batch_size=batch_size, seq_len=seq_len,
                       steps=steps, sequential_s=sequential_s, vmapped_s=vmapped_s,
                       sequential_compile_s=seq_compile, vmapped_compile_s=vm_compile,
                       load=f"{load_before:.1f}-{common.load_average():.1f}")


def table(results: list[MembersResult]) -> str:
  return common.markdown_table(
      ["preset", "M", "batch x len per member", "steps", "sequential s", "vmapped s",
       "sequential member-steps/s", "vmapped member-steps/s", "vmapped / sequential",
       "compile s (sequential program / vmapped)", "load"],
      [[r.preset, r.num_members, f"{r.batch_size} x 2 x {r.seq_len}", r.steps, r.sequential_s,
        r.vmapped_s, r.sequential_member_steps_per_s, r.vmapped_member_steps_per_s,
        f"**{r.speedup:.2f}x**", f"{r.sequential_compile_s:.1f} / {r.vmapped_compile_s:.1f}",
        r.load] for r in results])


def main(argv=None) -> None:
  common.configure_jax_for_benchmarks()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=list(SHAPES))
  parser.add_argument("--members", nargs="+", type=int, default=[2, 6, 10])
  parser.add_argument("--steps", type=int, default=3, help="timed steps per member")
  parser.add_argument("--json", help="also save the rows here")
  args = parser.parse_args(argv)
  print(common.header("M members: one vmapped program vs M sequential runs"))
  results = []
  for preset in args.presets:
    batch, seq = SHAPES[preset]
    for m in args.members:
      results.append(measure(preset=preset, num_members=m, batch_size=batch, seq_len=seq,
                             steps=args.steps))
      print(f"  {preset} M={m}: {results[-1].speedup:.2f}x", file=sys.stderr, flush=True)
  print(table(results))
  common.write_json(args.json, [dict(dataclasses.asdict(r), speedup=r.speedup)
                                for r in results])


if __name__ == "__main__":
  main()
