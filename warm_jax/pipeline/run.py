"""`run_experiment`: one experiment from its preset to metrics.json and report.md.

Where it sits: the top of the pipeline library; `python -m warm_jax.experiment` (the command
line) runs it through gin.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from collections.abc import Mapping
from typing import Any


from warm_jax.pipeline.plan import ExperimentPlan
from warm_jax.pipeline.presets import ExperimentScale
from warm_jax.pipeline.scheduler import (experiment_wall_seconds, run_stages, stage_environment,
                                         stage_profile, write_commands)


def run_experiment(*, output_dir: str | None, scale: str = "default",
                   scales: Mapping[str, Mapping[str, Any]], seed: int = 0,
                   world_seed: int | None = None,
                   in_process: bool = False, parallel_stages: int = 1,
                   tldr_manual_dir: str | None = None,
                   overrides: Mapping[str, Any] | None = None,
                   dry_run: bool = False) -> dict[str, Any] | ExperimentPlan:
  """Runs (or resumes) every stage, then writes metrics.json, report.md and plots/.

  seed: the training seed (SEED: inits, data orders, the member sweep, sampling).
  world_seed: the synthetic world's seed (WORLD_SEED: posts, generator pairs, label draws);
    None keeps the data gin's (0).
  in_process: run the stages in this process instead of one subprocess each (see
    `run_stages`); the tiny smoke scale does, to fit its budget.
  parallel_stages: run up to this many independent stages at once (subprocess mode; see
    `run_stages` and `stage_dependencies`); the embedded default uses 2 on 2 cores.
  overrides: ExperimentScale fields replacing the preset's (the ablations in
    gin/experiments/ablations/ set these, so they compose with any SCALE).
  dry_run: print the stages and their commands and return the plan; nothing is run or written.
  """
  from warm_jax.pipeline import report
  if not output_dir:
    raise ValueError("--output_dir is required")
  if int(parallel_stages) < 1:
    raise ValueError(f"PARALLEL_STAGES={parallel_stages}: must be >= 1")
  if scale not in scales:
    raise ValueError(f"SCALE={scale!r} is not one of the presets {sorted(scales)}")
  fields = {**scales[scale], **dict(overrides or {})}
  unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(ExperimentScale)})
  if unknown:
    raise ValueError(f"unknown experiment scale field(s) {unknown} in SCALE={scale!r} or "
                     f"OVERRIDES; the fields are those of warm_jax.pipeline.ExperimentScale")
  preset = ExperimentScale(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in fields.items()})
  plan = ExperimentPlan(output_dir=output_dir, scale=preset, seed=seed, world_seed=world_seed,
                        tldr_manual_dir=tldr_manual_dir)
  stages = plan.stages()
  if dry_run:
    print(f"# {len(stages)} stages of SCALE={scale!r} into {plan.out}")
    for stage in stages:
      print(f"# {stage.name}")
      print(" ".join(shlex.quote(a) for a in ["python", *stage.argv[1:]]) if stage.resolved
            else "#   (arguments from earlier stages: resolved when it starts)")
    return plan
  os.makedirs(plan.out, exist_ok=True)
  write_commands(stages, plan.path("commands.sh"))
  records = run_stages(stages, log_dir=plan.path("logs"),
                       env=stage_environment(plan.path("cache", "jax")),
                       on_resolve=lambda: write_commands(stages, plan.path("commands.sh")),
                       in_process=in_process, parallel=parallel_stages)
  timings = {stage.name: records[stage.name]["wall_s"] for stage in stages}
  timings["stages_sum"] = round(sum(timings.values()), 2)
  # the experiment's wall time: stages that overlapped count once (experiment_wall_seconds)
  timings["total"] = experiment_wall_seconds(records)
  metrics = report.collect_metrics(plan, timings=timings, scale_name=scale)
  metrics["seed"], metrics["world_seed"] = seed, world_seed
  metrics["cpu_s"] = {stage.name: records[stage.name]["cpu_s"] for stage in stages
                      if records[stage.name].get("cpu_s") is not None}
  metrics["cpu_s"]["total"] = round(sum(metrics["cpu_s"].values()), 2)
  # the profile: model FLOPs per stage and MFU over its wall time (`stage_profile`)
  metrics.update(stage_profile(records, [stage.name for stage in stages], timings["total"]))
  metrics["parallel_stages"] = 1 if in_process else parallel_stages
  metrics["load_average"] = list(os.getloadavg())
  report.write_report(plan.out, metrics)
  print(f"[experiment] done: {plan.path('report.md')}", file=sys.stderr, flush=True)
  return metrics
