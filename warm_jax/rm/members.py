"""Diverse reward-model members: the hyper-parameter sweep and the one-member training stage.

Where it sits: after the linear probe. WARM fine-tunes M reward models from the shared SFT start
(+ probed head) "with different hyper-parameters as in a grid search" and different data
orders (docs/paper.md, "The method" step 2, App. B), then averages them (`warm_jax.merging`).

Member i's hyper-parameters are drawn deterministically from `MemberSweep`: each named
hyper-parameter from its own RNG stream seeded by (sweep seed, i, name), DiWA style, so adding a
new hyper-parameter to the sweep does not change the others' draws. The member's data order
comes from its own data seed; its init from the SFT checkpoint at its Baklava step.

Two ways to train the members, giving the same members for the same seeds:
- M independent jobs, one per member index (`train_reward_model`, bound by gin/rm.gin; a sweep
  on a pod launches one job per index),
- one program training all M at once with a leading member axis (`warm_jax.rm.vmapped_members`).
Each member dir gets `hparams.json` (written before training starts) and `DONE`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from warm_jax.core import checkpoints as ckpt_lib
from warm_jax.data.batching import ArrayDataset
from warm_jax.rm.linear_probe import ProbedRewardModelInit
from warm_jax.models import TransformerConfig
from warm_jax.core.objectives import PreferenceObjective
from warm_jax.core.optimizers import OptimizerConfig
from warm_jax.core.partitioning import Partitioner
from warm_jax.core.trainer import TrainerConfig
from warm_jax.core.training_stage import train

HPARAMS_FILE = "hparams.json"


@dataclasses.dataclass(frozen=True)
class MemberSweep:
  """The grid the members' hyper-parameters are drawn from.

  Attributes:
    learning_rates: pool of peak learning rates (paper: {1e-5, 4e-5, 1e-4} for PaLM-XXS with
      batch 128; rescale for small models, see gin/rm.gin).
    dropout_rates: pool of dropout rates (paper: {0.05, 0.1}).
    sft_steps: pool of SFT checkpoint steps to start from (Baklava); None = the latest.
    seed: sweep seed; member i draws from streams seeded by (seed, i, name).
    vary_data_order: False gives every member member 0's data seed (the diversity ablation:
      members that differ only in the pools above).
    cycle_pools: True gives member i the value i mod len(pool) of every pool instead of a
      draw (the diversity ablation: M members take M distinct values of the varied pool, where
      independent draws would repeat one and, with the data order fixed, train two identical
      members).
  """

  learning_rates: Sequence[float] = (1e-5, 4e-5, 1e-4)
  dropout_rates: Sequence[float] = (0.05, 0.1)
  sft_steps: Sequence[int | None] = (None,)
  seed: int = 0
  vary_data_order: bool = True
  cycle_pools: bool = False

  def __post_init__(self):
    for name in ("learning_rates", "dropout_rates", "sft_steps"):
      if not len(getattr(self, name)):
        raise ValueError(f"MemberSweep.{name} is empty: give at least one value")
    if any(lr <= 0 for lr in self.learning_rates):
      raise ValueError(f"MemberSweep.learning_rates={self.learning_rates}: must be > 0")
    if any(not 0 <= d < 1 for d in self.dropout_rates):
      raise ValueError(f"MemberSweep.dropout_rates={self.dropout_rates}: must be in [0, 1)")


@dataclasses.dataclass(frozen=True)
class MemberHParams:
  """Everything that makes member `index` differ from the others."""

  index: int
  learning_rate: float
  dropout_rate: float
  data_seed: int
  sft_step: int | None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _stream(seed: int, index: int, name: str) -> np.random.Generator:
  return np.random.default_rng([seed, index, zlib.crc32(name.encode())])


def draw_member(sweep: MemberSweep, index: int) -> MemberHParams:
  """Member `index`'s hyper-parameters (a pure function of the sweep and the index)."""
  if index < 0:
    raise ValueError(f"member index {index} must be >= 0")

  def pick(name, pool):
    if sweep.cycle_pools:
      return pool[index % len(pool)]
    return pool[int(_stream(sweep.seed, index, name).integers(len(pool)))]

  return MemberHParams(
      index=index,
      learning_rate=float(pick("learning_rate", tuple(sweep.learning_rates))),
      dropout_rate=float(pick("dropout_rate", tuple(sweep.dropout_rates))),
      data_seed=int(_stream(sweep.seed, index if sweep.vary_data_order else 0,
                            "data_seed").integers(2**31 - 1)),
      sft_step=pick("sft_step", tuple(sweep.sft_steps)),
  )


def member_dir(members_dir: str, index: int) -> str:
  return os.path.join(members_dir, f"member_{index}")


def sft_checkpoint_path(sft_dir: str, step: int | None) -> str:
  """The SFT params a member starts from: a given step (Baklava) or the latest."""
  if step is None:
    return sft_dir
  path = os.path.join(sft_dir, ckpt_lib.CHECKPOINTS_SUBDIR, str(step))
  if not os.path.isdir(path):
    available = sorted(int(p) for p in os.listdir(os.path.join(
        sft_dir, ckpt_lib.CHECKPOINTS_SUBDIR)) if p.isdigit()) if os.path.isdir(
            os.path.join(sft_dir, ckpt_lib.CHECKPOINTS_SUBDIR)) else []
    raise ckpt_lib.CheckpointError(
        f"SFT checkpoint step {step} does not exist in {sft_dir} (kept steps: {available}): "
        "set MemberSweep.sft_steps to kept steps, or keep more SFT checkpoints")
  return path


def write_hparams(path: str, member: MemberHParams, extra: dict[str, Any] | None = None
                  ) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(path, exist_ok=True)
  record = dict(member.to_json(), **(extra or {}))
  target = os.path.join(path, HPARAMS_FILE)
  if os.path.exists(target):
    with open(target) as f:
      previous = json.load(f)
    if {k: previous.get(k) for k in record} != record:
      raise ValueError(f"{target} records other hyper-parameters ({previous}) than this run "
                       f"({record}): use a new members dir, or the original sweep settings")
  ckpt_lib.atomic_write_text(target, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_hparams(path: str) -> dict[str, Any]:
  with open(os.path.join(path, HPARAMS_FILE)) as f:
    return json.load(f)


def member_configs(member: MemberHParams, *, model_config: TransformerConfig,
                   optimizer: OptimizerConfig, trainer_config: TrainerConfig
                   ) -> tuple[TransformerConfig, OptimizerConfig, TrainerConfig]:
  """The shared stage configs specialised to one member (dropout, LR; data order is the
  dataset's seed)."""
  return (model_config.replace(dropout_rate=member.dropout_rate),
          dataclasses.replace(optimizer, learning_rate=member.learning_rate),
          dataclasses.replace(trainer_config, name=f"rm_{member.index}"))


def train_reward_model(*, members_dir: str | None = None, member_index: int = 0,
                       sweep: MemberSweep = MemberSweep(), sft_dir: str, probe_dir: str,
                       model_config: TransformerConfig, optimizer: OptimizerConfig,
                       trainer_config: TrainerConfig, dataset: ArrayDataset,
                       eval_dataset: ArrayDataset | None = None, seq_len: int,
                       partitioner: Partitioner | None = None, output_dir: str | None = None,
                       extra_eval_datasets: Mapping[str, ArrayDataset] | None = None,
                       overrides: dict[str, Any] | None = None, from_scratch: bool = False
                       ) -> Any:
  """Trains member `member_index` of the sweep into MEMBERS_DIR/member_<index> (one job).

  For the LMC diversity pairs (members that differ in exactly one hyper-parameter) and the
  from-scratch RMs of Remark 1: `overrides` replaces drawn fields (learning_rate,
  dropout_rate, data_seed, sft_step), `output_dir` replaces MEMBERS_DIR/member_<index>, and
  `from_scratch` starts from a random decoder and head (no SFT, no probe).
  """
  member = draw_member(sweep, member_index)
  if overrides:
    unknown = set(overrides) - {f.name for f in dataclasses.fields(MemberHParams)} - {"index"}
    if unknown or "index" in overrides:
      raise ValueError(f"train_reward_model.overrides has unknown or fixed fields "
                       f"{sorted(unknown | ({'index'} & set(overrides)))}: override among "
                       "learning_rate, dropout_rate, data_seed, sft_step")
    member = dataclasses.replace(member, **overrides)
  if not output_dir:
    if not members_dir:
      raise ValueError("MEMBERS_DIR is not set: pass --gin.MEMBERS_DIR=\"'/path'\"")
    output_dir = member_dir(members_dir, member_index)
  return train_member(
      member=member, output_dir=output_dir,
      sft_dir=sft_dir, probe_dir=None if from_scratch else probe_dir,
      model_config=model_config, optimizer=optimizer,
      trainer_config=trainer_config, dataset=dataset, eval_dataset=eval_dataset,
      seq_len=seq_len, partitioner=partitioner, extra_eval_datasets=extra_eval_datasets)


def train_member(*, member: MemberHParams, output_dir: str, sft_dir: str,
                 probe_dir: str | None, model_config: TransformerConfig,
                 optimizer: OptimizerConfig, trainer_config: TrainerConfig,
                 dataset: ArrayDataset, eval_dataset: ArrayDataset | None = None, seq_len: int,
                 partitioner: Partitioner | None = None,
                 extra_eval_datasets: Mapping[str, ArrayDataset] | None = None) -> Any:
  """Trains one reward model with explicit hyper-parameters into `output_dir`.

  The experiment driver uses this for the LMC diversity pairs (members that differ in exactly
  one hyper-parameter). probe_dir=None starts from a fresh head *and a fresh decoder* with
  `trainer_config.seed`: the from-scratch RMs of Remark 1 (no pre-training).
  """
  sft_path = sft_checkpoint_path(sft_dir, member.sft_step) if probe_dir else None
  write_hparams(output_dir, member, {"sft_path": sft_path, "probe_dir": probe_dir})
  model_cfg, opt_cfg, trainer_cfg = member_configs(
      member, model_config=model_config, optimizer=optimizer, trainer_config=trainer_config)
  return train(model_dir=output_dir, objective=PreferenceObjective(model_cfg),
               optimizer=opt_cfg, trainer_config=trainer_cfg,
               dataset=dataclasses.replace(dataset, seed=member.data_seed),
               eval_dataset=eval_dataset, seq_len=seq_len, partitioner=partitioner,
               extra_eval_datasets=extra_eval_datasets,
               init_from=ProbedRewardModelInit(sft_path=sft_path, probe_path=probe_dir)
               if probe_dir else None)
