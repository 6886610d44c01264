"""The SoftAdapt direction ``h = sum_k alpha_k grad f_k`` from one backward pass."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _protocol
from softadapt_jax._state import SoftAdaptState, softadapt_weights


class WeightedGrad(NamedTuple):
  """What :func:`weighted_value_and_grad` and :func:`softadapt_value_and_grad` return.

  Attributes:
    losses: ``[K]`` the loss components (averaged over ``axis_name`` if
      given), as the history recorded them.
    aux: the auxiliary output of ``fun`` (``None`` unless ``has_aux``).
    weights: ``[K]`` the weights of this step.
    state: the advanced state of the rule (a :class:`SoftAdaptState` for
      SoftAdapt).
    grad: ``h = sum_k weights_k grad f_k``, a pytree like the differentiated
      argument.
  """

  losses: jax.Array
  aux: Any
  weights: jax.Array
  state: Any
  grad: Any


SoftAdaptGrad = WeightedGrad


def find_softadapt_state(tree: Any) -> SoftAdaptState:
  """The single :class:`SoftAdaptState` inside ``tree`` (e.g. an ``opt_state``).

  Built on ``optax.tree.get``: works for any nesting of ``optax.chain``,
  ``inject_hyperparams``, ``MultiSteps`` or a Flax ``nnx.Optimizer``'s
  ``opt_state`` (whose Variable-wrapped leaves come back as plain arrays).

  Args:
    tree: a :class:`SoftAdaptState`, or a pytree holding exactly one.

  Returns:
    That state.

  Raises:
    ValueError: if ``tree`` holds none, or more than one.

  Example:
    >>> import optax, softadapt_jax as sa
    >>> tx = optax.chain(sa.softadapt_track(3), optax.sgd(0.1))
    >>> opt_state = tx.init({"w": optax.tree.zeros_like(1.0)})
    >>> sa.find_softadapt_state(opt_state).weights.shape
    (3,)
  """
  return _protocol.find_weighting_state(tree, SoftAdaptState)


def softadapt_value_and_grad(
    fun: Callable[..., Any],
    *,
    has_aux: bool = False,
    beta: ArrayLike = 0.1,
    variant: str = "original",
    update_every: int = 1,
    epsilon: ArrayLike = 1e-8,
    axis_name: str | tuple[str, ...] | None = None,
    normalization: str = "signed",
    stencil: str = "forward",
    scale_by_num_losses: bool = False,
    log_losses: bool = False,
) -> Callable[..., SoftAdaptGrad]:
  r"""Makes a function that returns the losses, weights, state and direction.

  .. math::
    h = \sum_k \alpha_k \nabla f_k(x) = J_f(x)^\top \alpha

  is a vector-Jacobian product of the loss vector with cotangent ``alpha``, so
  one forward and one backward pass give it: the cost of differentiating the
  plain sum. ``alpha`` depends on loss values only and is a constant of the
  backward pass (``lax.stop_gradient``); ``K`` separate gradients are never
  formed.

  The returned function is ``g(state, params, *args)``: ``state`` is a
  :class:`SoftAdaptState` or any pytree holding one (an ``opt_state`` with
  :func:`softadapt_track` in its chain); ``fun(params, *args)`` returns the
  ``[K]`` loss vector (or ``(losses, aux)`` with ``has_aux``), and the
  direction is taken with respect to ``params``.

  With ``axis_name`` (inside ``shard_map``/``pmap``) the losses and the
  direction are averaged over that axis, so every replica records the same
  history and gets the same global direction.

  Args:
    fun: ``fun(params, *args) -> losses`` or ``-> (losses, aux)``.
    has_aux: whether ``fun`` returns auxiliary data.
    beta, variant, update_every, epsilon, normalization, stencil,
      scale_by_num_losses, log_losses: as in :func:`softadapt_weights`; use the same
      values as the :func:`softadapt_track` in the chain.
    axis_name: mapped axis to average losses and direction over, or ``None``.

  Returns:
    ``g(state, params, *args) -> SoftAdaptGrad(losses, aux, weights, state,
    grad)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), jnp.sum((x - 1.0) ** 2)])
    >>> grad_fn = jax.jit(sa.softadapt_value_and_grad(losses, beta=0.1))
    >>> state = sa.init_state(2, order=1)
    >>> out = grad_fn(state, jnp.array([0.5, 2.0]))
    >>> out.weights.tolist(), out.grad.tolist()   # warm-up: 1/2 each
    ([0.5, 0.5], [0.0, 3.0])

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt*, arXiv:1912.12355, eq. (3).
  """
  weights_fn = functools.partial(
      softadapt_weights,
      beta=beta,
      variant=variant,
      update_every=update_every,
      epsilon=epsilon,
      normalization=normalization,
      stencil=stencil,
      scale_by_num_losses=scale_by_num_losses,
      log_losses=log_losses,
  )

  return _value_and_direction(
      fun,
      weights_fn,
      functools.partial(_protocol.find_weighting_state, state_type=SoftAdaptState),
      has_aux=has_aux,
      axis_name=axis_name,
  )


def weighted_value_and_grad(
    fun: Callable[..., Any],
    rule: _protocol.LossWeighting,
    *,
    has_aux: bool = False,
) -> Callable[..., WeightedGrad]:
  r"""The weighted direction of any :class:`LossWeighting` rule, one backward pass.

  .. math::
    (\lambda, \text{state}') = \text{rule.update}(\text{state}, f(x)), \qquad
    h = J_f(x)^\top \lambda

  The weights depend on loss values only, so ``h`` is one ``jax.vjp`` of the
  loss vector with cotangent ``lambda`` (held constant). The returned function
  is ``g(state, params, *args)``: ``state`` is the rule's state or any pytree
  holding exactly one (an ``opt_state`` with :func:`track_weights` of the same
  rule in its chain). With ``rule.axis_name`` the direction is averaged over
  that axis too.

  Args:
    fun: ``fun(params, *args) -> losses`` (``[K]``) or ``-> (losses, aux)``.
    rule: the weighting rule (e.g. :func:`relobralo`), the same object given to
      :func:`track_weights`.
    has_aux: whether ``fun`` returns auxiliary data.

  Returns:
    ``g(state, params, *args) -> WeightedGrad(losses, aux, weights, state,
    grad)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), jnp.sum((x - 1.0) ** 2)])
    >>> rule = sa.relobralo(2)
    >>> tx = optax.chain(sa.track_weights(rule), optax.sgd(0.1))
    >>> grad_fn = jax.jit(sa.weighted_value_and_grad(losses, rule))
    >>> x = jnp.array([0.5, 2.0])
    >>> opt_state = tx.init(x)
    >>> out = grad_fn(opt_state, x)
    >>> out.weights.tolist(), out.grad.tolist()   # t = 0: weights 1 each
    ([1.0, 1.0], [0.0, 6.0])
    >>> updates, opt_state = tx.update(out.grad, opt_state, x, losses=out.losses)
  """
  rule = _protocol.check_rule(rule)
  state_type = _protocol.state_type_of(rule)
  return _value_and_direction(
      fun,
      rule.update,
      functools.partial(_protocol.find_weighting_state, state_type=state_type),
      has_aux=has_aux,
      axis_name=rule.axis_name,
  )


def _value_and_direction(
    fun: Callable[..., Any],
    update: Callable[[Any, jax.Array], tuple[jax.Array, Any]],
    find_state: Callable[[Any], Any],
    *,
    has_aux: bool,
    axis_name: _protocol.AxisName,
) -> Callable[..., WeightedGrad]:
  def value_and_direction(state: Any, params: Any, *args: Any) -> WeightedGrad:
    rule_state = find_state(state)
    out, vjp_fn, *aux = jax.vjp(
        lambda p: fun(p, *args), params, has_aux=has_aux
    )
    losses = jnp.asarray(out)
    if axis_name is not None:
      losses = jax.lax.pmean(losses, axis_name)
    weights, new_state = update(rule_state, losses)
    cotangent = jax.lax.stop_gradient(weights).astype(out.dtype)
    if axis_name is not None:
      # The weights are replicated over the axis while `out` varies along it;
      # under shard_map's type checks (check_vma) the cotangent must carry
      # the same varying type as the primal output.
      cotangent = jnp.zeros_like(out) + cotangent
    (grad,) = vjp_fn(cotangent)
    if axis_name is not None:
      grad = jax.lax.pmean(grad, axis_name)
    return WeightedGrad(
        losses=losses,
        aux=aux[0] if has_aux else None,
        weights=weights,
        state=new_state,
        grad=grad,
    )

  return value_and_direction
