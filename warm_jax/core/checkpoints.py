"""Orbax checkpoints: training state, params-only trees, and init-from-checkpoint with a map.

Where it sits: every training stage keeps its state under `MODEL_DIR/checkpoints/<step>/` with
two plain orbax PyTree items:

  params/     the model parameters -- what WARM averages, BoN/RL load, and a user restores
              with orbax alone: `ocp.StandardCheckpointer().restore(".../<step>/params")`
  opt_state/  the optimizer state (only needed to resume training)

The training step is the directory name; the data position is a function of the step, so
nothing else is needed to resume exactly. Saves are asynchronous and atomic (orbax writes to a
temporary directory and renames it when complete), so a SIGKILL mid-save leaves the previous
checkpoint as the latest readable one.

`init_from_checkpoint` builds a new model's params from another model's checkpoint with a
t5x-style assignment map: how an SFT LM becomes a reward model (backbone copied, head new).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from warm_jax.core import partitioning
# The small-file helpers are run_dir's; imported here for the modules that use them as ckpt_lib.*
from warm_jax.core.run_dir import atomic_write_text, read_json  # noqa: F401

PARAMS_ITEM = "params"
OPT_STATE_ITEM = "opt_state"
CHECKPOINTS_SUBDIR = "checkpoints"
# Whether params/opt_state checkpoints are written with orbax's zstd. Off: float weights
# barely compress (zstd saved 7.5% of a 110M reward model) while decompressing costs ~1.5
# CPU-s/GB at every restore and every `python -m warm_jax.average` read (docs/averaging.md).
# Either way orbax restores the checkpoint (the codec is recorded in each array's metadata),
# so checkpoints written before this default changed still load and average.
COMPRESS_CHECKPOINTS = False


class CheckpointError(RuntimeError):
  """A checkpoint is missing, unreadable or does not fit the model."""


class CheckpointWriteError(CheckpointError, OSError):
  """A checkpoint could not be written (disk full, unwritable dir); earlier ones are intact."""


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def write_failure_reason(error: BaseException) -> str:
  """One line saying why a checkpoint write failed, with the operating system's cause named.

  The same fault reaches us in several wrappings: an OSError, a TensorStore status raised as
  ValueError ("OUT_OF_RANGE: Error writing ... [os_error_code='27']"), or an asyncio error
  whose own first line is generic and whose cause sits in a later line or in the exception's
  __cause__ / __context__. The first line of `error` is kept; the OS cause (errno and its
  text, e.g. "File too large", "No space left on device") is found anywhere in the chain and
  appended when that line does not already name it, so the message says the same thing
  whichever layer reported it."""
  text = str(error).strip()
  first = text.splitlines()[0] if text else type(error).__name__
  seen: set[int] = set()
  chain: list[BaseException] = []
  pending: list[BaseException | None] = [error]
  while pending:
    e = pending.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    chain.append(e)
    pending += [e.__cause__, e.__context__]
    pending += list(getattr(e, "exceptions", ()))  # an ExceptionGroup's members
  for e in chain:
    code = e.errno if isinstance(e, OSError) and isinstance(e.errno, int) else None
    if code is None:
      match = _OS_ERROR_CODE.search(str(e))
      code = int(match.group(1)) if match else None
    if code:
      cause = os.strerror(code)
      return first if cause in first else f"{first} ({cause}, errno {code})"
  return first


def remove_unfinished_saves(directory: epath.Path) -> list[str]:
  """Deletes the temporary dirs of saves that never completed (a process killed mid-write
  leaves `<step>.orbax-checkpoint-tmp*`); complete `<step>` dirs are untouched. Returns the
  names removed."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  removed = []
  for path in sorted(directory.iterdir()):
    if ".orbax-checkpoint-tmp" in path.name:
      path.rmtree(missing_ok=True) if path.is_dir() else path.unlink(missing_ok=True)
      removed.append(path.name)
  if removed:
    logging.info("removed unfinished checkpoint saves in %s: %s", directory, ", ".join(removed))
  return removed


def standard_handler(*, compress: bool | None = None) -> ocp.StandardCheckpointHandler:
  """orbax's StandardCheckpointHandler, writing zstd-compressed arrays only if `compress`
  (default COMPRESS_CHECKPOINTS). The handler has no compression switch of its own; the
  PyTreeCheckpointHandler it delegates to does, so that one is built with it."""
  compress = COMPRESS_CHECKPOINTS if compress is None else compress
  handler = ocp.StandardCheckpointHandler()
  if not compress:
    handler._impl = ocp.PyTreeCheckpointHandler(  # pylint: disable=protected-access
        save_concurrent_gb=96, restore_concurrent_gb=96, use_ocdbt=True,
        use_compression=False)
  return handler


class TrainCheckpointer:
  """A CheckpointManager over MODEL_DIR/checkpoints with params and opt_state items.

  Args:
    model_dir: the stage's output directory.
    save_every: save when step % save_every == 0 (and whenever `save(force=True)`).
    keep: how many recent checkpoints to keep (None: all).
    async_save: write in a background thread while training continues.
    compress: zstd-compress the arrays (default COMPRESS_CHECKPOINTS: no).
  """

  def __init__(self, model_dir: str, *, save_every: int, keep: int | None = 3,
               async_save: bool = True, compress: bool | None = None):
    self.directory = epath.Path(os.path.abspath(model_dir)) / CHECKPOINTS_SUBDIR
    if jax.process_index() == 0:
      remove_unfinished_saves(self.directory)
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_every,
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        create=True,
        # Unfinished saves are removed above, before the manager exists: orbax's own cleanup
        # runs in a background thread and can delete the temporary dir of the first new save
        # of the same step (seen when resuming after a SIGKILL mid-save).
        cleanup_tmp_directories=False,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={name: standard_handler(compress=compress)
                       for name in (PARAMS_ITEM, OPT_STATE_ITEM)})
    self._in_flight: int | None = None  # the step of an asynchronous save not yet waited for

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> Sequence[int]:
    return self.manager.all_steps()

  def save(self, step: int, params: Any, opt_state: Any, *, force: bool = False) -> bool:
    """Saves (asynchronously if configured) when `step` is due or `force`; a failed write
    (this one or the previous asynchronous one) raises CheckpointWriteError."""
    if not (force or self.manager.should_save(step)):
      return False
    self.wait()  # orbax waits for the previous save here anyway; this names its failure
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**{
          PARAMS_ITEM: ocp.args.StandardSave(params),
          OPT_STATE_ITEM: ocp.args.StandardSave(opt_state),
      }), force=force)
    except (OSError, ValueError) as e:
      raise self._write_error(step, e) from e
    self._in_flight = step if saved else None
    return saved

  def restore(self, step: int, abstract_params: Any, abstract_opt_state: Any
              ) -> tuple[Any, Any]:
    """Restores (params, opt_state) at `step` onto the shardings of the abstract trees."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**{
          PARAMS_ITEM: ocp.args.StandardRestore(abstract_params),
          OPT_STATE_ITEM: ocp.args.StandardRestore(abstract_opt_state),
      }))
    except (ValueError, KeyError, OSError) as e:
      earlier = [s for s in self.complete_steps() if s < step]
      damaged = (f"delete {self.directory / str(step)} to resume from step {earlier[-1]}"
                 if earlier else f"delete {self.directory} to start over")
      raise CheckpointError(
          f"cannot restore step {step} from {self.directory}: {e}\nEither the checkpoint "
          f"does not match this model/optimizer config (resume with the config it was written "
          f"with, see config.gin beside it, or use a new MODEL_DIR), or its files are damaged "
          f"({damaged}).") from e
    return restored[PARAMS_ITEM], restored[OPT_STATE_ITEM]

  def wait(self):
    """Blocks until an asynchronous save is on disk; raises CheckpointWriteError if it failed."""
    try:
      self.manager.wait_until_finished()
    except (OSError, ValueError) as e:
      raise self._write_error(self._in_flight, e) from e
    self._in_flight = None

  def complete_steps(self) -> list[int]:
    """The steps whose checkpoint is complete on disk (orbax publishes a step dir by renaming
    its temporary dir, so a `<step>` dir exists only once fully written)."""
    if not self.directory.is_dir():
      return []
    return sorted(int(p.name) for p in self.directory.iterdir()
                  if p.name.isdigit() and p.is_dir())

  def _write_error(self, step: int | None, error: BaseException) -> CheckpointWriteError:
    complete = self.complete_steps()
    kept = (f"the last complete checkpoint is step {complete[-1]}, intact" if complete
            else "no checkpoint had been written yet")
    what = f"step {step}" if step is not None else "a step"
    reason = write_failure_reason(error)
    return CheckpointWriteError(
        f"writing the checkpoint of {what} to {self.directory} failed: {reason}. Nothing of "
        f"that step was published (orbax writes to a temporary dir and renames it when "
        f"complete); {kept}. Free disk space or make the directory writable, then rerun the "
        "same command: it resumes from the last complete checkpoint.")

  def close(self):
    self.manager.close()

  def finish(self, error: BaseException | None = None) -> None:
    """Ends a training loop's use of the checkpointer; call it from the loop's `finally` with
    the exception propagating (None when the loop completed).

    Normally waits for the asynchronous save in flight (raising CheckpointWriteError if it
    failed) and closes the manager. After a peer failure (`error` says another process of
    this multi-process run died: `partitioning.is_peer_failure`) it does neither: orbax's
    background save waits in coordination-service barriers for every process, and
    `wait_until_finished` / `close` join it, so the survivor would block until the dead
    process's heartbeat timeout and then be aborted by jax (SIGABRT with a traceback instead
    of the caller's one-line error). The save is abandoned instead: the survivor exits at
    once (`gin_utils.gin_main`), the last complete checkpoint stays the latest, and the
    unfinished `<step>.orbax-checkpoint-tmp` dir is removed when the run is restarted
    (`remove_unfinished_saves`)."""
    if partitioning.is_peer_failure(error):
      if self._in_flight is not None and self._in_flight not in self.complete_steps():
        logging.warning("not waiting for the checkpoint save of step %d in %s: another process "
                        "of this multi-process run failed, so its barriers cannot complete",
                        self._in_flight, self.directory)
      return
    self.wait()
    self.close()


# Where the params of each experiment stage dir are (warm_jax.experiment's layout):
#   sft, pretrain, members/<setting>/member_<i>, rl/<reward>, probe/<setting>: a training
#     stage's MODEL_DIR -> checkpoints/<latest step>/params (an RL run: its latest step, not
#     the best-evaluated one that win rates pick; pass checkpoints/<step> for another)
#   average/warm_<M>: the averager's output in checkpoint/ (a plain orbax dir + manifest.json)
#   an import (`python -m warm_jax.convert --from hf`): params/
AVERAGE_CHECKPOINT_SUBDIR = "checkpoint"
_WHAT_TO_PASS = ("a stage's model dir (an experiment stage dir: sft, members/clean/member_0, "
                 "average/warm_6, rl/warm_6), its checkpoints/<step> dir, or a plain orbax "
                 "checkpoint dir")
_MAX_SUGGESTIONS = 8


def _is_orbax_dir(p: epath.Path) -> bool:
  return (p / "_METADATA").exists() or (p / "_CHECKPOINT_METADATA").exists()


def _params_at(p: epath.Path, looked: list[str]) -> epath.Path | None:
  """The params checkpoint `p` names in the layouts of one training stage or one plain save
  (MODEL_DIR -> latest step -> params/; checkpoints/ -> latest step; <step>/ -> params/; a
  dir with params/; a plain orbax dir), or None; every path tried is added to `looked`."""
  looked.append(str(p))
  if (p / CHECKPOINTS_SUBDIR).is_dir():
    p = p / CHECKPOINTS_SUBDIR
    looked.append(str(p))
  steps = sorted(int(c.name) for c in p.iterdir() if c.is_dir() and c.name.isdigit()) \
      if p.is_dir() else []
  if steps:
    p = p / str(steps[-1])
    looked.append(str(p))
  if (p / PARAMS_ITEM).is_dir():
    p = p / PARAMS_ITEM
    looked.append(str(p))
  return p if _is_orbax_dir(p) else None


def _checkpoints_below(root: epath.Path, *, depth: int = 3) -> tuple[list[str], int]:
  """Dirs under `root` (at most `depth` levels down, shallowest first) that
  `resolve_params_path` accepts: what to pass instead of a dir that holds none itself (an
  experiment's root, members/clean). Returns (the first _MAX_SUGGESTIONS, how many more)."""
  found: list[str] = []
  level = [root]
  for _ in range(depth):
    below = []
    for p in level:
      for child in sorted(c for c in p.iterdir() if c.is_dir()):
        if child.name in (CHECKPOINTS_SUBDIR, PARAMS_ITEM) or child.name.isdigit() \
            or ".orbax-checkpoint-tmp" in child.name:
          continue
        if (_params_at(child, []) is not None
            or _params_at(child / AVERAGE_CHECKPOINT_SUBDIR, []) is not None):
          found.append(str(child))
        else:
          below.append(child)
    level = below
  return found[:_MAX_SUGGESTIONS], max(0, len(found) - _MAX_SUGGESTIONS)


def resolve_params_path(path: str) -> epath.Path:
  """The params checkpoint dir a user's path names: the ONE resolver of every program that reads
  a checkpoint (`load_params`, the averager's `CheckpointReader`, convert's export, evaluate's
  member paths, the stage gins' *_DIR inputs).

  Accepts an experiment stage dir (sft, members/clean/member_0, rl/warm_6: the latest step;
  average/warm_6: its checkpoint/), a stage's MODEL_DIR, its checkpoints/ or checkpoints/<step>
  dir, an import dir (params/), or a plain orbax PyTree dir. Otherwise raises CheckpointError
  naming every path it looked at and, when dirs below hold checkpoints, the ones to pass."""
  p = epath.Path(os.path.abspath(path))  # orbax refuses relative paths
  if not p.exists():
    raise CheckpointError(f"checkpoint path {path} does not exist: pass {_WHAT_TO_PASS}")
  looked: list[str] = []
  found = _params_at(p, looked)
  if found is None and (p / AVERAGE_CHECKPOINT_SUBDIR).is_dir():
    found = _params_at(p / AVERAGE_CHECKPOINT_SUBDIR, looked)
  if found is not None:
    return found
  if (p / CHECKPOINTS_SUBDIR).is_dir():
    raise CheckpointError(
        f"no orbax checkpoint found at {path} (looked at {', '.join(looked)}): its "
        f"{CHECKPOINTS_SUBDIR}/ holds no complete step; a run that was killed before its "
        "first save has none: train longer or pass another dir")
  below, more = _checkpoints_below(p) if p.is_dir() else ([], 0)
  more_text = f" (and {more} more)" if more else ""
  hint = (f"checkpoints below it: {', '.join(below)}{more_text}; pass one of them" if below
          else f"pass {_WHAT_TO_PASS}")
  raise CheckpointError(f"no orbax checkpoint found at {path} (looked at "
                        f"{', '.join(looked)}): {hint}")


def load_params(path: str, abstract_params: Any | None = None) -> Any:
  """Restores a params tree with orbax.

  Without `abstract_params` every leaf comes back as a host numpy array, whatever topology
  wrote the checkpoint (a 4-process pod checkpoint loads on a laptop). With it (a tree of
  jax.ShapeDtypeStruct carrying shardings), leaves are restored straight onto those devices.
  """
  p = resolve_params_path(path)
  try:
    if abstract_params is not None:
      return ocp.StandardCheckpointer().restore(p, abstract_params)
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(p)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree_util.tree_map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(p, args=ocp.args.PyTreeRestore(restore_args=restore_args))
  except (ValueError, KeyError, OSError) as e:
    raise CheckpointError(f"cannot restore params from {p}: {e}; the checkpoint is incomplete "
                          "or corrupt: use another step or rewrite it") from e


def save_params(params: Any, path: str, *, force: bool = False,
                compress: bool | None = None) -> None:
  """Writes a plain orbax PyTree checkpoint of `params` (atomic: tmp dir, then rename);
  zstd-compressed only if `compress` (default COMPRESS_CHECKPOINTS: no)."""
  p = epath.Path(os.path.abspath(path))  # orbax refuses relative paths
  if p.exists() and not force:
    raise CheckpointError(f"{path} already exists; pick a new output path (nothing was "
                          "overwritten)")
  checkpointer = ocp.Checkpointer(standard_handler(compress=compress))
  checkpointer.save(p, args=ocp.args.StandardSave(params), force=force)
  checkpointer.close()


def _path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def flatten_params(tree: Any) -> dict[str, Any]:
  """{'decoder/layer_0/mlp/wi/kernel': leaf, ...}"""
  return {_path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def init_from_checkpoint(target_params: Any, source_params: Any,
                         assignment_map: Sequence[tuple[str, str | None]] = (),
                         *, source_name: str = "source") -> tuple[Any, dict[str, list[str]]]:
  """New params whose leaves are copied from `source_params` according to `assignment_map`.

  For each target leaf path (e.g. 'decoder/layer_0/mlp/wi/kernel') the first rule whose regex
  fully matches decides: a replacement string (re.sub syntax, e.g. r'decoder/\\1') names the
  source leaf to copy; None keeps the target's fresh initialisation. With no matching rule, the
  leaf is copied from the same path if the source has it, else kept fresh.

  The SFT -> RM map is [(r'reward_head/.*', None)]: every decoder leaf copied, head fresh.
  Returns (params, report) with report keys 'copied', 'fresh', 'unused_source'.
  Raises CheckpointError naming the leaf on a missing source leaf or a shape/dtype mismatch.
  """
  source = flatten_params(source_params)
  rules = [(re.compile(pattern), repl) for pattern, repl in assignment_map]
  used, report = set(), {"copied": [], "fresh": [], "unused_source": []}

  def assign(path, target_leaf):
    name = _path_str(path)
    src_name = name
    for regex, repl in rules:
      if regex.fullmatch(name):
        if repl is None:
          report["fresh"].append(name)
          return target_leaf
        src_name = regex.sub(repl, name)
        if src_name not in source:
          raise CheckpointError(f"assignment map sends target {name} to {source_name} leaf "
                                f"{src_name}, which does not exist")
        break
    else:
      if name not in source:
        report["fresh"].append(name)
        return target_leaf
    value = source[src_name]
    if tuple(value.shape) != tuple(target_leaf.shape):
      raise CheckpointError(
          f"{source_name} leaf {src_name} has shape {tuple(value.shape)} but the target model's "
          f"{name} has {tuple(target_leaf.shape)}: the checkpoint comes from another "
          "architecture; use the model gin file it was trained with")
    if np.dtype(value.dtype) != np.dtype(target_leaf.dtype):
      raise CheckpointError(f"{source_name} leaf {src_name} has dtype {value.dtype} but the "
                            f"target's {name} has {target_leaf.dtype}")
    check_finite_leaf(source_name, src_name, value)
    used.add(src_name)
    report["copied"].append(name)
    sharding = getattr(target_leaf, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else value

  out = jax.tree_util.tree_map_with_path(assign, target_params)
  report["unused_source"] = sorted(set(source) - used)
  logging.info("init_from_checkpoint: copied %d leaves, %d fresh, %d source leaves unused",
               len(report["copied"]), len(report["fresh"]), len(report["unused_source"]))
  return out, report


def check_finite_leaf(source_name: str, path: str, value: Any) -> None:
  """Refuses a float leaf with NaN/inf values: a diverged run must not seed another stage."""
  value = np.asarray(value)
  if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
    return
  bad = int(value.size - np.count_nonzero(np.isfinite(value.astype(np.float32))))
  if bad:
    raise CheckpointError(
        f"{source_name} leaf {path} has {bad} non-finite (NaN/inf) values: the checkpoint comes "
        "from a diverged run; use an earlier checkpoint of that run, or retrain it")
