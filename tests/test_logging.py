"""Logging from inside ``lax.scan`` and the plotting helper.

The per-step losses, weights and slopes stacked by a ``lax.scan`` must equal
what a Python loop of single steps sees; the diagnostics must follow the
state machine (warm-up, skipped non-finite steps); ``plot_training`` must
draw one line per component in each panel and save a PNG.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import softadapt_jax as sa

K = 3


def _problem():
  kx, ky, kw = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (32, 4))
  y = jax.random.normal(ky, (32, K)) * jnp.array([5.0, 1.0, 0.2])
  params = {"w": 0.1 * jax.random.normal(kw, (4, K)), "b": jnp.zeros(K)}

  def losses(params, x, y):
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2, axis=0)

  return params, x, y, losses


def _step_fn(order):
  params, x, y, losses = _problem()
  settings = {"beta": 2.0, "variant": "original"}
  tx = optax.chain(sa.softadapt_track(K, order=order, **settings), optax.adam(0.05))
  grad_fn = sa.softadapt_value_and_grad(losses, **settings)

  def step(carry, _):
    params, opt_state = carry
    out = grad_fn(opt_state, params, x, y)
    updates, opt_state = tx.update(out.grad, opt_state, params, losses=out.losses)
    params = optax.apply_updates(params, updates)
    log = sa.softadapt_diagnostics(opt_state)
    return (params, opt_state), (out.losses, out.weights, log.slopes, log.count)

  return step, (params, tx.init(params))


def test_scan_outputs_equal_python_loop():
  steps, order = 15, 2
  step, carry0 = _step_fn(order)
  _, (losses, weights, slopes, count) = jax.jit(
      lambda c: jax.lax.scan(step, c, None, length=steps)
  )(carry0)
  assert losses.shape == weights.shape == slopes.shape == (steps, K)

  one_step = jax.jit(step)
  carry, rows = carry0, []
  for _ in range(steps):
    carry, row = one_step(carry, None)
    rows.append(jax.device_get(row))
  loop = [np.stack(column) for column in zip(*rows, strict=True)]
  tol = {"rtol": 1e-5, "atol": 1e-6}
  np.testing.assert_allclose(losses, loop[0], **tol)
  np.testing.assert_allclose(weights, loop[1], **tol)
  np.testing.assert_allclose(slopes, loop[2], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(count, loop[3])
  np.testing.assert_array_equal(count, np.arange(1, steps + 1))

  # Warm-up: no slopes and the initial weights until order + 1 losses exist.
  assert np.all(np.isnan(slopes[:order]))
  np.testing.assert_allclose(weights[:order], 1.0 / K)
  assert np.all(np.isfinite(slopes[order:]))
  # The logged slopes are those the weights came from: softmax(beta * s).
  np.testing.assert_allclose(
      weights[order:], jax.nn.softmax(2.0 * slopes[order:], axis=-1),
      rtol=1e-4, atol=1e-6,
  )
  # ... which are the finite differences of the logged losses.
  c = sa.finite_difference_coefficients(order)
  expected = np.stack([c @ losses[t - order:t + 1] for t in range(order, steps)])
  np.testing.assert_allclose(slopes[order:], expected, rtol=1e-4, atol=1e-5)
  assert np.ptp(weights[-1]) > 1e-2  # the weights moved


@pytest.mark.parametrize(("order", "stencil"), [(1, "forward"), (3, "backward")])
def test_diagnostics_follow_the_state_machine(order, stencil):
  rng = np.random.default_rng(order)
  seq = rng.uniform(0.5, 2.0, (20, K)).astype(np.float32)
  seq[4, 1] = np.nan
  seq[9] = np.inf
  seq[10, 0] = -np.inf

  def body(state, losses):
    _, state = sa.softadapt_weights(
        state, losses, beta=0.7, stencil=stencil, update_every=2
    )
    return state, sa.softadapt_diagnostics(state, stencil=stencil)

  _, log = jax.jit(lambda s, x: jax.lax.scan(body, s, x))(
      sa.init_state(K, order=order), jnp.asarray(seq)
  )
  # A Python loop over a plain list of the finite loss vectors.
  coeffs = sa.finite_difference_coefficients(order, stencil)
  recorded, skipped = [], 0
  for t, row in enumerate(seq):
    if np.all(np.isfinite(row)):
      recorded.append(row)
    else:
      skipped += 1
    assert int(log.count[t]) == len(recorded)
    assert int(log.num_skipped[t]) == skipped
    np.testing.assert_array_equal(log.losses[t], recorded[-1])
    if len(recorded) < order + 1:
      assert np.all(np.isnan(log.slopes[t]))
      np.testing.assert_allclose(log.weights[t], 1.0 / K)
    else:
      window = np.stack(recorded[-(order + 1):]).astype(np.float64)
      np.testing.assert_allclose(log.slopes[t], coeffs @ window, rtol=1e-5, atol=1e-5)
  assert skipped == 3


def test_diagnostics_log_losses_and_opt_state():
  rule_losses = jnp.array([[4.0, 1.0], [2.0, 1.0], [1.0, 2.0]])
  tx = sa.track_weights(sa.softadapt(2, order=1, log_losses=True))
  opt_state = tx.init(jnp.zeros(3))
  for row in rule_losses:
    _, opt_state = tx.update(jnp.zeros(3), opt_state, losses=row)
  log = sa.softadapt_diagnostics(opt_state, log_losses=True)
  np.testing.assert_allclose(log.slopes, [np.log(0.5), np.log(2.0)], rtol=1e-6)
  np.testing.assert_array_equal(log.losses, [1.0, 2.0])
  raw = sa.softadapt_diagnostics(opt_state)
  np.testing.assert_allclose(raw.slopes, [-1.0, 1.0])


# ---------------------------------------------------------------------------
# plot_training
# ---------------------------------------------------------------------------


def _curves(steps=60):
  t = np.arange(steps)[:, None]
  losses = np.exp(-t / np.array([10.0, 30.0, 90.0])) * np.array([1e3, 1.0, 1e-2])
  weights = np.abs(np.sin(t / np.array([5.0, 7.0, 11.0])))
  weights /= weights.sum(axis=1, keepdims=True) + 1e-12
  slopes = np.diff(losses, axis=0, prepend=np.nan)
  return losses, weights, slopes


@pytest.mark.parametrize("with_slopes", [False, True])
def test_plot_training_panels_lines_and_png(with_slopes, tmp_path):
  pytest.importorskip("matplotlib")
  from softadapt_jax.plotting import plot_training

  losses, weights, slopes = _curves()
  names = ["residual", "left", "right"]
  steps = 10 * np.arange(len(losses))
  fig = plot_training(
      losses, weights, slopes if with_slopes else None, names=names,
      steps=steps, title="run",
  )
  panels = 3 if with_slopes else 2
  assert len(fig.axes) == panels
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["losses", "weights", "slopes"][:panels]
  scales = [ax.get_yscale() for ax in fig.axes]
  assert scales == ["log", "linear", "symlog"][:panels]
  for ax, data in zip(fig.axes, (losses, weights, slopes), strict=False):
    lines = ax.get_lines()
    assert len(lines) == K
    for k, line in enumerate(lines):
      np.testing.assert_array_equal(line.get_xdata(), steps)
      np.testing.assert_allclose(line.get_ydata(), data[:, k])
  assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == names
  path = tmp_path / "run.png"
  fig.savefig(path, dpi=50)
  data = path.read_bytes()
  assert data.startswith(b"\x89PNG\r\n\x1a\n")
  assert len(data) > 2000


def test_plot_training_into_given_axes_and_errors():
  pytest.importorskip("matplotlib")
  from matplotlib.figure import Figure

  from softadapt_jax.plotting import plot_training

  losses, weights, slopes = _curves(20)
  losses[5, 0] = 0.0  # a zero loss cannot go on a log scale: a gap
  fig = Figure()
  axes = fig.subplots(3, 1)
  assert plot_training(jnp.asarray(losses), weights, slopes, axes=axes) is fig
  assert np.isnan(axes[0].get_lines()[0].get_ydata()[5])
  assert [t.get_text() for t in axes[0].get_legend().get_texts()] == [
      "loss 0", "loss 1", "loss 2"
  ]
  with pytest.raises(ValueError, match="`weights` has shape"):
    plot_training(losses, weights[:, :2])
  with pytest.raises(ValueError, match=r"`losses` must be a 2-d array"):
    plot_training(losses[:, 0], weights)
  with pytest.raises(ValueError, match="`names` must have K=3"):
    plot_training(losses, weights, names=["a"])
  with pytest.raises(ValueError, match="`steps` must have shape"):
    plot_training(losses, weights, steps=np.arange(3))
  with pytest.raises(ValueError, match="`axes` must hold 3 Axes"):
    plot_training(losses, weights, slopes, axes=axes[:2])


def test_plotting_imports_matplotlib_lazily():
  code = (
      "import sys, softadapt_jax, softadapt_jax.plotting; "
      "assert 'matplotlib' not in sys.modules, 'eager import'"
  )
  result = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr[-2000:]
