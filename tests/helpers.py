"""Shared test helpers: every rule configuration, loss sequences, small problems.

``RULES`` lists every rule the contract tests run over (as optax's
``contrib/_common_test.py`` lists its optimizers). Each entry builds the rule
from one float hyperparameter ``h`` (so the same test sweeps it with ``vmap``
and ``inject_hyperparams``) and the loss spec (``K`` or names).
"""

from __future__ import annotations

import copy
import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import softadapt_jax as sa
from softadapt_jax import _statistics as st

K = 3
NAMES = ("residual", "boundary", "initial")
STEPS = 12


def stable_seed(*parts: Any) -> int:
  """A seed from ``parts`` that is the same in every process (``hash`` of a
  string is salted per process, so a failure it seeds could not be rerun)."""
  return zlib.crc32(repr(parts).encode())


@dataclasses.dataclass(frozen=True)
class RuleCase:
  """One rule configuration of the contract tests.

  Attributes:
    make: ``make(h, spec, **kw) -> rule`` with ``spec`` ``K`` or names and
      ``kw`` passed through (``axis_name``, ``seed``).
    hypers: two values of the hyperparameter that give different weights.
    total: what the weights sum to, as a function of ``h`` (``None``: no
      fixed total, as learning-rate annealing).
    swept: whether the hyperparameter changes the weights at all.
    keyed: whether the rule draws random numbers from a key in its state.
    adaptive: whether the weights move with the losses over time.
    cadence: the update cadence of a gradient rule, in calls.
    zero_dominates: a loss of exactly 0 takes (nearly) all the weight, by the
      rule's own formula (FAMO: ``lambda_k ~ z_k / (L_k + 1e-8)``).
    nonnegative: the weights are never negative (IMTL-G, ConFIG and
      Aligned-MTL may give a gradient a negative weight).
    pareto: the rule stops at a Pareto-stationary point (MGDA), not at the
      minimum of the sum.
    rtol: how close the same run must be eagerly, jitted and scanned (an
      iterative solver stopping at a tolerance follows rounding: MGDA's
      official solver, stopping at 1e-5, agrees to ~1e-5).
    slow: run only with ``pytest -m slow``, to keep the default run under
      five minutes on two cores: the aggregators whose solvers take seconds
      to compile in every test's program (their own files test them in the
      default run; ``conflict_free`` carries the Gramian kit's contract
      there), and the rules whose code paths another default rule already
      takes (log-slope SoftAdapt, ratio SoftAdapt, fixed weights, random
      weighting, jaxpi's LRA, one-pass FAMO, PCGrad). ``pytest -m slow`` runs them all.
    fuzz_runs: how many random histories the fuzz test feeds the rule in one
      vmapped program. Nash-MTL's nested solver loops, vmapped, run every
      history to the slowest one's iteration budget: 1,000 histories take
      45 s, 10,000 took 345 s, most of the slow tier.
    epoch: for a :func:`per_epoch` rule, ``(make_inner, steps_per_epoch)``:
      its epochs count skipped steps too, so it is checked against the inner
      rule fed the epoch means of the finite steps.
  """

  make: Callable[..., sa.LossWeighting]
  hypers: tuple[float, float]
  total: Callable[[float], float | None]
  swept: bool = True
  keyed: bool = False
  adaptive: bool = True
  epoch: tuple[Callable[..., sa.LossWeighting], int] | None = None
  cadence: int = 1
  zero_dominates: bool = False
  nonnegative: bool = True
  pareto: bool = False
  slow: bool = False
  rtol: float = 1e-6
  fuzz_runs: int = 10_000

  def rule(self, h: Any = None, spec: Any = K, **kw: Any) -> sa.LossWeighting:
    """The rule; one that needs gradient statistics reads them, when
    ``update`` is given none, from a function of the losses (see
    :func:`synthetic_statistics`), so every protocol contract runs on it; the
    routes still compute the real ones."""
    rule = self.make(self.hypers[0] if h is None else h, spec, **kw)
    if rule.statistics is None:
      return rule
    synthetic = copy.copy(rule)
    synthetic.__class__ = _SyntheticStatistics
    return synthetic


class _SyntheticStatistics(sa.LossWeighting):
  def update(self, state: Any, losses: Any, statistics: Any = None) -> Any:
    if statistics is None:
      vector = self.structure.flatten(losses)
      if self.axis_name is not None:  # as the routes: of the global gradients
        vector = jax.lax.pmean(vector, self.axis_name)
      statistics = synthetic_statistics(self, self.structure.unflatten(vector))
    return super().update(state, losses, statistics)


def synthetic_statistics(rule: sa.LossWeighting, losses: Any) -> dict:
  """Gradient statistics as a bounded function of the losses (for protocol tests).

  Each ``[K]`` entry is ``log1p(|L|) + c`` (finite and positive whatever the
  losses' magnitude, non-finite where a loss is). The Gramian is
  ``D C D`` with ``D = diag(log1p(|L|) + 1)`` and ``C`` a fixed positive
  definite correlation matrix with conflicting pairs (negative cosines), so
  that every aggregator has something to do.
  """
  assert rule.statistics is not None
  vector = rule.structure.flatten(losses).astype(jnp.float32)
  base = jnp.log1p(jnp.abs(vector)) + 1.0
  zeros = st.zeros_like_statistics(rule.statistics, rule.num_losses, jnp.float32)
  out = {}
  for i, name in enumerate(sorted(zeros)):
    if name == "gramian":
      k = rule.num_losses
      parity = (jnp.arange(k)[:, None] + jnp.arange(k)[None, :]) % 2
      signs = jnp.where(parity, -1.0, 0.5)
      corr = jnp.eye(k) + (0.9 / max(k - 1, 1)) * signs * (1 - jnp.eye(k))
      out[name] = base[:, None] * corr * base[None, :]
    elif name == "n":
      out[name] = jnp.full_like(base, 10.0)
    else:
      out[name] = base * (1.0 + 0.5 * i)
  return out


def true_statistics(rule: sa.LossWeighting, fun: Callable[[Any], Any], params: Any):
  """The real statistics of ``fun``'s per-component gradients (``jacrev``)."""
  if rule.statistics is None:
    return None
  return st.from_function(
      rule.statistics,
      lambda p: rule.structure.flatten(fun(p)),
      params,
      rule.num_losses,
      route="jacrev",
  )


def _none(h: float) -> None:
  del h


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
    "log_softadapt": RuleCase(
        lambda h, spec, **kw: sa.softadapt(
            spec, beta=h, log_losses=True, variant="loss_weighted", **kw
        ),
        (0.5, 3.0), _one, slow=True,
    ),
    "ratio_softadapt": RuleCase(
        lambda h, spec, **kw: sa.ratio_softadapt(spec, temperature=h, **kw),
        (1.0, 0.2), _k, slow=True,
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
        (1.0, 1.0), _one, swept=False, keyed=True, slow=True,
    ),
    "equal_weights": RuleCase(
        lambda h, spec, **kw: sa.equal_weights(spec, **kw),
        (1.0, 1.0), _k, swept=False, adaptive=False,
    ),
    "fixed_weights": RuleCase(
        _fixed, (1.0, 3.0), lambda h: float(h * _FIXED.sum()), adaptive=False,
        slow=True,
    ),
    "grad_balance_wang2021": RuleCase(
        lambda h, spec, **kw: sa.grad_balance(
            spec, **dict(
                sa.GRAD_BALANCE_CONVENTIONS["wang2021"], momentum=h,
                update_every=3, weights_only=False,
            ), **kw,
        ),
        (0.9, 0.2), _none, cadence=3,
    ),
    "grad_balance_jaxpi": RuleCase(
        lambda h, spec, **kw: sa.grad_balance(
            spec, **dict(
                sa.GRAD_BALANCE_CONVENTIONS["jaxpi"], momentum=h, update_every=2
            ), **kw,
        ),
        (0.9, 0.3), _none, cadence=2, slow=True,
    ),
    "gradnorm": RuleCase(
        lambda h, spec, **kw: sa.gradnorm(
            spec, alpha=h, learning_rate=0.01, weight_decay=0.0, **kw
        ),
        (1.5, 0.5), _k,
    ),
    "famo": RuleCase(
        lambda h, spec, **kw: sa.famo(spec, form="one_pass", learning_rate=h, **kw),
        (0.025, 0.3), _one, zero_dominates=True, slow=True,
    ),
    "famo_exact": RuleCase(
        lambda h, spec, **kw: sa.famo(spec, min_losses=h, **kw),
        (0.0, -0.5), _one, zero_dominates=True,
    ),
    "uncertainty_weighting": RuleCase(
        lambda h, spec, **kw: sa.uncertainty_weighting(
            spec, learning_rate=h, weight_decay=0.0, **kw
        ),
        (0.05, 0.3), _none,
    ),
    # The Gramian aggregators (the protocol contracts read a synthetic
    # Gramian, the routes the real one).
    "mgda": RuleCase(lambda h, spec, **kw: sa.mgda(spec, **kw), (1.0, 1.0),
                     _one, swept=False, pareto=True, slow=True),
    "mgda_official": RuleCase(
        lambda h, spec, **kw: sa.mgda(spec, **sa.MGDA_CONVENTIONS["official"], **kw),
        (1.0, 1.0), _one, swept=False, pareto=True, slow=True, rtol=1e-4,
    ),
    "upgrad": RuleCase(
        lambda h, spec, **kw: sa.upgrad(spec, reg_eps=h, **kw), (1e-4, 0.5), _none,
        slow=True,
    ),
    "dualproj": RuleCase(
        lambda h, spec, **kw: sa.dualproj(spec, reg_eps=h, **kw), (1e-4, 0.5), _none,
        slow=True,
    ),
    "conflict_free": RuleCase(
        lambda h, spec, **kw: sa.conflict_free(spec, **kw), (1.0, 1.0), _none,
        swept=False, nonnegative=False,
    ),
    "pcgrad": RuleCase(
        lambda h, spec, seed=0, **kw: sa.pcgrad(spec, seed=seed, **kw), (1.0, 1.0),
        _none, swept=False, keyed=True, slow=True,
    ),
    "imtl_g": RuleCase(
        lambda h, spec, **kw: sa.imtl_g(spec, **kw), (1.0, 1.0), _none,
        swept=False, nonnegative=False, slow=True,
    ),
    "aligned_mtl": RuleCase(
        lambda h, spec, **kw: sa.aligned_mtl(spec, **kw), (1.0, 1.0), _none,
        swept=False, nonnegative=False, slow=True,
    ),
    "cagrad": RuleCase(
        lambda h, spec, **kw: sa.cagrad(spec, alpha=h, **kw), (0.5, 0.1), _none,
        slow=True, rtol=1e-5,
    ),
    "nash_mtl": RuleCase(
        lambda h, spec, **kw: sa.nash_mtl(spec, max_norm=h, **kw), (1.0, 0.0), _none,
        slow=True, rtol=1e-5, fuzz_runs=1_000,
    ),
}
def params(names: list[str]) -> list[Any]:
  """The rule names as pytest parameters, the slow ones marked ``slow``."""
  return [
      pytest.param(n, marks=pytest.mark.slow) if RULES[n].slow else n
      for n in names
  ]


ALL = params(sorted(RULES))
# The settings the contract does not repeat are covered by each rule's own
# tests: SoftAdapt's every setting (test_softadapt), the peers' conventions of
# ratio SoftAdapt and DWA fed epoch means (test_family_formulas), every
# grad_balance and GradNorm convention (test_gradient_rules).


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
