"""SoftAdapt: the state machine over a rolling loss history (SPEC sections 5-6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._slopes import slopes
from softadapt_jax._structure import LossSpec, LossStructure
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

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  history: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def init_state(
    num_losses: int,
    *,
    order: int = 1,
    dtype: jnp.dtype = jnp.float32,
    initial_weights: ArrayLike | Sequence[float] | None = None,
) -> SoftAdaptState:
  """A fresh :class:`SoftAdaptState` for ``num_losses`` loss components.

  The history holds ``order + 1`` rows; until that many finite loss vectors
  have been recorded, :func:`softadapt_weights` returns the initial weights.

  Args:
    num_losses: ``K``, the number of loss components (static int >= 1).
    order: accuracy order of the slopes (static int >= 1).
    dtype: dtype of the history and weights; promoted to at least float32.
    initial_weights: ``[K]`` weights used during warm-up, finite, ``>= 0``
      and summing to 1; default uniform ``1 / K`` (the convention of every
      later set of weights). With ``scale_by_num_losses=True``,
      :func:`softadapt_weights` scales them to sum to ``K``.

  Returns:
    The initial state.

  Example:
    >>> import softadapt_jax as sa
    >>> state = sa.init_state(3, order=2)
    >>> state.history.shape, state.weights.tolist()
    ((3, 3), [0.3333333432674408, 0.3333333432674408, 0.3333333432674408])
  """
  num_losses = _checks.check_int("num_losses", num_losses, minimum=1)
  order = _checks.check_order(order)
  dtype = _protocol.state_dtype(dtype)
  _protocol.check_initial_weights(initial_weights, num_losses, 1.0)
  if initial_weights is None:
    weights = jnp.full((num_losses,), 1.0 / num_losses, dtype)
  else:
    weights = jnp.asarray(initial_weights, dtype)
  return SoftAdaptState(
      count=jnp.zeros((), jnp.int32),
      history=jnp.zeros((order + 1, num_losses), dtype),
      weights=weights,
      num_skipped=jnp.zeros((), jnp.int32),
  )


def softadapt_weights(
    state: SoftAdaptState,
    losses: Any,
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
) -> tuple[Any, SoftAdaptState]:
  """Records a loss vector and returns the SoftAdapt weights for this step.

  Each call with losses ``L_t`` of shape ``[K]``:

  1. if ``axis_name`` is given, ``L_t`` is first averaged over that mapped
     axis (``lax.pmean``) so every replica holds the same state;
  2. if ``L_t`` is all finite it is pushed into the history, else it is
     skipped (``num_skipped`` counts it; the history is never poisoned);
  3. during warm-up (fewer than ``order + 1`` vectors recorded) the initial
     weights are returned, scaled to sum to 1 (or ``K`` with
     ``scale_by_num_losses``);
  4. afterwards the weights are recomputed from the history
     (:func:`weights_from_history`) every ``update_every`` recorded vectors and
     held in between.

  All branching is ``jnp.where``: one compiled program whatever the step, and
  ``beta`` is traced, so changing it does not recompile. This is
  ``softadapt(K, order=..., **settings).update(state, losses)``: the same code
  as the rule, warm-up included. The weights carry no gradient.

  Args:
    state: the current :class:`SoftAdaptState` (its history's row count fixes
      the order).
    losses: ``[K]`` the loss components of this step (any float dtype), or a
      mapping / pytree of scalar losses (the weights then come back in it).
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
    log_losses: take the slopes of ``log L`` (see :func:`weights_from_history`).

  Returns:
    ``(weights, new_state)``: ``[K]`` weights in the state's dtype (in the
    structure of ``losses``), and the advanced state.

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
  num_rows, num_losses = state.history.shape
  if not hasattr(losses, "shape") or isinstance(losses, Mapping):
    # Named losses: the weights come back in the same structure.
    num_losses = jax.tree.structure(losses)
  rule = softadapt(
      num_losses,
      beta=beta,
      variant=variant,
      order=num_rows - 1,
      update_every=update_every,
      epsilon=epsilon,
      normalization=normalization,
      stencil=stencil,
      scale_by_num_losses=scale_by_num_losses,
      log_losses=log_losses,
      axis_name=axis_name,
  )
  return rule.update(state, losses)


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
    num_losses: LossSpec,
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
    initial_weights: ArrayLike | Sequence[float] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""SoftAdapt (Heydari, Thompson, Mehmood, 2019) as a rule.

  .. math::
    \alpha = S \cdot \mathrm{softmax}(\beta z + \log w), \quad z = s
    \text{ or } s / \textstyle\sum_l s_l, \quad s = \text{slope of the last
    } p + 1 \text{ loss vectors}

  (SPEC sections 2-6). The state keeps the newest ``order + 1`` recorded loss
  vectors; until it holds that many, the initial weights are returned (scaled
  to sum to ``S``); then the weights are recomputed every ``update_every``
  recorded vectors and held in between. With ``log_losses=True`` the slopes
  are those of ``log L`` (the relative rate of change): the log-slope member
  of the family, whose ``beta`` does not depend on the scale of the losses; a
  loss of exactly 0 is read as the smallest normal float there.

  ``beta`` multiplies slopes in the units of the losses, so the defaults (the
  reference's: ``original``, ``beta=0.1``, kept for parity) saturate when
  ``beta`` times a slope is in the tens: one weight goes to 0. On the published
  Poisson ``sin(8 pi x)`` PINN (residual loss ~2e5 at the start) they failed
  12 of 20 seeds where equal weights failed 3 (``docs/studies.md``).
  ``variant="normalized", normalization="l1"`` failed 1 of 10, but its
  ``sum |z| <= 1``, so at ``beta=0.1`` no two weights differ by more than
  a factor ``exp(beta) = 1.105``: equal weights in all but name.

  Traced settings are not checked: a traced ``beta`` may be any finite value,
  a traced ``epsilon`` should be ``>= 0``.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef`` (see
      :class:`LossWeighting`).
    beta: temperature, finite (traced: ``jit``, ``vmap`` and
      ``inject_hyperparams`` over it do not recompile).
    variant: ``"original"``, ``"normalized"`` or ``"loss_weighted"``.
    order: accuracy order ``p`` of the slopes, ``1 <= p <= 10``; the state
      keeps ``p + 1`` loss vectors.
    update_every: recompute the weights every this many recorded vectors.
    epsilon: softmax denominator offset, ``>= 0``.
    normalization: ``"signed"`` (reference) or ``"l1"``, for ``normalized``.
    stencil: ``"forward"`` (reference) or ``"backward"``.
    scale_by_num_losses: the weights sum to ``S = K`` instead of 1.
    log_losses: slopes of ``log L``.
    initial_weights: ``[K]`` warm-up weights, finite, ``>= 0`` and summing to
      ``S`` (default ``S / K`` each).
    axis_name: mapped data axis to average the losses over, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`SoftAdaptState`;
    ``init`` equals :func:`init_state` and ``update`` equals
    :func:`softadapt_weights` with these settings.

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
    Heydari, Thompson, Mehmood, *SoftAdapt: Techniques for Adaptive Loss
    Weighting of Neural Networks with Multi-Part Loss Functions*,
    arXiv:1912.12355.
  """
  structure = LossStructure(num_losses)
  k = structure.num_losses
  order = _checks.check_order(order)
  update_every = _checks.check_int("update_every", update_every, minimum=1)
  _checks.check_choice("variant", variant, _checks.VARIANTS)
  _checks.check_choice("normalization", normalization, _checks.NORMALIZATIONS)
  _checks.check_choice("stencil", stencil, _checks.STENCILS)
  _checks.check_float("beta", beta)
  _checks.check_float("epsilon", epsilon, minimum=0.0)
  total = _protocol.total_weight(k, scale_by_num_losses)
  _protocol.check_initial_weights(initial_weights, k, total)
  num_rows = order + 1

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> SoftAdaptState:
    del key  # deterministic
    weights = (
        _protocol.uniform_weights(k, total, dtype)
        if initial_weights is None
        else jnp.asarray(initial_weights, dtype)
    )
    return SoftAdaptState(
        count=jnp.zeros((), jnp.int32),
        history=jnp.zeros((num_rows, k), dtype),
        weights=weights,
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def update_fn(state: SoftAdaptState, losses: jax.Array) -> SoftAdaptState:
    if state.history.shape[0] != num_rows:
      raise ValueError(
          f"`state.history` has {state.history.shape[0]} rows, but this rule "
          f"has order={order} and keeps {num_rows}: build the state and the "
          "rule with the same order."
      )
    history = jnp.concatenate([state.history[1:], losses[None]], axis=0)
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
    # steps after it; during warm-up, the initial weights in this total.
    since_warm = state.count - num_rows
    recompute = (since_warm >= 0) & (since_warm % update_every == 0)
    held = jnp.where(
        since_warm < 0, _scaled(state.weights, total), state.weights
    )
    weights = jnp.where(recompute, candidate.astype(held.dtype), held)
    return state._replace(history=history, weights=weights)

  def diagnostics_fn(state: SoftAdaptState) -> dict[str, jax.Array]:
    history = state.history
    if log_losses:
      history = jnp.log(jnp.maximum(history, jnp.finfo(history.dtype).tiny))
    full = state.count >= num_rows
    return {
        "loss": state.history[-1],
        "slope": jnp.where(full, slopes(history, stencil=stencil), 0.0),
    }

  return _protocol.LossWeighting(
      init_fn,
      update_fn,
      num_losses,
      axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
  )


def _scaled(weights: jax.Array, total: float) -> jax.Array:
  """``weights`` scaled to sum to ``total`` (uniform if they sum to 0)."""
  s = jnp.sum(weights)
  uniform = jnp.full_like(weights, total / weights.shape[0])
  return jnp.where(s > 0, weights * (total / jnp.where(s > 0, s, 1.0)), uniform)
