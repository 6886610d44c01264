"""The training-time state machine: a rolling loss history and held weights."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._weights import weights_from_history


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
    log_losses: bool = False,
) -> tuple[jax.Array, SoftAdaptState]:
  """Records a loss vector and returns the SoftAdapt weights for this step.

  Each call with losses ``L_t`` of shape ``[K]``:

  1. if ``axis_name`` is given, ``L_t`` is first averaged over that mapped
     axis (``lax.pmean``) so every replica holds the same state;
  2. if ``L_t`` is all finite (and, with ``log_losses``, all positive) it is
     pushed into the history, else it is skipped (``num_skipped`` counts it;
     the history is never poisoned);
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
    log_losses: take the slopes of ``log L`` (see :func:`weights_from_history`);
      loss vectors with an entry ``<= 0`` are skipped.

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
  losses = _protocol.prepare_losses(
      losses, num_losses, state.history.dtype, axis_name
  )
  recorded = _protocol.is_recordable(losses, positive=log_losses)
  pushed = jnp.concatenate([state.history[1:], losses[None]], axis=0)
  history = jnp.where(recorded, pushed, state.history)
  count = _protocol.saturating_increment(state.count, recorded)
  num_skipped = _protocol.saturating_increment(state.num_skipped, ~recorded)

  candidate = weights_from_history(
      history,
      beta=beta,
      variant=variant,
      order=None,
      epsilon=epsilon,
      normalization=normalization,
      stencil=stencil,
      scale_by_num_losses=scale_by_num_losses,
      log_losses=log_losses,
  )
  # Recompute on the warm-up's last step and every `update_every` recorded
  # steps after it, only on a step that recorded something.
  steps_since_warm = count - num_rows
  recompute = (
      recorded & (steps_since_warm >= 0) & (steps_since_warm % update_every == 0)
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


def softadapt(
    num_losses: int,
    *,
    beta: ArrayLike = 0.1,
    variant: str = "original",
    order: int = 1,
    update_every: int = 1,
    epsilon: ArrayLike = 1e-8,
    normalization: str = "signed",
    stencil: str = "forward",
    scale_by_num_losses: bool = False,
    log_losses: bool = False,
    initial_weights: ArrayLike | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""SoftAdapt as a :class:`LossWeighting` rule (SPEC sections 2-6).

  .. math::
    \alpha = \mathrm{softmax}(\beta z + \log w), \quad z = s \text{ or }
    s / \textstyle\sum_l s_l, \quad s = \text{slope of the last
    } p + 1 \text{ loss vectors}

  ``init`` is :func:`init_state` and ``update`` is :func:`softadapt_weights`
  with these settings. With ``log_losses=True`` the slopes are those of
  ``log L`` (the relative rate of change): the log-slope member of the family,
  whose ``beta`` does not depend on the scale of the losses.

  Args:
    num_losses: ``K`` (static).
    beta: temperature (traced).
    variant: ``"original"``, ``"normalized"`` or ``"loss_weighted"``.
    order: accuracy order ``p`` of the slopes; the state keeps ``p + 1`` loss
      vectors.
    update_every: recompute the weights every this many recorded vectors.
    epsilon: softmax denominator offset.
    normalization: ``"signed"`` (reference) or ``"l1"``, for ``normalized``.
    stencil: ``"forward"`` (reference) or ``"backward"``.
    scale_by_num_losses: weights sum to ``K`` instead of 1 (initial weights
      then default to 1 each).
    log_losses: slopes of ``log L``; non-positive loss vectors are skipped.
    initial_weights: ``[K]`` warm-up weights (default ``1/K``, or 1 with
      ``scale_by_num_losses``).
    axis_name: mapped data axis to average the losses over, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`SoftAdaptState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.softadapt(2, beta=1.0, log_losses=True)
    >>> state = rule.init()
    >>> _, state = rule.update(state, jnp.array([1.0, 100.0]))
    >>> w, state = rule.update(state, jnp.array([0.5, 100.0]))
    >>> [round(x, 4) for x in w.tolist()]   # s = log(0.5), 0
    [0.3333, 0.6667]

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt*, arXiv:1912.12355.
  """
  num_losses = _protocol.check_num_losses(num_losses)
  order = _checks.check_int("order", order, minimum=1)
  update_every = _checks.check_int("update_every", update_every, minimum=1)
  _checks.check_choice("variant", variant, _checks.VARIANTS)
  _checks.check_choice("normalization", normalization, _checks.NORMALIZATIONS)
  _checks.check_choice("stencil", stencil, _checks.STENCILS)
  _checks.check_scalar("beta", beta)
  if initial_weights is None and scale_by_num_losses:
    initial_weights = jnp.ones((num_losses,))

  def init_fn(*, key: ArrayLike | None = None, dtype=None) -> SoftAdaptState:
    del key  # deterministic
    return init_state(
        num_losses,
        order=order,
        dtype=_protocol.state_dtype(dtype),
        initial_weights=initial_weights,
    )

  def update_fn(
      state: SoftAdaptState, losses: ArrayLike
  ) -> tuple[jax.Array, SoftAdaptState]:
    return softadapt_weights(
        state,
        losses,
        beta=beta,
        variant=variant,
        update_every=update_every,
        epsilon=epsilon,
        axis_name=axis_name,
        normalization=normalization,
        stencil=stencil,
        scale_by_num_losses=scale_by_num_losses,
        log_losses=log_losses,
    )

  return _protocol.LossWeighting(init_fn, update_fn, num_losses, axis_name)
