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
