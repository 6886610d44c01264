"""Smoke tests of the benchmark scripts: they run on tiny settings and their
numbers make sense. Timings are never asserted (benchmarks are scripts, not
timed tests); what is checked is what the tables rely on: the compared
variants compute the same thing, and every row is there.

``bench_jinns.py`` and ``bench_torch.py`` need jinns and torch, which the
``test`` extra does not install; they are not run here.
"""

import importlib.util
import math
import pathlib
import sys

import pytest

_BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name):
  # benchmarks/ is not a package; its scripts import `_bench_common` from there.
  if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))
  spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
  assert spec is not None
  assert spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _positive(x):
  return math.isfinite(x) and x > 0


@pytest.mark.slow  # a smoke run of a benchmark script; -m slow runs it
def test_bench_step_tiny(capsys):
  bench = _load("bench_step")
  rules = ["ratio_softadapt", "relobralo", "per_epoch(softadapt, 10)"]
  # The overhead table (section 1) runs the same `measure` as section 2.
  res = bench.main(["--tiny", "--models", "mlp64", "--ks", "2", "--rules-k",
                    "2", "--rules", *rules, "--sections", "rules", "host"])
  out = capsys.readouterr().out
  assert "## 2. Every weighting rule" in out
  assert "## 3. Our scanned loop versus a host loop" in out
  # The rules asked for get a row, all through the one route, next to the
  # plain sum (the baseline) and equal weights (its direction by the route).
  names = {name for _, name in res["rules"]}
  assert "plain sum" in names
  assert "equal_weights" in names
  assert set(rules) <= names
  assert names == {"plain sum", "equal_weights", *rules}
  assert all(_positive(r) for r in res["rules"].values())
  assert res["rules"]["mlp64", "plain sum"] == 1.0
  # The host loop with the reference oracle used our weights.
  host = res["host"]["mlp64"]
  assert host.weights_diff < 1e-6
  assert all(_positive(t) for t in (host.ours, host.host, host.lean, host.plain))


@pytest.mark.slow  # a smoke run of a benchmark script; -m slow runs it
def test_bench_grads_tiny(capsys):
  bench = _load("bench_grads")
  res = bench.main(["--tiny", "--problems", "mlp-split", "--ks", "2"])
  variants = {v for (_, _, v) in res}
  assert variants == {"one-VJP", "jacrev", "K x grad", "K x grad (own batch)"}
  for key, r in res.items():
    assert r["diff"] < 1e-5, key  # the four compute the same direction
    assert _positive(r["time"])
    assert r["temp"] >= 0
  assert res["mlp-split", 2, "one-VJP"]["ratio"] == 1.0
  assert "| mlp-split | 2 | jacrev |" in capsys.readouterr().out


@pytest.mark.slow  # a smoke run of a benchmark script; -m slow runs it
def test_bench_sweep_smoke(capsys):
  bench = _load("bench_sweep")
  res = bench.main(["--smoke", "--ns", "3"])
  for n in (3,):
    assert res["smoke", n]["diff"] < 1e-5  # vmap == sequential runs
    assert _positive(res["smoke", n]["vmap"])
    assert _positive(res["smoke", n]["seq"])
  assert "| smoke" in capsys.readouterr().out


@pytest.mark.parametrize(("k", "order"), [(2, 1), (64, 1), (4, 3)])
def test_bench_scaling_state_size(k, order):
  bench = _load("bench_scaling")
  # count + num_skipped (int32) + history [order + 1, K] + weights [K] (f32).
  assert bench.state_bytes(k, order) == 8 + 4 * (order + 2) * k


@pytest.mark.slow  # a smoke run of a benchmark script; -m slow runs it
def test_bench_scaling_tiny(capsys):
  bench = _load("bench_scaling")
  res = bench.main(["--tiny"])
  assert _positive(res["grad"])
  for key in [(8, 1), (4, 2)]:
    assert _positive(res[key]["step"])
    assert res[key]["state"] == bench.state_bytes(*key)
  assert "| 8 | 1 |" in capsys.readouterr().out


@pytest.mark.slow  # a smoke run of a benchmark script; -m slow runs it
def test_bench_gradient_rules_tiny(capsys):
  bench = _load("bench_gradient_rules")
  bench.main(["--tiny", "--ks", "3", "--problems", "split", "--variants",
              "published", "every step, map", "jinns"])
  out = capsys.readouterr().out
  assert "### split, K = 3" in out
  for row in ("plain sum", "LRA wang2021, every 10 (published)",
              "LRA every step, map", "jinns lr_annealing"):
    assert row in out  # jinns is in the test extra


@pytest.mark.slow  # a smoke run of a benchmark script; -m slow runs it
def test_bench_aggregators_tiny_no_torch(capsys):
  """Our side of ``bench_aggregators.py`` (``--no-torch``: the test extra has
  no torch or torchjd): every row is there, and the three Gramian routes the
  script chooses from compute the same Gramian."""
  import jax.numpy as jnp
  import numpy as np

  bench = _load("bench_aggregators")
  names = ["upgrad", "cagrad"]
  res = bench.main(["--tiny", "--no-torch", "--ks", "3", "--problems",
                    "shared", "--aggregators", *names])
  r = res["shared", 3]
  assert r["our_route"] in bench.OUR_ROUTES
  assert set(r["our_temp"]) == {"plain sum", *bench.OUR_ROUTES}
  assert set(r["times"]) == {"ours: plain sum", *(f"ours: {n}" for n in names)}
  assert all(_positive(t) for t in r["times"].values())
  for n in names:
    assert _positive(r["ratio_to_plain"][n])
    assert r["solve"][n] >= 0
    assert r["our_temp_all"][n] >= 0
  out = capsys.readouterr().out
  assert "## shared, K = 3" in out
  assert "| upgrad |" in out
  assert "| cagrad |" in out
  problem = bench.make_problem("shared", 3, tiny=True)
  grams = [bench.OurFirstStep(problem, route, jnp.float32).gramian
           for route in bench.OUR_ROUTES]
  for g in grams[1:]:
    np.testing.assert_allclose(g, grams[0], rtol=1e-5)


@pytest.mark.slow  # a smoke run of a benchmark script; -m slow runs it
def test_bench_study_seeds_tiny(capsys):
  root = str(_BENCH.parent)
  if root not in sys.path:
    sys.path.insert(0, root)  # the script imports examples.studies
  bench = _load("bench_study_seeds")
  bench.main(["--steps", "3", "--seeds", "2"])
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| poisson_c4")
          or line.startswith("| helmholtz")]
  assert len(rows) == 4
  assert all(line.rstrip().endswith("| 0.0e+00 |") for line in rows)  # same errors
