"""The experiment driver as a library: the whole paper pipeline as resumable stages.

`python -m warm_jax.experiment` (the command line; its docstring lists the stages) runs
`run_experiment` through gin. The pieces, in the order a run uses them:
  presets    `ExperimentScale`: sizes, steps and recipe choices (gin/experiments/*.gin)
  plan       `ExperimentPlan`: the stages (program, gin files, overrides, dir) and their
             dependencies (`stage_dependencies`)
  scheduler  `run_stages`: skip the finished, run the rest (subprocesses, or in this process;
             up to N independent stages at once), record wall, CPU and model FLOPs per stage;
             `write_commands` (OUTPUT/commands.sh), `stage_profile`
  run        `run_experiment`: preset -> plan -> stages -> metrics.json, report.md, plots/
"""

from warm_jax.pipeline.plan import ExperimentPlan, Stage, stage_dependencies
from warm_jax.pipeline.presets import (DIVERSITY_SOURCES, ENSEMBLE_KINDS, RL_TEMPERATURE,
                                       SETTINGS, STAGE_DONE, UWO_LAMBDA, ExperimentScale,
                                       StageFailed)
from warm_jax.pipeline.run import run_experiment
from warm_jax.pipeline.scheduler import (experiment_wall_seconds, run_stages, stage_environment,
                                         stage_flops_path, stage_profile, write_commands)

__all__ = ["DIVERSITY_SOURCES", "ENSEMBLE_KINDS", "RL_TEMPERATURE", "SETTINGS", "STAGE_DONE",
           "UWO_LAMBDA", "ExperimentPlan", "ExperimentScale", "Stage", "StageFailed",
           "experiment_wall_seconds", "run_experiment", "run_stages", "stage_dependencies",
           "stage_environment", "stage_flops_path", "stage_profile", "write_commands"]
