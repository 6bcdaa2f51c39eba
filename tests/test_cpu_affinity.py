"""Stages side by side on cores of their own (`core.cpu_affinity`, `run_stages(share_cores=)`):
the shares, the pinning of every thread, the lone stage's widening, the scheduler's wiring, and
that a stage narrowed after its backend exists computes the numbers it computes unpinned."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO_ROOT
from warm_jax.core import cpu_affinity

ALLOWED = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
needs_two_cores = pytest.mark.skipif(
    not cpu_affinity.supported() or len(ALLOWED) < 2,
    reason="needs Linux thread affinity and at least two usable cores")


@pytest.mark.parametrize("cores", [[0, 1], [0, 1, 2], [3, 1, 2, 0, 7], list(range(8))])
def test_split_cores_gives_disjoint_even_shares_in_order(cores):
  for n in range(1, len(cores) + 1):
    shares = cpu_affinity.split_cores(cores, n)
    assert len(shares) == n
    assert [c for share in shares for c in share] == sorted(cores)  # disjoint, all, in order
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
  more = cpu_affinity.split_cores(cores, len(cores) + 3)
  assert all(len(share) == 1 for share in more)
  assert {share[0] for share in more} == set(cores)
  with pytest.raises(ValueError, match="at least one share"):
    cpu_affinity.split_cores(cores, 0)


_THREADED_SLEEPER = ("import threading, time; "
                     "[threading.Thread(target=time.sleep, args=(60,), daemon=True).start() "
                     "for _ in range(3)]; time.sleep(60)")


def _masks(pid):
  """{thread id: its allowed cores} of the process."""
  return {tid: os.sched_getaffinity(tid) for tid in cpu_affinity.thread_ids(pid)}


@needs_two_cores
def test_core_sharer_pins_every_thread_of_ready_stages_and_widens_a_lone_one(tmp_path):
  procs = [subprocess.Popen([sys.executable, "-c", _THREADED_SLEEPER]) for _ in range(3)]
  try:
    time.sleep(1.0)  # their threads exist
    ready = [str(tmp_path / f"ready_{i}") for i in range(3)]
    for path in ready[:2]:
      open(path, "w").close()
    first, second, unready = procs
    sharer = cpu_affinity.CoreSharer(ALLOWED[:2])
    pinned = sharer.update([(first.pid, ready[0]), (second.pid, ready[1])])
    assert pinned == {first.pid: (ALLOWED[0],), second.pid: (ALLOWED[1],)}
    for proc, core in ((first, ALLOWED[0]), (second, ALLOWED[1])):
      masks = _masks(proc.pid)
      assert len(masks) >= 4 and all(m == {core} for m in masks.values()), masks
    # a stage whose backend is not created yet (no ready file) is left on every core
    pinned = sharer.update([(first.pid, ready[0]), (unready.pid, ready[2])])
    assert pinned == {first.pid: (ALLOWED[0],)}
    assert all(m == set(ALLOWED) for m in _masks(unready.pid).values())
    # alone, a stage gets both cores back, on every thread
    second.kill()
    second.wait()
    pinned = sharer.update([(first.pid, ready[0])])
    assert pinned == {first.pid: tuple(ALLOWED[:2])}
    assert all(m == set(ALLOWED[:2]) for m in _masks(first.pid).values())
  finally:
    for proc in procs:
      proc.kill()
      proc.wait()


_NUMBERS = textwrap.dedent("""
    import hashlib, json, os, sys, time
    if sys.argv[1] == "narrowed_first":
      os.sched_setaffinity(0, {int(sys.argv[2])})
    from warm_jax.core.cpu_affinity import signal_backend_ready
    signal_backend_ready()  # with WARM_JAX_READY_FILE: the backend, then the ready file
    if sys.argv[1] == "narrowed_after":  # wait for the driver's narrowing to reach us
      deadline = time.time() + 60
      while len(os.sched_getaffinity(0)) > 1 and time.time() < deadline:
        time.sleep(0.05)
    import jax, jax.numpy as jnp, numpy as np
    k = jax.random.PRNGKey(0)
    a = jax.random.normal(k, (64, 200000))
    x, w = jax.random.normal(k, (4096, 64)), jax.random.normal(k, (64, 1024))
    outs = [jax.jit(jnp.sum)(a),
            jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2)))(w, x)]
    print(json.dumps({"cores": sorted(os.sched_getaffinity(0)),
                      "numbers": [hashlib.sha256(np.asarray(o).tobytes()).hexdigest()
                                  for o in outs]}))
""")


def _numbers(mode, tmp_path, *, narrow_to=None):
  env = dict(os.environ)
  # one CPU device, as a stage of the experiment, and no compile cache: a cached program keeps
  # the thread split it was compiled for, whatever the cores of the process that loads it
  for name in (cpu_affinity.READY_FILE_ENV, "JAX_COMPILATION_CACHE_DIR", "XLA_FLAGS"):
    env.pop(name, None)
  argv = [sys.executable, "-c", _NUMBERS, mode, str(ALLOWED[0])]
  if mode != "narrowed_after":
    return json.loads(subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True,
                                     text=True, check=True, timeout=120).stdout)
  ready, other_ready = str(tmp_path / "ready"), str(tmp_path / "other")
  open(other_ready, "w").close()
  env[cpu_affinity.READY_FILE_ENV] = ready
  other = subprocess.Popen(["sleep", "120"])  # a second stage, so that ours gets one core
  proc = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
  sharer = cpu_affinity.CoreSharer(ALLOWED[:2])
  try:
    while proc.poll() is None:
      sharer.update([(proc.pid, ready), (other.pid, other_ready)])
      time.sleep(0.05)
  finally:
    other.kill()
    other.wait()
  assert proc.returncode == 0
  return json.loads(proc.stdout.read())


@needs_two_cores
def test_a_stage_narrowed_after_its_backend_exists_computes_its_unpinned_numbers(tmp_path):
  free = _numbers("free", tmp_path)
  after = _numbers("narrowed_after", tmp_path)
  assert len(free["cores"]) >= 2 and after["cores"] == [ALLOWED[0]]
  assert after["numbers"] == free["numbers"]  # bit for bit
  # why the driver waits for the ready file: a process started on one core sizes XLA's thread
  # pool to it, and these reductions come out different
  first = _numbers("narrowed_first", tmp_path)
  if first["numbers"] == free["numbers"]:
    pytest.skip("XLA's numbers do not depend on its thread count on this machine: the "
                "control cannot tell the two orders apart here")


@needs_two_cores
def test_run_stages_gives_two_stages_side_by_side_a_core_each(tmp_path):
  """The scheduler's wiring: each stage sees WARM_JAX_READY_FILE, says its backend exists and
  is narrowed to its own core while the other runs."""
  from warm_jax import experiment
  script = textwrap.dedent("""
      import os, sys, time
      from warm_jax.core.cpu_affinity import signal_backend_ready
      everything = os.sched_getaffinity(0)
      signal_backend_ready()
      deadline = time.time() + 60
      while os.sched_getaffinity(0) == everything and time.time() < deadline:
        time.sleep(0.05)
      print(sorted(os.sched_getaffinity(0)))
      time.sleep(1.0)  # still running while the other one is narrowed
  """)
  stages = [experiment.Stage(name, [sys.executable, "-c", script], str(tmp_path / name))
            for name in ("one", "two")]
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  experiment.run_stages(stages, log_dir=str(tmp_path / "logs"), env=env, parallel=2)
  seen = [set(json.loads(open(tmp_path / "logs" / f"{name}.log").read()))
          for name in ("one", "two")]
  assert seen[0] and seen[1] and not seen[0] & seen[1], seen  # a share each, disjoint
  assert seen[0] | seen[1] == set(ALLOWED)
  assert not [f for f in os.listdir(tmp_path / "logs") if f.endswith(".ready")]
