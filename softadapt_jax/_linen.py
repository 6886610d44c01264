"""``apply_gradients`` for Flax Linen, forwarding what the weighting records.

Flax is not imported: any object with ``step``, ``params``, ``tx``,
``opt_state`` and a ``replace(**changes)`` method works.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

import optax

from softadapt_jax._routes import WeightedGrad


class TrainStateLike(Protocol):
  """What :func:`apply_gradients` needs of a train state (duck-typed)."""

  step: Any
  params: Any
  tx: Any
  opt_state: Any

  def replace(self, **changes: Any) -> Any: ...


_State = TypeVar("_State", bound=TrainStateLike)

# The Flax Linen collection whose entries are overwritten by their "gradient"
# instead of being optimized (``flax.linen.fp8_ops``); the same key as
# ``flax.training.train_state.OVERWRITE_WITH_GRADIENT``.
_OVERWRITE_WITH_GRADIENT = "_overwrite_with_gradient"


def apply_gradients(
    state: _State,
    grads: Any,
    *,
    losses: Any = None,
    update_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> _State:
  r"""``TrainState.apply_gradients`` that forwards what the weighting needs.

  .. math::
    (u, s') = \text{tx.update}(g, s, p, \ldots), \qquad
    p' = p + u, \qquad \text{step}' = \text{step} + 1

  Flax Linen's ``TrainState.apply_gradients(grads=...)`` calls
  ``tx.update(grads, opt_state, params)`` without extra arguments, so a chain
  holding :func:`track_weights` or :func:`combine_grads` cannot receive what
  it records. This function does the same update and forwards it:

  - ``apply_gradients(state, out)`` with ``out`` the :class:`WeightedGrad` of
    :func:`weighted_value_and_grad`: the direction is ``out.grad`` and
    :func:`track_weights` records ``out.state``;
  - ``apply_gradients(state, stacked, losses=...)`` for :func:`combine_grads`.

  Like the method it replaces any further attributes given in ``kwargs``
  (e.g. ``batch_stats``) and handles the ``_overwrite_with_gradient``
  collection (FP8 scales). ``state`` needs only ``step``, ``params``, ``tx``,
  ``opt_state`` and ``replace``: ``flax.training.train_state.TrainState`` and
  its subclasses work, and so does any ``flax.struct`` dataclass with those
  fields.

  Args:
    state: the train state.
    grads: a :class:`WeightedGrad`, or the updates for ``tx`` (per-component
      gradients for :func:`combine_grads`).
    losses: the loss components of this step, for :func:`combine_grads`.
    update_kwargs: further keyword arguments for ``tx.update`` (e.g.
      ``value=``, ``grad=``, ``value_fn=`` for a line search).
    **kwargs: further attributes of ``state`` to replace.

  Returns:
    ``state`` with ``step`` incremented, ``params`` and ``opt_state`` updated
    and ``kwargs`` replaced.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from typing import Any, NamedTuple
    >>> import softadapt_jax as sa
    >>> class TrainState(NamedTuple):   # or flax.training.train_state.TrainState
    ...   step: Any
    ...   params: Any
    ...   tx: Any
    ...   opt_state: Any
    ...   def replace(self, **changes):
    ...     return self._replace(**changes)
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), jnp.sum((x - 1.0) ** 2)])
    >>> rule = sa.softadapt(2)
    >>> tx = optax.chain(sa.track_weights(rule), optax.sgd(0.1))
    >>> x = jnp.array([0.5, 2.0])
    >>> state = TrainState(0, x, tx, tx.init(x))
    >>> out = sa.weighted_value_and_grad(losses, rule)(state.opt_state, state.params)
    >>> state = sa.apply_gradients(state, out)
    >>> state.step, state.params.tolist()   # x - 0.1 * (0.5 g_1 + 0.5 g_2)
    (1, [0.5, 1.7000000476837158])
    >>> int(sa.find_weighting_state(state.opt_state, rule).count)
    1
  """
  extra = dict(update_kwargs or {})
  if isinstance(grads, WeightedGrad):
    extra["weighting_state"] = grads.state
    grads = grads.grad
  if losses is not None:
    extra["losses"] = losses
  params = state.params
  overwrite = isinstance(grads, Mapping) and _OVERWRITE_WITH_GRADIENT in grads
  if overwrite:
    grads_opt, params_opt = grads["params"], params["params"]
  else:
    grads_opt, params_opt = grads, params
  updates, opt_state = state.tx.update(grads_opt, state.opt_state, params_opt, **extra)
  new_params = optax.apply_updates(params_opt, updates)
  if overwrite:
    new_params = {
        "params": new_params,
        _OVERWRITE_WITH_GRADIENT: grads[_OVERWRITE_WITH_GRADIENT],
    }
  return state.replace(
      step=state.step + 1, params=new_params, opt_state=opt_state, **kwargs
  )
