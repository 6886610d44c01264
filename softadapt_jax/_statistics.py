"""Statistics of the per-component gradients: what a rule asks, how it is computed.

A rule that needs more than loss values declares a :class:`GradientStatistics`:
a function reducing one component's gradient to a few scalars (norms, max or
mean of ``|g|``, sums for a standard deviation), whether it needs the ``K x K``
Gramian ``G = J J^T``, and the parameters it looks at. The routes compute it:

- from per-component gradients stacked on a leading axis
  (:func:`combine_grads`, which has them already);
- from the loss function (:func:`weighted_value_and_grad`), by one of three
  exact routes: ``"unrolled"`` (``K`` separate ``jax.grad``, each pruned by XLA
  to its own sub-computation: the cheapest when the components are separate
  computations, e.g. a PINN's residual and boundary terms on their own
  points), ``"map"`` (``lax.map`` of the VJP with one-hot cotangents: one
  gradient in memory at a time) or ``"jacrev"`` (``jax.jacrev``, by request).

Under a data axis the per-component gradients are averaged over it before the
statistic (``||mean g|| != mean ||g||``): the statistic is that of the global
gradient, exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from softadapt_jax._structure import is_float_leaf

# One component's gradient, restricted to the selected parameters: a list of
# float arrays (one per selected leaf of the params, in tree order).
Leaves = Sequence[jax.Array]
Statistics = dict[str, jax.Array]
GRADIENT_ROUTES = ("unrolled", "map", "jacrev")


class GradientStatistics(NamedTuple):
  """What a rule consumes of the per-component gradients.

  Attributes:
    per_component: ``leaves -> {name: scalar}``, reduces one component's
      gradient (the selected leaves, in tree order) to scalars; the routes
      stack them into ``{name: [K]}``. ``None`` if the rule needs only the
      Gramian.
    gramian: whether the rule needs ``G = J J^T`` (``[K, K]``, under the key
      ``"gramian"``).
    wrt: ``(path, leaf) -> bool``, the parameters the statistics look at
      (``path`` as ``jax.tree_util.keystr``); ``None`` for every floating
      leaf.
  """

  per_component: Callable[[Leaves], Statistics] | None = None
  gramian: bool = False
  wrt: Callable[[str, jax.Array], bool] | None = None


def selected_indices(spec: GradientStatistics, params: Any) -> list[int]:
  """Indices of the leaves of ``params`` the statistics look at (trace time)."""
  out = []
  for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
    if not is_float_leaf(leaf):
      continue
    if spec.wrt is None or spec.wrt(jax.tree_util.keystr(path), leaf):
      out.append(i)
  if not out:
    raise ValueError(
        "the rule's gradient statistics select no floating parameter: check "
        "its `wrt` (it is given (path, leaf) with path like \"['layer']['w']\")."
    )
  return out


def _common_dtype(leaves: Sequence[jax.Array]) -> list[jax.Array]:
  """The leaves in one dtype, the widest of theirs and at least float32.

  Mixed widths (bf16 and float32 parameters) are summed together without
  asking JAX to promote: fine under ``jax.numpy_dtype_promotion("strict")``.
  """
  dtype = max(
      (jnp.dtype(g.dtype) for g in leaves), key=lambda d: d.itemsize
  )
  dtype = jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype
  return [g.astype(dtype) for g in leaves]


def from_stacked(
    spec: GradientStatistics,
    stacked: Sequence[jax.Array],
    axis_name: Any = None,
) -> Statistics:
  """The statistics from selected gradient leaves stacked on a leading ``K`` axis."""
  stacked = _common_dtype(stacked)
  if axis_name is not None:
    stacked = [jax.lax.pmean(g, axis_name) for g in stacked]
  out: Statistics = {}
  if spec.per_component is not None:
    out.update(jax.vmap(spec.per_component)(list(stacked)))
  if spec.gramian:
    out["gramian"] = gramian(stacked)
  return out


def gramian(stacked: Sequence[jax.Array]) -> jax.Array:
  """``G_ij = <g_i, g_j>`` summed over the leaves, in float32 or wider."""
  total = None
  for g in stacked:
    flat = g.reshape(g.shape[0], -1)
    flat = flat.astype(jnp.promote_types(flat.dtype, jnp.float32))
    part = jnp.dot(flat, flat.T, precision=jax.lax.Precision.HIGHEST)
    total = part if total is None else total + part
  assert total is not None
  return total


def from_function(
    spec: GradientStatistics,
    fun_vector: Callable[[Any], jax.Array],
    params: Any,
    num_losses: int,
    *,
    route: str,
    axis_name: Any = None,
    fun_components: Callable[[Any], Sequence[jax.Array]] | None = None,
) -> Statistics:
  """The statistics of the gradients of ``fun_vector(params)`` (``[K]``).

  ``fun_components(params)``, if given, returns the same ``K`` losses as a
  list taken before they are stacked; the ``"unrolled"`` route then
  differentiates each on its own, so that XLA drops the other losses'
  computations (with the stacked vector every gradient runs back through all
  of them).
  """
  leaves, treedef = jax.tree.flatten(params)
  idx = selected_indices(spec, params)

  def with_subset(sub: Sequence[jax.Array]) -> Any:
    full = list(leaves)
    for j, i in enumerate(idx):
      full[i] = sub[j]
    return jax.tree.unflatten(treedef, full)

  def on_subset(sub: Sequence[jax.Array]) -> jax.Array:
    return fun_vector(with_subset(sub))

  sub0 = [leaves[i] for i in idx]

  def averaged(grads: Sequence[jax.Array]) -> list[jax.Array]:
    if axis_name is None:
      return list(grads)
    return [jax.lax.pmean(g, axis_name) for g in grads]

  if route == "jacrev":
    return from_stacked(spec, jax.jacrev(on_subset)(sub0), axis_name)
  if route == "unrolled":
    pick = fun_vector if fun_components is None else fun_components

    def one_loss(s: Sequence[jax.Array], k: int) -> jax.Array:
      return pick(with_subset(s))[k]

    per = [
        averaged(jax.grad(lambda s, k=k: one_loss(s, k))(sub0))
        for k in range(num_losses)
    ]
    stacked = [jnp.stack(parts) for parts in zip(*per, strict=True)]
    return from_stacked(spec, stacked)
  # route == "map": one gradient at a time through the VJP of one forward.
  _, vjp_fn = jax.vjp(on_subset, sub0)
  eye = jnp.eye(num_losses, dtype=_output_dtype(on_subset, sub0))

  def one(e: jax.Array) -> Any:
    (g,) = vjp_fn(e)
    g = _common_dtype(averaged(g))
    reduced = {} if spec.per_component is None else spec.per_component(g)
    return (reduced, g) if spec.gramian else (reduced, None)

  reduced, grads = jax.lax.map(one, eye)
  out: Statistics = dict(reduced)
  if spec.gramian:
    out["gramian"] = gramian(grads)
  return out


def _output_dtype(fn: Callable[..., jax.Array], *args: Any) -> jnp.dtype:
  return jax.eval_shape(fn, *args).dtype


def zeros_like_statistics(
    spec: GradientStatistics, num_losses: int, dtype: Any
) -> Statistics:
  """Zeros of the statistics' shapes (what a step that computes none carries)."""
  out: Statistics = {}
  if spec.per_component is not None:
    example = [jnp.zeros((2,), dtype)]
    shapes = jax.eval_shape(spec.per_component, example)
    for name, s in shapes.items():
      out[name] = jnp.zeros((num_losses,), s.dtype)
  if spec.gramian:
    out["gramian"] = jnp.zeros((num_losses, num_losses), dtype)
  return out


# ----------------------------------------------------- per-component reducers


def max_abs(leaves: Leaves) -> jax.Array:
  """``max |g|`` over every entry (the max over leaves of the leaf max)."""
  return jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in leaves]))


def mean_abs(leaves: Leaves) -> jax.Array:
  """``mean |g|`` over every entry (each entry counts once)."""
  total = cast(jax.Array, sum(jnp.sum(jnp.abs(g)) for g in leaves))
  return total / sum(g.size for g in leaves)


def mean_of_leaf_mean_abs(leaves: Leaves) -> jax.Array:
  """The mean over leaves of each leaf's ``mean |g|`` (each leaf counts once)."""
  return jnp.mean(jnp.stack([jnp.mean(jnp.abs(g)) for g in leaves]))


def mean_of_abs_leaf_mean(leaves: Leaves) -> jax.Array:
  """The mean over leaves of ``|mean(g)|`` of each leaf (jinns' statistic)."""
  return jnp.mean(jnp.stack([jnp.abs(jnp.mean(g)) for g in leaves]))


def squared_norm(leaves: Leaves) -> jax.Array:
  """``||g||_2^2`` over every entry."""
  return sum(jnp.sum(jnp.square(g)) for g in leaves)  # type: ignore[return-value]


def total(leaves: Leaves) -> jax.Array:
  """``sum_j g_j`` over every entry."""
  return sum(jnp.sum(g) for g in leaves)  # type: ignore[return-value]


def num_entries(leaves: Leaves) -> int:
  return sum(g.size for g in leaves)


def weight_matrices(path: str, leaf: jax.Array) -> bool:
  """Selects the leaves with two or more axes: the weight matrices, not biases."""
  del path
  return jnp.ndim(leaf) >= 2
