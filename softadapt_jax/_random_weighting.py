"""Random loss weighting: a softmax of fresh Gaussian draws every step."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol


class RandomWeightingState(NamedTuple):
  """State of :func:`random_weighting`.

  Attributes:
    count: int32 scalar, number of loss vectors recorded (saturating).
    weights: ``[K]`` the weights last returned.
    key: ``uint32[2]`` raw PRNG key data.
    num_skipped: int32 scalar, non-finite loss vectors skipped.
  """

  count: jax.Array
  weights: jax.Array
  key: jax.Array
  num_skipped: jax.Array


def random_weighting(
    num_losses: int,
    *,
    scale_by_num_losses: bool = False,
    seed: int = 0,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Random loss weighting, RLW (Lin et al., 2022): the baseline to beat.

  .. math::
    \lambda = S \cdot \mathrm{softmax}(g), \qquad g \sim \mathcal N(0, I_K)

  drawn afresh at every recorded step from a key kept in the state (sum
  ``S = 1`` as LibMTL, or ``K``). The losses only decide whether the step is
  recorded: a non-finite loss vector returns the held weights and does not
  advance the key.

  Args:
    num_losses: ``K`` (static).
    scale_by_num_losses: weights sum to ``K`` instead of 1.
    seed: seed of the default key (``init(key=...)`` overrides it).
    axis_name: mapped data axis to average the losses over (every replica
      then draws the same weights), or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`RandomWeightingState`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.random_weighting(3)
    >>> state = rule.init(key=jax.random.key(1))
    >>> w, state = rule.update(state, jnp.array([1.0, 2.0, 3.0]))
    >>> round(float(w.sum()), 6), bool((w > 0).all())
    (1.0, True)

  References:
    Lin, Ye, Xu, Shi, Zhang, *Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning*, TMLR 2022; LibMTL ``weighting/RLW.py``.
  """
  num_losses = _protocol.check_num_losses(num_losses)
  seed = _checks.check_int("seed", seed, minimum=0)
  total = _protocol.total_weight(num_losses, scale_by_num_losses)

  def init_fn(*, key: ArrayLike | None = None, dtype=None) -> RandomWeightingState:
    dtype = _protocol.state_dtype(dtype)
    return RandomWeightingState(
        count=jnp.zeros((), jnp.int32),
        weights=_protocol.uniform_weights(num_losses, total, dtype),
        key=_protocol.key_data(key, seed),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(
      state: RandomWeightingState, losses: ArrayLike
  ) -> tuple[jax.Array, RandomWeightingState]:
    _protocol.check_state(state, RandomWeightingState, num_losses)
    dtype = state.weights.dtype
    losses = _protocol.prepare_losses(losses, num_losses, dtype, axis_name)
    recorded = _protocol.is_recordable(losses, positive=False)
    next_key, sub = _protocol.split_key(state.key)
    g = jax.random.normal(sub, (num_losses,), dtype)
    weights = jnp.where(
        recorded, _protocol.scaled_softmax(g, total).astype(dtype), state.weights
    )
    return weights, RandomWeightingState(
        count=_protocol.saturating_increment(state.count, recorded),
        weights=weights,
        key=jnp.where(recorded, next_key, state.key),
        num_skipped=_protocol.saturating_increment(state.num_skipped, ~recorded),
    )

  return _protocol.LossWeighting(init_fn, update_fn, num_losses, axis_name)
