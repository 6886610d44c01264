"""Fixed and equal weights: the baselines, on the same protocol as every rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._structure import LossSpec, LossStructure


class FixedWeightsState(NamedTuple):
  """State of :func:`fixed_weights` and :func:`equal_weights`.

  Attributes:
    count: int32 scalar, loss vectors recorded (saturating).
    weights: ``[K]`` the fixed weights.
    num_skipped: int32 scalar, non-finite loss vectors skipped.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  weights: jax.Array
  num_skipped: jax.Array


def fixed_weights(
    weights: Any, *, axis_name: str | tuple[str, ...] | None = None
) -> _protocol.LossWeighting:
  r"""Fixed weights as a rule: :math:`h = \sum_k \lambda_k \nabla f_k`, constant.

  The oracle a user would tune, and the baseline every adaptive rule must beat,
  run through the same routes (one VJP, ``opt_state``, logging) as the
  adaptive rules. The weights may be traced: ``vmap`` over a grid of them
  runs a whole sweep in one program.

  Args:
    weights: ``[K]`` weights, finite and ``>= 0``; or a mapping of named
      weights (``{"residual": 1.0, "boundary": 100.0}``: the rule is then built
      from these names, in this order).
    axis_name: mapped data axis to average the recorded losses over, or
      ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`FixedWeightsState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.fixed_weights({"residual": 1.0, "boundary": 100.0})
    >>> w, _ = rule.update(rule.init(), {"residual": 0.3, "boundary": 0.01})
    >>> {k: float(v) for k, v in w.items()}
    {'residual': 1.0, 'boundary': 100.0}
  """
  if isinstance(weights, Mapping):
    spec: LossSpec = [str(name) for name in weights]
    values = [weights[name] for name in weights]
    for name, value in zip(spec, values, strict=True):
      _checks.check_float(f"weights[{name!r}]", value, minimum=0.0)
    vector = jnp.stack([jnp.asarray(v) for v in values])
  else:
    vector = jnp.asarray(weights)
    if vector.ndim != 1 or vector.shape[0] < 1:
      raise ValueError(
          "`weights` must be a [K] vector or a mapping of named weights, got "
          f"shape {vector.shape}."
      )
    spec = vector.shape[0]
    if _checks.is_concrete(vector):
      w = np.asarray(vector, np.float64)
      if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"`weights` must be finite and >= 0, got {w.tolist()}.")
  _checks.check_floating_or_int("weights", vector)
  return _constant_rule(vector, spec, axis_name)


def equal_weights(
    num_losses: LossSpec,
    *,
    scale_by_num_losses: bool = True,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Equal weights as a rule: the plain sum :math:`\sum_k f_k` (weights 1).

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    scale_by_num_losses: weights 1 each, the plain sum (default); or
      ``1 / K`` each, the mean.
    axis_name: mapped data axis to average the recorded losses over, or
      ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`FixedWeightsState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.equal_weights(3)
    >>> w, _ = rule.update(rule.init(), jnp.array([1.0, 2.0, 3.0]))
    >>> w.tolist()
    [1.0, 1.0, 1.0]
  """
  k = LossStructure(num_losses).num_losses
  total = _protocol.total_weight(k, scale_by_num_losses)
  return _constant_rule(jnp.full((k,), total / k), num_losses, axis_name)


def _constant_rule(
    vector: jax.Array, spec: LossSpec, axis_name: Any
) -> _protocol.LossWeighting:
  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> FixedWeightsState:
    del key  # deterministic
    return FixedWeightsState(
        count=jnp.zeros((), jnp.int32),
        weights=vector.astype(dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(state: FixedWeightsState, losses: jax.Array) -> FixedWeightsState:
    del losses  # they only decide whether the step is recorded
    return state

  return _protocol.LossWeighting(init_fn, update_fn, spec, axis_name=axis_name)
