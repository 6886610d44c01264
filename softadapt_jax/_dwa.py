"""Dynamic Weight Average: a softmax of each loss's epoch-over-epoch ratio."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol


class DWAState(NamedTuple):
  """State of :func:`dwa`.

  Attributes:
    count: int32 scalar, number of loss vectors recorded (saturating).
    epoch_sum: ``[K]`` sum of the losses recorded in the current epoch (zeros
      when the caller gives epoch means).
    epoch_steps: int32 scalar, loss vectors recorded in the current epoch.
    epoch_means: ``[2, K]`` the means of the last two epochs, older first.
    num_epochs: int32 scalar, epochs completed (saturating).
    weights: ``[K]`` the weights in force.
    num_skipped: int32 scalar, loss vectors skipped (non-finite or ``<= 0``).
  """

  count: jax.Array
  epoch_sum: jax.Array
  epoch_steps: jax.Array
  epoch_means: jax.Array
  num_epochs: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def dwa(
    num_losses: int,
    *,
    temperature: ArrayLike = 2.0,
    steps_per_epoch: int | None = None,
    scale_by_num_losses: bool = True,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Dynamic Weight Average (Liu, Johns, Davison, 2019).

  .. math::
    w_k = \frac{\bar L_k(e-1)}{\bar L_k(e-2)}, \qquad
    \lambda = S \cdot \mathrm{softmax}(w / T)

  with ``\bar L(e)`` the mean training loss of epoch ``e``; the weights are
  ``S / K`` each for the first two epochs and fixed within an epoch.

  Two ways to feed it:

  - ``steps_per_epoch=None``: each ``update`` call gives one epoch's mean
    losses and returns the weights for the next epoch.
  - ``steps_per_epoch=n``: each call gives one step's losses and returns the
    weights in force for that step; after ``n`` recorded steps the epoch mean
    is formed and the next epoch's weights are set. The whole thing runs
    inside one ``lax.scan``.

  Loss vectors with a non-finite or non-positive entry are skipped (they do
  not count towards an epoch).

  Args:
    num_losses: ``K`` (static).
    temperature: ``T`` (traced; LibMTL's default 2).
    steps_per_epoch: ``None`` or the number of recorded steps per epoch
      (static int >= 1).
    scale_by_num_losses: weights sum to ``K`` (default, as the paper) or 1.
    axis_name: mapped data axis to average the losses over, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`DWAState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.dwa(2, temperature=1.0)
    >>> state = rule.init()
    >>> w, state = rule.update(state, jnp.array([4.0, 4.0]))   # epoch 0 mean
    >>> w, state = rule.update(state, jnp.array([2.0, 4.0]))   # epoch 1 mean
    >>> [round(x, 4) for x in w.tolist()]  # for epoch 2: 2 softmax(0.5, 1)
    [0.7551, 1.2449]

  References:
    Liu, Johns, Davison, *End-to-End Multi-Task Learning with Attention*,
    CVPR 2019, eq. (7); LibMTL ``weighting/DWA.py``.
  """
  num_losses = _protocol.check_num_losses(num_losses)
  if steps_per_epoch is not None:
    steps_per_epoch = _checks.check_int(
        "steps_per_epoch", steps_per_epoch, minimum=1
    )
  _checks.check_scalar("temperature", temperature)
  total = _protocol.total_weight(num_losses, scale_by_num_losses)

  def init_fn(*, key: ArrayLike | None = None, dtype=None) -> DWAState:
    del key  # deterministic
    dtype = _protocol.state_dtype(dtype)
    return DWAState(
        count=jnp.zeros((), jnp.int32),
        epoch_sum=jnp.zeros((num_losses,), dtype),
        epoch_steps=jnp.zeros((), jnp.int32),
        epoch_means=jnp.ones((2, num_losses), dtype),
        num_epochs=jnp.zeros((), jnp.int32),
        weights=_protocol.uniform_weights(num_losses, total, dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(state: DWAState, losses: ArrayLike) -> tuple[jax.Array, DWAState]:
    _protocol.check_state(state, DWAState, num_losses)
    dtype = state.weights.dtype
    losses = _protocol.prepare_losses(losses, num_losses, dtype, axis_name)
    recorded = _protocol.is_recordable(losses, positive=True)
    if steps_per_epoch is None:
      epoch_sum = state.epoch_sum
      epoch_steps = state.epoch_steps
      epoch_done = recorded
      mean = losses
    else:
      steps = state.epoch_steps + 1
      epoch_done = recorded & (steps == steps_per_epoch)
      summed = state.epoch_sum + losses
      mean = summed / steps_per_epoch
      epoch_sum = jnp.where(
          recorded, jnp.where(epoch_done, 0.0, summed), state.epoch_sum
      )
      epoch_steps = jnp.where(
          recorded, jnp.where(epoch_done, 0, steps), state.epoch_steps
      )
    means = jnp.where(
        epoch_done,
        jnp.stack([state.epoch_means[1], mean]),
        state.epoch_means,
    )
    num_epochs = _protocol.saturating_increment(state.num_epochs, epoch_done)
    candidate = _protocol.scaled_softmax(
        means[1] / means[0] / jnp.asarray(temperature, dtype), total
    ).astype(dtype)
    weights = jnp.where(epoch_done & (num_epochs >= 2), candidate, state.weights)
    new_state = DWAState(
        count=_protocol.saturating_increment(state.count, recorded),
        epoch_sum=epoch_sum,
        epoch_steps=epoch_steps,
        epoch_means=means,
        num_epochs=num_epochs,
        weights=weights,
        num_skipped=_protocol.saturating_increment(state.num_skipped, ~recorded),
    )
    # Per-step feeding: this step still belongs to the epoch whose weights
    # were in force; per-epoch feeding: the weights are for the next epoch.
    returned = weights if steps_per_epoch is None else state.weights
    return returned, new_state

  return _protocol.LossWeighting(init_fn, update_fn, num_losses, axis_name)
