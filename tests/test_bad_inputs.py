"""The bad-input battery: every command-line program, fed one bad input at a time, exits non-zero
with one clear `error: ...` line that names the input and the fix, and modifies nothing.

One table (`CASES`, mirrored in docs/reliability.md): the program, what is wrong, the exit code,
the start (or a telling part) of the message, and what is checked afterwards. Every file that
existed before the call (the shared inputs and the case's own) must be byte-identical after it,
and the call must not create its output. The programs run in this process through their
`main(argv)` (the same function `python -m ...` calls): an interpreter start per case would cost
more than the whole battery. tests/test_train_cli.py, tests/test_average_cli.py and
tests/data/test_build.py run some of the same refusals as real subprocesses.
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Callable

import gin
import numpy as np
import pytest

from reliability_assets import SEQ_LEN, SFT_STEP, session_assets, tree_file_hashes
from warm_jax import average, evaluate, experiment, train
from warm_jax.core import checkpoints as ckpt
from warm_jax.data import build

MAINS = {"train": train.main, "average": average.main, "evaluate": evaluate.main,
         "data.build": build.main, "experiment": experiment.main}


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input.

  Attributes:
    name: the test id (and the table row in docs/reliability.md).
    cli: which program (`python -m warm_jax.<cli>`).
    argv: (workspace) -> the command line; the workspace creates the bad input.
    code: the exit status (2: bad command line or gin, nothing run; 1: refused while running).
    message: a part of the `error: ...` line that names the problem and the fix.
    output: (workspace) -> the path the program would write, which must not appear.
    may_create: (workspace) -> paths under which new files are allowed (a member dir's
      config.gin and hparams.json are written before the data or init is checked; no
      checkpoint and no DONE may appear there).
  """

  name: str
  cli: str
  argv: Callable[["Workspace"], list[str]]
  code: int
  message: str
  output: Callable[["Workspace"], str] = lambda ws: ws.out
  may_create: Callable[["Workspace"], list[str]] = lambda ws: []


class Workspace:
  """The shared inputs plus a case dir (`tmp`), with builders for bad inputs."""

  def __init__(self, shared, tmp):
    self.a, self.tmp = shared.assets, str(tmp)
    self.shared = shared
    self.out = os.path.join(self.tmp, "out")

  def path(self, *parts):
    return os.path.join(self.tmp, *parts)

  # -- averager inputs -----------------------------------------------------------------------
  def members(self, n=2):
    return self.shared.members[:n]

  def member_like(self, name, mutate, *, src=0):
    """A copy of a member's params with `mutate(tree)` applied, saved under the case dir."""
    tree = ckpt.load_params(self.shared.members[src])
    tree = mutate(tree) or tree
    ckpt.save_params(tree, self.path(name))
    return self.path(name)

  def damaged_copy(self, src, name):
    """A copy of a checkpoint whose orbax metadata files are truncated (a crashed copy)."""
    dst = self.path(name)
    shutil.copytree(src, dst)
    for root, _, files in os.walk(dst):
      for f in files:
        if f in ("_METADATA", "manifest.ocdbt"):
          open(os.path.join(root, f), "wb").close()
    return dst

  def empty_dir(self, name):
    os.makedirs(self.path(name))
    return self.path(name)

  def file(self, name, text="not a directory\n"):
    with open(self.path(name), "w") as f:
      f.write(text)
    return self.path(name)

  # -- training inputs -----------------------------------------------------------------------
  def rm(self, *extra, members_dir=None, steps=2):
    return self.a.rm_args(members_dir or self.out, steps=steps) + list(extra)

  def sft_like(self, name, mutate):
    tree = ckpt.load_params(self.a.sft_dir)
    tree = mutate(tree) or tree
    ckpt.save_params(tree, self.path(name, "checkpoints", str(SFT_STEP), "params"))
    return self.path(name)

  def corrupt_data(self):
    """A copy of the data dir whose RM training arrays are not an npz file any more."""
    dst = self.path("data")
    shutil.copytree(self.a.data_dir, dst)
    with open(os.path.join(dst, "arrays", "preferences.rm_train.npz"), "wb") as f:
      f.write(b"PK\x03\x04 truncated by a full disk")
    return dst

  def existing_build(self):
    dst = self.path("data")
    shutil.copytree(self.a.data_dir, dst)
    return dst

  def damage_latest_step(self, members_dir):
    """Truncates the orbax metadata of the run's latest checkpoint (a disk error)."""
    step_dir = os.path.join(members_dir, "member_0", "checkpoints",
                            str(max(self.shared.run_steps)))
    for root, _, files in os.walk(step_dir):
      for f in files:
        if f in ("_METADATA", "manifest.ocdbt"):
          open(os.path.join(root, f), "wb").close()
    return members_dir

  def copy_run(self, name):
    """A copy of the shared 2-step RM run (without DONE, so that a rerun resumes it)."""
    dst = self.path(name)
    shutil.copytree(self.shared.run_members, dst)
    os.remove(os.path.join(dst, "member_0", "DONE"))
    return dst

  def evaluate(self, *extra, members_dir=None):
    return ["--gin_file=gin/models/tiny.gin", "--gin_file=gin/evaluate.gin",
            f"--gin.DATA_DIR='{self.a.data_dir}'", f"--gin.SEQ_LEN={SEQ_LEN}",
            f"--gin.MEMBERS_DIR='{members_dir or self.shared.members_dir}'",
            f"--gin.OUTPUT_DIR='{self.out}'", "--gin.WARM_MS=(2,)"] + list(extra)

  def best_of_n(self, *extra):
    return ["--gin_file=gin/models/tiny.gin", "--gin_file=gin/bon.gin",
            f"--gin.DATA_DIR='{self.a.data_dir}'", f"--gin.SFT_DIR='{self.a.sft_dir}'",
            f"--gin.OUTPUT_DIR='{self.out}'", f"--gin.PROMPT_LEN={SEQ_LEN // 2}",
            f"--gin.REWARD_MODELS={{'member_0': '{self.members()[0]}'}}", "--gin.N_MAX=2",
            "--gin.BATCH_SIZE=8"] + list(extra)

  def members_dir_with(self, name, params_list):
    root = self.path(name)
    for i, params in enumerate(params_list):
      ckpt.save_params(params, os.path.join(root, f"member_{i}", "checkpoints", "2", "params"))
      with open(os.path.join(root, f"member_{i}", "DONE"), "w") as f:
        f.write('{"step": 2}\n')
    return root

  def manual_dir(self, corrupt_line=False):
    """OpenAI's TL;DR files, one comparisons file; with `corrupt_line` its line 2 is cut."""
    record = {"info": {"id": "t3_1", "subreddit": "r", "title": "T", "post": "P"},
              "summaries": [{"text": " a", "policy": "ref"}, {"text": " b", "policy": "sup"}],
              "choice": 0, "worker": "w", "batch": "b", "split": "train"}
    root = self.path("manual")
    os.makedirs(os.path.join(root, "comparisons"))
    line = json.dumps(record)
    with open(os.path.join(root, "comparisons", "batch1.json"), "w") as f:
      f.write(line + "\n" + (line[:30] if corrupt_line else line) + "\n")
    return root


def _nan(path):
  def mutate(tree):
    leaf = tree
    for key in path.split("/")[:-1]:
      leaf = leaf[key]
    leaf[path.split("/")[-1]] = np.array(leaf[path.split("/")[-1]], copy=True)
    leaf[path.split("/")[-1]].reshape(-1)[0] = np.nan
  return mutate


def _reshape(path, shape):
  def mutate(tree):
    leaf = tree
    for key in path.split("/")[:-1]:
      leaf = leaf[key]
    leaf[path.split("/")[-1]] = np.zeros(shape, np.float32)
  return mutate


def _drop(path):
  def mutate(tree):
    leaf = tree
    for key in path.split("/")[:-1]:
      leaf = leaf[key]
    del leaf[path.split("/")[-1]]
  return mutate


def _cast(dtype):
  def mutate(tree):
    import jax
    return jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype), tree)
  return mutate


KERNEL = "decoder/layer_0/mlp/wi/kernel"


def _member_done(ws):
  """A member run's completion marker: it must not appear (the member dir itself may, with
  config.gin / hparams.json written before the input was found bad)."""
  return os.path.join(ws.out, "member_0", "DONE")
TINY_BUILD = ["--gin_file=gin/data/synthetic_tldr_tiny.gin"]

CASES = [
    # -- python -m warm_jax.average -------------------------------------------------------------
    Case("average_member_of_another_architecture", "average",
         lambda ws: ["--inputs", *ws.members(), ws.member_like("wide", _reshape(KERNEL, (64, 8))),
                     "--output", ws.out], 1,
         "has decoder/layer_0/mlp/wi/kernel of shape (64, 8) but"),
    Case("average_mismatched_trees", "average",
         lambda ws: ["--inputs", *ws.members(), ws.member_like("pruned", _drop(KERNEL)),
                     "--output", ws.out], 1,
         f"has no {KERNEL} but"),
    Case("average_wrong_dtype", "average",
         lambda ws: ["--inputs", *ws.members(), ws.member_like("f64", _cast(np.float64)),
                     "--output", ws.out], 1,
         "all members must store their weights in one dtype"),
    Case("average_nan_in_a_checkpoint", "average",
         lambda ws: ["--inputs", *ws.members(), ws.member_like("nan", _nan(KERNEL)),
                     "--output", ws.out], 1,
         f"has 1 non-finite (NaN/inf) values in {KERNEL}: a diverged run cannot be averaged"),
    Case("average_missing_input", "average",
         lambda ws: ["--inputs", *ws.members(), ws.path("nope"), "--output", ws.out], 1,
         "does not exist: pass a stage's model dir"),
    Case("average_empty_input_dir", "average",
         lambda ws: ["--inputs", *ws.members(), ws.empty_dir("empty"), "--output", ws.out], 1,
         "no orbax checkpoint found at"),
    Case("average_unreadable_checkpoint", "average",
         lambda ws: ["--inputs", *ws.members(), ws.damaged_copy(ws.members()[1], "damaged"),
                     "--output", ws.out], 1,
         "its orbax metadata is missing or damaged, so the checkpoint is incomplete or corrupt"),
    Case("average_m0_flags", "average", lambda ws: ["--inputs", "--output", ws.out], 2,
         "argument --inputs: expected at least one argument"),
    Case("average_m0_gin", "average",
         lambda ws: ["--gin_file=gin/average.gin", "--gin.INPUTS=[]", f"--gin.OUTPUT='{ws.out}'"],
         1, "no inputs: pass --inputs DIR [DIR ...]"),
    Case("average_negative_weight", "average",
         lambda ws: ["--inputs", *ws.members(), "--output", ws.out, "--method", "weighted",
                     "--weights", "1", "-1"], 1, "weight 1 is -1.0: weights must be finite"),
    Case("average_weight_count", "average",
         lambda ws: ["--inputs", *ws.members(), "--output", ws.out, "--method", "weighted",
                     "--weights", "1", "1", "1"], 1, "3 weights for 2 inputs"),
    Case("average_duplicate_member", "average",
         lambda ws: ["--inputs", *ws.members(), ws.members()[0], "--output", ws.out], 1,
         "are the same checkpoint"),
    Case("average_output_exists", "average",
         lambda ws: ["--inputs", *ws.members(), "--output", ws.file("out", "keep me\n")], 1,
         "already exists; pick a new path or pass --overwrite",
         output=lambda ws: ws.path("never")),
    Case("average_output_inside_an_input", "average",
         lambda ws: ["--inputs", *ws.members(), "--output",
                     os.path.join(ws.members()[0], "avg")], 1, "overlaps checkpoint",
         output=lambda ws: os.path.join(ws.members()[0], "avg")),
    Case("average_unwritable_output_dir", "average",
         lambda ws: ["--inputs", *ws.members(), "--output",
                     os.path.join(ws.file("a_file"), "out")], 1,
         "is not a writable directory; pick another output path",
         output=lambda ws: os.path.join(ws.path("a_file"), "out")),
    Case("average_bad_gin", "average",
         lambda ws: ["--gin_file=gin/average.gin", "--gin.INPUTS=[", f"--gin.OUTPUT='{ws.out}'"],
         2, "bad gin configuration"),
    Case("average_no_reward_head", "average",
         lambda ws: ["--inputs", ws.member_like("p0", _drop("reward_head"), src=0),
                     ws.member_like("p1", _drop("reward_head"), src=1), "--output", ws.out], 1,
         "has no reward_head leaves"),
    # -- python -m warm_jax.train ---------------------------------------------------------------
    Case("train_unknown_gin_parameter", "train",
         lambda ws: ws.rm("--gin.TransformerConfig.d_modle=3"), 2, "d_modle"),
    Case("train_macro_typo", "train", lambda ws: ws.rm("--gin.TRAIN_STEP=5"), 2,
         "--gin.TRAIN_STEP sets a macro that no configuration uses (typo?)"),
    Case("train_bad_gin_syntax", "train",
         lambda ws: ws.rm(f"--gin_file={ws.file('bad.gin', 'TRAIN_STEPS = = 3')}"), 2,
         "bad gin configuration"),
    Case("train_missing_gin_file", "train", lambda ws: ws.rm("--gin_file=gin/nope.gin"), 2,
         "gin file gin/nope.gin not found"),
    Case("train_unknown_argument", "train", lambda ws: ws.rm("--frobnicate"), 2,
         "unknown argument '--frobnicate'"),
    Case("train_negative_steps", "train", lambda ws: ws.rm("--gin.TRAIN_STEPS=-5"), 1,
         "TrainerConfig.train_steps=-5: must be positive"),
    Case("train_zero_batch", "train", lambda ws: ws.rm("--gin.BATCH_SIZE=0"), 1,
         "TrainerConfig.batch_size=0: must be positive"),
    Case("train_missing_data_dir", "train",
         lambda ws: ws.rm(f"--gin.DATA_DIR='{ws.path('nope')}'"), 1,
         "does not exist: build it with `python -m warm_jax.data.build"),
    Case("train_data_dir_of_another_vocabulary", "train",
         lambda ws: ws.rm("--gin.VOCAB_SIZE=512"), 1, "VOCAB_SIZE is 512 but the tokenizer of"),
    Case("train_corrupt_data_arrays", "train",
         lambda ws: ws.rm(f"--gin.DATA_DIR='{ws.corrupt_data()}'"), 1,
         "is not a readable npz file"),
    Case("train_sequences_longer_than_the_model", "train",
         lambda ws: ws.rm("--gin.TransformerConfig.max_len=32"), 1,
         "sequence length 64 exceeds the model's max_len 32", output=_member_done,
         may_create=lambda ws: [ws.out]),
    Case("bon_prompts_longer_than_the_model", "train",
         lambda ws: ws.best_of_n("--gin.MAX_NEW_TOKENS=300"), 1,
         "a decoding cache of 332 slots (prompt + new tokens) exceeds the model's max_len 256: "
         "shorten the prompts or max_new_tokens"),
    Case("train_init_of_another_architecture", "train",
         lambda ws: ws.rm(f"--gin.SFT_DIR='{ws.sft_like('wide', _reshape(KERNEL, (64, 8)))}'"),
         1, "has shape (64, 8) but the target model's decoder/layer_0/mlp/wi/kernel has "
            "(64, 256): the checkpoint comes from another architecture",
         output=_member_done, may_create=lambda ws: [ws.out]),
    Case("train_nan_in_the_init_checkpoint", "train",
         lambda ws: ws.rm(f"--gin.SFT_DIR='{ws.sft_like('nan', _nan(KERNEL))}'"), 1,
         f"leaf {KERNEL} has 1 non-finite (NaN/inf) values: the checkpoint comes from a "
         "diverged run", output=_member_done, may_create=lambda ws: [ws.out]),
    Case("train_missing_sft_step", "train", lambda ws: ws.rm("--gin.SFT_STEPS=(7,)"), 1,
         "SFT checkpoint step 7 does not exist in"),
    Case("train_missing_sft_dir", "train",
         lambda ws: ws.rm(f"--gin.SFT_DIR='{ws.path('nope')}'"), 1,
         "does not exist: pass a stage's model dir", output=_member_done,
         may_create=lambda ws: [ws.out]),
    Case("train_resume_with_another_architecture", "train",
         lambda ws: ws.rm("--gin.TransformerConfig.mlp_dim=128", "--gin.TRAIN_STEPS=4",
                          members_dir=ws.copy_run("run")), 1,
         "does not match this model/optimizer config",
         output=lambda ws: ws.path("run", "member_0", "DONE")),
    Case("train_resume_from_a_damaged_checkpoint", "train",
         lambda ws: ws.rm("--gin.TRAIN_STEPS=4", members_dir=ws.damage_latest_step(
             ws.copy_run("run"))), 1,
         "its files are damaged (delete",
         output=lambda ws: ws.path("run", "member_0", "DONE")),
    Case("train_output_under_a_file", "train",
         lambda ws: ws.rm(members_dir=os.path.join(ws.file("a_file"), "members")), 1,
         "Not a directory", output=lambda ws: os.path.join(ws.path("a_file"), "members")),
    # -- python -m warm_jax.evaluate ------------------------------------------------------------
    Case("evaluate_no_finished_member", "evaluate",
         lambda ws: ws.evaluate(members_dir=ws.empty_dir("empty")), 1,
         "no finished member (member_<i>/DONE) in"),
    Case("evaluate_member_of_another_architecture", "evaluate",
         lambda ws: ws.evaluate("--gin.TransformerConfig.mlp_dim=128"), 1,
         "member_0 leaf decoder/layer_0/mlp/wi/bias has shape (256,) but the reward model "
         "expects (128,): the checkpoint comes from another architecture"),
    Case("evaluate_nan_member", "evaluate",
         lambda ws: ws.evaluate(members_dir=ws.members_dir_with("nan", [
             ckpt.load_params(ws.members()[0]),
             _nan_tree(ckpt.load_params(ws.members()[1]))])), 1,
         f"member_1 leaf {KERNEL} has 1 non-finite (NaN/inf) values"),
    Case("evaluate_m0", "evaluate", lambda ws: ws.evaluate("--gin.WARM_MS=(0,)"), 1,
         "WARM_MS=(0,): every M (members averaged) must be >= 1"),
    # -- python -m warm_jax.data.build ----------------------------------------------------------
    Case("build_missing_tldr_manual_dir", "data.build",
         lambda ws: TINY_BUILD + [f"--output_dir={ws.out}",
                                  "--gin.PREFERENCE_TASK='tldr_comparisons'",
                                  f"--gin.TLDR_MANUAL_DIR='{ws.path('absent')}'",
                                  f"--gin.TLDR_DATA_DIR='{ws.path('tfds')}'"], 1,
         "summarize-from-feedback", may_create=lambda ws: [ws.path("tfds")]),
    Case("build_corrupt_tldr_line", "data.build",
         lambda ws: TINY_BUILD + [f"--output_dir={ws.out}",
                                  "--gin.PREFERENCE_TASK='tldr_comparisons'",
                                  f"--gin.TLDR_MANUAL_DIR='{ws.manual_dir(corrupt_line=True)}'",
                                  f"--gin.TLDR_DATA_DIR='{ws.path('tfds')}'"], 1,
         "batch1.json:2: not valid JSON", may_create=lambda ws: [ws.path("tfds")]),
    Case("build_existing_output_without_overwrite", "data.build",
         lambda ws: TINY_BUILD + [f"--output_dir={ws.existing_build()}"], 1,
         "already holds a complete data build: pass --overwrite",
         output=lambda ws: ws.path("never")),
    Case("build_prompt_longer_than_sequence", "data.build",
         lambda ws: TINY_BUILD + [f"--output_dir={ws.out}", "--gin.PROMPT_LEN=200"], 1,
         "need 0 < PROMPT_LEN < SEQ_LEN"),
    Case("build_no_output_dir", "data.build", lambda ws: TINY_BUILD, 2, "no --output_dir given"),
    # -- python -m warm_jax.experiment ----------------------------------------------------------
    Case("experiment_unknown_scale", "experiment",
         lambda ws: ["--gin_file=gin/experiments/warm_synthetic_tldr_tiny.gin",
                     f"--output_dir={ws.out}", "--gin.SCALE='huge'"], 1,
         "SCALE='huge' is not one of the presets"),
    Case("experiment_no_output_dir", "experiment",
         lambda ws: ["--gin_file=gin/experiments/warm_synthetic_tldr_tiny.gin"], 1,
         "--output_dir is required"),
]


def _nan_tree(tree):
  _nan(KERNEL)(tree)
  return tree


class Shared:
  """Inputs shared by the cases (never modified: every case checks their hashes)."""

  def __init__(self, assets, root):
    from warm_jax.models import RewardModel
    from warm_jax.rm.scoring import unboxed_init
    self.assets, self.root = assets, str(root)
    # Two finished reward-model members (fresh inits: the cases test refusals, not accuracy).
    self.members_dir = os.path.join(self.root, "members")
    self.members = []
    for i in range(2):
      member = os.path.join(self.members_dir, f"member_{i}")
      ckpt.save_params(unboxed_init(RewardModel(assets.model_config), 10 + i),
                       os.path.join(member, "checkpoints", "2", "params"))
      with open(os.path.join(member, "DONE"), "w") as f:
        f.write('{"step": 2}\n')
      self.members.append(member)
    # A real 2-step member run (checkpoints 1 and 2) for the resume cases.
    self.run_members = os.path.join(self.root, "run")
    gin.clear_config()
    try:
      assert train.main(assets.rm_args(self.run_members, steps=2, save_every=1)) == 0
    finally:
      gin.clear_config()
    self.run_steps = [int(p) for p in os.listdir(
        os.path.join(self.run_members, "member_0", "checkpoints")) if p.isdigit()]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  return Shared(session_assets(tmp_path_factory), tmp_path_factory.mktemp("bad_inputs"))


def test_the_battery_covers_every_program_and_enough_kinds():
  assert {case.cli for case in CASES} == set(MAINS)
  assert len(CASES) >= 25 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_refused_clearly_and_changes_nothing(case, shared, tmp_path, capsys):
  ws = Workspace(shared, tmp_path / "case")
  os.makedirs(ws.tmp)
  argv = case.argv(ws)
  watched = [shared.assets.root, shared.root, ws.tmp]
  before = tree_file_hashes(*watched)
  capsys.readouterr()
  gin.clear_config()
  try:
    code = MAINS[case.cli](argv)
  finally:
    gin.clear_config()
  err = capsys.readouterr().err
  # One error, stated once, with no traceback; the exit status says which kind.
  assert code == case.code, err[-3000:]
  assert [line for line in err.splitlines() if line.startswith("error: ")], err[-3000:]
  assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err
  assert case.message in err, err[-3000:]
  assert "Traceback" not in err and "In call to configurable" not in err, err[-3000:]
  # Nothing modified or removed; nothing created but what the case allows, never a checkpoint
  # or a completion marker; no output.
  after = tree_file_hashes(*watched)
  changed = [p for p, h in before.items() if after.get(p) != h]
  assert not changed, changed
  allowed = case.may_create(ws)
  created = sorted(set(after) - set(before))
  assert all(any(p.startswith(a + os.sep) for a in allowed) for p in created), created
  assert not any(os.path.basename(p) == "DONE" or f"{os.sep}checkpoints{os.sep}" in p
                 for p in created), created
  assert not os.path.exists(case.output(ws))
