"""The plotting helpers: ``plot_training`` and ``plot_diagnostics``.

``plot_training`` must draw one line per component in each panel, from
``[steps, K]`` arrays or mappings of named ``[steps]`` arrays, and save a PNG;
``plot_diagnostics`` must draw the same panels from the stacked output of
``sa.diagnostics`` (nested or flat), for any rule.
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


def test_plot_training_from_named_curves():
  pytest.importorskip("matplotlib")
  from softadapt_jax.plotting import plot_training

  losses, weights, slopes = _curves(30)
  names = ["residual", "left", "right"]
  named = lambda a: {n: a[:, k] for k, n in enumerate(names)}
  # Mappings are matched by name: another key order draws the same lines.
  shuffled = lambda a: {n: a[:, k] for k, n in reversed(list(enumerate(names)))}
  fig = plot_training(named(losses), shuffled(weights), named(slopes))
  assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == names
  for ax, data in zip(fig.axes, (losses, weights, slopes), strict=True):
    for k, line in enumerate(ax.get_lines()):
      np.testing.assert_allclose(line.get_ydata(), data[:, k])
  # A mapping next to an array: the mapping names the columns of the array.
  fig = plot_training(losses, named(weights))
  assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == names
  with pytest.raises(ValueError, match="every panel must name the same"):
    plot_training(named(losses), {"residual": weights[:, 0]})
  with pytest.raises(ValueError, match=r"1-d array \[steps\]"):
    plot_training(named(losses), {n: weights for n in names})


def _train_log(rule, flat, steps=12):
  """The stacked losses and ``sa.diagnostics`` of a short named-loss run."""
  kx, ky, kw = jax.random.split(jax.random.key(1), 3)
  x = jax.random.normal(kx, (32, 4))
  y = jax.random.normal(ky, (32, K)) * jnp.array([5.0, 1.0, 0.2])
  params = {"w": 0.1 * jax.random.normal(kw, (4, K)), "b": jnp.zeros(K)}

  def losses(params):
    per_output = jnp.mean((x @ params["w"] + params["b"] - y) ** 2, axis=0)
    return dict(zip(("residual", "left", "right"), per_output, strict=True))

  tx = optax.chain(sa.track_weights(rule), optax.adam(0.05))
  grad_fn = sa.weighted_value_and_grad(losses, rule)

  def step(carry, _):
    params, opt_state = carry
    out = grad_fn(opt_state, params)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    params = optax.apply_updates(params, updates)
    return (params, opt_state), (
        out.losses, sa.diagnostics(opt_state, rule, flat=flat)
    )

  _, (seq, log) = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
      (params, tx.init(params))
  )
  return seq, log


@pytest.mark.parametrize("flat", [False, True])
def test_plot_diagnostics_of_a_softadapt_run(flat):
  pytest.importorskip("matplotlib")
  from softadapt_jax.plotting import plot_diagnostics

  rule = sa.softadapt(["residual", "left", "right"], beta=2.0, order=2)
  seq, log = _train_log(rule, flat)
  fig = plot_diagnostics(log, names=rule.names, title="softadapt")
  assert [ax.get_title() for ax in fig.axes] == ["losses", "weights", "slopes"]
  legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert legend == list(rule.names)
  entry = (lambda key, n: log[f"{key}/{n}"]) if flat else (
      lambda key, n: log[key][n]
  )
  for k, name in enumerate(rule.names):
    # The logged losses are those the steps saw; the weights those applied.
    np.testing.assert_allclose(fig.axes[0].get_lines()[k].get_ydata(), seq[name])
    np.testing.assert_allclose(
        fig.axes[1].get_lines()[k].get_ydata(), entry("weight", name)
    )
    np.testing.assert_allclose(
        fig.axes[2].get_lines()[k].get_ydata(), entry("slope", name)
    )
  fig = plot_diagnostics(log, slopes=False)
  assert [ax.get_title() for ax in fig.axes] == ["losses", "weights"]


def test_plot_diagnostics_of_a_rule_without_logged_losses():
  pytest.importorskip("matplotlib")
  from softadapt_jax.plotting import plot_diagnostics

  rule = sa.relobralo(["residual", "left", "right"])
  seq, log = _train_log(rule, flat=True)
  with pytest.raises(ValueError, match="logs no \"loss\""):
    plot_diagnostics(log)
  fig = plot_diagnostics(log, seq, names=rule.names)
  assert [ax.get_title() for ax in fig.axes] == ["losses", "weights"]
  for k, name in enumerate(rule.names):
    np.testing.assert_allclose(
        fig.axes[1].get_lines()[k].get_ydata(), log[f"weight/{name}"]
    )
  with pytest.raises(ValueError, match=r"stacked output of sa\.diagnostics"):
    plot_diagnostics({"count": log["count"]}, seq)
