"""Smoke tests of the examples: they run, and their numbers make sense."""

import importlib.util
import math
import pathlib

import numpy as np
import pytest

_EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name):
  # examples/ is not a package: import the script from its path.
  spec = importlib.util.spec_from_file_location(name, _EXAMPLES / f"{name}.py")
  assert spec is not None
  assert spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def pinn_poisson():
  return _load("pinn_poisson")


def _check_metrics(metrics, steps):
  for name in ("softadapt", "equal"):
    run = metrics[name]
    assert all(math.isfinite(x) for x in run["final_losses"])
    assert math.isfinite(run["rel_l2"])
    assert sum(run["final_losses"]) < sum(run["initial_losses"]), name
    history = metrics["runs"][name]
    assert history.losses.shape == (steps, 2)
    assert history.weights.shape == (steps, 2)
    assert np.all(np.isfinite(history.losses))
    assert np.all(np.isfinite(history.errors))
  # Every step's SoftAdapt weights form a probability vector.
  weights = metrics["runs"]["softadapt"].weights
  assert np.all(weights >= 0.0)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(metrics["softadapt"]["final_weights"], weights[-1])
  # Warm-up (order 1: one recorded loss vector) uses the initial 1/K weights.
  np.testing.assert_allclose(weights[0], [0.5, 0.5])
  np.testing.assert_allclose(metrics["runs"]["equal"].weights, 0.5)


def test_pinn_poisson_no_plot(pinn_poisson, tmp_path):
  out = tmp_path / "unused.png"
  metrics = pinn_poisson.main(
      ["--steps", "40", "--chunk", "20", "--no-plot", "--out", str(out)]
  )
  _check_metrics(metrics, steps=40)
  assert not out.exists()
  assert metrics["runs"]["softadapt"].checkpoints.tolist() == [20, 40]


def test_pinn_poisson_plot(pinn_poisson, tmp_path):
  out = tmp_path / "figures" / "pinn.png"
  metrics = pinn_poisson.main(["--steps", "30", "--chunk", "30", "--out", str(out)])
  _check_metrics(metrics, steps=30)
  assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.slow  # the example; docs/aggregators.md runs the same rules by default
def test_multitask_aggregators_runs_each_rule_on_the_same_data():
  multitask = _load("multitask_aggregators")
  rules = ("equal_weights", "upgrad", "pcgrad")
  results = multitask.main(
      ["--rule", *rules, "--steps", "15", "--batch", "16", "--train", "64",
       "--test", "64", "--gramian-on", "trunk"]
  )
  assert tuple(results) == rules
  for name in rules:
    run = results[name]
    assert run["weights"].shape == (15, 3)
    assert run["losses"].shape == (15, 3)
    assert np.all(np.isfinite(run["losses"]))
    assert math.isfinite(run["ms_per_step"])
    assert run["ms_per_step"] > 0
    metrics = run["metrics"]
    assert set(metrics) == {"big_nmse", "small_nmse", "label_accuracy"}
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0.0 <= metrics["label_accuracy"] <= 1.0
  # Paired runs: the same first batch at the same initialisation.
  first = {name: results[name]["losses"][0] for name in rules}
  np.testing.assert_allclose(first["upgrad"], first["equal_weights"], rtol=1e-6)
  np.testing.assert_allclose(first["pcgrad"], first["equal_weights"], rtol=1e-6)
  np.testing.assert_array_equal(results["equal_weights"]["weights"], 1.0)
  # UPGrad's weights are at least 1/K; PCGrad's at least 1.
  assert np.all(results["upgrad"]["weights"] >= 1.0 / 3 - 1e-6)
  assert np.all(results["pcgrad"]["weights"] >= 1.0 - 1e-6)
