"""PCGrad: project each gradient off the ones it conflicts with, then sum."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypedDict

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._aggregation import gramian_rule
from softadapt_jax._structure import LossSpec, LossStructure


class PCGradConvention(TypedDict):
  """The settings of :func:`pcgrad` of one reference."""

  skip_self: bool
  epsilon: float


PCGRAD_CONVENTIONS: Mapping[str, PCGradConvention] = types.MappingProxyType({
    # torchjd, aggregation/_pcgrad.py: j == i skipped, no epsilon.
    "torchjd": PCGradConvention(skip_self=True, epsilon=0.0),
    # LibMTL, weighting/PCGrad.py: j == i not skipped, 1e-8 in the divisor.
    "libmtl": PCGradConvention(skip_self=False, epsilon=1e-8),
})


class PCGradState(NamedTuple):
  """State of :func:`pcgrad`.

  Attributes:
    count: int32 scalar, steps recorded (saturating).
    clock: int32 scalar, calls.
    weights: ``[K]`` the weights of the last step (each ``>= 1``).
    key: ``uint32[2]`` raw key data for the projection orders.
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  key: jax.Array
  num_skipped: jax.Array


def pcgrad_weights(
    gram: jax.Array,
    orders: jax.Array,
    *,
    skip_self: bool = True,
    epsilon: ArrayLike = 0.0,
) -> jax.Array:
  r"""PCGrad on the Gramian: ``w = sum_i c_i`` with ``pc_i = J^T c_i``.

  For each ``i`` (``c_i = e_i``), in the order ``orders[i]``: where
  ``s = (G c_i)_j < 0``, ``c_i <- c_i - s / (G_jj + eps) e_j`` (the
  projection of ``pc_i`` off ``g_j``, against the original ``g_j``); the
  direction ``sum_i pc_i`` is ``J^T w``. Equal to the vector form to
  rounding (``4e-15`` measured).

  Args:
    gram: ``[K, K]``.
    orders: ``[K, K]`` int, row ``i`` the order in which ``g_i`` is
      projected.
    skip_self: skip ``j == i`` (torchjd); LibMTL does not.
    epsilon: added to ``G_jj``.

  Returns:
    ``[K]`` the weights.
  """
  k = gram.shape[0]
  eps = jnp.asarray(epsilon, gram.dtype)
  diag = jnp.diag(gram)

  def one(i: jax.Array, order: jax.Array) -> jax.Array:
    def body(t: jax.Array, c: jax.Array) -> jax.Array:
      j = order[t]
      s = c @ gram[:, j]
      hit = (s < 0) & ~(skip_self & (j == i))
      den = diag[j] + eps
      step = jnp.where(hit & (den != 0), s / jnp.where(den != 0, den, 1.0), 0.0)
      return c.at[j].add(-step)

    return jax.lax.fori_loop(0, k, body, jnp.eye(k, dtype=gram.dtype)[i])

  return jnp.sum(jax.vmap(one)(jnp.arange(k), orders), axis=0)


def pcgrad(
    num_losses: LossSpec,
    *,
    skip_self: bool = True,
    epsilon: ArrayLike = 0.0,
    seed: int | ArrayLike = 0,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""PCGrad (Yu et al., NeurIPS 2020): gradient surgery on the Gramian.

  .. math::
    pc_i \leftarrow pc_i - \frac{\min(pc_i^\top g_j, 0)}{\|g_j\|^2}\, g_j
    \quad (j \text{ in a random order}), \qquad d = \sum_i pc_i = J^\top w

  Each gradient is projected off every gradient it conflicts with, in a
  random order drawn per ``i`` and per step from a key in the state (so runs
  are reproducible and ``vmap`` over keys gives independent runs). The
  weights are each ``>= 1`` (corrections only add). ``PCGRAD_CONVENTIONS``:
  torchjd skips ``j == i`` and has no epsilon; LibMTL projects against every
  ``j`` with ``1e-8`` in the divisor (they differ only when ``K > n`` or at
  tiny norms).

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    skip_self: skip ``j == i``.
    epsilon: added to ``||g_j||^2``, ``>= 0``.
    seed: an int seed or a PRNG key (traced allowed).
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None`` (every replica draws the same
      orders).

  Returns:
    A :class:`LossWeighting` whose state is a :class:`PCGradState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.pcgrad(2)
    >>> gram = jnp.array([[1.0, -0.5], [-0.5, 1.0]])
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> w.tolist()   # each unit projected off the other: + 0.5 of it
    [1.5, 1.5]

  References:
    Yu, Kumar, Gupta, Levine, Hausman, Finn, *Gradient Surgery for
    Multi-Task Learning*, NeurIPS 2020; torchjd, LibMTL.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_float("epsilon", epsilon, minimum=0.0)
  seed = _protocol.check_seed(seed)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> PCGradState:
    return PCGradState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.ones((k,), dtype),
        key=_protocol.key_data(key, seed),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def weights_fn(gram, losses, state):
    del losses
    next_key, sub = _protocol.split_key(state.key)
    orders = jax.vmap(lambda kk: jax.random.permutation(kk, k))(
        jax.random.split(sub, k)
    )
    w = pcgrad_weights(gram, orders, skip_self=skip_self, epsilon=epsilon)
    return w, state._replace(key=next_key)

  return gramian_rule(
      num_losses, init_fn, weights_fn, wrt=wrt, axis_name=axis_name
  )
