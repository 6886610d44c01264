"""Shared test helpers: every rule configuration, loss sequences, small problems.

``RULES`` lists every rule the contract tests run over (as optax's
``contrib/_common_test.py`` lists its optimizers). Each entry builds the rule
from one float hyperparameter ``h`` (so the same test sweeps it with ``vmap``
and ``inject_hyperparams``) and the loss spec (``K`` or names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import softadapt_jax as sa

K = 3
NAMES = ("residual", "boundary", "initial")
STEPS = 12


@dataclasses.dataclass(frozen=True)
class RuleCase:
  """One rule configuration of the contract tests.

  Attributes:
    make: ``make(h, spec, **kw) -> rule`` with ``spec`` ``K`` or names and
      ``kw`` passed through (``axis_name``, ``seed``).
    hypers: two values of the hyperparameter that give different weights.
    total: what the weights sum to, as a function of ``h``.
    swept: whether the hyperparameter changes the weights at all.
    keyed: whether the rule draws random numbers from a key in its state.
    adaptive: whether the weights move with the losses over time.
    epoch: for a :func:`per_epoch` rule, ``(make_inner, steps_per_epoch)``:
      its epochs count skipped steps too, so it is checked against the inner
      rule fed the epoch means of the finite steps.
  """

  make: Callable[..., sa.LossWeighting]
  hypers: tuple[float, float]
  total: Callable[[float], float]
  swept: bool = True
  keyed: bool = False
  adaptive: bool = True
  epoch: tuple[Callable[..., sa.LossWeighting], int] | None = None

  def rule(self, h: Any = None, spec: Any = K, **kw: Any) -> sa.LossWeighting:
    return self.make(self.hypers[0] if h is None else h, spec, **kw)


def _one(h: float) -> float:
  del h
  return 1.0


def _k(h: float) -> float:
  del h
  return float(K)


_FIXED = np.array([1.0, 2.0, 0.5], np.float32)


def _fixed(h, spec, **kw):
  weights = jnp.asarray(_FIXED) * h
  if isinstance(spec, int):
    return sa.fixed_weights(weights, **kw)
  if isinstance(spec, jax.tree_util.PyTreeDef):
    # Any other structure: the same weights through a rule built from it.
    vector_rule = sa.fixed_weights(weights, **kw)
    return sa.LossWeighting(
        lambda dtype, key: vector_rule.init(key=key, dtype=dtype),
        lambda state, losses: state,
        spec,
        axis_name=kw.get("axis_name"),
    )
  return sa.fixed_weights(dict(zip(spec, weights, strict=True)), **kw)


RULES: dict[str, RuleCase] = {
    "softadapt": RuleCase(
        lambda h, spec, **kw: sa.softadapt(spec, beta=h, order=2, **kw),
        (0.1, 2.0), _one,
    ),
    "softadapt_scaled": RuleCase(
        lambda h, spec, **kw: sa.softadapt(
            spec, beta=h, variant="normalized", normalization="l1",
            update_every=2, scale_by_num_losses=True, stencil="backward", **kw,
        ),
        (1.0, 5.0), _k,
    ),
    "log_softadapt": RuleCase(
        lambda h, spec, **kw: sa.softadapt(
            spec, beta=h, log_losses=True, variant="loss_weighted", **kw
        ),
        (0.5, 3.0), _one,
    ),
    "ratio_softadapt": RuleCase(
        lambda h, spec, **kw: sa.ratio_softadapt(spec, temperature=h, **kw),
        (1.0, 0.2), _k,
    ),
    "ratio_neuralpde": RuleCase(
        lambda h, spec, **kw: sa.ratio_softadapt(
            spec, update_every=2,
            **dict(sa.RATIO_SOFTADAPT_CONVENTIONS["neuralpde"], temperature=h),
            **kw,
        ),
        (10.0, 0.5), _k,
    ),
    "dwa_epochs": RuleCase(
        lambda h, spec, **kw: sa.dwa(spec, temperature=h, **kw),
        (2.0, 0.5), _k,
    ),
    "dwa_steps": RuleCase(
        lambda h, spec, **kw: sa.dwa(spec, temperature=h, steps_per_epoch=3, **kw),
        (2.0, 0.5), _k,
        epoch=(lambda h, spec: sa.dwa(spec, temperature=h), 3),
    ),
    "relobralo": RuleCase(
        lambda h, spec, seed=0, **kw: sa.relobralo(
            spec, temperature=h, expected_rho=0.5, alpha=0.9, seed=seed, **kw
        ),
        (0.1, 1.0), _k, keyed=True,
    ),
    "random_weighting": RuleCase(
        lambda h, spec, seed=0, **kw: sa.random_weighting(spec, seed=seed, **kw),
        (1.0, 1.0), _one, swept=False, keyed=True,
    ),
    "equal_weights": RuleCase(
        lambda h, spec, **kw: sa.equal_weights(spec, **kw),
        (1.0, 1.0), _k, swept=False, adaptive=False,
    ),
    "fixed_weights": RuleCase(
        _fixed, (1.0, 3.0), lambda h: float(h * _FIXED.sum()), adaptive=False,
    ),
    "per_epoch_softadapt": RuleCase(
        lambda h, spec, **kw: sa.per_epoch(
            sa.softadapt(spec, beta=h, variant="loss_weighted", **kw), 2
        ),
        (1.0, 20.0), _one,
        epoch=(
            lambda h, spec: sa.softadapt(spec, beta=h, variant="loss_weighted"),
            2,
        ),
    ),
}
ALL = sorted(RULES)


def losses_sequence(seed: int = 0, steps: int = STEPS) -> jax.Array:
  """``[steps, K]`` positive, decaying loss vectors on different scales."""
  rng = np.random.default_rng(seed)
  t = np.arange(steps)[:, None]
  scale = np.array([1e2, 1.0, 1e-2])
  rate = rng.uniform(0.05, 0.4, size=(1, K))
  noise = rng.uniform(0.8, 1.2, size=(steps, K))
  return jnp.asarray(scale * np.exp(-rate * t) * noise, jnp.float32)


def named(losses: jax.Array) -> dict[str, jax.Array]:
  """``[..., K]`` losses as a dict of the ``NAMES``."""
  return {n: losses[..., i] for i, n in enumerate(NAMES)}


def scan_rule(rule: sa.LossWeighting, losses: Any, key: Any = None):
  """``(final_state, weights of every step)`` of a ``lax.scan``."""

  def body(state, loss):
    w, state = rule.update(state, loss)
    return state, w

  return jax.lax.scan(body, rule.init(key=key), losses)


def quadratic_problem():
  """Three quadratic loss components of a 2-parameter model, with a shift."""
  targets = jnp.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
  scales = jnp.array([10.0, 1.0, 0.1])

  def loss_fn(x, shift):
    return scales * jnp.sum((x[None] - targets - shift) ** 2, axis=1)

  return loss_fn


def least_squares_problem():
  """A multi-task least-squares problem (K = 3) on a params dict."""
  keys = jax.random.split(jax.random.key(0), K + 1)
  mats = jnp.stack([jax.random.normal(k, (8, 6)) for k in keys[:-1]])
  x_star = jax.random.normal(keys[-1], (6,))
  targets = mats @ x_star
  scales = jnp.array([10.0, 1.0, 0.1])

  def loss_fn(params, data_scale=1.0):
    pred = jnp.einsum("kmd,d->km", mats, params["x"]) + params["bias"]
    return scales * jnp.mean(((pred - targets) * data_scale) ** 2, axis=1)

  init = {"x": jnp.zeros((6,)), "bias": jnp.zeros((K, 1))}
  return init, loss_fn


def contract(weights: jax.Array, stacked: Any) -> Any:
  """``sum_k w_k g_k`` for gradients stacked on a leading ``K`` axis."""
  return jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), stacked)
