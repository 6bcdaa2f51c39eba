"""Shared inputs of the reliability tests (tests/test_reliability.py, tests/test_bad_inputs.py):
a tiny built data dir, an SFT checkpoint and a linear-probe dir of the `gin/models/tiny.gin`
shape, and the `python -m warm_jax.train` arguments of one reward-model member on them.

Built once per test session (the data build is the slow part) under pytest's temporary dir.
The SFT and probe params are fresh initialisations saved as the stages save theirs: the drills
test resuming, refusing and exiting, not what the models learn.
"""

from __future__ import annotations

import hashlib
import os

SEQ_LEN = 64
TINY_WORLD = dict(n_pretrain_posts=120, n_sft_posts=32, n_train_posts=8, n_train_pairs=16,
                  n_val_posts=8, n_val_pairs=8, n_ood_posts=8, n_ood_pairs=8, n_prompts=8)
SFT_STEP = 2
_SESSION: dict[str, "Assets"] = {}


class Assets:
  """Paths of the shared inputs; `rm_args(members_dir)` is a member's training command."""

  def __init__(self, root: str):
    from warm_jax.core import checkpoints as ckpt
    from warm_jax.data import build, preferences
    from warm_jax.models import LanguageModel, RewardModel
    from warm_jax.rm.scoring import unboxed_init
    self.root = root
    self.data_dir = os.path.join(root, "data")
    build.build_dataset(output_dir=self.data_dir, seq_len=SEQ_LEN, prompt_len=SEQ_LEN // 2,
                        world=preferences.WorldConfig(**TINY_WORLD))
    self.model_config = gin_model_config("gin/models/tiny.gin", vocab_size=self.vocab_size)
    self.sft_dir = os.path.join(root, "sft")
    ckpt.save_params(unboxed_init(LanguageModel(self.model_config), 1),
                     os.path.join(self.sft_dir, "checkpoints", str(SFT_STEP), "params"))
    self.probe_dir = os.path.join(root, "probe")
    ckpt.save_params(unboxed_init(RewardModel(self.model_config), 2),
                     os.path.join(self.probe_dir, "params"))

  @property
  def vocab_size(self) -> int:
    import json
    with open(os.path.join(self.data_dir, "meta.json")) as f:
      return json.load(f)["vocab_size"]

  def rm_args(self, members_dir: str, *, steps: int, save_every: int = 2,
              batch_size: int = 8) -> list[str]:
    """`python -m warm_jax.train` arguments (without `-m warm_jax.train`) of member 0."""
    return ["--gin_file=gin/models/tiny.gin", "--gin_file=gin/rm.gin",
            f"--gin.DATA_DIR='{self.data_dir}'", f"--gin.SFT_DIR='{self.sft_dir}'",
            f"--gin.PROBE_DIR='{self.probe_dir}'", f"--gin.MEMBERS_DIR='{members_dir}'",
            f"--gin.SEQ_LEN={SEQ_LEN}", f"--gin.TRAIN_STEPS={steps}",
            f"--gin.BATCH_SIZE={batch_size}", f"--gin.TrainerConfig.save_every={save_every}",
            f"--gin.TrainerConfig.log_every={save_every}", "--gin.TrainerConfig.eval_every=0",
            "--gin.TrainerConfig.peak_flops_per_device=1e11", "--gin.DROPOUT_RATES=(0.1,)"]


def session_assets(tmp_path_factory) -> Assets:
  """The session's assets, built on first use."""
  if "assets" not in _SESSION:
    _SESSION["assets"] = Assets(str(tmp_path_factory.mktemp("reliability_assets")))
  return _SESSION["assets"]


def gin_model_config(model_gin: str, *, vocab_size: int):
  """The TransformerConfig a stage gets from `model_gin` (parsed here, then cleared)."""
  import gin
  from warm_jax import configurables
  from warm_jax.gin_utils import REPO_ROOT
  from warm_jax.models import TransformerConfig
  configurables.register()
  gin.clear_config()
  try:
    with gin.unlock_config():
      gin.parse_config_files_and_bindings(
          [os.path.join(REPO_ROOT, model_gin)],
          [f"VOCAB_SIZE = {vocab_size}", "DROPOUT_RATE = 0.0"], finalize_config=False)
      return gin.get_configurable(TransformerConfig)()
  finally:
    gin.clear_config()


def tree_file_hashes(*roots: str) -> dict[str, str]:
  """{path: sha256 of its bytes} for every file under the roots (a file root is hashed
  itself): equal before and after means nothing there was modified, added or removed."""
  out = {}
  for root in roots:
    if os.path.isfile(root):
      paths = [root]
    else:
      paths = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    for path in paths:
      with open(path, "rb") as f:
        out[path] = hashlib.sha256(f.read()).hexdigest()
  return out
