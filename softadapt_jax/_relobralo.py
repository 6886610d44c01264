"""ReLoBRaLo: relative loss balancing with random lookback."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import NamedTuple, TypedDict

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._structure import LossSpec, LossStructure


class ReLoBRaLoConvention(TypedDict):
  """The settings of :func:`relobralo` of one published default set."""

  alpha: float
  temperature: float
  expected_rho: float


# Published default sets (see docs/family.md).
RELOBRALO_CONVENTIONS: Mapping[str, ReLoBRaLoConvention] = types.MappingProxyType({
    # The author's Keras loss class (rbischof, "Multi-objective loss balancing
    # for physics-informed deep learning", companion code and article).
    "author": ReLoBRaLoConvention(alpha=0.999, temperature=0.1, expected_rho=0.99),
    # The argparse defaults of rbischof/relative_balancing src/train.py.
    "author_cli": ReLoBRaLoConvention(
        alpha=0.999, temperature=1.0, expected_rho=1.0
    ),
    # NVIDIA PhysicsNeMo-Sym's Relobralo aggregator.
    "physicsnemo": ReLoBRaLoConvention(
        alpha=0.95, temperature=1.0, expected_rho=0.99
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
    num_skipped: int32 scalar, non-finite loss vectors skipped.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  initial_losses: jax.Array
  previous_losses: jax.Array
  weights: jax.Array
  key: jax.Array
  num_skipped: jax.Array


def relobralo(
    num_losses: LossSpec,
    *,
    alpha: ArrayLike = 0.999,
    temperature: ArrayLike = 0.1,
    expected_rho: ArrayLike = 0.99,
    scale_by_num_losses: bool = True,
    seed: int | ArrayLike = 0,
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
  reproducible and ``vmap`` over keys gives independent runs. Non-finite loss
  vectors are skipped (the key does not advance); losses of exactly 0 are
  fine (the author's ``1e-12`` guards the ratios).
  ``RELOBRALO_CONVENTIONS`` holds the published default sets. Traced
  ``alpha`` and ``expected_rho`` are clipped to [0, 1] and a traced
  temperature is clamped at the smallest normal float.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    alpha: weight of the history term, in [0, 1] (traced).
    temperature: ``T > 0`` (traced).
    expected_rho: ``E[rho]`` in [0, 1], the probability of keeping
      ``lambda(t-1)`` rather than looking back to ``t = 0`` (traced).
    scale_by_num_losses: weights sum to ``K`` (default, as the paper) or 1.
    seed: an int seed, or a PRNG key (traced allowed: ``vmap`` over keys
      gives every run its own stream, through every route);
      ``init(key=...)`` overrides it.
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
  k = LossStructure(num_losses).num_losses
  seed = _protocol.check_seed(seed)
  _checks.check_float("alpha", alpha, minimum=0.0, maximum=1.0)
  _checks.check_float("temperature", temperature, positive=True)
  _checks.check_float("expected_rho", expected_rho, minimum=0.0, maximum=1.0)
  total = _protocol.total_weight(k, scale_by_num_losses)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> ReLoBRaLoState:
    return ReLoBRaLoState(
        count=jnp.zeros((), jnp.int32),
        initial_losses=jnp.ones((k,), dtype),
        previous_losses=jnp.ones((k,), dtype),
        weights=_protocol.uniform_weights(k, total, dtype),
        key=_protocol.key_data(key, seed),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(state: ReLoBRaLoState, losses: jax.Array) -> ReLoBRaLoState:
    dtype = state.weights.dtype
    t = jnp.maximum(jnp.asarray(temperature, dtype), jnp.finfo(dtype).tiny)

    def balance(reference: jax.Array) -> jax.Array:
      z = _protocol.safe_ratio(losses, t * reference + _RATIO_EPS)
      return _protocol.scaled_softmax(z, 1.0, total)

    next_key, sub = _protocol.split_key(state.key)
    p = jnp.clip(jnp.asarray(expected_rho, dtype), 0.0, 1.0)
    draw = jax.random.bernoulli(sub, p)
    first, second = state.count == 1, state.count == 2
    a_full = jnp.clip(jnp.asarray(alpha, dtype), 0.0, 1.0)
    a = jnp.where(first, 1.0, jnp.where(second, 0.0, a_full)).astype(dtype)
    rho = jnp.where(first | second, 1.0, draw.astype(dtype)).astype(dtype)
    lam = (
        rho * a * state.weights
        + (1 - rho) * a * balance(state.initial_losses)
        + (1 - a) * balance(state.previous_losses)
    )
    return state._replace(
        initial_losses=jnp.where(first, losses, state.initial_losses),
        previous_losses=losses,
        weights=lam,
        key=next_key,
    )

  def diagnostics_fn(state: ReLoBRaLoState) -> dict[str, jax.Array]:
    return {
        "initial_loss": state.initial_losses,
        "previous_loss": state.previous_losses,
    }

  return _protocol.LossWeighting(
      init_fn,
      update_fn,
      num_losses,
      axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
  )
