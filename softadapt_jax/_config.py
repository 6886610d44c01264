"""ConFIG: the conflict-free direction with equal cosines to every gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _protocol
from softadapt_jax._aggregation import gramian_rule, pinv, safe_divide
from softadapt_jax._structure import LossSpec, LossStructure

# torchjd's floor on the norm of the combined unit direction.
_NORM_FLOOR = 1e-12


class ConFIGState(NamedTuple):
  """State of :func:`conflict_free`.

  Attributes:
    count: int32 scalar, steps recorded (saturating).
    clock: int32 scalar, calls.
    weights: ``[K]`` the weights ``w`` of the last step (``d = J^T w``).
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def config_weights(gram: jax.Array, preference: jax.Array) -> jax.Array:
  r"""ConFIG's weights from the Gramian (torchjd's form).

  .. math::
    D = \mathrm{diag}(\|g_k\|), \quad C = D^{+} G D^{+}, \quad
    \beta = D^{+} C^{+} p, \quad
    w = \frac{\mathbf 1^\top G \beta}{\max(\beta^\top G \beta, 10^{-24})}\,\beta

  so that ``d = J^T w`` is the unit vector ``x / ||x||`` (``x = J^T beta``,
  the direction with equal cosines to the unit gradients, or the preferred
  ones) scaled by the sum of the gradients' projections on it.
  """
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  inv = safe_divide(jnp.ones_like(norms), norms)
  cosines = gram * inv[:, None] * inv[None, :]
  beta = inv * (pinv(cosines) @ preference)
  length2 = jnp.maximum(beta @ gram @ beta, _NORM_FLOOR**2)
  return (jnp.sum(gram @ beta) / length2) * beta


def conflict_free(
    num_losses: LossSpec,
    *,
    preference: ArrayLike | None = None,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""ConFIG (Liu, Thuerey et al., ICLR 2025): conflict-free, equal cosines.

  .. math::
    d = \Big(\sum_k g_k^\top \hat x\Big)\, \hat x, \qquad
    \hat x = \frac{x}{\|x\|}, \quad x = U^{+} p

  with ``U`` the unit gradients ``g_k / ||g_k||`` (rows) and ``p`` the
  preference (ones: equal cosines to every gradient). ``x`` makes the same
  positive angle with every ``g_k`` (so ``d`` conflicts with none) when the
  unit gradients are linearly independent; when they are not, ``U^+ p`` is
  the least-squares solution (torchjd and conflictfree's ``pinv`` form). The
  rule works on the Gramian: ``d = J^T w`` with ``w`` from
  :func:`config_weights`. The weights have no fixed sum.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    preference: ``[K]`` the preference ``p`` (default ones), positive.
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian, or
      ``None`` for all.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`ConFIGState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.conflict_free(2)
    >>> gram = jnp.array([[1.0, -0.5], [-0.5, 1.0]])   # two conflicting units
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]   # d = g_1 + g_2: cosine 0.5 to both
    [1.0, 1.0]

  References:
    Liu, Chen, Thuerey et al., *ConFIG: Towards Conflict-free Training of
    Physics Informed Neural Networks*, ICLR 2025; code ``tum-pbs/ConFIG``.
  """
  k = LossStructure(num_losses).num_losses
  pref = None if preference is None else jnp.asarray(preference)
  if pref is not None and pref.shape != (k,):
    raise ValueError(
        f"`preference` must have shape ({k},), got {pref.shape}."
    )

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> ConFIGState:
    del key
    return ConFIGState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.ones((k,), dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def weights_fn(gram, losses, state):
    del losses
    p = jnp.ones((k,), gram.dtype) if pref is None else pref.astype(gram.dtype)
    return config_weights(gram, p), state

  return gramian_rule(
      num_losses, init_fn, weights_fn, wrt=wrt, axis_name=axis_name
  )
