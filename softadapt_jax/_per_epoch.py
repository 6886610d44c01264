"""Any rule fed epoch means: a combinator that averages per-step losses."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol


class PerEpochState(NamedTuple):
  """State of :func:`per_epoch`.

  Attributes:
    count: int32 scalar, loss vectors recorded (saturating).
    epoch_sum: ``[K]`` sum of the losses recorded in the current epoch.
    epoch_steps: int32 scalar, steps of the current epoch so far (recorded
      or skipped).
    epoch_recorded: int32 scalar, loss vectors recorded in the current epoch.
    inner: the state of the wrapped rule, fed one mean per epoch; its
      ``weights`` are those in force for the current epoch.
    weights: ``[K]`` the weights applied at the last step.
    num_skipped: int32 scalar, non-finite loss vectors skipped.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  epoch_sum: jax.Array
  epoch_steps: jax.Array
  epoch_recorded: jax.Array
  inner: Any
  weights: jax.Array
  num_skipped: jax.Array


def per_epoch(
    rule: _protocol.LossWeighting, steps_per_epoch: int
) -> _protocol.LossWeighting:
  r"""Feeds ``rule`` the mean losses of each epoch of ``steps_per_epoch`` steps.

  .. math::
    \bar L(e) = \frac{1}{n} \sum_{t \in e} L(t), \qquad
    \lambda(t) = \lambda_{\text{rule}}(e - 1) \text{ for } t \in e

  Each ``update`` records one step's losses and returns the weights in force
  for that step: fixed within an epoch, the wrapped rule's weights from the
  epoch means so far (its initial weights during the first epoch). After
  ``steps_per_epoch`` recorded steps the epoch mean is fed to ``rule`` and its
  weights take over from the next step. Everything runs inside one
  ``lax.scan``. An epoch is ``steps_per_epoch`` steps, recorded or not: a
  non-finite loss vector is left out of the epoch's mean but still counts as
  one of its steps, so the epochs stay aligned with the caller's (an epoch
  with no finite vector feeds the rule nothing).

  The same combinator gives gradient accumulation its mean loss: with
  ``optax.MultiSteps`` over ``k`` micro-steps, ``per_epoch(rule, k)`` placed
  before it (``optax.chain(track_weights(per_epoch(rule, k)),
  optax.MultiSteps(opt, k).gradient_transformation())``) records the mean over
  the ``k`` micro-batches and applies the same weights to all of them; a NaN
  micro-batch (whose direction is zero) does not shift the windows.

  Args:
    rule: the wrapped rule (e.g. :func:`dwa`, :func:`softadapt`); it must
      need loss values only.
    steps_per_epoch: ``n``, recorded steps per epoch (static int >= 1).

  Returns:
    A :class:`LossWeighting` with the wrapped rule's losses and axis name,
    whose state is a :class:`PerEpochState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.per_epoch(sa.ratio_softadapt(2, temperature=1.0, epsilon=0.0), 2)
    >>> state = rule.init()
    >>> for losses in ([1.0, 4.0], [3.0, 4.0], [1.0, 4.0], [1.0, 2.0]):
    ...   w, state = rule.update(state, jnp.array(losses))
    >>> w.tolist()          # epoch 1 runs on the weights of epoch 0: 1, 1
    [1.0, 1.0]
    >>> w, state = rule.update(state, jnp.array([5.0, 5.0]))
    >>> [round(x, 4) for x in w.tolist()]   # 2 softmax((1, 3) / (2, 4))
    [0.8756, 1.1244]
  """
  rule = _protocol.check_rule(rule)
  if rule.statistics is not None:
    raise ValueError(
        "per_epoch feeds a rule epoch means of the losses: `rule` must read "
        "loss values only, and this one needs gradient statistics."
    )
  n = _checks.check_int("steps_per_epoch", steps_per_epoch, minimum=1)
  k = rule.num_losses

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> PerEpochState:
    inner = rule.init(key=key, dtype=dtype)
    return PerEpochState(
        count=jnp.zeros((), jnp.int32),
        epoch_sum=jnp.zeros((k,), dtype),
        epoch_steps=jnp.zeros((), jnp.int32),
        epoch_recorded=jnp.zeros((), jnp.int32),
        inner=inner,
        weights=inner.weights,
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def end_of_step(
      state: PerEpochState, summed: jax.Array, recorded: jax.Array
  ) -> PerEpochState:
    steps = state.epoch_steps + 1
    done = steps == n
    feed = done & (recorded > 0)
    mean = summed / jnp.maximum(recorded, 1).astype(summed.dtype)
    _, inner, _, _ = rule.advance(state.inner, mean, prepared=True)
    return state._replace(
        epoch_sum=jnp.where(done, jnp.zeros_like(summed), summed),
        epoch_steps=jnp.where(done, 0, steps),
        epoch_recorded=jnp.where(done, 0, recorded),
        inner=jax.tree.map(
            lambda new, old: jnp.where(feed, new, old), inner, state.inner
        ),
    )

  def update_fn(state: PerEpochState, losses: jax.Array) -> PerEpochState:
    new = end_of_step(
        state, state.epoch_sum + losses, state.epoch_recorded + 1
    )
    return new._replace(weights=state.inner.weights)

  def skip_fn(state: PerEpochState) -> PerEpochState:
    return end_of_step(state, state.epoch_sum, state.epoch_recorded)

  def diagnostics_fn(state: PerEpochState) -> dict[str, jax.Array]:
    out = {
        f"inner_{key}": value
        for key, value in rule.diagnostic_vectors(state.inner).items()
        if key not in ("count", "num_skipped", "weight")
    }
    out["next_weight"] = state.inner.weights
    out["epoch_steps"] = state.epoch_steps
    out["num_epochs"] = state.inner.count
    return out

  return _protocol.LossWeighting(
      init_fn,
      update_fn,
      rule.structure,
      axis_name=rule.axis_name,
      diagnostics_fn=diagnostics_fn,
      skip_fn=skip_fn,
  )
