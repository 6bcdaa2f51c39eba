"""The modules' old import paths, before the library moved into stage packages (issue 15).

`import warm_jax.trainer` (or `from warm_jax import trainer`, `warm_jax.rl.RLConfig`, a
monkeypatch target string) keeps working in code written against the flat layout: the name is
an alias of the module's new home, the same module object, so its state (the FLOP counter,
registries) is shared. New code imports the new paths (docs/architecture.md); the command lines
(`python -m warm_jax.train`, `.data.policy_pairs`, ...) did not move, and `python -m` of an
old path runs the moved module's code.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

MOVED = {
    **{f"warm_jax.{m}": f"warm_jax.core.{m}" for m in (
        "partitioning", "trainer", "training_loop", "training_stage", "checkpoints", "optimizers",
        "metrics_writer", "flops", "run_dir", "paired_stats", "objectives", "losses", "plots")},
    **{f"warm_jax.{m}": f"warm_jax.rm.{m}" for m in (
        "linear_probe", "members", "vmapped_members", "scoring", "evaluation")},
    **{f"warm_jax.{m}": f"warm_jax.policy.{m}" for m in (
        "sampling", "oracle", "reward_sources", "bon", "rl", "win_rates", "disagreement",
        "gao_fits")},
    "warm_jax.policy_objective": "warm_jax.policy.objective",
    "warm_jax.data.policy_samples": "warm_jax.policy.policy_samples",
    **{f"warm_jax.{m}": f"warm_jax.pipeline.{m}" for m in ("report", "report_policy", "verdicts")},
}


def new_path(name: str) -> str | None:
  """The new dotted path of an old module path (or of a submodule of a moved package)."""
  for old in sorted(MOVED, key=len, reverse=True):
    if name == old or name.startswith(old + "."):
      return MOVED[old] + name[len(old):]
  return None


class _Alias(importlib.abc.Loader):
  def __init__(self, target: str):
    self.target = target

  def create_module(self, spec):
    return importlib.import_module(self.target)

  def exec_module(self, module):
    del module  # already executed under its new name

  def get_code(self, fullname):
    """`python -m <old path>` (runpy) runs the moved module's code as the program."""
    del fullname
    import importlib.util
    spec = importlib.util.find_spec(self.target)
    return spec.loader.get_code(self.target)


class _OldPaths(importlib.abc.MetaPathFinder):
  def find_spec(self, fullname, path=None, target=None):
    del path, target
    new = new_path(fullname)
    if new is None:
      return None
    return importlib.machinery.ModuleSpec(fullname, _Alias(new),
                                          is_package=hasattr(
                                              importlib.import_module(new), "__path__"))


def install() -> None:
  if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldPaths())  # before any finder that could see an old copy
