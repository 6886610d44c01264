"""The training-time state machine: a rolling loss history and held weights."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks
from softadapt_jax._weights import weights_from_history

_INT32_MAX = jnp.iinfo(jnp.int32).max


class SoftAdaptState(NamedTuple):
  """State of SoftAdapt: a ring buffer of the newest loss vectors.

  Attributes:
    count: int32 scalar, number of finite loss vectors recorded so far
      (saturates at the int32 maximum).
    history: ``[order + 1, K]`` the newest recorded loss vectors, oldest row
      first; float32 or wider, whatever the losses' dtype.
    weights: ``[K]`` the weights last computed (the initial weights during
      warm-up).
    num_skipped: int32 scalar, number of non-finite loss vectors skipped.
  """

  count: jax.Array
  history: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def init_state(
    num_losses: int,
    *,
    order: int = 1,
    dtype: jnp.dtype = jnp.float32,
    initial_weights: ArrayLike | None = None,
) -> SoftAdaptState:
  """A fresh :class:`SoftAdaptState` for ``num_losses`` loss components.

  The history holds ``order + 1`` rows; until that many finite loss vectors
  have been recorded, :func:`softadapt_weights` returns the initial weights.

  Args:
    num_losses: ``K``, the number of loss components (static int >= 1).
    order: accuracy order of the slopes (static int >= 1).
    dtype: dtype of the history and weights; promoted to at least float32.
    initial_weights: ``[K]`` weights used during warm-up; default uniform
      ``1 / K`` (the convention of every later set of weights).

  Returns:
    The initial state.

  Example:
    >>> import softadapt_jax as sa
    >>> state = sa.init_state(3, order=2)
    >>> state.history.shape, state.weights.tolist()
    ((3, 3), [0.3333333432674408, 0.3333333432674408, 0.3333333432674408])
  """
  num_losses = _checks.check_int("num_losses", num_losses, minimum=1)
  order = _checks.check_int("order", order, minimum=1)
  if not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
    raise TypeError(
        f"`dtype` must be a floating dtype (e.g. jnp.float32), got {dtype}."
    )
  dtype = jnp.promote_types(jnp.dtype(dtype), jnp.float32)
  if initial_weights is None:
    weights = jnp.full((num_losses,), 1.0 / num_losses, dtype)
  else:
    weights = jnp.asarray(initial_weights, dtype)
    if weights.shape != (num_losses,):
      raise ValueError(
          f"`initial_weights` must have shape ({num_losses},) to match "
          f"`num_losses`={num_losses}, got shape {weights.shape}."
      )
  return SoftAdaptState(
      count=jnp.zeros((), jnp.int32),
      history=jnp.zeros((order + 1, num_losses), dtype),
      weights=weights,
      num_skipped=jnp.zeros((), jnp.int32),
  )


def softadapt_weights(
    state: SoftAdaptState,
    losses: ArrayLike,
    *,
    beta: ArrayLike = 0.1,
    variant: str = "original",
    update_every: int = 1,
    epsilon: ArrayLike = 1e-8,
    axis_name: str | tuple[str, ...] | None = None,
    normalization: str = "signed",
    stencil: str = "forward",
    scale_by_num_losses: bool = False,
) -> tuple[jax.Array, SoftAdaptState]:
  """Records a loss vector and returns the SoftAdapt weights for this step.

  Each call with losses ``L_t`` of shape ``[K]``:

  1. if ``axis_name`` is given, ``L_t`` is first averaged over that mapped
     axis (``lax.pmean``) so every replica holds the same state;
  2. if ``L_t`` is all finite it is pushed into the history, else it is
     skipped (``num_skipped`` counts it; the history is never poisoned);
  3. during warm-up (fewer than ``order + 1`` vectors recorded) the initial
     weights are returned;
  4. afterwards the weights are recomputed from the history
     (:func:`weights_from_history`) every ``update_every`` recorded vectors and
     held in between.

  All branching is ``jnp.where``: one compiled program whatever the step, and
  ``beta`` is traced, so changing it does not recompile.

  Args:
    state: the current :class:`SoftAdaptState` (its history's row count fixes
      the order).
    losses: ``[K]`` the loss components of this step (any float dtype).
    beta: temperature (traced scalar).
    variant: ``"original"``, ``"normalized"`` or ``"loss_weighted"``.
    update_every: recompute the weights every this many recorded steps
      (static int >= 1).
    epsilon: softmax denominator offset.
    axis_name: mapped axis name(s) of a ``shard_map``/``pmap`` data axis to
      average the losses over, or ``None``.
    normalization: ``"signed"`` or ``"l1"``, see :func:`weights_from_history`.
    stencil: ``"forward"`` or ``"backward"``, see :func:`slopes`.
    scale_by_num_losses: weights sum to ``K`` instead of 1.

  Returns:
    ``(weights, new_state)``: ``[K]`` weights in the state's dtype, and the
    advanced state.

  Raises:
    ValueError: if ``losses`` is not of shape ``[K]`` or a static argument is
      invalid.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> state = sa.init_state(2, order=1)
    >>> w, state = sa.softadapt_weights(state, jnp.array([1.0, 1.0]), beta=1.0)
    >>> w.tolist()  # warm-up: the initial weights
    [0.5, 0.5]
    >>> w, state = sa.softadapt_weights(state, jnp.array([2.0, 0.5]), beta=1.0)
    >>> [round(x, 4) for x in w.tolist()]  # slopes (1, -0.5)
    [0.8176, 0.1824]

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt*, arXiv:1912.12355, algorithm 1.
  """
  _check_state(state)
  update_every = _checks.check_int("update_every", update_every, minimum=1)
  num_rows, num_losses = state.history.shape
  losses = jnp.asarray(losses)
  if losses.shape != (num_losses,):
    raise ValueError(
        f"`losses` must have shape ({num_losses},) to match the state's "
        f"num_losses={num_losses}, got shape {losses.shape}."
    )
  _checks.check_floating("losses", losses)
  losses = losses.astype(state.history.dtype)
  if axis_name is not None:
    losses = jax.lax.pmean(losses, axis_name)

  finite = jnp.all(jnp.isfinite(losses))
  pushed = jnp.concatenate([state.history[1:], losses[None]], axis=0)
  history = jnp.where(finite, pushed, state.history)
  count = jnp.where(
      finite & (state.count < _INT32_MAX), state.count + 1, state.count
  )
  num_skipped = jnp.where(
      finite | (state.num_skipped == _INT32_MAX),
      state.num_skipped,
      state.num_skipped + 1,
  )

  candidate = weights_from_history(
      history,
      beta=beta,
      variant=variant,
      order=None,
      epsilon=epsilon,
      normalization=normalization,
      stencil=stencil,
      scale_by_num_losses=scale_by_num_losses,
  )
  # Recompute on the warm-up's last step and every `update_every` recorded
  # steps after it, only on a step that recorded something.
  steps_since_warm = count - num_rows
  recompute = (
      finite & (steps_since_warm >= 0) & (steps_since_warm % update_every == 0)
  )
  weights = jnp.where(recompute, candidate, state.weights)
  return weights, SoftAdaptState(
      count=count, history=history, weights=weights, num_skipped=num_skipped
  )


def _check_state(state: SoftAdaptState) -> None:
  if not isinstance(state, SoftAdaptState):
    raise TypeError(
        "`state` must be a SoftAdaptState (from softadapt_jax.init_state), "
        f"got {type(state).__name__}."
    )
  shape = jnp.shape(state.history)
  if len(shape) != 2 or shape[0] < 2:
    raise ValueError(
        "`state.history` must have shape [order + 1, K] with order >= 1, got "
        f"{shape}."
    )
