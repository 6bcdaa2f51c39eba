"""Benchmark 4: the WARM averager vs mergekit's linear merge and vs reading the same bytes.

Where it sits: after the M reward-model runs, `python -m warm_jax.average` streams M orbax
checkpoints into their uniform average (docs/averaging.md). This merges M = 2, 6, 10 members
of the base preset (~110M parameters, 32k vocab) three ways in one run:

  ours        `python -m warm_jax.average --inputs ... --output ...` on the orbax checkpoints
  mergekit    `mergekit-yaml` with `merge_method: linear` (float32) on the same weights saved
              as HF safetensors (GPT2ForSequenceClassification names, bench/hf_convert.py)
  disk        reading every byte of the orbax checkpoints into one reused buffer (what `cat`
              costs), with the page cache cold (evicted first) and warm (read just before)

Each tool runs in its own process, started through a small launcher that reports its wall time,
CPU time and peak RSS (wait4's ru_maxrss, so a peak between samples cannot be missed); process
start-up (imports) is included on both sides. Tool runs are warm (their inputs were just read),
and with --cold also cold. The members are random perturbations of one init (the cost of a
merge does not depend on the values); both tools' outputs are compared tensor by tensor.

  bench/.venv/bin/python -m bench.averager                         # M = 2, 6, 10; ~9 GB in /tmp
  bench/.venv/bin/python -m bench.averager --members 2 --preset small --workdir /tmp/avg
  # members written with zstd (the checkpoints' default before COMPRESS_CHECKPOINTS=False), and
  # the averager of another checkout (e.g. `git worktree add --detach ../base <commit>`) timed
  # in the same run, on the same members, as "before":
  bench/.venv/bin/python -m bench.averager --member-compression zstd --baseline-src ../base
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import sys

import numpy as np

from bench import common

DEFAULT_WORKDIR = "/tmp/warm_jax_bench_averager"
VOCAB = {"tiny": common.VOCAB_SIZE, "small": common.VOCAB_SIZE, "base": 32000}


# -------------------------------------------------------------------------------------------------
# The members, in both formats
# -------------------------------------------------------------------------------------------------
def member_config(preset: str, *, vocab_size: int | None = None, **overrides):
  return common.preset_config(preset, vocab_size=vocab_size or VOCAB[preset], **overrides)


def make_members(*, workdir: str, config, num_members: int, noise: float = 0.01,
                 with_hf: bool = True, compress: bool | None = None
                 ) -> tuple[list[str], list[str], int]:
  """Writes member i = init + noise * N(0, 1) (reward-head bias kept 0) as an orbax checkpoint
  `workdir/orbax/rm_i` (zstd-compressed if `compress`; default: as the training stages write
  them, `checkpoints.COMPRESS_CHECKPOINTS`) and (with_hf) as HF safetensors `workdir/hf/rm_i`;
  reuses members already written for the same config. Returns (orbax dirs, HF dirs,
  parameter count)."""
  import jax
  from warm_jax.core import checkpoints as ckpt_lib
  from warm_jax.models import RewardModel
  from warm_jax.rm.scoring import unboxed_init

  stamp = os.path.join(workdir, "members.json")
  compress = ckpt_lib.COMPRESS_CHECKPOINTS if compress is None else compress
  want = {"config": repr(config), "noise": noise, "with_hf": with_hf, "compress": compress}
  orbax_dirs = [os.path.join(workdir, "orbax", f"rm_{i}") for i in range(num_members)]
  hf_dirs = [os.path.join(workdir, "hf", f"rm_{i}") for i in range(num_members)]
  have = json.load(open(stamp)) if os.path.exists(stamp) else None
  if have is not None and {k: have.get(k) for k in want} != want:
    shutil.rmtree(workdir)  # members of another shape: start again
    have = None
  os.makedirs(workdir, exist_ok=True)
  init = unboxed_init(RewardModel(config), 0)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(init))
  for i, (orbax_dir, hf_dir) in enumerate(zip(orbax_dirs, hf_dirs)):
    if have is not None and i < have.get("num_members", 0):
      continue
    for d in (orbax_dir, hf_dir):
      shutil.rmtree(d, ignore_errors=True)
    rng = np.random.default_rng(i + 1)
    member = jax.tree_util.tree_map(
        lambda x: np.asarray(x, np.float32) + noise * rng.standard_normal(np.shape(x),
                                                                          np.float32), init)
    member["reward_head"]["bias"] = np.zeros_like(member["reward_head"]["bias"])
    ckpt_lib.save_params(member, orbax_dir, compress=compress)
    if with_hf:
      from bench import hf_convert
      hf_convert.save_gpt2_checkpoint(member, config=config, directory=hf_dir)
    del member
    print(f"  wrote member {i} ({num_params / 1e6:.1f}M params)", file=sys.stderr, flush=True)
  if have is None or have.get("num_members", 0) < num_members:
    with open(stamp, "w", encoding="utf-8") as f:
      json.dump(dict(want, num_members=num_members), f)
  return orbax_dirs, hf_dirs if with_hf else [], num_params


def mergekit_config(hf_dirs: list[str]) -> str:
  """mergekit's YAML for the uniform (normalised, equal-weight) linear merge in float32."""
  lines = ["merge_method: linear", "dtype: float32", "models:"]
  for d in hf_dirs:
    lines += [f"  - model: {d}", "    parameters:", "      weight: 1.0"]
  return "\n".join(lines) + "\n"


def outputs_max_diff(*, ours_dir: str, mergekit_dir: str, config) -> tuple[float, list[str]]:
  """(max |ours - mergekit| over every tensor, tensors missing from mergekit's output)."""
  from safetensors.numpy import load_file
  from warm_jax.core import checkpoints as ckpt_lib

  from bench import hf_convert
  ours = hf_convert.rm_params_to_gpt2_state_dict(ckpt_lib.load_params(ours_dir),
                                                 config=config)
  theirs = {}
  for path in sorted(glob.glob(os.path.join(mergekit_dir, "*.safetensors"))):
    theirs.update(load_file(path))
  missing = sorted(set(ours) - set(theirs))
  diff = max(float(np.max(np.abs(ours[k] - theirs[k].astype(np.float32))))
             for k in ours if k in theirs)
  return diff, missing


# -------------------------------------------------------------------------------------------------
# One M
# -------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class MergeResult:
  num_members: int
  num_params: int
  orbax_bytes: int
  safetensors_bytes: int
  cache_eviction: str
  cold_read_s: float
  warm_read_s: float
  ours: dict
  mergekit: dict | None
  baseline: dict | None
  ours_cold: dict | None
  mergekit_cold: dict | None
  ours_internal_wall_s: float
  max_abs_diff: float | None
  mergekit_missing: list[str]

  @property
  def ours_vs_mergekit(self) -> float:
    return self.mergekit["wall_s"] / self.ours["wall_s"] if self.mergekit else float("nan")


def _process(result: common.ProcessResult) -> dict:
  return {"wall_s": result.wall_s, "cpu_s": result.cpu_s, "peak_rss_bytes":
          result.peak_rss_bytes, "minor_faults": result.minor_faults, "load": result.load}


def measure(*, orbax_dirs: list[str], hf_dirs: list[str], num_params: int, workdir: str,
            config, cold_runs: bool = False, cache_eviction: str = "auto",
            baseline_src: str | None = None) -> MergeResult:
  """Reads the orbax members (cold, then warm), then merges them with our CLI and, when
  `hf_dirs` are given, their safetensors copies with mergekit (warm; with cold_runs also
  cold). cache_eviction: `common.evict_page_cache`'s method. baseline_src: another checkout
  of warm-jax whose averager is also run (warm, right before ours) on the same members."""
  m = len(orbax_dirs)
  orbax_files = common.files_under(orbax_dirs)
  hf_files = common.files_under(hf_dirs)
  out_ours = os.path.join(workdir, f"out_ours_{m}")
  out_mk = os.path.join(workdir, f"out_mergekit_{m}")
  out_base = os.path.join(workdir, f"out_baseline_{m}")
  ours_cmd = [sys.executable, "-m", "warm_jax.average", "--inputs", *orbax_dirs,
              "--output", out_ours]
  mk_cmd = None
  if hf_dirs:
    yaml_path = os.path.join(workdir, f"mergekit_{m}.yml")
    with open(yaml_path, "w", encoding="utf-8") as f:
      f.write(mergekit_config(hf_dirs))
    mk_cmd = [os.path.join(os.path.dirname(sys.executable), "mergekit-yaml"), yaml_path, out_mk,
              "--no-copy-tokenizer", "--no-write-model-card", "--quiet"]

  def clean():
    for d in (out_ours, out_mk, out_base):
      shutil.rmtree(d, ignore_errors=True)

  def evict():
    return common.evict_page_cache(orbax_files + hf_files, method=cache_eviction)

  clean()
  cold = {}
  if cold_runs:
    evict()
    cold["ours"] = _process(common.run_measured(ours_cmd, cwd=common.REPO_ROOT))
    if mk_cmd:
      evict()
      cold["mergekit"] = _process(common.run_measured(mk_cmd, cwd=common.REPO_ROOT))
    clean()
  how = evict()
  cold_read_s, nbytes = common.read_files(orbax_files)
  warm_read_s, _ = common.read_files(orbax_files)
  baseline = None
  if baseline_src:
    src = os.path.abspath(baseline_src)
    baseline = _process(common.run_measured(
        [sys.executable, "-m", "warm_jax.average", "--inputs", *orbax_dirs, "--output",
         out_base], cwd=src, env={"PYTHONPATH": src}))
    shutil.rmtree(out_base, ignore_errors=True)
  ours = common.run_measured(ours_cmd, cwd=common.REPO_ROOT)
  internal = json.loads(ours.stdout.strip().splitlines()[-1])["wall_s"]
  mk, diff, missing = None, None, []
  if mk_cmd:
    common.read_files(hf_files)  # mergekit's inputs warm too
    mk = _process(common.run_measured(mk_cmd, cwd=common.REPO_ROOT))
    diff, missing = outputs_max_diff(ours_dir=out_ours, mergekit_dir=out_mk, config=config)
  clean()
  return MergeResult(
      num_members=m, num_params=num_params, orbax_bytes=nbytes,
      safetensors_bytes=common.total_bytes(hf_files), cache_eviction=how,
      cold_read_s=cold_read_s, warm_read_s=warm_read_s, ours=_process(ours),
      mergekit=mk, baseline=baseline, ours_cold=cold.get("ours"), mergekit_cold=cold.get("mergekit"),
      ours_internal_wall_s=internal, max_abs_diff=diff, mergekit_missing=missing)


def table(results: list[MergeResult]) -> str:
  """One row per M; with a baseline ('before') its time, ratio, RSS, CPU and load too."""
  gb, gib = 1e9, common.GIB
  na = "n/a"
  with_base = any(r.baseline for r in results)
  rows = []
  for r in results:
    mk, mkc, b = r.mergekit, r.mergekit_cold, r.baseline
    gib_of = lambda x: f"{x['peak_rss_bytes'] / gib:.2f}" if x else na  # noqa: E731
    cpu_of = lambda x: f"{x['cpu_s']:.1f}" if x else na  # noqa: E731
    faults_of = lambda x: f"{x['minor_faults'] / 1e3:.0f}k" if x else na  # noqa: E731
    row = [r.num_members, f"{r.orbax_bytes / gb:.2f} / {r.safetensors_bytes / gb:.2f}"]
    if with_base:
      row += [b["wall_s"] if b else na, r.ours["wall_s"], mk["wall_s"] if mk else na,
              f"{mk['wall_s'] / b['wall_s']:.2f}x" if b and mk else na,
              f"**{r.ours_vs_mergekit:.2f}x**" if mk else na,
              f"{gib_of(b)} / {gib_of(r.ours)} / {gib_of(mk)}",
              f"{cpu_of(b)} / {cpu_of(r.ours)} / {cpu_of(mk)}",
              f"{faults_of(b)} / {faults_of(r.ours)} / {faults_of(mk)}"]
    else:
      row += [r.ours["wall_s"], mk["wall_s"] if mk else na,
              f"**{r.ours_vs_mergekit:.2f}x**" if mk else na,
              f"{gib_of(r.ours)} / {gib_of(mk)}", f"{cpu_of(r.ours)} / {cpu_of(mk)}",
              f"{faults_of(r.ours)} / {faults_of(mk)}"]
    row += [
        r.cold_read_s, r.warm_read_s,
        f"{r.ours['wall_s'] / r.cold_read_s:.2f}x / {r.ours['wall_s'] / r.warm_read_s:.0f}x",
        (f"{r.ours_cold['wall_s']:.1f} / " + (f"{mkc['wall_s']:.1f}" if mkc else na)
         if r.ours_cold else "not run"),
        (f"{r.max_abs_diff:.1e}" if r.max_abs_diff is not None else na)
        + (f", mergekit lacks {r.mergekit_missing}" if r.mergekit_missing else ""),
        (f"{b['load'] if b else na} / " if with_base else "")
        + f"{r.ours['load']} / " + (mk["load"] if mk else na)]
    rows.append(row)
  tail = ["cold read s", "warm read s", "ours / read (cold / warm)",
          "cold-cache runs s (ours / mergekit)", "max abs diff of outputs"]
  if with_base:
    return common.markdown_table(
        ["M", "GB on disk (orbax / safetensors)", "before s", "ours s", "mergekit s",
         "mergekit / before (time)", "mergekit / ours (time)",
         "peak RSS GiB (before / ours / mergekit)", "CPU s (before / ours / mergekit)",
         "minor page faults (before / ours / mergekit)", *tail,
         "load (before / ours / mk)"], rows)
  return common.markdown_table(
      ["M", "GB on disk (orbax / safetensors)", "ours s", "mergekit s",
       "mergekit / ours (time)", "peak RSS GiB (ours / mergekit)", "CPU s (ours / mergekit)",
       "minor page faults (ours / mergekit)", *tail, "load (ours / mk)"], rows)


def main(argv=None) -> None:
  common.configure_jax_for_benchmarks()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--members", nargs="+", type=int, default=[2, 6, 10])
  parser.add_argument("--preset", default="base", choices=list(VOCAB))
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR,
                      help="where the members are written (kept between runs unless --clean)")
  parser.add_argument("--cold", action="store_true",
                      help="also run both tools with the page cache evicted")
  parser.add_argument("--clean", action="store_true", help="delete the workdir at the end")
  parser.add_argument("--json", help="also save the rows here")
  parser.add_argument("--member-compression", choices=["default", "none", "zstd"],
                      default="default", help="how the orbax members are written (default: "
                      "as the training stages write them, checkpoints.COMPRESS_CHECKPOINTS)")
  parser.add_argument("--baseline-src", help="another warm-jax checkout whose averager is "
                      "also timed, on the same members, as 'before'")
  args = parser.parse_args(argv)
  print(common.header("Averager vs mergekit linear merge vs reading the bytes",
                      extra_versions=("torch", "transformers", "mergekit", "safetensors")))
  config = member_config(args.preset)
  compress = {"default": None, "none": False, "zstd": True}[args.member_compression]
  orbax_dirs, hf_dirs, num_params = make_members(workdir=args.workdir, config=config,
                                                 num_members=max(args.members),
                                                 compress=compress)
  print(f"- members: {args.preset} preset, {num_params / 1e6:.1f}M float32 parameters each\n")
  results = []
  try:
    for m in args.members:
      results.append(measure(orbax_dirs=orbax_dirs[:m], hf_dirs=hf_dirs[:m],
                             num_params=num_params, workdir=args.workdir, config=config,
                             cold_runs=args.cold, baseline_src=args.baseline_src))
      print(f"  M={m}: ours {results[-1].ours['wall_s']:.1f} s, mergekit "
            f"{results[-1].mergekit['wall_s']:.1f} s", file=sys.stderr, flush=True)
  finally:
    if args.clean:
      shutil.rmtree(args.workdir, ignore_errors=True)
  print(f"- page cache eviction: {results[0].cache_eviction if results else 'n/a'}")
  print(table(results))
  common.write_json(args.json, [dict(dataclasses.asdict(r), ours_vs_mergekit=r.ours_vs_mergekit)
                                for r in results])


if __name__ == "__main__":
  main()
