"""Plots of a loss-weighting training run (needs matplotlib, an optional extra).

matplotlib is imported inside the functions, so ``import softadapt_jax`` and
``import softadapt_jax.plotting`` work without it.

- :func:`plot_training`: losses, weights and (optionally) slopes over steps,
  each a ``[steps, K]`` array or a mapping of named ``[steps]`` arrays.
- :func:`plot_diagnostics`: the same panels straight from the stacked output
  of :func:`softadapt_jax.diagnostics` (nested or ``flat=True``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jax.typing import ArrayLike

__all__ = ("plot_diagnostics", "plot_training")

# A [steps, K] array, or a mapping of one [steps] array per named component.
Curves = ArrayLike | Mapping[str, ArrayLike]


def _as_steps_by_k(
    name: str, value: Curves, names: Sequence[str] | None
) -> np.ndarray:
  if isinstance(value, Mapping):
    keys = [str(key) for key in value]
    if names is not None and set(keys) != set(names):
      raise ValueError(
          f"`{name}` has the components {keys}, but the plot has {list(names)}; "
          "every panel must name the same components."
      )
    order = keys if names is None else list(names)
    by_name = {str(key): v for key, v in value.items()}
    columns = [np.asarray(by_name[key], dtype=np.float64) for key in order]
    if any(c.ndim != 1 for c in columns) or len({c.shape for c in columns}) > 1:
      raise ValueError(
          f"`{name}` must map each component to a 1-d array [steps] of one "
          f"length, got shapes {[c.shape for c in columns]}."
      )
    return np.stack(columns, axis=1)
  array = np.asarray(value, dtype=np.float64)
  if array.ndim != 2:
    raise ValueError(
        f"`{name}` must be a 2-d array [steps, K] (e.g. stacked from a "
        f"lax.scan), got shape {array.shape}."
    )
  return array


def _names_of(*values: Curves | None) -> list[str] | None:
  """The component names of the first mapping among ``values``, if any."""
  for value in values:
    if isinstance(value, Mapping):
      return [str(key) for key in value]
  return None


def plot_diagnostics(
    log: Mapping[str, Any],
    losses: Curves | None = None,
    *,
    names: Sequence[str] | None = None,
    slopes: bool = True,
    steps: ArrayLike | None = None,
    axes: Sequence[Any] | None = None,
    title: str | None = None,
) -> Any:
  """:func:`plot_training` of the stacked output of ``sa.diagnostics``.

  ``log`` is what a ``lax.scan`` body returning
  ``sa.diagnostics(opt_state, rule)`` (or ``..., flat=True``) stacks: the
  panels are its ``"weight"`` entry, its ``"loss"`` entry (or ``losses``) and,
  if the rule logs one (SoftAdapt), its ``"slope"`` entry; the legend takes
  the rule's loss names.

  Args:
    log: stacked diagnostics, ``{"weight": [steps, K] or {name: [steps]},
      ...}`` or the flat ``{"weight/<name>": [steps], ...}``.
    losses: the losses per step (e.g. the stacked ``out.losses``), needed for
      a rule that does not log ``"loss"``; overrides ``log["loss"]``.
    names: the components in legend order, e.g. ``rule.names`` (default: as
      ``log`` holds them; a dict that went through ``jit`` or ``lax.scan``
      comes back with its keys sorted).
    slopes: draw the slopes panel when ``log`` has a ``"slope"`` entry.
    steps: ``[steps]`` the x values (default ``0, 1, ...``).
    axes: the matplotlib ``Axes`` to draw into, one per panel.
    title: a title for the figure.

  Returns:
    The matplotlib ``Figure`` holding the panels.

  Raises:
    ValueError: if ``log`` has no weights, or no losses are given or logged.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> from softadapt_jax.plotting import plot_diagnostics
    >>> rule = sa.softadapt(["residual", "boundary"], beta=1.0)
    >>> def body(state, losses):
    ...   _, state = rule.update(state, losses)
    ...   return state, sa.diagnostics(state, rule, flat=True)
    >>> t = jnp.arange(50.0)
    >>> seq = {"residual": jnp.exp(-t / 10), "boundary": 0.1 * jnp.exp(-t / 40)}
    >>> _, log = jax.lax.scan(body, rule.init(), seq)
    >>> fig = plot_diagnostics(log, names=rule.names)
    >>> [ax.get_title() for ax in fig.axes]
    ['losses', 'weights', 'slopes']
    >>> [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ['residual', 'boundary']
  """
  entries = _nested(log)
  if "weight" not in entries:
    raise ValueError(
        "`log` must hold the stacked output of sa.diagnostics (a \"weight\" "
        f"entry, or \"weight/<name>\" entries), got the keys {sorted(log)}."
    )
  if losses is None:
    losses = entries.get("loss")
    if losses is None:
      raise ValueError(
          "this rule logs no \"loss\": pass the losses per step, e.g. the "
          "stacked `out.losses` of weighted_value_and_grad."
      )
  slope_curves = entries.get("slope") if slopes else None
  return plot_training(
      losses,
      entries["weight"],
      slope_curves,
      names=names,
      steps=steps,
      axes=axes,
      title=title,
  )


def _nested(log: Mapping[str, Any]) -> dict[str, Any]:
  """``{"weight/a": x, ...}`` as ``{"weight": {"a": x, ...}, ...}``."""
  out: dict[str, Any] = {}
  for key, value in log.items():
    prefix, sep, name = str(key).partition("/")
    if sep:
      group = out.setdefault(prefix, {})
      if not isinstance(group, dict):
        raise ValueError(f"`log` holds both {prefix!r} and {key!r}.")
      group[name] = value
    else:
      out[prefix] = value
  return out


def plot_training(
    losses: Curves,
    weights: Curves,
    slopes: Curves | None = None,
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

  Each of ``losses``, ``weights`` and ``slopes`` is a ``[steps, K]`` array or
  a mapping of one ``[steps]`` array per named component (named losses, or
  the ``"weight"`` entry of the stacked ``sa.diagnostics``); mappings are
  matched by name. To plot the stacked diagnostics directly, see
  :func:`plot_diagnostics`.

  Args:
    losses: ``[steps, K]`` loss components per step (e.g. the stacked outputs
      of a ``lax.scan``), or ``{name: [steps]}``.
    weights: ``[steps, K]`` the weights per step, or ``{name: [steps]}``.
    slopes: ``[steps, K]`` the slopes per step (or ``{name: [steps]}``), or
      ``None`` for no panel.
    names: ``K`` component names for the legend (default: the keys of the
      first mapping given, else ``loss 0``, ...); with mappings, also the
      order of the components.
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
  if names is None:
    names = _names_of(losses, weights, slopes)
  losses = _as_steps_by_k("losses", losses, names)
  weights = _as_steps_by_k("weights", weights, names)
  panels = [("losses", losses), ("weights", weights)]
  if slopes is not None:
    panels.append(("slopes", _as_steps_by_k("slopes", slopes, names)))
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
    panel_axes = list(fig.subplots(1, len(panels), sharex=True, squeeze=False)[0])
  else:
    panel_axes = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(panel_axes) != len(panels):
      raise ValueError(
          f"`axes` must hold {len(panels)} Axes (losses, weights"
          f"{', slopes' if slopes is not None else ''}), got {len(panel_axes)}."
      )
    fig = panel_axes[0].get_figure()

  for ax, (panel, array) in zip(panel_axes, panels, strict=True):
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
