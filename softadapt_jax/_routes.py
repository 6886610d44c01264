"""The Optax routes: every rule reaches the optimizer through these, and only these.

- :func:`weighted_value_and_grad`: the losses, the weights, the rule's new
  state and the direction ``h = J^T w`` from one ``jax.vjp``.
- :func:`track_weights`: keeps the rule's state in ``opt_state``; it records
  the state the helper computed (the rule is advanced once per step).
- :func:`combine_grads`: per-component gradients stacked on a leading ``K``
  axis (or one per named loss) plus ``losses=`` in, ``h`` out.
- :func:`find_weighting_state`: the rule's state inside any ``opt_state``.

Each takes the rule object and nothing else: every setting lives in the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from softadapt_jax import _checks, _protocol
from softadapt_jax._statistics import (
    GRADIENT_ROUTES,
    from_function,
    from_stacked,
    selected_indices,
    zeros_like_statistics,
)
from softadapt_jax._structure import is_float_leaf, widest_float_leaf_dtype


class WeightedGrad(NamedTuple):
  """What :func:`weighted_value_and_grad` returns.

  Attributes:
    losses: the loss components as the rule recorded them (averaged over the
      rule's ``axis_name``, in the state's dtype), in the rule's structure.
    aux: the auxiliary output of ``fun`` (``None`` unless ``has_aux``).
    weights: the weights of this step, in the rule's structure.
    state: the rule's new state: pass it on as
      ``tx.update(..., weighting_state=out.state)``.
    grad: ``h = sum_k weights_k grad f_k``, a pytree like the differentiated
      argument; zero on a step whose losses are not all finite.
  """

  losses: Any
  aux: Any
  weights: Any
  state: Any
  grad: Any


def weighted_value_and_grad(
    fun: Callable[..., Any],
    rule: _protocol.LossWeighting,
    *,
    has_aux: bool = False,
    gradients: str = "unrolled",
) -> Callable[..., WeightedGrad]:
  r"""The weighted direction of any rule, from one backward pass.

  .. math::
    (\lambda, \text{state}') = \text{rule.update}(\text{state}, f(x)), \qquad
    h = J_f(x)^\top \lambda

  The weights are a constant of the backward pass (``stop_gradient``), so
  ``h`` is one ``jax.vjp`` of the losses with cotangent ``lambda``: the cost
  of differentiating the plain sum. For a rule of loss values ``K`` separate
  gradients are never formed. The returned function is
  ``g(state, params, *args, **kwargs)``: ``state`` is the rule's state or
  any pytree holding exactly one (an ``opt_state`` with
  :func:`track_weights` of the rule in its chain), and
  ``fun(params, *args, **kwargs)`` returns the losses in the rule's structure
  (a ``[K]`` vector, or a dict of named scalars).

  A rule that needs statistics of the per-component gradients (learning-rate
  annealing, GradNorm, the aggregators) gets them on the steps its cadence
  asks for, and only then (a ``lax.cond`` on the rule's clock, which stays
  unbatched under ``vmap`` over hyperparameters when the state is created
  inside the mapped function), computed by the route ``gradients`` names;
  the direction is still ``J^T lambda`` from the one VJP.

  A step whose losses are not all finite moves nothing: its direction is zero
  and the rule's state records the skip, so a NaN batch does not reach the
  parameters and training goes on. With the rule's ``axis_name`` (inside
  ``shard_map``/``pmap``) the losses and the direction are averaged over
  that axis, so every replica records the same state and steps the same way.

  Args:
    fun: ``fun(params, *args, **kwargs) -> losses`` or ``-> (losses, aux)``.
    rule: the weighting rule (e.g. :func:`softadapt`), the same object given
      to :func:`track_weights`.
    has_aux: whether ``fun`` returns auxiliary data.
    gradients: how the per-component gradients are computed for a rule that
      needs their statistics: ``"unrolled"`` (``K`` ``jax.grad``, each pruned
      to its own sub-computation: the cheapest when the components are
      separate computations), ``"map"`` (``lax.map`` of the VJP: one gradient
      in memory at a time) or ``"jacrev"``. All three are exact and equal.

  Returns:
    ``g(state, params, *args, **kwargs) -> WeightedGrad(losses, aux, weights,
    state, grad)``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return {"a": jnp.sum(x ** 2), "b": jnp.sum((x - 1.0) ** 2)}
    >>> rule = sa.relobralo(["a", "b"])
    >>> tx = optax.chain(sa.track_weights(rule), optax.sgd(0.1))
    >>> grad_fn = jax.jit(sa.weighted_value_and_grad(losses, rule))
    >>> x = jnp.array([0.5, 2.0])
    >>> opt_state = tx.init(x)
    >>> out = grad_fn(opt_state, x)
    >>> {k: float(v) for k, v in out.weights.items()}   # t = 0: weights 1
    {'a': 1.0, 'b': 1.0}
    >>> out.grad.tolist()
    [0.0, 6.0]
    >>> updates, opt_state = tx.update(out.grad, opt_state, x,
    ...                                weighting_state=out.state)

  References:
    Heydari, Thompson, Mehmood, *SoftAdapt*, arXiv:1912.12355, eq. (3).
  """
  rule = _protocol.check_rule(rule)
  _checks.check_choice("gradients", gradients, GRADIENT_ROUTES)
  structure, axis_name = rule.structure, rule.axis_name

  def value_and_direction(
      state: Any, params: Any, *args: Any, **kwargs: Any
  ) -> WeightedGrad:
    rule_state = find_weighting_state(state, rule)

    def global_fun(p: Any) -> Any:
      """``fun`` with its losses averaged over the data axis.

      Differentiating the averaged losses gives the gradient of the global
      mean whatever the data axis is: under ``shard_map`` with its type
      checks (where the cotangents of replicated parameters are summed over
      the devices by JAX itself), without them, under ``pmap`` or ``vmap``.
      """
      value = fun(p, *args, **kwargs)
      if axis_name is None:
        return value
      if has_aux:
        return jax.lax.pmean(value[0], axis_name), value[1]
      return jax.lax.pmean(value, axis_name)

    out, vjp_fn, *aux = jax.vjp(global_fun, params, has_aux=has_aux)
    statistics = None
    spec = rule.statistics
    if spec is not None:

      def fun_vector(p: Any) -> jax.Array:
        value = global_fun(p)
        return structure.flatten(value[0] if has_aux else value)

      def fun_components(p: Any) -> list[jax.Array]:
        value = global_fun(p)
        return structure.components(value[0] if has_aux else value)

      statistics = _statistics_on_due_steps(
          rule, rule_state, lambda: from_function(
              spec, fun_vector, params, rule.num_losses,
              route=gradients, axis_name=axis_name,
              fun_components=fun_components,
          )
      )
    weights, new_state, losses, recorded = rule.advance(
        rule_state, structure.flatten(out), statistics=statistics
    )
    cotangent = jax.tree.map(
        lambda c: jnp.where(recorded, c, jnp.zeros_like(c)),
        structure.like(weights, out),
    )
    (grad,) = vjp_fn(cotangent)
    grad = _zero_unless(recorded, grad)
    if axis_name is not None:
      # Already the gradient of the global mean on every replica (see
      # global_fun); the mean over the axis makes its value identical on all
      # of them and is a no-op on a value JAX already knows is replicated.
      grad = _float_leaves_map(lambda g: jax.lax.pmean(g, axis_name), grad)
    return WeightedGrad(
        losses=structure.unflatten(losses),
        aux=aux[0] if has_aux else None,
        weights=structure.unflatten(weights),
        state=new_state,
        grad=grad,
    )

  return value_and_direction


def track_weights(
    rule: _protocol.LossWeighting,
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps a rule's state in ``opt_state``, for the one-backward-pass route.

  The incoming updates are the direction computed by
  :func:`weighted_value_and_grad` with the same rule; they pass through
  unchanged, and the state becomes the one the helper computed, given as
  ``weighting_state=out.state``. The rule is advanced once per step, so the
  weights applied, the state recorded and the diagnostics logged are the same
  numbers. The state's dtype follows the params (at least float32); being in
  ``opt_state`` it is checkpointed and sharded with it, and found by
  :func:`find_weighting_state`.

  Args:
    rule: a :class:`LossWeighting` (e.g. :func:`softadapt`, :func:`relobralo`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` takes
    ``weighting_state=`` and whose state is the rule's state.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), jnp.sum((x - 1.0) ** 2)])
    >>> rule = sa.softadapt(2, beta=0.1)
    >>> tx = optax.chain(sa.track_weights(rule), optax.adam(1e-2))
    >>> grad_fn = sa.weighted_value_and_grad(losses, rule)
    >>> x = jnp.array([0.5, 2.0])
    >>> opt_state = tx.init(x)
    >>> for _ in range(3):
    ...   out = grad_fn(opt_state, x)
    ...   updates, opt_state = tx.update(out.grad, opt_state, x,
    ...                                  weighting_state=out.state)
    ...   x = optax.apply_updates(x, updates)
    >>> int(sa.find_weighting_state(opt_state, rule).count)
    3
  """
  rule = _protocol.check_rule(rule)

  def init_fn(params: Any) -> Any:
    return rule.init(dtype=_params_dtype(params))

  def update_fn(
      updates: Any,
      state: Any,
      params: Any = None,
      *,
      weighting_state: Any = None,
      **extra_args: Any,
  ) -> tuple[Any, Any]:
    del params
    if weighting_state is None:
      hint = (
          " (`losses=` is what combine_grads takes; track_weights records the "
          "state the helper already computed)"
          if "losses" in extra_args
          else ""
      )
      raise TypeError(
          "track_weights needs the rule's new state from "
          "weighted_value_and_grad: call `tx.update(out.grad, opt_state, "
          f"params, weighting_state=out.state)`{hint}."
      )
    return updates, _adopt(rule, state, weighting_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def combine_grads(
    rule: _protocol.LossWeighting,
) -> optax.GradientTransformationExtraArgs:
  r"""Combines per-component gradients with a rule's weights.

  .. math::
    h = \sum_k \lambda_k g_k, \qquad
    (\lambda, \text{state}) = \text{rule.update}(\text{state}, L)

  The incoming updates are the ``K`` per-component gradients, stacked on a
  leading axis (``jax.jacrev`` of a ``[K]`` loss vector), or, for a rule
  built from names, a mapping of one gradient per name (``jax.jacrev`` of a
  dict of losses); the output is a pytree like one gradient, zero on a step
  whose losses are not all finite. This costs ``K`` backward passes upstream:
  prefer :func:`weighted_value_and_grad` with :func:`track_weights` unless
  you need the per-component gradients anyway.

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
  rule = _protocol.check_rule(rule)

  def init_fn(params: Any) -> Any:
    return rule.init(dtype=_params_dtype(params))

  def update_fn(
      updates: Any,
      state: Any,
      params: Any = None,
      *,
      losses: Any = None,
      **extra_args: Any,
  ) -> tuple[Any, Any]:
    del params, extra_args
    if losses is None:
      raise TypeError(
          "combine_grads needs the loss components: call "
          "`tx.update(stacked_grads, opt_state, params, losses=...)` with "
          f"{rule.structure.describe()}."
      )
    _check_per_component(rule, updates)
    statistics = None
    if rule.statistics is not None:
      spec = rule.statistics
      statistics = _statistics_on_due_steps(
          rule, state, lambda: from_stacked(
              spec, _selected_stacked(rule, updates), rule.axis_name
          )
      )
    weights, state, _, recorded = rule.advance(
        state, rule.structure.flatten(losses), statistics=statistics
    )
    return _zero_unless(recorded, _contract(rule, weights, updates)), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_weighting_state(tree: Any, rule: _protocol.LossWeighting) -> Any:
  """The state of ``rule`` inside ``tree`` (e.g. an ``opt_state``).

  Works for any nesting of ``optax.chain``,
  ``inject_hyperparams``, ``MultiSteps`` or a Flax ``nnx.Optimizer``'s
  ``opt_state`` (whose wrapped leaves come back as plain arrays).

  Args:
    tree: the rule's state, or a pytree holding exactly one state of its type.
    rule: the :class:`LossWeighting` whose state to find.

  Returns:
    That state.

  Raises:
    ValueError: if ``tree`` holds none, or more than one.

  Example:
    >>> import optax, softadapt_jax as sa
    >>> rule = sa.dwa(3)
    >>> opt_state = optax.chain(sa.track_weights(rule), optax.sgd(0.1)).init(0.0)
    >>> int(sa.find_weighting_state(opt_state, rule).count)
    0
  """
  rule = _protocol.check_rule(rule)
  state_type = rule.state_type
  if isinstance(tree, state_type):
    return tree
  # The outermost states of this type: a combinator's state (e.g. per_epoch)
  # may hold a state of the same type inside it, which is not a second one.
  found = [
      leaf
      for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, state_type))
      if isinstance(leaf, state_type)
  ]
  name = state_type.__name__
  if len(found) > 1:
    raise ValueError(
        f"more than one {name} found in the given tree ({len(found)}); pass "
        "the one you mean explicitly."
    )
  if not found:
    raise ValueError(
        f"no {name} found in the given tree: put the rule's track_weights(...) "
        "or combine_grads(...) in the optimizer chain, or pass the state "
        f"itself (got {type(tree).__name__})."
    )
  return _as_arrays(found[0])


def observe_after_step(tree: Any, rule: _protocol.LossWeighting, losses: Any) -> Any:
  """Gives a rule the losses after the model step, on the same batch.

  For the rules that learn from how much a step lowered the losses (FAMO's
  exact form, :func:`famo`): after ``params = optax.apply_updates(...)``,
  evaluate the losses at the new parameters on the step's batch (one extra
  forward) and pass them here.

  Args:
    tree: the rule's state, or an ``opt_state`` holding it.
    rule: the rule.
    losses: the losses after the step, in the rule's structure.

  Returns:
    ``tree`` with the rule's state replaced by the one that has learned from
    ``losses``.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> import softadapt_jax as sa
    >>> def losses(x):
    ...   return jnp.stack([jnp.sum(x ** 2), 10 * jnp.sum((x - 1.0) ** 2)])
    >>> rule = sa.famo(2)
    >>> tx = optax.chain(sa.track_weights(rule), optax.sgd(0.01))
    >>> grad_fn = sa.weighted_value_and_grad(losses, rule)
    >>> x = jnp.array([0.5, 2.0])
    >>> opt_state = tx.init(x)
    >>> for _ in range(3):
    ...   out = grad_fn(opt_state, x)
    ...   updates, opt_state = tx.update(out.grad, opt_state, x,
    ...                                  weighting_state=out.state)
    ...   x = optax.apply_updates(x, updates)
    ...   opt_state = sa.observe_after_step(opt_state, rule, losses(x))
    >>> int(sa.find_weighting_state(opt_state, rule).num_updates)
    3
  """
  rule = _protocol.check_rule(rule)
  new = rule.observe_after_step(find_weighting_state(tree, rule), losses)
  state_type = rule.state_type
  if isinstance(tree, state_type):
    return new
  return jax.tree.map(
      lambda x: new if isinstance(x, state_type) else x,
      tree,
      is_leaf=lambda x: isinstance(x, state_type),
  )


def _as_arrays(state: Any) -> Any:
  """``state`` with wrapped leaves (Flax NNX variables) as plain arrays."""
  return jax.tree.map(
      jnp.asarray,
      state,
      is_leaf=lambda x: isinstance(x, jax.Array) or hasattr(x, "__jax_array__"),
  )


def _adopt(rule: _protocol.LossWeighting, old: Any, new: Any) -> Any:
  """``new`` checked against ``old``'s structure, shapes and dtypes."""
  rule.check_state(new, "weighting_state")
  if not isinstance(new, type(old)):
    raise TypeError(
        f"`weighting_state` must be a {type(old).__name__} (the state of this "
        f"rule), got {type(new).__name__}: pass `out.state` of "
        "weighted_value_and_grad with the same rule."
    )
  old_leaves, old_def = jax.tree.flatten(old)
  new_leaves, new_def = jax.tree.flatten(new)
  if old_def != new_def:
    raise ValueError(
        f"`weighting_state` has the structure {new_def}, but the state in "
        f"opt_state has {old_def}."
    )
  adopted = []
  for o, n in zip(old_leaves, new_leaves, strict=True):
    if jnp.shape(o) != jnp.shape(n):
      raise ValueError(
          f"`weighting_state` has a leaf of shape {jnp.shape(n)} where the "
          f"state in opt_state has {jnp.shape(o)}: build both from the same "
          "rule."
      )
    adopted.append(jnp.asarray(n).astype(jnp.result_type(o)))
  return jax.tree.unflatten(old_def, adopted)


def _statistics_on_due_steps(
    rule: _protocol.LossWeighting, state: Any, compute: Callable[[], Any]
) -> dict[str, jax.Array]:
  """``compute()`` on the steps the rule is due, zeros on the others."""
  assert rule.statistics is not None
  dtype = state.weights.dtype
  zeros = zeros_like_statistics(rule.statistics, rule.num_losses, dtype)

  def computed() -> dict[str, jax.Array]:
    return {k: v.astype(dtype) for k, v in compute().items()}

  return jax.lax.cond(rule.due(state), computed, lambda: zeros)


def _selected_stacked(rule: _protocol.LossWeighting, updates: Any) -> list[jax.Array]:
  """The selected leaves of per-component gradients, stacked on a ``K`` axis."""
  assert rule.statistics is not None
  if (
      rule.structure.kind == "names"
      and isinstance(updates, Mapping)
      and set(updates) == set(rule.names)
  ):
    per_name = [updates[name] for name in rule.names]
    updates = jax.tree.map(lambda *g: jnp.stack(g), *per_name)
  one = jax.tree.map(lambda g: g[0], updates)
  idx = selected_indices(rule.statistics, one)
  leaves = jax.tree.leaves(updates)
  return [leaves[i] for i in idx]


def _params_dtype(params: Any) -> jnp.dtype:
  return _protocol.state_dtype(widest_float_leaf_dtype(params))


def _float_leaves_map(fn: Callable[[jax.Array], jax.Array], tree: Any) -> Any:
  return jax.tree.map(lambda g: fn(g) if is_float_leaf(g) else g, tree)


def _zero_unless(condition: jax.Array, tree: Any) -> Any:
  return _float_leaves_map(
      lambda g: jnp.where(condition, g, jnp.zeros_like(g)), tree
  )


def _check_per_component(rule: _protocol.LossWeighting, updates: Any) -> None:
  """Raises unless ``updates`` holds ``K`` gradients (stacked, or one per name)."""
  k = rule.num_losses
  if (
      rule.structure.kind == "names"
      and isinstance(updates, Mapping)
      and set(updates) == set(rule.names)
  ):
    return
  for leaf in jax.tree.leaves(updates):
    if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != k:
      raise ValueError(
          "`updates` must be per-component gradients stacked on a leading "
          f"axis of size num_losses={k}"
          + (f" or a mapping of one gradient per name {list(rule.names)}"
             if rule.structure.kind == "names" else "")
          + f"; got a leaf of shape {jnp.shape(leaf)}."
      )


def _contract(rule: _protocol.LossWeighting, weights: jax.Array, updates: Any) -> Any:
  k = rule.num_losses
  if (
      rule.structure.kind == "names"
      and isinstance(updates, Mapping)
      and set(updates) == set(rule.names)
  ):
    per_name = [updates[name] for name in rule.names]

    def weighted_sum(*grads: jax.Array) -> jax.Array:
      if not is_float_leaf(grads[0]):
        return grads[0]
      total = weights[0].astype(grads[0].dtype) * grads[0]
      for i in range(1, k):
        total = total + weights[i].astype(grads[i].dtype) * grads[i]
      return total

    return jax.tree.map(weighted_sum, *per_name)

  def contract(leaf: jax.Array) -> jax.Array:
    if not is_float_leaf(leaf):
      return leaf[0]
    w = weights.astype(leaf.dtype)
    return jnp.tensordot(w, leaf, axes=1, precision=jax.lax.Precision.HIGHEST)

  return jax.tree.map(contract, updates)
