"""Shared pieces of the studies: pluggable weighting methods, the training step,
statistics, markdown tables and figures.

A weighting *method* is anything with

    state = method.init(key)
    weights, state = method.update(state, losses)

(jittable, scannable, vmappable), the protocol of the loss-history family
(``rule = sa.<name>(K, ...)``). Fixed weights, SoftAdapt through the core state
machine (:func:`softadapt_jax.softadapt_weights`) and every family rule that the
installed ``softadapt_jax`` offers are wrapped to it here, so a study compares
them in one training loop: the direction is always one ``jax.vjp`` of the loss
vector with the weights as cotangent (``h = sum_k w_k grad f_k``, the weights a
constant of the backward pass).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# ---------------------------------------------------------------------------
# Weighting methods.
# ---------------------------------------------------------------------------


class Method(NamedTuple):
  """A weighting method.

  Attributes:
    name: the label of its table row.
    init: ``key -> state``.
    update: ``(state, losses) -> (weights, state)``.
    family: ``"fixed"``, ``"softadapt"`` or the family rule's name.
  """

  name: str
  init: Callable[[jax.Array], Any]
  update: Callable[[Any, jax.Array], tuple[jax.Array, Any]]
  family: str = "fixed"


def fixed(weights: Sequence[float] | jax.Array, name: str | None = None) -> Method:
  """Constant weights (``equal``: ``1/K`` each, the gradient of the mean)."""
  w = jnp.asarray(weights, jnp.float32)
  if name is None and not isinstance(w, jax.core.Tracer):
    name = "fixed " + ", ".join(f"{float(x):g}" for x in np.asarray(w))
  label = name or "fixed"
  return Method(label, lambda key: (), lambda state, losses: (w, state), "fixed")


def equal(num_losses: int) -> Method:
  return fixed(jnp.full((num_losses,), 1.0 / num_losses), "equal weights")


def softadapt(
    num_losses: int,
    *,
    beta: float | jax.Array = 0.1,
    variant: str = "original",
    order: int = 1,
    name: str | None = None,
    **kwargs: Any,
) -> Method:
  """SoftAdapt (SPEC) from the core state machine; weights sum to 1."""

  def init(key):
    del key
    return sa.init_state(num_losses, order=order)

  def update(state, losses):
    return sa.softadapt_weights(
        state, losses, beta=beta, variant=variant, **kwargs
    )

  if name is None:
    beta_text = f"{float(beta):g}" if not isinstance(beta, jax.core.Tracer) else "?"
    name = f"SoftAdapt {variant}, beta {beta_text}, order {order}"
  return Method(name, init, update, "softadapt")


FAMILY_RULES = ("softadapt", "ratio_softadapt", "dwa", "relobralo", "random_weighting")


def family_available() -> dict[str, bool]:
  """Which rule factories of the loss-history family the library has."""
  return {name: callable(getattr(sa, name, None)) for name in FAMILY_RULES}


def family_rule(
    factory: str, num_losses: int, name: str | None = None, **kwargs: Any
) -> Method | None:
  """``sa.<factory>(K, **kwargs)`` as a :class:`Method`, or ``None`` if absent.

  The weights are divided by their sum, so that every method's weights sum to
  1 (rules that scale to ``K`` differ from that by the constant ``K``, the same
  as a ``K`` times larger step size); the convention then never decides a
  comparison.
  """
  make = getattr(sa, factory, None)
  if not callable(make):
    return None
  rule = make(num_losses, **kwargs)

  def init(key):
    return rule.init(key=key)

  def update(state, losses):
    weights, state = rule.update(state, losses)
    weights = jnp.asarray(weights, jnp.float32)
    return weights / jnp.sum(weights), state

  if name is None:
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    name = f"{factory}({args})" if args else factory
  return Method(name, init, update, factory)


def family_methods(num_losses: int, steps_per_epoch: int = 1) -> list[Method]:
  """One row per family rule at its defaults, where the library has it.

  Ratio SoftAdapt appears twice: at its defaults and in the PhysicsNeMo-Sym
  convention (``T = 1``, weights summing to ``K``, ``eps = 1e-8``).
  """
  conventions = getattr(sa, "RATIO_SOFTADAPT_CONVENTIONS", {})
  physicsnemo = dict(conventions.get("physicsnemo", {}))
  specs: list[tuple[str, str, dict[str, Any]]] = [
      ("softadapt", "log-slope SoftAdapt (defaults)", {"log_losses": True}),
      ("ratio_softadapt", "ratio SoftAdapt (defaults)", {}),
      ("ratio_softadapt", "ratio SoftAdapt (PhysicsNeMo)", physicsnemo),
      ("dwa", "DWA (defaults)",
       {"steps_per_epoch": steps_per_epoch} if steps_per_epoch > 1 else {}),
      ("relobralo", "ReLoBRaLo (defaults)", {}),
      ("random_weighting", "RLW (defaults)", {}),
  ]
  if physicsnemo and callable(getattr(sa, "ratio_softadapt", None)):
    import inspect

    params = inspect.signature(sa.ratio_softadapt).parameters
    if all(
        k in params and params[k].default == v for k, v in physicsnemo.items()
    ):  # the defaults are the PhysicsNeMo convention: one row
      specs[1] = ("ratio_softadapt", "ratio SoftAdapt (defaults = PhysicsNeMo)", {})
      physicsnemo = {}
  if not physicsnemo:
    specs.pop(2)
  methods = []
  for factory, label, kwargs in specs:
    try:
      method = family_rule(factory, num_losses, label, **kwargs)
    except (TypeError, ValueError):
      method = None
    if method is not None:
      methods.append(method)
  return methods


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


def make_step(
    loss_fn: Callable[..., jax.Array],
    method: Method,
    tx: optax.GradientTransformation,
) -> Callable[[Any, Any], tuple[Any, tuple[jax.Array, jax.Array]]]:
  """A ``lax.scan`` step: carry ``(params, opt_state, method_state)``.

  ``loss_fn(params, batch)`` returns the ``[K]`` loss vector. The direction is
  the VJP of that vector with the method's weights (one backward pass).
  """

  def step(carry, batch):
    params, opt_state, wstate = carry
    losses, vjp_fn = jax.vjp(lambda p: loss_fn(p, batch), params)
    weights, wstate = method.update(wstate, jax.lax.stop_gradient(losses))
    (grad,) = vjp_fn(weights.astype(losses.dtype))
    updates, opt_state = tx.update(grad, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, wstate), (losses, weights)

  return step


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
  """``fn(*args)`` and the seconds it took (results blocked on)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


# ---------------------------------------------------------------------------
# Statistics and tables.
# ---------------------------------------------------------------------------


def mean_std(x: Any, fmt: str = ".3g") -> str:
  """``"mean ± std"`` over the finite entries (``n/N finite`` if some are not)."""
  x = np.asarray(x, np.float64).ravel()
  ok = np.isfinite(x)
  if not ok.any():
    return "diverged"
  text = f"{np.mean(x[ok]):{fmt}} ± {np.std(x[ok]):{fmt}}"
  if not ok.all():
    text += f" ({ok.sum()}/{x.size} finite)"
  return text


def geo_range(x: Any, fmt: str = ".2e", floor: float = 1e-8) -> str:
  """Geometric mean and ``[min, max]`` of nonnegative values (errors, distances).

  Values below ``floor`` count as ``floor`` (an exact 0 in float32); non-finite
  values are reported as diverged and left out of the statistics.
  """
  x = np.asarray(x, np.float64).ravel()
  ok = np.isfinite(x)
  if not ok.any():
    return "diverged"
  v = np.maximum(x[ok], floor)
  g = math.exp(np.mean(np.log(v)))
  text = f"{g:{fmt}} [{v.min():{fmt}}, {v.max():{fmt}}]"
  if not ok.all():
    text += f" ({x.size - ok.sum()}/{x.size} diverged)"
  return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = [
      "| " + " | ".join(header) + " |",
      "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_markdown(path: str, title: str, sections: Sequence[str]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(f"# {title}\n\n" + "\n\n".join(s.strip() for s in sections) + "\n")


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (imported lazily)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def parse_common(
    description: str,
    argv: Sequence[str] | None,
    add: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
  """``--smoke``, ``--out``, ``--seeds`` plus the study's own arguments."""
  parser = argparse.ArgumentParser(
      description=description,
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument(
      "--smoke", action="store_true", help="a few steps and a tiny grid (tests)"
  )
  parser.add_argument("--out", default=RESULTS_DIR, help="folder of the results")
  parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
  parser.add_argument("--no-plot", action="store_true", help="skip the figures")
  if add is not None:
    add(parser)
  return parser.parse_args(argv)


def environment() -> str:
  """A line naming the versions and the backend, for the tables' footers."""
  return (
      f"jax {jax.__version__}, optax {optax.__version__}, softadapt_jax "
      f"{sa.__version__}, backend {jax.default_backend()}"
  )



def per_epoch(method: Method, num_losses: int, steps_per_epoch: int) -> Method:
  """``method`` fed epoch-mean losses: the weights change once per epoch.

  The wrapped state sums the step losses; on the last step of each epoch their
  mean goes to ``method.update``, whose weights are then held through the next
  epoch (the cadence of the reference's Keras callback). Until the first epoch
  ends the weights are ``1/K``.
  """

  def init(key):
    return {
        "inner": method.init(key),
        "sum": jnp.zeros((num_losses,), jnp.float32),
        "step": jnp.int32(0),
        "weights": jnp.full((num_losses,), 1.0 / num_losses, jnp.float32),
    }

  def update(state, losses):
    total = state["sum"] + losses.astype(jnp.float32)
    step = state["step"] + 1
    end = step % steps_per_epoch == 0
    new_w, new_inner = method.update(state["inner"], total / steps_per_epoch)
    pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(end, x, y), a, b)
    inner = pick(new_inner, state["inner"])
    weights = jnp.where(end, new_w.astype(jnp.float32), state["weights"])
    held = state["weights"]  # this step uses the weights of the last epoch
    new = {
        "inner": inner,
        "sum": jnp.where(end, 0.0, total),
        "step": step,
        "weights": weights,
    }
    return held, new

  return Method(method.name + " (per epoch)", init, update, method.family)
