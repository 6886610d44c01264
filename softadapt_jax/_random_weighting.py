"""Random loss weighting: a softmax of fresh Gaussian draws every step."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _protocol
from softadapt_jax._structure import LossSpec, LossStructure


class RandomWeightingState(NamedTuple):
  """State of :func:`random_weighting`.

  Attributes:
    count: int32 scalar, number of loss vectors recorded (saturating).
    weights: ``[K]`` the weights last returned.
    key: ``uint32[2]`` raw PRNG key data.
    num_skipped: int32 scalar, non-finite loss vectors skipped.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  weights: jax.Array
  key: jax.Array
  num_skipped: jax.Array


def random_weighting(
    num_losses: LossSpec,
    *,
    scale_by_num_losses: bool = False,
    seed: int | ArrayLike = 0,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Random loss weighting, RLW (Lin et al., 2022): the baseline to beat.

  .. math::
    \lambda = S \cdot \mathrm{softmax}(g), \qquad g \sim \mathcal N(0, I_K)

  drawn afresh at every recorded step from a key kept in the state (sum
  ``S = 1`` as LibMTL, or ``K``). The losses only decide whether the step is
  recorded: a non-finite loss vector returns the held weights and does not
  advance the key.

  A baseline, not a rule to train with: the weights are noise (for ``K = 2``
  the ratio of the two is ``exp(g_1 - g_2)``, beyond 1:16 on one step in
  twenty). On the published Poisson ``sin(8 pi x)`` PINN, where the boundary
  needs a steady weight, it failed 9 of 20 seeds where equal weights failed 3
  (``docs/studies.md``). A rule that does not beat it is not using what it
  observes.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    scale_by_num_losses: weights sum to ``K`` instead of 1.
    seed: an int seed, or a PRNG key (traced allowed: ``vmap`` over keys
      gives every run its own stream, through every route);
      ``init(key=...)`` overrides it.
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
  k = LossStructure(num_losses).num_losses
  seed = _protocol.check_seed(seed)
  total = _protocol.total_weight(k, scale_by_num_losses)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> RandomWeightingState:
    return RandomWeightingState(
        count=jnp.zeros((), jnp.int32),
        weights=_protocol.uniform_weights(k, total, dtype),
        key=_protocol.key_data(key, seed),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(
      state: RandomWeightingState, losses: jax.Array
  ) -> RandomWeightingState:
    del losses  # they only decide whether the step is recorded
    next_key, sub = _protocol.split_key(state.key)
    g = jax.random.normal(sub, (k,), state.weights.dtype)
    return state._replace(
        weights=_protocol.scaled_softmax(g, 1.0, total), key=next_key
    )

  return _protocol.LossWeighting(init_fn, update_fn, num_losses, axis_name=axis_name)
