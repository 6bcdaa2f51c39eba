"""The package's import graph: no cycles, and library code never imports the gin layer.

The graph is read from the source (every `import` / `from ... import`, inside functions too),
not from what Python happens to have imported. One thing is left out on purpose: the body of an
`if __name__ == "__main__":` block, which runs only when that file is the program
(`python -m warm_jax.X`) and never when another module imports it.
"""

import ast
import os

import pytest
from conftest import REPO_ROOT, run_cli

PACKAGE = os.path.join(REPO_ROOT, "warm_jax")
# The gin layer and the command lines: they may import anything; nothing else imports them.
GIN_LAYER = {"warm_jax.configurables", "warm_jax.gin_utils", "warm_jax.train",
             "warm_jax.evaluate", "warm_jax.experiment", "warm_jax.average", "warm_jax.convert",
             "warm_jax.seeds", "warm_jax.data.build", "warm_jax.data.on_policy",
             "warm_jax.data.policy_pairs"}


def _modules() -> dict[str, str]:
  found = {}
  for directory, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        module = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
        found[module.removesuffix(".__init__")] = path
  return found


def _is_main_block(node: ast.AST) -> bool:
  test = getattr(node, "test", None)
  return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
          and isinstance(test.left, ast.Name) and test.left.id == "__name__"
          and any(isinstance(c, ast.Constant) and c.value == "__main__"
                  for c in test.comparators))


def _imports(path: str, module: str, modules: dict[str, str]) -> set[str]:
  """The package modules `module` imports anywhere but in its `__main__` block: `from X import
  Y` counts X.Y when that is a module, else X."""
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  out, stack = set(), [ast.parse(open(path).read())]
  while stack:
    node = stack.pop()
    if _is_main_block(node):
      continue
    stack.extend(ast.iter_child_nodes(node))
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      for alias in node.names:
        out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
  return {m for m in out if m in modules and m != module}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(path, m, modules) for m, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_cycle_finder_finds_a_known_cycle_and_none_in_a_chain():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_package_has_no_import_cycle():
  graph = _graph()
  assert "warm_jax.pipeline.run" in graph and graph["warm_jax.train"], "the graph was not read"
  assert _cycles(graph) == []


def test_library_code_never_imports_the_gin_layer():
  graph = _graph()
  offenders = {m: sorted(graph[m] & GIN_LAYER) for m in graph
               if m not in GIN_LAYER and graph[m] & GIN_LAYER}
  assert offenders == {}


MAX_MODULE_LINES = 600


def test_no_module_is_over_600_lines():
  """Issue 15's readability rule: a module over 600 lines holds more than one concern; split it
  (the RL loop into config / rollout / evaluation / state / loop was the last one)."""
  long = {m: n for m, path in _modules().items()
          if (n := sum(1 for _ in open(path))) > MAX_MODULE_LINES}
  assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_every_training_program_runs_on_the_one_training_loop():
  """The trainer, the vmapped members and RL call `training_loop.run_training_loop`, and none
  of them keeps a loop of its own (its SIGTERM handling, fault hook or checkpoint wait)."""
  graph = _graph()
  for module in ("warm_jax.core.trainer", "warm_jax.rm.vmapped_members",
                 "warm_jax.policy.rl.loop"):
    assert "warm_jax.core.training_loop" in graph[module], module
  own = [m for m, path in _modules().items() if m != "warm_jax.core.training_loop"
         and any(name in open(path).read()
                 for name in ("signal.SIGTERM", "SigtermFlag(", "maybe_inject_fault("))]
  assert not own, f"modules handling SIGTERM / the fault hook outside the loop: {own}"


# The layers, bottom up: a module may import its own layer and the ones below, never above.
LAYERS = (("warm_jax._moved", "warm_jax.core", "warm_jax.models", "warm_jax.data"),
          ("warm_jax.rm", "warm_jax.merging", "warm_jax.policy", "warm_jax.hf"),
          ("warm_jax.pipeline",))


def _layer(module: str) -> int | None:
  for level, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return level
  return None


def test_the_layout_layers_import_downwards_only():
  """`core`, `models`, `data` (the foundation) never import a stage package (`rm`, `merging`,
  `policy`, `hf`), and no stage package imports `pipeline`; the command lines and the gin layer
  are above everything (test_library_code_never_imports_the_gin_layer)."""
  graph = _graph()
  up = sorted((m, d) for m, deps in graph.items() if m not in GIN_LAYER
              for d in deps if _layer(m) is not None and _layer(d) is not None
              and _layer(d) > _layer(m))
  assert not up, f"imports pointing up a layer: {up}"
  assert _layer("warm_jax.core.trainer") == 0 and _layer("warm_jax.policy.rl.loop") == 1
  assert _layer("warm_jax.pipeline.plan") == 2 and _layer("warm_jax.train") is None


def test_every_library_module_sits_in_a_layer():
  """Nothing but the command lines, the gin layer and the package root sits at the top of
  warm_jax/: the library is in core/, models/, data/, rm/, merging/, policy/, hf/, pipeline/."""
  loose = sorted(m for m in _modules() if m not in GIN_LAYER and _layer(m) is None
                 and m not in ("warm_jax", "warm_jax.cli_errors"))
  assert not loose, f"modules outside the layout's packages: {loose}"


def test_old_flat_import_paths_are_aliases_of_the_moved_modules():
  """Code written against the flat layout (`warm_jax.trainer`, `from warm_jax import rl`,
  `warm_jax.rl.config`) gets the moved module itself, not a copy."""
  import importlib

  import warm_jax
  from warm_jax import _moved
  for old, new in _moved.MOVED.items():
    assert importlib.import_module(old) is importlib.import_module(new), old
  from warm_jax import rl as old_rl  # noqa: F401  (the attribute form)
  assert importlib.import_module("warm_jax.rl.config") is importlib.import_module(
      "warm_jax.policy.rl.config")
  assert warm_jax.trainer is importlib.import_module("warm_jax.core.trainer")


# Every program a user or an existing run's commands.sh calls, with a phrase of its help text.
PROGRAMS = {
    "warm_jax.train": "gin", "warm_jax.evaluate": "gin", "warm_jax.experiment": "gin",
    "warm_jax.average": "--inputs", "warm_jax.convert": "hf", "warm_jax.seeds": "seed",
    "warm_jax.data.build": "gin", "warm_jax.data.on_policy": "policy samples",
    "warm_jax.data.policy_pairs": "policy",
}


@pytest.mark.slow
@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_documented_program_still_runs_from_its_old_path(program):
  """The layout moved the library, not the programs: `python -m <program> --help` works for
  every command line the README, the docs and old runs' commands.sh name."""
  proc = run_cli(["-m", program, "--help"], timeout=120)
  assert proc.returncode == 0, f"{program}: {proc.returncode}\n{proc.stderr[-2000:]}"
  assert PROGRAMS[program].lower() in (proc.stdout + proc.stderr).lower(), proc.stdout[:500]
