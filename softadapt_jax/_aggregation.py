"""The kit for aggregators: rules whose weights are a function of the Gramian.

MGDA, UPGrad, ConFIG, PCGrad, IMTL-G, Aligned-MTL, DualProj, CAGrad and
Nash-MTL all choose the combination weights ``w`` from the ``K x K`` Gramian
``G = J J^T`` of the per-component gradients (``J`` is ``K x n``), and the
update direction is ``J^T w``: the one VJP of this library once ``G`` is
known. The routes compute ``G`` (the statistics ``{"gramian": G}``) on the
parameters the rule's ``wrt`` selects (all by default; a shared trunk, as
LibMTL's ``rep_grad``, to cut the cost on a large model), averaged over the
data axis first, and the rule turns it into ``w``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from softadapt_jax import _protocol
from softadapt_jax._statistics import GradientStatistics
from softadapt_jax._structure import LossSpec

# (gramian, losses, state) -> (weights, state): one aggregator's core.
WeightsFn = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]


def gramian_rule(
    num_losses: LossSpec,
    init_fn: Callable[[jnp.dtype, Any], Any],
    weights_fn: WeightsFn,
    *,
    wrt: Callable[[str, jax.Array], bool] | None,
    axis_name: Any,
    cadence: Callable[[jax.Array], jax.Array] | None = None,
    diagnostics_fn: Callable[[Any], dict[str, jax.Array]] | None = None,
    uniform_mix: Any = 0.0,
) -> _protocol.LossWeighting:
  """A :class:`LossWeighting` whose weights come from the Gramian.

  Args:
    num_losses: ``K``, the names of the losses or a ``PyTreeDef``.
    init_fn: ``(dtype, key) -> state``, a ``NamedTuple`` with ``count``,
      ``clock``, ``weights`` and ``num_skipped``.
    weights_fn: ``(G, losses, state) -> (weights, state)`` on a step that
      computes new weights.
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None``.
    cadence: ``clock -> bool`` (default: every step).
    diagnostics_fn: the rule's own logged signals.
    uniform_mix: ``m``, the share of the equal weights mixed into the
      aggregator's, ``w = (1 - m) w_agg + m sum(w_agg) / K`` (validated by the
      rule; :func:`_protocol.mix_uniform`).
  """

  def update_fn(state: Any, losses: jax.Array, stats: Any, due: jax.Array) -> Any:
    gram = stats["gramian"]
    gram = (gram + gram.T) / 2  # exactly symmetric, whatever the route's sums
    weights, new = weights_fn(gram, losses, state)
    weights = _protocol.mix_uniform(weights, uniform_mix)
    new = new._replace(weights=weights.astype(state.weights.dtype))
    return jax.tree.map(lambda n, o: jnp.where(due, n, o), new, state)

  return _protocol.LossWeighting(
      init_fn,
      update_fn,  # type: ignore[arg-type]
      num_losses,
      axis_name=axis_name,
      statistics=GradientStatistics(gramian=True, wrt=wrt),
      cadence=cadence,
      diagnostics_fn=diagnostics_fn,
  )


def pinv(matrix: jax.Array) -> jax.Array:
  """The pseudo-inverse with torch's default cut-off (``K * eps * s_max``).

  ``jnp.linalg.pinv``'s own default is ten times larger; torchjd and
  conflictfree use torch's.
  """
  k = matrix.shape[0]
  return jnp.linalg.pinv(matrix, rtol=k * jnp.finfo(matrix.dtype).eps)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den`` where ``den != 0``, 0 elsewhere (no NaN, no inf, no NaN grad)."""
  ok = den != 0
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def trace_normalised(gram: jax.Array, norm_eps: jax.Array) -> jax.Array:
  """``G / tr G``, or zeros when ``tr G < norm_eps`` (torchjd's rule)."""
  tr = jnp.trace(gram)
  ok = tr >= norm_eps
  return jnp.where(ok, gram / jnp.where(ok, tr, 1.0), jnp.zeros_like(gram))
