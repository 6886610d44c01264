"""Dynamic Weight Average: a softmax of each loss's epoch-over-epoch ratio."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._per_epoch import per_epoch
from softadapt_jax._structure import LossSpec, LossStructure


class DWAState(NamedTuple):
  """State of :func:`dwa` (fed epoch means).

  Attributes:
    count: int32 scalar, epoch means recorded (saturating).
    epoch_means: ``[2, K]`` the means of the last two epochs, older first.
    weights: ``[K]`` the weights for the next epoch.
    num_skipped: int32 scalar, non-finite loss vectors skipped.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  epoch_means: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def dwa(
    num_losses: LossSpec,
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
  ``S / K`` each for the first two epochs and fixed within an epoch. An epoch
  mean of exactly 0 is guarded: ``0 / 0`` gives 0, a component that grows
  from 0 gets all the weight (LibMTL does not guard it). A traced temperature
  is clamped at the smallest normal float.

  Two ways to feed it:

  - ``steps_per_epoch=None``: each ``update`` call gives one epoch's mean
    losses and returns the weights for the next epoch.
  - ``steps_per_epoch=n``: each call gives one step's losses and returns the
    weights in force for that step; this is :func:`per_epoch` of the rule
    fed epoch means, and its state a :class:`PerEpochState`.

  On the published Poisson ``sin(8 pi x)`` PINN (epochs of 100 steps) it
  failed 6 of 20 seeds where equal weights failed 3 (``docs/studies.md``).

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    temperature: ``T > 0`` (traced; LibMTL's default 2).
    steps_per_epoch: ``None`` or the number of recorded steps per epoch
      (static int >= 1).
    scale_by_num_losses: weights sum to ``K`` (default, as the paper) or 1.
    axis_name: mapped data axis to average the losses over, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`DWAState` (or a
    :class:`PerEpochState` holding one, with ``steps_per_epoch``).

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
  k = LossStructure(num_losses).num_losses
  if steps_per_epoch is not None:
    steps_per_epoch = _checks.check_int(
        "steps_per_epoch", steps_per_epoch, minimum=1
    )
  _checks.check_float("temperature", temperature, positive=True)
  total = _protocol.total_weight(k, scale_by_num_losses)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> DWAState:
    del key  # deterministic
    return DWAState(
        count=jnp.zeros((), jnp.int32),
        epoch_means=jnp.ones((2, k), dtype),
        weights=_protocol.uniform_weights(k, total, dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(state: DWAState, losses: jax.Array) -> DWAState:
    means = jnp.stack([state.epoch_means[1], losses])
    ratio = _protocol.safe_ratio(means[1], means[0])
    candidate = _protocol.scaled_softmax(ratio, temperature, total)
    return state._replace(
        epoch_means=means,
        weights=jnp.where(state.count >= 2, candidate, state.weights),
    )

  def diagnostics_fn(state: DWAState) -> dict[str, jax.Array]:
    return {"epoch_mean": state.epoch_means[1]}

  rule = _protocol.LossWeighting(
      init_fn,
      update_fn,
      num_losses,
      axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
  )
  if steps_per_epoch is None:
    return rule
  return per_epoch(rule, steps_per_epoch)
