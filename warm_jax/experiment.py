"""`python -m warm_jax.experiment`: the whole paper pipeline as resumable stages.

  python -m warm_jax.experiment --gin_file=gin/experiments/warm_synthetic_tldr.gin \
      --output_dir=runs/demo [--gin.SCALE="'tiny'"] [--gin.NAME=VALUE ...] [--dry_run]

--dry_run prints the stages and their commands without running or writing anything.
gin/experiments/ holds the embedded default, its tiny smoke variant, the real-data TL;DR
experiment (warm_tldr_real.gin) and the ablations (ablations/*.gin, which set OVERRIDES).

Where it sits: on top of everything. Each stage is one of the gin-configured programs of the
codebase (`python -m warm_jax.data.build`, `warm_jax.train` with a stage gin file,
`warm_jax.evaluate`, ...), run as a subprocess with the stage's gin files and a few overrides,
writing its own dir under OUTPUT. A stage whose dir holds the driver's `STAGE_DONE` marker is
skipped on a rerun; an interrupted one is rerun and resumes from its own checkpoints. The exact
command of every stage is recorded in OUTPUT/commands.sh, so any stage can be rerun by hand.

Stages (the embedded default; the scale preset picks sizes and steps):
  data/clean               the synthetic world: posts, pre-training corpus, SFT examples,
                           generator pairs, best-of-N / RL prompts
  pretrain, sft            LM pre-training, SFT keeping the Baklava checkpoints
  rm_pretrain, rm_sft      the reward models' own start (rm_pretrain_steps; None: the RMs
                           start from `sft`, the paper's setup): a second LM pre-trained
                           longer, then the same SFT
  rm_data                  the RMs' data: comparisons of the SFT checkpoints' own samples
                           (`warm_jax.policy.on_policy`), labels clean and 25% corrupted
                           (rm_data/{clean,corrupt}); held-out id_policy (the final SFT policy
                           at T=0.9) and ood_policy (other policies, high temperatures)
  probe/{clean,corrupt}    the shared linear-probed head
  members/{clean,corrupt}  M diverse RMs (lr x dropout x data order x Baklava SFT step)
  pairs/*                  the LMC diversity pairs (one hyper-parameter changed) and two
                           from-scratch RMs (Remark 1)
  eval/{clean,corrupt}     accuracy tables, LMC curves, accuracy vs M, WA-ENS histograms
  average/warm_<M>         WARM M: the M best clean members (ranked on ID val by eval/clean)
                           averaged into one plain orbax checkpoint (`warm_jax.average`)
  bon                      best-of-N from the SFT policy, selected by every member, WARM M and
                           ENS M, judged by the oracle
  rl/<reward>              REINFORCE (the default: leave-one-out baseline) + KL against each
                           reward in `rl_rewards` (best single member, ENS M, WARM M); each eval
                           also logs the members' disagreement (`rl_disagreement_members`)
  win_rates                oracle win rates between the RL policies at their best steps
Then OUTPUT/metrics.json, OUTPUT/report.md and OUTPUT/plots/ (`warm_jax.pipeline.report`).

Stages after eval/clean take arguments known only then (the member ranking, the RL runs' best
steps): their commands are resolved when they start and added to commands.sh. Every stage
shares one persistent XLA compile cache (OUTPUT/cache/jax) and one timed matmul for MFU, and
writes the model FLOPs its programs ran to its STAGE_FLOPS.json (`warm_jax.core.flops`): the
report's per-stage profile (wall, CPU, FLOPs, MFU; `stage_profile`).

This module is the command line; the driver itself is `warm_jax.pipeline` (presets, plan,
scheduler, run), whose names are importable from here as they always were.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from warm_jax.cli_errors import print_error
# The library (`warm_jax.pipeline`), its names importable from here as they always were.
from warm_jax.pipeline import (DIVERSITY_SOURCES, ENSEMBLE_KINDS, RL_TEMPERATURE,  # noqa: F401
                               SETTINGS, STAGE_DONE, UWO_LAMBDA, ExperimentPlan, ExperimentScale,
                               Stage, StageFailed, experiment_wall_seconds, run_experiment,
                               run_stages, stage_dependencies, stage_environment,
                               stage_flops_path, stage_profile, write_commands)


def main(argv: Sequence[str] | None = None) -> int:
  from warm_jax.gin_utils import gin_main
  logging.getLogger().setLevel("INFO")
  try:
    return gin_main(argv, entry="run_experiment", doc=__doc__,
                    example="--gin_file=gin/experiments/warm_synthetic_tldr.gin "
                            "--output_dir=runs/demo",
                    flags={"--output_dir": "OUTPUT_DIR = {value!r}",
                           "--dry_run": "run_experiment.dry_run = True"})
  except StageFailed as e:  # one class: the library lives in warm_jax.pipeline, imported once
    print_error(str(e).splitlines()[0])
    return 1


if __name__ == "__main__":
  sys.exit(main())
