"""IMTL-G: the direction with equal projections on every unit gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._aggregation import gramian_rule, pinv, safe_divide
from softadapt_jax._structure import LossSpec, LossStructure


class IMTLState(NamedTuple):
  """State of :func:`imtl_g`.

  Attributes:
    count: int32 scalar, steps recorded (saturating).
    clock: int32 scalar, calls.
    weights: ``[K]`` the weights of the last step (sum 1, or all 0).
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  num_skipped: jax.Array


def imtl_g_weights(gram: jax.Array) -> jax.Array:
  r"""``v = G^+ sqrt(diag G)``, ``w = v / sum v`` (0 if ``|sum v| < 1e-12``)."""
  v = pinv(gram) @ jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  total = jnp.sum(v)
  return jnp.where(jnp.abs(total) >= 1e-12, safe_divide(v, total), 0.0)


def imtl_g(
    num_losses: LossSpec,
    *,
    uniform_mix: ArrayLike = 0.1,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""IMTL-G (Liu et al., ICLR 2021): equal projections on every unit gradient.

  .. math::
    w = (1 - m) \frac{v}{\mathbf 1^\top v} + \frac{m}{K}, \qquad
    v = G^{+} \sqrt{\mathrm{diag}\, G}

  so that (at ``m = 0``) ``d = J^T w`` has the same projection ``d . g_k / ||g_k||`` on
  every gradient, and the weights sum to 1 (torchjd's form, with the
  pseudo-inverse: defined for linearly dependent gradients too, where
  LibMTL's inverse is not; on independent gradients the two agree to 1e-13).
  Where ``|1^T v| < 1e-12`` the weights are 0. Equal projections need not
  be positive ones: with strongly conflicting gradients the common
  projection can be negative, a direction that raises every loss (torchjd
  and LibMTL agree; e.g. all cosines -0.18 on five random gradients in five
  dimensions).

  **The default mixes in 10 % of the equal weights** (``uniform_mix=0.1``:
  ``w <- 0.9 w + 0.1 / K``). Equal projections give weights in proportion
  to ``1 / ||g_k||`` on orthogonal gradients, so a loss whose gradient
  vanishes takes nearly all the weight: on the Helmholtz PINN of the studies
  the published rule held the residual's weight near 1e-3 and learned
  nothing (relative L2 1.06, seed 0); 1 % of equal weights was not enough
  (0.72 and 1.16 on seeds 0 and 1), 10 % was (0.046 and 0.092, against
  0.20 and 0.22 for equal weights). ``uniform_mix=0`` is the published rule.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    uniform_mix: ``m`` in ``[0, 1]``, the share of the equal weights mixed
      in (traced); 0 is the published rule.
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is an :class:`IMTLState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.imtl_g(2, uniform_mix=0.0)   # the published rule
    >>> gram = jnp.array([[4.0, 0.0], [0.0, 1.0]])   # orthogonal, norms 2 and 1
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]   # projections w_k ||g_k|| equal
    [0.3333, 0.6667]
    >>> rule = sa.imtl_g(2)                    # the default: 10 % equal mixed in
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]
    [0.35, 0.65]

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, *Towards Impartial
    Multi-task Learning*, ICLR 2021; torchjd ``aggregation/_imtl_g.py``.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_float("uniform_mix", uniform_mix, minimum=0.0, maximum=1.0)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> IMTLState:
    del key
    return IMTLState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.full((k,), 1.0 / k, dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def weights_fn(gram, losses, state):
    del losses
    return imtl_g_weights(gram), state

  return gramian_rule(
      num_losses, init_fn, weights_fn, wrt=wrt, axis_name=axis_name,
      uniform_mix=uniform_mix,
  )
