"""Plots of a SoftAdapt training run (needs matplotlib, an optional extra).

matplotlib is imported inside the functions, so ``import softadapt_jax`` and
``import softadapt_jax.plotting`` work without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jax.typing import ArrayLike

__all__ = ("plot_training",)


def _as_steps_by_k(name: str, value: ArrayLike) -> np.ndarray:
  array = np.asarray(value, dtype=np.float64)
  if array.ndim != 2:
    raise ValueError(
        f"`{name}` must be a 2-d array [steps, K] (e.g. stacked from a "
        f"lax.scan), got shape {array.shape}."
    )
  return array


def plot_training(
    losses: ArrayLike,
    weights: ArrayLike,
    slopes: ArrayLike | None = None,
    *,
    names: Sequence[str] | None = None,
    steps: ArrayLike | None = None,
    axes: Sequence[Any] | None = None,
    title: str | None = None,
) -> Any:
  """Draws the loss components, weights and (optionally) slopes over steps.

  One panel each, sharing the step axis: the losses on a log scale (a
  component that reaches 0 or below leaves a gap), the weights on a linear
  scale, the slopes on a symmetric-log scale (they are signed and span many
  orders of magnitude: log over the top four decades of ``|slope|``, linear
  below; ``NaN`` warm-up steps leave a gap). Each panel has one
  line per component, in the same colour across panels.

  The figure is made without ``pyplot`` (no GUI backend, no global figure
  registry): it renders with the Agg canvas, ``fig.savefig("run.png")``
  writes it, and Jupyter displays it.

  Args:
    losses: ``[steps, K]`` loss components per step (e.g. the stacked outputs
      of a ``lax.scan``).
    weights: ``[steps, K]`` the weights per step.
    slopes: ``[steps, K]`` the slopes per step, or ``None`` for no panel.
    names: ``K`` component names for the legend (default ``loss 0``, ...).
    steps: ``[steps]`` the x values (default ``0, 1, ...``).
    axes: the matplotlib ``Axes`` to draw into, one per panel (2, or 3 with
      ``slopes``); default a new figure with one row of panels.
    title: a title for the figure.

  Returns:
    The matplotlib ``Figure`` holding the panels.

  Raises:
    ValueError: if the arrays are not ``[steps, K]`` of one shape, or
      ``names``, ``steps`` or ``axes`` have the wrong length.

  Examples:
    >>> import numpy as np
    >>> from softadapt_jax.plotting import plot_training
    >>> t = np.arange(100)
    >>> losses = np.stack([np.exp(-t / 20), 0.1 * np.exp(-t / 50)], axis=1)
    >>> weights = np.full((100, 2), 0.5)
    >>> fig = plot_training(losses, weights, names=["residual", "boundary"])
    >>> [ax.get_title() for ax in fig.axes]
    ['losses', 'weights']
    >>> [len(ax.get_lines()) for ax in fig.axes]
    [2, 2]
  """
  losses = _as_steps_by_k("losses", losses)
  weights = _as_steps_by_k("weights", weights)
  panels = [("losses", losses), ("weights", weights)]
  if slopes is not None:
    panels.append(("slopes", _as_steps_by_k("slopes", slopes)))
  shape = losses.shape
  for name, array in panels:
    if array.shape != shape:
      raise ValueError(
          f"`{name}` has shape {array.shape}, but `losses` has shape {shape}; "
          "they must match ([steps, K])."
      )
  num_steps, num_losses = shape
  if names is None:
    names = [f"loss {k}" for k in range(num_losses)]
  names = list(names)
  if len(names) != num_losses:
    raise ValueError(
        f"`names` must have K={num_losses} entries, got {len(names)}."
    )
  x = np.arange(num_steps) if steps is None else np.asarray(steps)
  if x.shape != (num_steps,):
    raise ValueError(
        f"`steps` must have shape ({num_steps},), got {x.shape}."
    )

  if axes is None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), sharex=True, squeeze=False)[0]
  else:
    axes = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(axes) != len(panels):
      raise ValueError(
          f"`axes` must hold {len(panels)} Axes (losses, weights"
          f"{', slopes' if slopes is not None else ''}), got {len(axes)}."
      )
    fig = axes[0].get_figure()

  for ax, (panel, array) in zip(axes, panels, strict=True):
    for k, name in enumerate(names):
      y = array[:, k]
      if panel == "losses":
        y = np.where(y > 0, y, np.nan)
      ax.plot(x, y, color=f"C{k}", lw=1.0, label=name)
    ax.set_title(panel)
    ax.set_xlabel("step")
    if panel == "losses":
      ax.set_yscale("log")
      ax.legend(fontsize="small")
    elif panel == "slopes":
      # Log scale over the top four decades of |slope|, linear below.
      magnitudes = np.abs(array[np.isfinite(array)])
      top = float(magnitudes.max()) if magnitudes.size else 0.0
      linthresh = 1e-4 * top if top > 0 else 1.0
      ax.set_yscale("symlog", linthresh=linthresh)
  if title is not None:
    fig.suptitle(title)
  return fig
