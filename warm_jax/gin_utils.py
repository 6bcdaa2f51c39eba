"""Command-line gin handling shared by the `python -m warm_jax.*` entry points (t5x style).

Flags understood by `parse_gin_flags`:
  --gin_file=F (repeatable; later files override earlier ones)
  --gin.NAME=VALUE        one binding, e.g. --gin.MODEL_DIR="'/tmp/run'" or
                          --gin.OptimizerConfig.learning_rate=1e-4
  --gin_bindings=B        one or more bindings separated by newlines (repeatable)
  --gin_search_paths=P    comma-separated dirs where gin files and their includes are found

Gin files are found relative to the current directory, the repository root (the directory
holding `gin/`), and any --gin_search_paths. An unknown configurable or parameter is gin's own
error; a `--gin.NAME` macro that no configuration references (a typo like TRAIN_STEP) is an
error too, since gin would accept it silently.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tokenize
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin
from gin import config as gin_config

from warm_jax.cli_errors import print_error
from warm_jax.core.run_dir import write_operative_config  # noqa: F401

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GinConfigError(ValueError):
  """A gin file or binding is malformed, unknown, or references something that doesn't exist."""


def setup_logging(*, quiet_absl: bool = False) -> None:
  """Every command line's logging: timestamped lines at WARM_JAX_LOGLEVEL (default INFO);
  quiet_absl drops absl's per-call INFO lines (orbax narrates every save, seqio every task)."""
  logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger().setLevel(os.environ.get("WARM_JAX_LOGLEVEL", "INFO"))
  if quiet_absl:
    logging.getLogger("absl").setLevel(logging.WARNING)


def host_program() -> None:
  """The host-only command lines (the averager, the converter): jax (imported by orbax) stays
  off any accelerator, and TensorStore's reading threads share two heap arenas, so that the
  buffers they free are reused by the next reads and peak memory stays flat in the number of
  checkpoints read (`warm_jax.merging.memory`)."""
  import jax

  from warm_jax.merging import memory
  jax.config.update("jax_platforms", "cpu")
  memory.share_heap_arenas()


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
  """(gin_files, bindings, search_paths, other_args) from raw argv (without argv[0])."""
  files, bindings, paths, rest = [], [], [], []
  it = iter(argv)
  for arg in it:
    def value(flag):
      if arg.startswith(flag + "="):
        return arg[len(flag) + 1:]
      try:
        return next(it)
      except StopIteration:
        raise GinConfigError(f"{flag} needs a value") from None
    if arg == "--gin_file" or arg.startswith("--gin_file="):
      files.append(value("--gin_file"))
    elif arg == "--gin_bindings" or arg.startswith("--gin_bindings="):
      bindings.extend(b for b in value("--gin_bindings").split("\n") if b.strip())
    elif arg == "--gin_search_paths" or arg.startswith("--gin_search_paths="):
      paths.extend(p for p in value("--gin_search_paths").split(",") if p)
    elif arg.startswith("--gin."):
      name, sep, val = arg[len("--gin."):].partition("=")
      if not sep:
        raise GinConfigError(f"{arg}: expected --gin.NAME=VALUE")
      bindings.append(f"{name} = {val}")
    else:
      rest.append(arg)
  return files, bindings, paths, rest


def _referenced_macros() -> set[str]:
  found: set[str] = set()

  def walk(value: Any):
    if isinstance(value, gin_config.ConfigurableReference):
      selector = value.scoped_selector
      if selector.endswith("/gin.macro"):
        found.add(selector[: -len("/gin.macro")].split("/")[-1])
    elif isinstance(value, (list, tuple, set)):
      for v in value:
        walk(v)
    elif isinstance(value, dict):
      for v in value.values():
        walk(v)

  for params in gin_config._CONFIG.values():  # pylint: disable=protected-access
    for v in params.values():
      walk(v)
  return found


def parse_gin(files: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings; raises GinConfigError with the offending input named."""
  for path in [*search_paths, os.getcwd(), REPO_ROOT]:
    gin.add_config_file_search_path(path)
  for f in files:
    if not any(os.path.exists(os.path.join(p, f)) for p in ["", *search_paths, os.getcwd(),
                                                             REPO_ROOT]):
      raise GinConfigError(f"gin file {f} not found (looked in the current directory, "
                           f"{REPO_ROOT} and --gin_search_paths)")
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)
  except (ValueError, KeyError, SyntaxError, IOError, tokenize.TokenError) as e:
    raise GinConfigError(f"bad gin configuration ({', '.join(files) or 'no files'}; "
                         f"bindings {list(bindings)}): {e}") from e
  macros = [b.split("=", 1)[0].strip() for b in bindings]
  macros = [m for m in macros if re.fullmatch(r"[A-Z_][A-Z0-9_]*", m)]
  referenced = _referenced_macros()
  unknown = [m for m in macros if m not in referenced]
  if unknown:
    raise GinConfigError(
        f"--gin.{unknown[0]} sets a macro that no configuration uses (typo?). Macros in use: "
        f"{', '.join(sorted(referenced)) or 'none'}")


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a terminated job
PEER_FAILURE_EXIT_CODE = 1  # another process of a jax.distributed job died


def function_main(fn: Any, argv: Sequence[str] | None, *, doc: str, example: str) -> int:
  """`gin_main` for an entry point whose function `configurables.register` does not list (a
  stage module that registers only itself, keeping its imports out of every other program):
  makes `fn` a gin configurable under its own name, quiets absl's per-call INFO lines (orbax,
  seqio) and runs it."""
  try:
    gin.get_configurable(fn.__name__)
  except ValueError:
    gin.external_configurable(fn, module=None)
  logging.getLogger("absl").setLevel(logging.WARNING)
  return gin_main(argv, entry=fn.__name__, doc=doc, example=example)


def command_line_flags(rest: Sequence[str], flags: Mapping[str, str]
                       ) -> tuple[list[str], list[str], bool, bool]:
  """(gin bindings, the flags given, --multihost, --help) from the arguments that are not gin
  flags. `flags` maps a program's own flag to the gin binding it stands for: a template with
  `{value!r}` takes a value (`--flag=V` or `--flag V`), one without is a switch; e.g.
  {"--output_dir": "OUTPUT_DIR = {value!r}", "--dry_run": "run_experiment.dry_run = True"}.
  Raises GinConfigError naming an unknown argument and what is expected."""
  bindings, given, multihost, help_asked = [], [], False, False
  it = iter(rest)
  for arg in it:
    name, sep, value = arg.partition("=")
    if arg in ("--multihost", "--distributed"):
      multihost = True
    elif arg in ("-h", "--help"):
      help_asked = True
    elif name in flags:
      template = flags[name]
      if "{value" in template:
        if not sep:
          value = next(it, None)
          if value is None:
            raise GinConfigError(f"{name} needs a value")
        bindings.append(template.format(value=value))
      elif sep:
        raise GinConfigError(f"{name} takes no value")
      else:
        bindings.append(template)
      given.append(name)
    else:
      expected = ", ".join(["--gin_file", "--gin.NAME=VALUE", "--gin_bindings",
                            "--gin_search_paths", *flags])
      raise GinConfigError(f"unknown argument {arg!r}; expected {expected} or --multihost")
  return bindings, given, multihost, help_asked


def gin_main(argv: Sequence[str] | None, *, entry: str, doc: str, example: str,
             flags: Mapping[str, str] | None = None, required: Sequence[str] = (),
             bindings: Sequence[str] = (),
             on_result: Callable[[Any], None] | None = None) -> int:
  """The body of every gin-configured `python -m warm_jax.*` entry point (the one gin front
  end: train, evaluate, experiment, the data build, the stand-alone stage modules; the
  averager parses its own flags and then runs through `run_entry` too).

  Parses the gin flags, --multihost and the program's own `flags` (`command_line_flags`: each
  one a gin binding; `required` ones must be given; `bindings` are the program's own, applied
  last), and runs the configurable `entry` with `run_entry` (then `on_result` with what it
  returned). Exit codes: 2 for a bad command line or gin config (nothing was run), 1 for a
  failure while running (the traceback is logged at DEBUG level: set WARM_JAX_LOGLEVEL=DEBUG)
  or when another process of a multi-process job died (exiting at once rather than waiting in
  jax's shutdown barrier), 143 for a preemption (a checkpoint was saved).
  """
  from warm_jax.core.partitioning import maybe_initialize_distributed

  argv = list(sys.argv[1:] if argv is None else argv)
  setup_logging()
  try:
    files, user_bindings, paths, rest = split_gin_args(argv)
    extra, given, distributed, help_asked = command_line_flags(rest, flags or {})
  except GinConfigError as e:
    print_error(str(e))
    return 2
  if help_asked:
    print(doc)
    return 0
  if not files:
    print_error(f"no --gin_file given (e.g. {example})")
    return 2
  missing = [flag for flag in required if flag not in given]
  if missing:
    print_error(f"no {missing[0]} given")
    return 2
  maybe_initialize_distributed(enable=distributed or None)
  return run_entry(entry, files=files, bindings=[*user_bindings, *extra, *bindings],
                   paths=paths, on_result=on_result)


def run_entry(entry: str, *, files: Sequence[str], bindings: Sequence[str],
              paths: Sequence[str] = (), kwargs: Mapping[str, Any] | None = None,
              required: Mapping[str, str] | None = None,
              on_result: Callable[[Any], None] | None = None,
              refusal_note: str | None = None) -> int:
  """Registers the configurables, parses gin, calls the configurable `entry` with `kwargs`
  (which win over its gin bindings) and maps failures to one clear message and an exit code
  (`gin_main`'s: 2 bad config, 1 failure or a dead peer, 143 preemption).

  required: {keyword: flag}: a keyword `entry` needs, either given in `kwargs` (the program's
    flag) or bound in gin; neither is a usage error naming the flag.
  refusal_note: a line added to the message of a refused run unless it already says it
    (the averager: "nothing was written").
  """
  from warm_jax import configurables
  from warm_jax.core.checkpoints import CheckpointError
  from warm_jax.core.partitioning import is_peer_failure
  from warm_jax.core.training_loop import NonFiniteError, Preempted

  kwargs = dict(kwargs or {})
  configurables.register()
  try:
    parse_gin(files, bindings, paths)
  except GinConfigError as e:
    print_error(str(e))
    return 2
  for keyword, flag in (required or {}).items():
    if keyword not in kwargs and not _gin_binds(f"{entry}.{keyword}"):
      print_error(f"no {flag} (nor {entry}.{keyword} in gin); see --help")
      return 2
  try:
    with gin.unlock_config():
      result = gin.get_configurable(entry)(**kwargs)
  except Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    return PREEMPTED_EXIT_CODE
  except Exception as e:  # pylint: disable=broad-except
    if is_peer_failure(e):  # another process died: one line, exit at once
      _exit_after_peer_failure(e)
    if not isinstance(e, (ValueError, CheckpointError, NonFiniteError, OSError)):
      raise  # a bug: keep the traceback
    logging.debug("%s failed", entry, exc_info=True)
    message = error_message(e)
    if refusal_note and refusal_note not in message:
      message += f"\n{refusal_note}"
    print_error(f"{type(e).__name__}: {message}")
    return 1
  # the stage profile: the model FLOPs this run executed, where the experiment driver asks
  # (WARM_JAX_STAGE_FLOPS_FILE; write_stage_flops writes nothing without it or when no model
  # program ran). Counts come from global shapes: every process has the whole job's; process 0
  # writes.
  import jax
  from warm_jax.core import flops as flops_lib
  if jax.process_index() == 0:
    flops_lib.write_stage_flops()
  if on_result is not None:
    on_result(result)
  return 0


def _gin_binds(name: str) -> bool:
  """Whether the parsed gin config binds `configurable.parameter`."""
  try:
    gin.query_parameter(name)
  except ValueError:
    return False
  return True


def error_message(error: BaseException) -> str:
  """The error's message without gin's "In call to configurable ..." trail; an OSError (disk
  full, unwritable or missing path) gets the fix."""
  message = str(error).split("\n  In call to configurable")[0]
  if isinstance(error, OSError) and error.errno is not None:
    message += (" (a file system error: check that the path exists, is writable and has free "
                "space; a rerun resumes from the last complete checkpoint)")
  return message


def _exit_after_peer_failure(error: BaseException) -> None:
  """Reports and exits at once. A normal exit would run `jax.distributed.shutdown`, whose
  barrier waits for the dead process until the heartbeat timeout and then aborts."""
  import jax
  first_line = error_message(error).strip().splitlines()[0]
  print_error(f"{type(error).__name__} in process {jax.process_index()} of "
              f"{jax.process_count()}: {first_line}\nAnother process of this jax.distributed "
              "job probably stopped (crashed, killed or preempted): check its log. Restart all "
              "processes with the same command: they resume from the last complete checkpoint.")
  logging.shutdown()
  sys.stdout.flush()
  os._exit(PEER_FAILURE_EXIT_CODE)  # pylint: disable=protected-access
