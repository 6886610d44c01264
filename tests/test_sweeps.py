"""Sweeps: ``jax.vmap`` over beta and seeds of whole ``lax.scan`` training runs.

Each run of a vmapped grid must equal its own single (unbatched) run: the
batch axis only stacks independent programs. Batched kernels may sum in
another order than unbatched ones, so the comparison is at float32 rounding
over a short run (training amplifies rounding over thousands of steps).
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "sweep_beta.py"
_spec = importlib.util.spec_from_file_location("sweep_beta", _PATH)
assert _spec is not None
assert _spec.loader is not None
sweep_beta = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep_beta)

STEPS = 24
# The example's Config as main() builds it from the arguments below, so the
# single runs compile once for every test.
CONFIG = sweep_beta.Config(steps=STEPS, hidden=(8,))
MAIN_ARGS = ["--steps", str(STEPS), "--hidden", "8", "--no-progress"]
BETAS = np.array([0.0, 0.3, 3.0], np.float32)
RTOL, ATOL = 2e-5, 1e-6
# RTOL is the rounding of the fully optimised programs; the cached single runs
# are shared by every test here, so the whole file compiles that way.
pytestmark = pytest.mark.full_optimization


@functools.cache
def _single(beta: float, seed: int):
  run = jax.jit(sweep_beta.train, static_argnames="config")
  return jax.device_get(run(jnp.float32(beta), jax.random.key(seed), config=CONFIG))


def _assert_run_equal(batched, single):
  np.testing.assert_allclose(
      batched.trace.losses, single.trace.losses, rtol=RTOL, atol=ATOL
  )
  np.testing.assert_allclose(
      batched.trace.weights, single.trace.weights, rtol=RTOL, atol=ATOL
  )
  # Slopes are 0 during warm-up in both; elsewhere they scale with the
  # losses (~1e3 here), so compare them relative to that scale.
  np.testing.assert_allclose(
      batched.trace.slopes, single.trace.slopes, rtol=RTOL,
      atol=RTOL * np.nanmax(np.abs(single.trace.losses)),
  )
  np.testing.assert_allclose(batched.error, single.error, rtol=RTOL, atol=ATOL)
  for a, b in zip(
      jax.tree.leaves(batched.params), jax.tree.leaves(single.params), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


def _index(tree, *idx):
  return jax.tree.map(lambda x: np.asarray(x)[idx], tree)


def test_vmap_over_beta_equals_single_runs():
  over_beta = jax.jit(
      jax.vmap(functools.partial(sweep_beta.train, config=CONFIG), (0, None))
  )
  batched = jax.device_get(over_beta(jnp.asarray(BETAS), jax.random.key(0)))
  assert batched.trace.weights.shape == (len(BETAS), STEPS, 3)
  for b, beta in enumerate(BETAS):
    _assert_run_equal(_index(batched, b), _single(float(beta), 0))
  # The sweep is not degenerate: beta changes the weights and the parameters.
  assert np.ptp(batched.trace.weights[:, -1, 0]) > 1e-2
  w0 = batched.params[0]["w"]
  assert not np.allclose(w0[0], w0[-1])
  # beta = 0 with the original variant is equal weights 1/K at every step.
  np.testing.assert_allclose(batched.trace.weights[0], 1.0 / 3.0, rtol=1e-6)


def test_vmap_over_seeds_equals_single_runs():
  over_seeds = jax.jit(
      jax.vmap(functools.partial(sweep_beta.train, config=CONFIG), (None, 0))
  )
  keys = sweep_beta.seed_keys(3)
  batched = jax.device_get(over_seeds(jnp.float32(0.3), keys))
  for s in range(3):
    _assert_run_equal(_index(batched, s), _single(0.3, s))
  # Different keys give different initial parameters, hence different runs.
  assert not np.allclose(batched.trace.losses[0, 0], batched.trace.losses[1, 0])


def test_example_grid_equals_single_runs(tmp_path):
  """The example's beta x seed grid, run in compiled chunks, run by run."""
  out = tmp_path / "sweep.png"
  metrics = sweep_beta.main(
      ["--betas", "0,0.3", "--seeds", "2", "--chunk", str(STEPS // 2),
       "--out", str(out), *MAIN_ARGS]
  )
  assert metrics["config"] == CONFIG
  grid = metrics["result"]
  assert grid.trace.losses.shape == (2, 2, STEPS, 3)
  for b, beta in enumerate(metrics["betas"]):
    for s in range(2):
      _assert_run_equal(_index(grid, b, s), _single(float(beta), s))
  errors = metrics["errors"]
  np.testing.assert_array_equal(errors, grid.error)
  np.testing.assert_allclose(
      metrics["geo_mean_error"], np.exp(np.log(errors).mean(axis=1)), rtol=1e-6
  )
  assert metrics["best_beta"] == metrics["betas"][np.argmin(metrics["geo_mean_error"])]
  # Training works: the total loss of every run fell.
  losses = grid.trace.losses
  assert np.all(losses[:, :, -1].sum(-1) < losses[:, :, 0].sum(-1))
  assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
