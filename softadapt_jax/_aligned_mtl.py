"""Aligned-MTL: align the gradients' principal components, then combine."""

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

SCALES = ("min", "median", "rmse")


class AlignedMTLConvention(TypedDict):
  """The settings of :func:`aligned_mtl` of one reference."""

  scale: str
  sum_rows: bool
  uniform_mix: float


ALIGNED_MTL_CONVENTIONS: Mapping[str, AlignedMTLConvention] = types.MappingProxyType({
    # torchjd, aggregation/_aligned_mtl.py: w = B p with p = 1/K.
    "torchjd": AlignedMTLConvention(
        scale="min", sum_rows=False, uniform_mix=0.0
    ),
    # LibMTL, weighting/Aligned_MTL.py: w = B.sum(0), exactly K times torchjd's.
    "libmtl": AlignedMTLConvention(
        scale="min", sum_rows=True, uniform_mix=0.0
    ),
})


class AlignedMTLState(NamedTuple):
  """State of :func:`aligned_mtl`.

  Attributes:
    count: int32 scalar, steps recorded (saturating).
    clock: int32 scalar, calls.
    weights: ``[K]`` the weights of the last step.
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def aligned_mtl_weights(
    gram: jax.Array, scale: str = "min", sum_rows: bool = False
) -> jax.Array:
  r"""``w = B p`` (or ``B 1``), ``B = sqrt(s) V_r diag(lambda_r^{-1/2}) V_r^T``.

  ``G = V diag(lambda) V^T``; the rank ``r`` keeps the eigenvalues above
  ``lambda_max K eps`` (eps of the Gramian's dtype, as torchjd 0.18; LibMTL
  uses float32's); ``s`` is the smallest kept eigenvalue (``min``), their
  lower median (``median``) or their mean (``rmse``). Rank 0 gives
  ``B = I``. All ``K`` eigenpairs are kept with a mask (no dynamic shapes).
  """
  k = gram.shape[0]
  lam, vec = jnp.linalg.eigh(gram)  # ascending
  keep = lam > lam[-1] * k * jnp.finfo(gram.dtype).eps
  rank = jnp.sum(keep)
  safe = jnp.where(keep, lam, 1.0)
  if scale == "min":
    s = jnp.min(jnp.where(keep, lam, jnp.finfo(lam.dtype).max))
  elif scale == "median":
    # The kept values are the last `rank` ones; the lower median of those.
    index = k - rank + (rank - 1) // 2
    s = lam[jnp.clip(index, 0, k - 1)]
  else:
    s = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
  s = jnp.where(rank > 0, s, 1.0)
  b = jnp.sqrt(s) * (vec * jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)) @ vec.T
  b = jnp.where(rank > 0, b, jnp.eye(k, dtype=gram.dtype))
  return b.sum(axis=0) if sum_rows else b @ jnp.full((k,), 1.0 / k, gram.dtype)


def aligned_mtl(
    num_losses: LossSpec,
    *,
    scale: str = "min",
    sum_rows: bool = False,
    uniform_mix: ArrayLike = 0.1,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Aligned-MTL (Senushkin et al., CVPR 2023): a well-conditioned combination.

  .. math::
    G = V \Lambda V^\top, \quad
    B = \sqrt{s}\, V_r \Lambda_r^{-1/2} V_r^\top, \quad w = B p

  ``B`` rescales the gradients' principal components to one size (the
  smallest kept eigenvalue, by default), removing the dominance of the
  large ones; ``p = 1/K`` (torchjd) or ``w = B 1`` (LibMTL, ``sum_rows=True``:
  exactly ``K`` times torchjd's when both keep the same rank).
  ``ALIGNED_MTL_CONVENTIONS`` holds both. No fixed sum.

  **The default mixes in 10 % of the equal weights** (``uniform_mix=0.1``:
  ``w <- 0.9 w + 0.1 sum(w) / K``). Rescaling the principal components to
  the smallest one weights orthogonal gradients in proportion to
  ``1 / ||g_k||``, so a loss whose gradient vanishes takes nearly all the
  weight: on the Helmholtz PINN of the studies the published rule held the
  residual's weight at 1e-3 of the boundary's and learned nothing (relative
  L2 0.99, seed 0); with 1 % of equal weights it ended at 0.78 and 0.15 on
  seeds 0 and 1, with 10 % at 0.050 and 0.054 (equal weights: 0.20, 0.22).
  ``uniform_mix=0`` is the published rule (both conventions set it).

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    scale: ``"min"``, ``"median"`` (lower median) or ``"rmse"`` (mean) of
      the kept eigenvalues.
    sum_rows: ``w = B 1`` (LibMTL) instead of ``B 1 / K``.
    uniform_mix: ``m`` in ``[0, 1]``, the share of the equal weights mixed
      in (traced); 0 is the published rule.
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is an :class:`AlignedMTLState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.aligned_mtl(2, uniform_mix=0.0)   # the published rule
    >>> gram = jnp.array([[4.0, 0.0], [0.0, 1.0]])   # orthogonal, norms 2 and 1
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]   # both scaled to norm 1, / K
    [0.25, 0.5]
    >>> rule = sa.aligned_mtl(2)                    # 10 % equal mixed in
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]
    [0.2625, 0.4875]

  References:
    Senushkin, Patakin, Kuznetsov, Konushin, *Independent Component Alignment
    for Multi-Task Learning*, CVPR 2023; torchjd, LibMTL.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_choice("scale", scale, SCALES)
  _checks.check_float("uniform_mix", uniform_mix, minimum=0.0, maximum=1.0)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> AlignedMTLState:
    del key
    return AlignedMTLState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.full((k,), 1.0 / k, dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def weights_fn(gram, losses, state):
    del losses
    return aligned_mtl_weights(gram, scale, sum_rows), state

  return gramian_rule(
      num_losses, init_fn, weights_fn, wrt=wrt, axis_name=axis_name,
      uniform_mix=uniform_mix,
  )
