"""The SoftAdapt direction ``h = sum_k alpha_k grad f_k`` from one backward pass."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from softadapt_jax._state import SoftAdaptState, softadapt_weights


class SoftAdaptGrad(NamedTuple):
  """What :func:`softadapt_value_and_grad` returns.

  Attributes:
    losses: ``[K]`` the loss components (averaged over ``axis_name`` if
      given), as the history recorded them.
    aux: the auxiliary output of ``fun`` (``None`` unless ``has_aux``).
    weights: ``[K]`` the SoftAdapt weights of this step.
    state: the advanced :class:`SoftAdaptState`.
    grad: ``h = sum_k weights_k grad f_k``, a pytree like the differentiated
      argument.
  """

  losses: jax.Array
  aux: Any
  weights: jax.Array
  state: SoftAdaptState
  grad: Any


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
  if isinstance(tree, SoftAdaptState):
    return tree
  try:
    found = optax.tree.get(tree, SoftAdaptState.__name__)
  except KeyError as e:
    raise ValueError(
        "more than one SoftAdaptState found in the given tree; pass the one "
        "you mean explicitly."
    ) from e
  if not isinstance(found, SoftAdaptState):
    raise ValueError(
        "no SoftAdaptState found in the given tree: put softadapt_track(...) "
        "or softadapt_combine_grads(...) in the optimizer chain, or pass the "
        f"state itself (got {type(tree).__name__})."
    )
  # Containers such as Flax NNX's optimizer wrap each leaf (in a Variable);
  # hand back plain arrays.
  return SoftAdaptState(*(jnp.asarray(field) for field in found))


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
      scale_by_num_losses: as in :func:`softadapt_weights`; use the same
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
  )

  def value_and_direction(state: Any, params: Any, *args: Any) -> SoftAdaptGrad:
    sa_state = find_softadapt_state(state)
    out, vjp_fn, *aux = jax.vjp(
        lambda p: fun(p, *args), params, has_aux=has_aux
    )
    losses = jnp.asarray(out)
    if axis_name is not None:
      losses = jax.lax.pmean(losses, axis_name)
    weights, new_state = weights_fn(sa_state, losses)
    cotangent = jax.lax.stop_gradient(weights).astype(out.dtype)
    (grad,) = vjp_fn(cotangent)
    if axis_name is not None:
      grad = jax.lax.pmean(grad, axis_name)
    return SoftAdaptGrad(
        losses=losses,
        aux=aux[0] if has_aux else None,
        weights=weights,
        state=new_state,
        grad=grad,
    )

  return value_and_direction
