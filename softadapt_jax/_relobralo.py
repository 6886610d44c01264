"""ReLoBRaLo: relative loss balancing with random lookback."""

from __future__ import annotations

import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol

# Published default sets (see docs/family.md).
RELOBRALO_CONVENTIONS = types.MappingProxyType({
    # The author's Keras loss class (rbischof, "Multi-objective loss balancing
    # for physics-informed deep learning", companion code and article).
    "author": types.MappingProxyType(
        {"alpha": 0.999, "temperature": 0.1, "expected_rho": 0.99}
    ),
    # The argparse defaults of rbischof/relative_balancing src/train.py.
    "author_cli": types.MappingProxyType(
        {"alpha": 0.999, "temperature": 1.0, "expected_rho": 1.0}
    ),
    # NVIDIA PhysicsNeMo-Sym's Relobralo aggregator.
    "physicsnemo": types.MappingProxyType(
        {"alpha": 0.95, "temperature": 1.0, "expected_rho": 0.99}
    ),
})

_RATIO_EPS = 1e-12


class ReLoBRaLoState(NamedTuple):
  """State of :func:`relobralo`.

  Attributes:
    count: int32 scalar, number of loss vectors recorded (saturating).
    initial_losses: ``[K]`` the first recorded losses ``L(0)``.
    previous_losses: ``[K]`` the last recorded losses ``L(t-1)``.
    weights: ``[K]`` the weights last returned, ``lambda(t-1)``.
    key: ``uint32[2]`` raw PRNG key data for the lookback draws.
    num_skipped: int32 scalar, loss vectors skipped (non-finite or ``<= 0``).
  """

  count: jax.Array
  initial_losses: jax.Array
  previous_losses: jax.Array
  weights: jax.Array
  key: jax.Array
  num_skipped: jax.Array


def relobralo(
    num_losses: int,
    *,
    alpha: ArrayLike = 0.999,
    temperature: ArrayLike = 0.1,
    expected_rho: ArrayLike = 0.99,
    scale_by_num_losses: bool = True,
    seed: int = 0,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""ReLoBRaLo (Bischof & Kraus, 2021), as the author's code computes it.

  .. math::
    b_k(t; t') = K\,\mathrm{softmax}_k\!\Big(\frac{L_k(t)}{T L_k(t') +
    10^{-12}}\Big), \qquad \rho \sim \mathrm{Bernoulli}(E[\rho]),

    \lambda(t) = \rho\,\alpha\,\lambda(t-1) + (1-\rho)\,\alpha\,b(t; 0)
    + (1-\alpha)\,b(t; t-1)

  Warm-up as in the author's class: at the first recorded step ``L(0)`` is
  captured and ``lambda = 1``; at the second ``alpha = 0`` and ``rho = 1``
  (``lambda = b(1; 0)``); the full rule from the third. The weights sum to
  ``K`` (or to 1 with ``scale_by_num_losses=False``, every term scaled by
  ``1/K``). ``rho`` is drawn from a key kept in the state, so runs are
  reproducible and ``vmap`` over keys gives independent runs. Loss vectors
  with a non-finite or non-positive entry are skipped (the key does not
  advance). ``RELOBRALO_CONVENTIONS`` holds the published default sets.

  Args:
    num_losses: ``K`` (static).
    alpha: weight of the history term (traced).
    temperature: ``T`` (traced).
    expected_rho: ``E[rho]``, the probability of keeping ``lambda(t-1)``
      rather than looking back to ``t = 0`` (traced).
    scale_by_num_losses: weights sum to ``K`` (default, as the paper) or 1.
    seed: seed of the default key (``init(key=...)`` overrides it).
    axis_name: mapped data axis to average the losses over, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`ReLoBRaLoState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.relobralo(2, temperature=1.0)
    >>> state = rule.init()
    >>> w, state = rule.update(state, jnp.array([1.0, 1.0]))
    >>> w.tolist()                       # t = 0: lambda = 1
    [1.0, 1.0]
    >>> w, state = rule.update(state, jnp.array([1.0, 0.5]))
    >>> [round(x, 4) for x in w.tolist()]   # t = 1: 2 softmax(1, 0.5)
    [1.2449, 0.7551]

  References:
    Bischof, Kraus, *Multi-Objective Loss Balancing for Physics-Informed Deep
    Learning*, arXiv:2110.09813; code ``rbischof/relative_balancing``.
  """
  num_losses = _protocol.check_num_losses(num_losses)
  seed = _checks.check_int("seed", seed, minimum=0)
  for name, value in (
      ("alpha", alpha),
      ("temperature", temperature),
      ("expected_rho", expected_rho),
  ):
    _checks.check_scalar(name, value)
  total = _protocol.total_weight(num_losses, scale_by_num_losses)

  def init_fn(*, key: ArrayLike | None = None, dtype=None) -> ReLoBRaLoState:
    dtype = _protocol.state_dtype(dtype)
    return ReLoBRaLoState(
        count=jnp.zeros((), jnp.int32),
        initial_losses=jnp.ones((num_losses,), dtype),
        previous_losses=jnp.ones((num_losses,), dtype),
        weights=_protocol.uniform_weights(num_losses, total, dtype),
        key=_protocol.key_data(key, seed),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(
      state: ReLoBRaLoState, losses: ArrayLike
  ) -> tuple[jax.Array, ReLoBRaLoState]:
    _protocol.check_state(state, ReLoBRaLoState, num_losses)
    dtype = state.weights.dtype
    losses = _protocol.prepare_losses(losses, num_losses, dtype, axis_name)
    recorded = _protocol.is_recordable(losses, positive=True)
    t = jnp.asarray(temperature, dtype)

    def balance(reference: jax.Array) -> jax.Array:
      z = losses / (t * reference + _RATIO_EPS)
      return _protocol.scaled_softmax(z, total).astype(dtype)

    next_key, sub = _protocol.split_key(state.key)
    draw = jax.random.bernoulli(sub, jnp.asarray(expected_rho, dtype))
    first, second = state.count == 0, state.count == 1
    a = jnp.where(first, 1.0, jnp.where(second, 0.0, alpha)).astype(dtype)
    rho = jnp.where(first | second, 1.0, draw).astype(dtype)
    lam = (
        rho * a * state.weights
        + (1 - rho) * a * balance(state.initial_losses)
        + (1 - a) * balance(state.previous_losses)
    )
    weights = jnp.where(recorded, lam, state.weights)
    return weights, ReLoBRaLoState(
        count=_protocol.saturating_increment(state.count, recorded),
        initial_losses=jnp.where(
            recorded & first, losses, state.initial_losses
        ),
        previous_losses=jnp.where(recorded, losses, state.previous_losses),
        weights=weights,
        key=jnp.where(recorded, next_key, state.key),
        num_skipped=_protocol.saturating_increment(state.num_skipped, ~recorded),
    )

  return _protocol.LossWeighting(init_fn, update_fn, num_losses, axis_name)
