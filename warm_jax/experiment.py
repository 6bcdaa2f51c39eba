"""`python -m warm_jax.experiment`: the whole paper pipeline as resumable stages.

  python -m warm_jax.experiment --gin_file=gin/experiments/warm_synthetic_tldr.gin \
      --output_dir=runs/demo [--gin.SCALE="'tiny'"] [--gin.NAME=VALUE ...]

Where it sits: on top of everything. Each stage is one of the gin-configured programs of the
codebase (`python -m warm_jax.data.build`, `warm_jax.train` with a stage gin file,
`warm_jax.evaluate`, ...), run as a subprocess with the stage's gin files and a few overrides,
writing its own dir under OUTPUT. A stage whose dir holds the driver's `STAGE_DONE` marker is
skipped on a rerun; an interrupted one is rerun and resumes from its own checkpoints. The exact
command of every stage is recorded in OUTPUT/commands.sh, so any stage can be rerun by hand.

Stages (the embedded default; the scale preset picks sizes and steps):
  data/{clean,corrupt}     the synthetic world, labels clean and 25% corrupted
  pretrain, sft            LM pre-training, SFT keeping the Baklava checkpoints
  probe/{clean,corrupt}    the shared linear-probed head
  members/{clean,corrupt}  M diverse RMs (lr x dropout x data order x Baklava SFT step)
  pairs/*                  the LMC diversity pairs (one hyper-parameter changed) and two
                           from-scratch RMs (Remark 1)
  eval/{clean,corrupt}     accuracy tables, LMC curves, accuracy vs M, WA-ENS histograms
Then OUTPUT/metrics.json, OUTPUT/report.md and OUTPUT/plots/ (`warm_jax.report`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from warm_jax.checkpoints import atomic_write_text

STAGE_DONE = "STAGE_DONE"
SETTINGS = ("clean", "corrupt")


@dataclasses.dataclass(frozen=True)
class ExperimentScale:
  """Sizes and steps of one scale of the experiment (gin: `run_experiment.scales`)."""

  model_gin: str
  data_gin: str
  pretrain_steps: int
  pretrain_batch: int
  sft_steps: int
  sft_batch: int
  baklava_steps: tuple[int, ...]
  rm_steps: int
  rm_batch: int
  num_members: int
  learning_rates: tuple[float, ...]
  dropout_rates: tuple[float, ...]
  warm_ms: tuple[int, ...]
  scratch_rm_steps: int
  corruption_rate: float = 0.25
  vmapped_members: bool = True
  eval_batch: int = 64
  extra_data_bindings: tuple[str, ...] = ()

  def __post_init__(self):
    for name in ("pretrain_steps", "sft_steps", "rm_steps", "num_members", "scratch_rm_steps"):
      if getattr(self, name) <= 0:
        raise ValueError(f"ExperimentScale.{name}={getattr(self, name)}: must be positive")
    if any(s > self.sft_steps or s <= 0 for s in self.baklava_steps):
      raise ValueError(f"ExperimentScale.baklava_steps={self.baklava_steps}: each must be an "
                       f"SFT step in 1..{self.sft_steps}")
    if self.sft_steps not in self.baklava_steps:
      raise ValueError(f"ExperimentScale.baklava_steps={self.baklava_steps} must include the "
                       f"last SFT step {self.sft_steps} (the probe's backbone)")
    if len(self.learning_rates) < 2 or len(self.baklava_steps) < 2:
      raise ValueError("the LMC diversity pairs need >= 2 learning_rates and >= 2 "
                       "baklava_steps")
    if self.rm_steps % 2:
      raise ValueError(f"ExperimentScale.rm_steps={self.rm_steps}: must be even (the "
                       "'two checkpoints of one run' pair uses the half-way checkpoint)")


@dataclasses.dataclass
class Stage:
  name: str
  argv: list[str]
  output: str

  @property
  def done_path(self) -> str:
    return os.path.join(self.output, STAGE_DONE)


def _gin(name: str, value: Any) -> str:
  return f"--gin.{name}={value!r}" if isinstance(value, str) else f"--gin.{name}={value}"


def _py(module: str, *args: str) -> list[str]:
  return [sys.executable, "-m", module, *args]


class ExperimentPlan:
  """The stages of one experiment and where each writes."""

  def __init__(self, *, output_dir: str, scale: ExperimentScale, seed: int = 0):
    self.out, self.scale, self.seed = os.path.abspath(output_dir), scale, seed

  def path(self, *parts: str) -> str:
    return os.path.join(self.out, *parts)

  def data_dir(self, setting: str) -> str:
    return self.path("data", setting)

  def _train(self, stage_gin: str, *bindings: str) -> list[str]:
    return _py("warm_jax.train", f"--gin_file={self.scale.model_gin}",
               f"--gin_file={stage_gin}", *bindings)

  def _rm_common(self, setting: str) -> list[str]:
    s = self.scale
    return [_gin("DATA_DIR", self.data_dir(setting)), _gin("SFT_DIR", self.path("sft")),
            _gin("PROBE_DIR", self.path("probe", setting)), _gin("TRAIN_STEPS", s.rm_steps),
            _gin("BATCH_SIZE", s.rm_batch), _gin("SEED", self.seed),
            _gin("LEARNING_RATES", tuple(s.learning_rates)),
            _gin("DROPOUT_RATES", tuple(s.dropout_rates)),
            _gin("SFT_STEPS", tuple(s.baklava_steps)),
            _gin("TrainerConfig.save_every", s.rm_steps // 2)]

  def stages(self) -> list[Stage]:
    s, out = self.scale, []
    for setting in SETTINGS:
      rate = 0.0 if setting == "clean" else s.corruption_rate
      out.append(Stage(f"data/{setting}", _py(
          "warm_jax.data.build", f"--gin_file={s.data_gin}",
          f"--output_dir={self.data_dir(setting)}", _gin("CORRUPTION_RATE", rate),
          *s.extra_data_bindings), self.data_dir(setting)))
    out.append(Stage("pretrain", self._train(
        "gin/pretrain.gin", _gin("DATA_DIR", self.data_dir("clean")),
        _gin("MODEL_DIR", self.path("pretrain")), _gin("TRAIN_STEPS", s.pretrain_steps),
        _gin("BATCH_SIZE", s.pretrain_batch), _gin("SEED", self.seed)), self.path("pretrain")))
    sft_every = min(s.baklava_steps)
    out.append(Stage("sft", self._train(
        "gin/sft.gin", _gin("DATA_DIR", self.data_dir("clean")),
        _gin("PRETRAIN_DIR", self.path("pretrain")), _gin("MODEL_DIR", self.path("sft")),
        _gin("TRAIN_STEPS", s.sft_steps), _gin("BATCH_SIZE", s.sft_batch),
        _gin("SAVE_EVERY", sft_every), _gin("SEED", self.seed)), self.path("sft")))
    for setting in SETTINGS:
      out.append(Stage(f"probe/{setting}", self._train(
          "gin/linear_probe.gin", _gin("DATA_DIR", self.data_dir(setting)),
          _gin("SFT_DIR", self.path("sft")), _gin("MODEL_DIR", self.path("probe", setting))),
          self.path("probe", setting)))
    for setting in SETTINGS:
      members_dir = self.path("members", setting)
      if s.vmapped_members:
        out.append(Stage(f"members/{setting}", self._train(
            "gin/rm_members.gin", *self._rm_common(setting), _gin("MEMBERS_DIR", members_dir),
            _gin("NUM_MEMBERS", s.num_members)), members_dir))
      else:
        for i in range(s.num_members):
          out.append(Stage(f"members/{setting}/member_{i}", self._train(
              "gin/rm.gin", *self._rm_common(setting), _gin("MEMBERS_DIR", members_dir),
              _gin("MEMBER_INDEX", i)), os.path.join(members_dir, f"member_{i}")))
    out += self._pair_stages()
    for setting in SETTINGS:
      out.append(Stage(f"eval/{setting}", _py(
          "warm_jax.evaluate", f"--gin_file={s.model_gin}", "--gin_file=gin/evaluate.gin",
          _gin("DATA_DIR", self.data_dir(setting)),
          _gin("MEMBERS_DIR", self.path("members", setting)),
          _gin("OUTPUT_DIR", self.path("eval", setting)), _gin("WARM_MS", tuple(s.warm_ms)),
          _gin("BATCH_SIZE", s.eval_batch),
          f"--gin.LMC_PAIRS={self.lmc_pairs(setting)!r}"), self.path("eval", setting)))
    return out

  # -- LMC diversity pairs (fig. 3) and Remark 1 ---------------------------------------------
  def base_member(self):
    from warm_jax.members import MemberSweep, draw_member
    s = self.scale
    return draw_member(MemberSweep(learning_rates=s.learning_rates,
                                   dropout_rates=s.dropout_rates,
                                   sft_steps=s.baklava_steps, seed=self.seed), 0)

  def pair_variants(self) -> dict[str, dict[str, Any]]:
    """Member 0 with exactly one hyper-parameter changed, per diversity level."""
    s, base = self.scale, self.base_member()
    other_lr = next(lr for lr in s.learning_rates if lr != base.learning_rate)
    other_step = next(st for st in s.baklava_steps if st != base.sft_step)
    return {"data_order": {"data_seed": base.data_seed + 1},
            "learning_rate": {"learning_rate": other_lr},
            "baklava": {"sft_step": other_step}}

  def _pair_stages(self) -> list[Stage]:
    stages = []
    for name, overrides in self.pair_variants().items():
      out = self.path("pairs", name)
      stages.append(Stage(f"pairs/{name}", self._train(
          "gin/rm.gin", *self._rm_common("clean"), _gin("MEMBERS_DIR", self.path("pairs")),
          _gin("MEMBER_DIR", out), f"--gin.MEMBER_OVERRIDES={overrides!r}"), out))
    base = self.base_member()
    for name, seed_shift in (("scratch_a", 0), ("scratch_b", 1)):
      out = self.path("pairs", name)
      stages.append(Stage(f"pairs/{name}", self._train(
          "gin/rm.gin", *self._rm_common("clean"), _gin("MEMBERS_DIR", self.path("pairs")),
          _gin("MEMBER_DIR", out), _gin("FROM_SCRATCH", True),
          _gin("TRAIN_STEPS", self.scale.scratch_rm_steps),
          _gin("TrainerConfig.save_every", self.scale.scratch_rm_steps),
          f"--gin.MEMBER_OVERRIDES={ {'data_seed': base.data_seed + 100 + seed_shift}!r}"),
          out))
    return stages

  def lmc_pairs(self, setting: str) -> dict[str, tuple[str, str]]:
    member0 = self.path("members", setting, "member_0")
    if setting == "corrupt":
      return {"two_members": (member0, self.path("members", setting, "member_1"))}
    half = os.path.join(member0, "checkpoints", str(self.scale.rm_steps // 2))
    pairs = {"checkpoints_of_one_run": (half, member0)}
    for name in ("data_order", "learning_rate", "baklava"):
      pairs[f"two_{name}s" if name != "baklava" else "two_baklava_inits"] = (
          member0, self.path("pairs", name))
    pairs["from_scratch"] = (self.path("pairs", "scratch_a"), self.path("pairs", "scratch_b"))
    return pairs


def run_stages(stages: Sequence[Stage], *, log_dir: str) -> dict[str, float]:
  """Runs the stages in order, skipping finished ones; returns wall time per stage."""
  os.makedirs(log_dir, exist_ok=True)
  timings = {}
  t_start = time.time()
  for k, stage in enumerate(stages, 1):
    prefix = f"[experiment] stage {k}/{len(stages)} {stage.name}"
    if os.path.exists(stage.done_path):
      with open(stage.done_path) as f:
        timings[stage.name] = json.load(f)["wall_s"]
      print(f"{prefix}: done already ({timings[stage.name]:.0f}s), skipped", file=sys.stderr,
            flush=True)
      continue
    elapsed = time.time() - t_start
    print(f"{prefix}: running ({elapsed:.0f}s into the experiment)", file=sys.stderr,
          flush=True)
    log_path = os.path.join(log_dir, stage.name.replace("/", "_") + ".log")
    t0 = time.time()
    with open(log_path, "w") as log:
      proc = subprocess.Popen(stage.argv, stdout=log, stderr=subprocess.PIPE, text=True,
                              cwd=_repo_root())
      for line in proc.stderr:  # child progress lines are shown, everything is logged
        log.write(line)
        if line.startswith("[") or line.startswith("error"):
          print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
      proc.wait()
    if proc.returncode != 0:
      raise RuntimeError(f"stage {stage.name} failed (exit {proc.returncode}); its log is "
                         f"{log_path}; rerun the experiment to resume from this stage")
    timings[stage.name] = round(time.time() - t0, 2)
    os.makedirs(stage.output, exist_ok=True)
    atomic_write_text(stage.done_path, json.dumps({"wall_s": timings[stage.name]}) + "\n")
  return timings


def _repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_commands(stages: Sequence[Stage], path: str) -> None:
  lines = ["#!/usr/bin/env bash", "# The stages of this experiment, in order (run from the "
           "repository root).", "set -euo pipefail"]
  for stage in stages:
    lines.append(f"# {stage.name}")
    lines.append(" ".join(shlex.quote(a) for a in ["python", *stage.argv[1:]]))
  atomic_write_text(path, "\n".join(lines) + "\n")


def run_experiment(*, output_dir: str | None, scale: str = "default",
                   scales: Mapping[str, Mapping[str, Any]], seed: int = 0) -> dict[str, Any]:
  """Runs (or resumes) every stage, then writes metrics.json, report.md and plots/."""
  from warm_jax import report
  if not output_dir:
    raise ValueError("--output_dir is required")
  if scale not in scales:
    raise ValueError(f"SCALE={scale!r} is not one of the presets {sorted(scales)}")
  preset = ExperimentScale(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in scales[scale].items()})
  plan = ExperimentPlan(output_dir=output_dir, scale=preset, seed=seed)
  stages = plan.stages()
  os.makedirs(plan.out, exist_ok=True)
  write_commands(stages, plan.path("commands.sh"))
  t0 = time.time()
  timings = run_stages(stages, log_dir=plan.path("logs"))
  timings["total"] = round(time.time() - t0, 2)
  metrics = report.collect_metrics(plan, timings=timings, scale_name=scale)
  report.write_report(plan.out, metrics)
  print(f"[experiment] done: {plan.path('report.md')}", file=sys.stderr, flush=True)
  return metrics


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import gin_main
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, output = [], None
  for arg in argv:
    if arg.startswith("--output_dir="):
      output = arg.split("=", 1)[1]
    else:
      rest.append(arg)
  if output is not None:
    rest.append(f"--gin.OUTPUT_DIR={output!r}")
  logging.getLogger().setLevel("INFO")
  return gin_main(rest, entry="run_experiment", doc=__doc__,
                  example="--gin_file=gin/experiments/warm_synthetic_tldr.gin "
                          "--output_dir=runs/demo")


if __name__ == "__main__":
  sys.exit(main())
