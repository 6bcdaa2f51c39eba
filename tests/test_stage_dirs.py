"""Experiment stage dirs as checkpoint inputs: `checkpoints.resolve_params_path` (the one resolver
of load_params, the averager's reader and convert's export) finds the params of every stage
layout `warm_jax.experiment` writes, and a dir that holds none is refused naming the paths it
looked at and the stage dirs below it to pass instead.

The experiment tree here is a small fake of the real layout (real tiny orbax checkpoints, no
training): sft/ and members/clean/member_<i>/ and rl/<reward>/ are training MODEL_DIRs
(checkpoints/<step>/params), average/warm_<M>/ holds the averager's output in checkpoint/."""

import json
import os

import numpy as np
import pytest

from warm_jax import average
from warm_jax.core import checkpoints as ckpt


def _tree(value: float):
  return {"decoder": {"w": np.full((3, 2), value, np.float32)},
          "reward_head": {"kernel": np.full((2, 1), value, np.float32),
                          "bias": np.zeros((1,), np.float32)}}


def _model_dir(path, steps_values):
  for step, value in steps_values:
    ckpt.save_params(_tree(value), str(path / ckpt.CHECKPOINTS_SUBDIR / str(step) /
                                       ckpt.PARAMS_ITEM))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """runs/demo as `python -m warm_jax.experiment` lays it out (checkpoints only)."""
  root = tmp_path_factory.mktemp("runs") / "demo"
  _model_dir(root / "sft", [(10, 1.0), (20, 2.0)])
  for i in range(2):
    _model_dir(root / "members" / "clean" / f"member_{i}", [(5, 10.0 + i)])
    (root / "members" / "clean" / f"member_{i}" / "DONE").write_text("{}")
  _model_dir(root / "rl" / "warm_2", [(3, 30.0), (6, 31.0)])
  assert average.main(["--inputs", str(root / "members" / "clean" / "member_0"),
                       str(root / "members" / "clean" / "member_1"),
                       "--output", str(root / "average" / "warm_2" /
                                       ckpt.AVERAGE_CHECKPOINT_SUBDIR)]) == 0
  (root / "average" / "warm_2" / "STAGE_DONE").write_text("{}")
  (root / "commands.sh").write_text("# the stages' commands\n")
  return root


@pytest.mark.parametrize("stage,want,value", [
    ("sft", "sft/checkpoints/20/params", 2.0),
    ("members/clean/member_1", "members/clean/member_1/checkpoints/5/params", 11.0),
    ("rl/warm_2", "rl/warm_2/checkpoints/6/params", 31.0),
    ("rl/warm_2/checkpoints/3", "rl/warm_2/checkpoints/3/params", 30.0),
    ("average/warm_2", "average/warm_2/checkpoint", 10.5),
    ("average/warm_2/checkpoint", "average/warm_2/checkpoint", 10.5),
])
def test_every_stage_dir_resolves_to_its_params(run, stage, want, value):
  assert str(ckpt.resolve_params_path(str(run / stage))) == str(run / want)
  params = ckpt.load_params(str(run / stage))
  np.testing.assert_array_equal(params["decoder"]["w"], np.full((3, 2), value, np.float32))


def test_the_averager_reads_stage_dirs(run, tmp_path, capsys):
  """WARM of a WARM and a member, given as stage dirs: the inputs' values prove which params
  were read (the manifest names the resolved paths)."""
  out = tmp_path / "mix"
  assert average.main(["--inputs", str(run / "average" / "warm_2"),
                       str(run / "members" / "clean" / "member_0"), "--output", str(out)]) == 0
  np.testing.assert_allclose(ckpt.load_params(str(out))["decoder"]["w"], (10.5 + 10.0) / 2)
  manifest = json.loads((out / "manifest.json").read_text())
  assert [r["path"] for r in manifest["inputs"]] == [
      os.path.realpath(run / "average" / "warm_2" / "checkpoint"),
      os.path.realpath(run / "members" / "clean" / "member_0" / "checkpoints" / "5" / "params")]


@pytest.mark.parametrize("given,looked,suggested", [
    # the experiment's root and a setting's members dir: the stage dirs below are named
    ("", ["demo"], ["average/warm_2", "members/clean/member_0", "members/clean/member_1",
                    "rl/warm_2", "sft"]),
    ("members/clean", ["members/clean"], ["members/clean/member_0", "members/clean/member_1"]),
    ("members", ["members"], ["members/clean/member_0"]),
])
def test_a_dir_without_params_names_where_it_looked_and_what_to_pass(run, given, looked,
                                                                    suggested):
  with pytest.raises(ckpt.CheckpointError) as e:
    ckpt.resolve_params_path(str(run / given))
  message = str(e.value)
  assert f"no orbax checkpoint found at {run / given}" in message
  assert f"looked at {str(run / given).rstrip('/')}" in message
  for stage in suggested:
    assert str(run / stage) in message, message
  assert "pass one of them" in message


def test_an_average_stage_killed_before_publishing_and_an_unsaved_run(run, tmp_path):
  """average/warm_<M> whose checkpoint/ never completed, and a MODEL_DIR with an empty
  checkpoints/: both name the paths looked at; neither suggests anything that is not there."""
  stage = tmp_path / "average" / "warm_6"
  (stage / "checkpoint.tmp-123").mkdir(parents=True)
  (stage / "checkpoint").mkdir()
  with pytest.raises(ckpt.CheckpointError, match=(
      rf"no orbax checkpoint found at {stage} \(looked at {stage}, {stage}/checkpoint\): pass "
      "a stage's model dir \\(an experiment stage dir: sft, members/clean/member_0")):
    ckpt.resolve_params_path(str(stage))
  (tmp_path / "member_0" / "checkpoints").mkdir(parents=True)
  with pytest.raises(ckpt.CheckpointError, match="checkpoints/ holds no complete step; a run "
                     "that was killed before its first save has none"):
    ckpt.load_params(str(tmp_path / "member_0"))
  with pytest.raises(ckpt.CheckpointError, match="does not exist: pass a stage's model dir \\(an "
                     "experiment stage dir: sft, members/clean/member_0, average/warm_6"):
    ckpt.load_params(str(tmp_path / "nowhere"))


def test_many_checkpoints_below_are_named_shallowest_first_and_counted(tmp_path):
  for i in range(10):
    ckpt.save_params(_tree(float(i)), str(tmp_path / "deep" / "sweep" / f"member_{i}"))
  ckpt.save_params(_tree(0.0), str(tmp_path / "top"))
  with pytest.raises(ckpt.CheckpointError) as e:
    ckpt.resolve_params_path(str(tmp_path))
  message = str(e.value)
  assert f"checkpoints below it: {tmp_path / 'top'}, {tmp_path / 'deep' / 'sweep'}/member_0" \
      in message
  assert "(and 3 more); pass one of them" in message


def test_evaluate_members_dir_names_the_setting_dirs_below(run):
  """MEMBERS_DIR given as the run's root or its members/: the error names members/clean."""
  from warm_jax.evaluate import finished_members
  assert finished_members(str(run / "members" / "clean")) == [
      str(run / "members" / "clean" / f"member_{i}") for i in range(2)]
  for given in (run, run / "members"):
    with pytest.raises(FileNotFoundError, match=(
        rf"no finished member \(member_<i>/DONE\) in {given}: MEMBERS_DIR holding them is "
        rf"below: {run / 'members' / 'clean'}; pass one of those")):
      finished_members(str(given))
