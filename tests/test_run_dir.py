"""A stage dir's files (`warm_jax.core.run_dir`): the DONE marker, atomic and finite JSON, staging
and installing an output dir, path overlap. The stages' own tests check them in use; these pin
the contracts each stage relies on."""

import json
import math
import os

import pytest

from warm_jax.core import run_dir


def test_done_marker_round_trip_and_absence(tmp_path):
  assert not run_dir.is_done(str(tmp_path)) and run_dir.read_done(str(tmp_path)) is None
  run_dir.write_done(str(tmp_path), {"step": 3, "loss": float("nan")})
  assert run_dir.is_done(str(tmp_path))
  assert run_dir.read_done(str(tmp_path)) == {"step": 3, "loss": None}  # JSON has no NaN


def test_write_json_is_strict_json_with_non_finite_values_as_null(tmp_path):
  path = tmp_path / "m.json"
  run_dir.write_json(str(path), {"a": [1.0, math.inf, -math.inf], "b": {"c": math.nan}})
  text = path.read_text()
  assert "Infinity" not in text and "NaN" not in text
  assert json.loads(text) == {"a": [1.0, None, None], "b": {"c": None}}
  assert not [p for p in os.listdir(tmp_path) if p != "m.json"]  # no temporary file left


def test_staging_dir_sits_beside_the_output_and_install_replaces_it_whole(tmp_path):
  out = tmp_path / "deep" / "out"
  stage = run_dir.staging_dir(str(out))
  assert os.path.dirname(stage) == str(out.parent)  # same file system: rename is atomic
  assert os.path.basename(stage).startswith("out.tmp-") and os.listdir(stage) == []
  (tmp_path / "deep" / "out").mkdir()
  (out / "old.txt").write_text("old")
  with open(os.path.join(stage, "new.txt"), "w") as f:
    f.write("new")
  run_dir.install_dir(stage, str(out))
  assert sorted(os.listdir(out)) == ["new.txt"] and not os.path.exists(stage)
  assert sorted(os.listdir(out.parent)) == ["out"]  # the old dir was moved aside, then deleted


@pytest.mark.parametrize("a,b,expected", [("x", "x", True), ("x/y", "x", True),
                                           ("x", "x/y", True), ("x", "xy", False),
                                           ("x/y", "x/z", False)])
def test_overlaps_compares_whole_path_components(tmp_path, a, b, expected):
  for p in (a, b):
    (tmp_path / p).mkdir(parents=True, exist_ok=True)
  assert run_dir.overlaps(str(tmp_path / a), str(tmp_path / b)) is expected
