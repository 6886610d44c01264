"""Optax gradient transformations that hold the SoftAdapt state in ``opt_state``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from softadapt_jax import _protocol
from softadapt_jax._state import softadapt


def _params_dtype(params: Any) -> jnp.dtype:
  leaves = jax.tree.leaves(params)
  dtype = jnp.result_type(*leaves) if leaves else jnp.float32
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  return _protocol.state_dtype(dtype)


def _weighting_transform(
    rule: _protocol.LossWeighting, *, stacked: bool
) -> optax.GradientTransformationExtraArgs:
  rule = _protocol.check_rule(rule)
  num_losses = rule.num_losses

  def init_fn(params: Any) -> Any:
    return rule.init(dtype=_params_dtype(params))

  def update_fn(
      updates: Any,
      state: Any,
      params: Any = None,
      *,
      losses: ArrayLike | None = None,
      **extra_args: Any,
  ) -> tuple[Any, Any]:
    del params, extra_args
    if losses is None:
      raise TypeError(
          "Loss weighting needs the loss components: call "
          "`tx.update(updates, state, params, losses=...)` with the [K] loss "
          f"vector (K={num_losses})."
      )
    weights, state = rule.update(state, losses)
    if stacked:
      updates = _contract_leading_axis(weights, updates, num_losses)
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def track_weights(
    rule: _protocol.LossWeighting,
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps any rule's state in ``opt_state`` for the one-backward-pass route.

  The incoming updates are already the weighted direction computed by
  :func:`weighted_value_and_grad` with the same ``rule``; they pass through
  unchanged while the state records ``losses=`` exactly as the helper did. The
  state's dtype follows the params (at least float32).

  Args:
    rule: a :class:`LossWeighting` (e.g. :func:`softadapt`, :func:`relobralo`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``losses=`` and whose state is the rule's state.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), jnp.sum((x - 1.0) ** 2)])
    >>> rule = sa.ratio_softadapt(2)
    >>> tx = optax.chain(sa.track_weights(rule), optax.adam(1e-2))
    >>> grad_fn = sa.weighted_value_and_grad(losses, rule)
    >>> x = jnp.array([0.5, 2.0])
    >>> opt_state = tx.init(x)
    >>> for _ in range(3):
    ...   out = grad_fn(opt_state, x)
    ...   updates, opt_state = tx.update(out.grad, opt_state, x,
    ...                                  losses=out.losses)
    ...   x = optax.apply_updates(x, updates)
    >>> int(opt_state[0].count)
    3
  """
  return _weighting_transform(rule, stacked=False)


def combine_grads(
    rule: _protocol.LossWeighting,
) -> optax.GradientTransformationExtraArgs:
  r"""Combines per-component gradients with any rule's weights.

  .. math::
    h = \sum_k \lambda_k g_k, \qquad
    (\lambda, \text{state}) = \text{rule.update}(\text{state}, L)

  The incoming updates are the ``K`` per-component gradients stacked on a
  leading axis; the output is a pytree like one gradient. Prefer
  :func:`weighted_value_and_grad` with :func:`track_weights` (one backward pass)
  unless you need the per-component gradients anyway.

  Args:
    rule: a :class:`LossWeighting`.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``losses=`` and whose state is the rule's state.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), jnp.sum((x - 1.0) ** 2)])
    >>> tx = optax.chain(sa.combine_grads(sa.dwa(2)), optax.sgd(0.1))
    >>> x = jnp.array([0.5, 2.0])
    >>> opt_state = tx.init(x)
    >>> updates, opt_state = tx.update(jax.jacrev(losses)(x), opt_state, x,
    ...                                losses=losses(x))
    >>> updates.tolist()   # -0.1 * (1 g_1 + 1 g_2): DWA's first epochs
    [-0.0, -0.6000000238418579]
  """
  return _weighting_transform(rule, stacked=True)


def _softadapt_transform(
    num_losses: int, *, stacked: bool, **settings: Any
) -> optax.GradientTransformationExtraArgs:
  return _weighting_transform(softadapt(num_losses, **settings), stacked=stacked)


def _contract_leading_axis(weights: jax.Array, stacked: Any, k: int) -> Any:
  def contract(leaf: jax.Array) -> jax.Array:
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != k:
      raise ValueError(
          "`updates` must be per-component gradients stacked on a leading "
          f"axis of size num_losses={k}; got a leaf of shape "
          f"{jnp.shape(leaf)}."
      )
    w = jax.lax.stop_gradient(weights).astype(leaf.dtype)
    return jnp.tensordot(w, leaf, axes=1, precision=jax.lax.Precision.HIGHEST)

  return jax.tree.map(contract, stacked)


_COMMON_ARGS_DOC = """
    num_losses: ``K``, the number of loss components (static).
    beta: temperature (traced; ``inject_hyperparams`` and ``vmap`` over it
      work without recompiling).
    variant: ``"original"``, ``"normalized"`` or ``"loss_weighted"``.
    order: accuracy order of the slopes; the state keeps ``order + 1`` loss
      vectors.
    update_every: recompute the weights every this many recorded steps.
    epsilon: softmax denominator offset.
    axis_name: mapped data axis to average the losses over inside
      ``shard_map``/``pmap``, or ``None``.
    normalization: ``"signed"`` (reference) or ``"l1"``, for ``normalized``.
    stencil: ``"forward"`` (reference) or ``"backward"``.
    scale_by_num_losses: weights sum to ``K`` instead of 1 (initial weights
      then default to 1 each).
    log_losses: slopes of ``log L`` (scale-free); loss vectors with an entry
      ``<= 0`` are skipped.
    initial_weights: ``[K]`` weights used during warm-up (default ``1/K``).
"""


def softadapt_combine_grads(
    num_losses: int,
    *,
    beta: ArrayLike = 0.1,
    variant: str = "original",
    order: int = 1,
    update_every: int = 1,
    epsilon: ArrayLike = 1e-8,
    axis_name: str | tuple[str, ...] | None = None,
    normalization: str = "signed",
    stencil: str = "forward",
    scale_by_num_losses: bool = False,
    log_losses: bool = False,
    initial_weights: ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Combines per-component gradients into the SoftAdapt direction.

  .. math::
    h = \sum_k \alpha_k g_k, \qquad
    (\alpha, \text{state}) = \text{softadapt\_weights}(\text{state}, L)

  The incoming updates are the ``K`` per-component gradients stacked on a
  leading axis (e.g. from ``jax.jacrev`` of the loss vector); the output is a
  pytree like one gradient. This costs ``K`` backward passes upstream: prefer
  :func:`softadapt_value_and_grad` with :func:`softadapt_track` unless you
  need the per-component gradients anyway.

  Args:{args}
  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``losses=`` (the ``[K]`` loss vector) and whose state is a
    :class:`SoftAdaptState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), jnp.sum((x - 1.0) ** 2)])
    >>> tx = optax.chain(sa.softadapt_combine_grads(2), optax.sgd(0.1))
    >>> x = jnp.array([0.5, 2.0])
    >>> opt_state = tx.init(x)
    >>> stacked = jax.jacrev(losses)(x)          # [K, 2]
    >>> updates, opt_state = tx.update(stacked, opt_state, x,
    ...                                losses=losses(x))
    >>> updates.tolist()   # -0.1 * (0.5 g_1 + 0.5 g_2)
    [-0.0, -0.30000001192092896]

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt*, arXiv:1912.12355, eq. (3).
  """
  return _softadapt_transform(
      num_losses,
      stacked=True,
      beta=beta,
      variant=variant,
      order=order,
      update_every=update_every,
      epsilon=epsilon,
      axis_name=axis_name,
      normalization=normalization,
      stencil=stencil,
      scale_by_num_losses=scale_by_num_losses,
      log_losses=log_losses,
      initial_weights=initial_weights,
  )


def softadapt_track(
    num_losses: int,
    *,
    beta: ArrayLike = 0.1,
    variant: str = "original",
    order: int = 1,
    update_every: int = 1,
    epsilon: ArrayLike = 1e-8,
    axis_name: str | tuple[str, ...] | None = None,
    normalization: str = "signed",
    stencil: str = "forward",
    scale_by_num_losses: bool = False,
    log_losses: bool = False,
    initial_weights: ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps the SoftAdapt state in ``opt_state`` for the one-backward-pass route.

  The incoming updates are already the SoftAdapt direction ``h`` computed by
  :func:`softadapt_value_and_grad` from this transformation's state (found
  with :func:`find_softadapt_state`); they pass through unchanged while the
  state records ``losses=`` exactly as the helper did. The state thereby lives
  in ``opt_state``: it is checkpointed with it, sharded with it, found by
  ``optax.tree.get(opt_state, "SoftAdaptState")``, and advanced by
  ``nnx.Optimizer.update(model, grads, losses=...)``.

  Use the same settings here and in :func:`softadapt_value_and_grad`.

  Args:{args}
  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``losses=`` and whose state is a :class:`SoftAdaptState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), jnp.sum((x - 1.0) ** 2)])
    >>> tx = optax.chain(sa.softadapt_track(2), optax.sgd(0.1))
    >>> grad_fn = sa.softadapt_value_and_grad(losses)
    >>> x = jnp.array([0.5, 2.0])
    >>> opt_state = tx.init(x)
    >>> out = grad_fn(opt_state, x)          # one forward + one backward pass
    >>> updates, opt_state = tx.update(out.grad, opt_state, x,
    ...                                losses=out.losses)
    >>> x = optax.apply_updates(x, updates)
    >>> int(sa.find_softadapt_state(opt_state).count)
    1

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt*, arXiv:1912.12355, eq. (3).
  """
  return _softadapt_transform(
      num_losses,
      stacked=False,
      beta=beta,
      variant=variant,
      order=order,
      update_every=update_every,
      epsilon=epsilon,
      axis_name=axis_name,
      normalization=normalization,
      stencil=stencil,
      scale_by_num_losses=scale_by_num_losses,
      log_losses=log_losses,
      initial_weights=initial_weights,
  )


for _factory in (softadapt_combine_grads, softadapt_track):
  if _factory.__doc__:  # None under python -OO
    _factory.__doc__ = _factory.__doc__.replace("{args}", _COMMON_ARGS_DOC)
