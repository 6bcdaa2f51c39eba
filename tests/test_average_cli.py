"""`python -m warm_jax.average` end to end, in subprocesses: flags and gin, exit codes, peak
memory as M grows, SIGKILL mid-write, and a checkpoint written by two jax processes."""

import io
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap

import gin
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import REPO_ROOT, run_cli
from warm_jax import average
from warm_jax.core import checkpoints as ckpt
from warm_jax.cli_errors import print_error
from warm_jax import merging

AVERAGE = ["-m", "warm_jax.average"]
MIB = 2**20


def _tree(seed, *, leaves=2, rows=8, cols=4):
  rng = np.random.default_rng(seed)
  tree = {"decoder": {f"layer_{i}": {"kernel": rng.standard_normal((rows, cols), np.float32)}
                      for i in range(leaves)}}
  tree["reward_head"] = {"kernel": rng.standard_normal((cols, 1), np.float32)}
  return tree


def _save_members(tmp_path, n, **kw):
  trees = [_tree(i, **kw) for i in range(n)]
  paths = []
  for i, tree in enumerate(trees):
    paths.append(str(tmp_path / f"rm_{i}"))
    ckpt.save_params(tree, paths[-1])
  return trees, paths


def _flat(path):
  return ckpt.flatten_params(ckpt.load_params(str(path)))


@pytest.fixture
def clean_gin():
  """`average.main` run in this process parses gin into the global config: reset around it."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.slow
def test_flags_and_gin_average_and_report(tmp_path, clean_gin):
  trees, paths = _save_members(tmp_path, 3)
  out = tmp_path / "warm"
  proc = run_cli(AVERAGE + ["--gin_file=gin/average.gin", f"--gin.INPUTS={paths!r}",
                            f"--gin.OUTPUT='{out}'", "--gin.StreamConfig.read_ahead=0"],
                 check=True)
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["output"] == str(out)
  manifest = json.loads((out / "manifest.json").read_text())
  assert report["content_hash"] == manifest["output"]["content_hash"]
  expected = np.mean([t["decoder"]["layer_0"]["kernel"] for t in trees], axis=0)
  np.testing.assert_allclose(_flat(out)["decoder/layer_0/kernel"], expected, rtol=1e-6,
                             atol=1e-6)
  plain = ocp.StandardCheckpointer().restore(str(out))
  np.testing.assert_allclose(plain["reward_head"]["kernel"], _flat(out)["reward_head/kernel"])
  # Flags win over gin: same inputs, interpolation at 0.25 between the first two (in process).
  out2 = tmp_path / "lmc"
  assert average.main(["--gin_file=gin/average.gin", f"--gin.OUTPUT='{out2}'", "--inputs",
                       *paths[:2], "--method", "interpolate", "--lambda", "0.25"]) == 0
  np.testing.assert_allclose(
      _flat(out2)["decoder/layer_1/kernel"],
      0.75 * trees[0]["decoder"]["layer_1"]["kernel"]
      + 0.25 * trees[1]["decoder"]["layer_1"]["kernel"], rtol=1e-6, atol=1e-6)
  assert json.loads((out2 / "manifest.json").read_text())["method_params"] == {"lam": 0.25}


@pytest.mark.slow
def test_refusals_exit_nonzero_with_a_message_and_write_nothing(tmp_path, capsys, clean_gin):
  _, paths = _save_members(tmp_path, 2)
  ckpt.save_params(_tree(9, cols=5), str(tmp_path / "other_arch"))
  out = tmp_path / "out"
  cases = [
      (["--inputs", *paths, str(tmp_path / "other_arch"), "--output", str(out)], 1,
       f"checkpoint {tmp_path / 'other_arch'} has decoder/layer_0/kernel of shape (8, 5) but "
       f"{paths[0]} has (8, 4): all members must share one architecture"),
      (["--inputs", *paths, "--output", str(out), "--method", "interpolate", "--lambda", "-1"],
       1, "lambda=-1.0 is outside [0, 1]"),
      (["--inputs", *paths, "--output", str(out), "--method", "weighted", "--weights", "0",
        "0"], 1, "are all zero"),
      (["--inputs", *paths, "--output", str(out), "--frobnicate"], 2, "unrecognized"),
      (["--inputs", *paths], 2, "no --output"),
      (["--inputs", "--output", str(out)], 2, "expected at least one argument"),
  ]
  for i, (args, code, message) in enumerate(cases):
    if i == 0:  # the real command once; the rest in process (same main, no interpreter start)
      proc = run_cli(AVERAGE + args)
      returncode, stderr = proc.returncode, proc.stderr
    else:
      returncode, stderr = average.main(args), capsys.readouterr().err
    assert returncode == code, (args, stderr)
    assert message in stderr, (args, stderr)
    assert not out.exists() and not list(tmp_path.glob("out.*"))
  assert average.main(["--help"]) == 0
  assert capsys.readouterr().out.startswith("`python -m")


def test_head_none_averages_models_without_a_reward_head(tmp_path, capsys):
  paths = []
  for i in range(2):
    paths.append(str(tmp_path / f"policy_{i}"))
    ckpt.save_params({"decoder": {"w": np.full(3, float(i), np.float32)}}, paths[-1])
  assert average.main(["--inputs", *paths, "--output", str(tmp_path / "a")]) == 1
  assert "has no reward_head leaves" in capsys.readouterr().err
  assert average.main(["--inputs", *paths, "--output", str(tmp_path / "b"), "--head",
                       "none"]) == 0
  np.testing.assert_allclose(_flat(tmp_path / "b")["decoder/w"], [0.5, 0.5, 0.5])


def _peak_rss(manifest_dir):
  return json.loads((manifest_dir / "manifest.json").read_text())["peak_rss_bytes"]


@pytest.mark.slow
def test_peak_memory_stays_near_one_model_as_members_grow(tmp_path):
  # A ~40 MB model in 4 leaves of 10 MB; M = 2, 4, 8 members.
  rows = 10 * MIB // (4 * 256)
  _, paths = _save_members(tmp_path, 8, leaves=4, rows=rows, cols=256)
  model_bytes = 4 * rows * 256 * 4
  peaks, faults = {}, {}
  # Two runs per M, the least of each: a run's page faults and peak vary with how TensorStore's
  # reading threads meet glibc's arenas (from 2 to 8 members one run's faults grew 0.6k-33k
  # with the same code), while a regression (a fresh page per read, stacked members) raises
  # every run.
  for m in (2, 4, 8):
    for repeat in range(2):
      out = tmp_path / f"warm_{m}_{repeat}"
      before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt
      run_cli(AVERAGE + ["--inputs", *paths[:m], "--output", str(out)], check=True)
      run_faults = resource.getrusage(resource.RUSAGE_CHILDREN).ru_minflt - before
      run_peak = _peak_rss(out)
      faults[m] = min(faults.get(m, run_faults), run_faults)
      peaks[m] = min(peaks.get(m, run_peak), run_peak)
  print({m: f"{p / MIB:.0f} MiB" for m, p in peaks.items()}, f"model {model_bytes / MIB:.0f} MiB",
        "minor faults", faults)
  growth = peaks[8] - peaks[2]
  # Stacking the members would add 6 models (240 MB) from M=2 to M=8; streaming adds a few MB
  # per input (TensorStore's per-checkpoint state): less than one model for all six.
  assert growth < model_bytes, {m: p / MIB for m, p in peaks.items()}
  # Two more members stacked would add 2 models (80 MB); RSS noise under a busy suite reached
  # 28 MB (allocator arenas), so the bound is one model, still half of what stacking adds.
  assert peaks[4] - peaks[2] < model_bytes, {m: p / MIB for m, p in peaks.items()}
  # Page faults: reading into reused buffers (ours, and TensorStore's own chunk buffers from
  # the heap) faults far less than once per 4 KiB page per member, which is what fresh memory
  # for every read costs (glibc's mmap threshold pinned at 128 KiB: +61k from 2 to 8 members).
  model_pages = model_bytes // 4096
  assert faults[8] - faults[2] < 6 * model_pages // 2, faults


_KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys, threading
    from warm_jax import average
    from warm_jax.merging import output
    where = sys.argv[1]
    original = getattr(output, where)
    def killed(*args, **kwargs):
      if where == "save_tree":  # die while orbax is writing
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGKILL)).start()
        original(*args, **kwargs)
      os.kill(os.getpid(), signal.SIGKILL)  # or just before publishing
    setattr(output, where, killed)
    sys.exit(average.main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_output_and_a_rerun_succeeds(tmp_path):
  _, paths = _save_members(tmp_path, 2, leaves=4, rows=4096, cols=256)
  out = tmp_path / "warm"
  before = {p: merging.content_hash(p) for p in paths}
  for where in ("save_tree", "publish"):
    proc = run_cli(["-c", _KILL_DRIVER, where, "--inputs", *paths, "--output", str(out)])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()  # only OUTPUT.tmp-<pid>, which no reader mistakes for the output
    assert list(tmp_path.glob("warm.tmp-*"))
  proc = run_cli(AVERAGE + ["--inputs", *paths, "--output", str(out)], check=True)
  assert "left by an averager that was killed" in proc.stderr
  assert json.loads((out / "manifest.json").read_text())["output"]["content_hash"] == \
      merging.content_hash(str(out))
  assert {p: merging.content_hash(p) for p in paths} == before


_TWO_PROCESS_WRITER = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    import orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ("fsdp",))  # 2 processes x 2 devices
    values = np.load(sys.argv[3])
    tree = {"decoder": {"layer_0": {"kernel": None}}, "reward_head": {"kernel": None}}
    def shard(x, spec):
      return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda i: x[i])
    tree["decoder"]["layer_0"]["kernel"] = shard(values["kernel"], P("fsdp"))
    tree["reward_head"]["kernel"] = shard(values["head"], P())
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(sys.argv[4], tree)
    checkpointer.wait_until_finished()
""")


@pytest.mark.slow
def test_checkpoint_written_by_two_processes(tmp_path):
  rng = np.random.default_rng(0)
  values = {"kernel": rng.standard_normal((64, 8), np.float32),
            "head": rng.standard_normal((8, 1), np.float32)}
  np.savez(tmp_path / "values.npz", **values)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  target = str(tmp_path / "two_process")
  procs = [subprocess.Popen(
      [sys.executable, "-c", _TWO_PROCESS_WRITER, f"localhost:{port}", str(i),
       str(tmp_path / "values.npz"), target], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  for p in procs:
    assert p.wait(timeout=120) == 0, p.stdout.read()[-3000:]
  assert (tmp_path / "two_process" / "ocdbt.process_1").is_dir()  # really two writers
  single = {"decoder": {"layer_0": {"kernel": values["kernel"] + 1}},
            "reward_head": {"kernel": values["head"] - 1}}
  ckpt.save_params(single, str(tmp_path / "one_process"))
  reader = merging.CheckpointReader(target)
  assert reader.leaves_by_path["decoder/layer_0/kernel"].chunk_rows == 16
  out = tmp_path / "avg"
  merging.average_checkpoints(inputs=[target, str(tmp_path / "one_process")], output=str(out),
                              stream=merging.StreamConfig(band_bytes=256))
  np.testing.assert_allclose(_flat(out)["decoder/layer_0/kernel"], values["kernel"] + 0.5,
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(_flat(out)["reward_head/kernel"], values["head"] - 0.5,
                             rtol=1e-6, atol=1e-6)


class _CountingStream(io.StringIO):
  """stderr that records each write call, as a pipe shared with other threads would see it."""

  def __init__(self):
    super().__init__()
    self.writes = []

  def write(self, text):
    self.writes.append(text)
    return super().write(text)


def test_error_report_is_one_write_so_other_threads_cannot_split_its_line(monkeypatch):
  # print(..., file=sys.stderr) writes the text and the newline separately; orbax's threads,
  # logging a failed write, could land between them (CI saw the error line gain a tail).
  stream = _CountingStream()
  monkeypatch.setattr(sys, "stderr", stream)
  print_error("CheckpointWriteError: writing /x failed: File too large\nnothing was written  ")
  assert stream.writes == ["error: CheckpointWriteError: writing /x failed: File too large\n"
                           "nothing was written\n"]
