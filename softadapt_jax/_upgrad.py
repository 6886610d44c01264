"""UPGrad and DualProj: projections onto the dual cone of the gradients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._aggregation import gramian_rule, trace_normalised
from softadapt_jax._qp import QPResult, nonneg_qp
from softadapt_jax._structure import LossSpec, LossStructure

# torchjd's defaults (_linalg/_gramian.py): the trace below which the
# normalised Gramian is zero (absolute), and the ridge added to it.
NORM_EPS = 1e-4
REG_EPS = 1e-4


class UPGradState(NamedTuple):
  """State of :func:`upgrad`.

  Attributes:
    count: int32 scalar, steps recorded (saturating).
    clock: int32 scalar, calls.
    weights: ``[K]`` the weights of the last step (``w_k >= p_k``).
    iterations: int32 scalar, the most linear solves of the step's QPs.
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  iterations: jax.Array
  num_skipped: jax.Array


class DualProjState(NamedTuple):
  """State of :func:`dualproj`.

  Attributes:
    count: int32 scalar, steps recorded (saturating).
    clock: int32 scalar, calls.
    weights: ``[K]`` the weights of the last step (``w >= p``).
    iterations: int32 scalar, the linear solves of the step's QP.
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  iterations: jax.Array
  num_skipped: jax.Array


def regularised_gramian(
    gram: jax.Array, norm_eps: ArrayLike = NORM_EPS, reg_eps: ArrayLike = REG_EPS
) -> jax.Array:
  r"""torchjd's ``Ghat = G / tr G + reg_eps I`` (``G / tr G = 0`` below norm_eps)."""
  k = gram.shape[0]
  eye = jnp.eye(k, dtype=gram.dtype)
  normalised = trace_normalised(gram, jnp.asarray(norm_eps, gram.dtype))
  return normalised + jnp.asarray(reg_eps, gram.dtype) * eye


def project_dual_cone(
    gram_hat: jax.Array, lower: jax.Array, *, max_iter: int | None = None
) -> QPResult:
  r"""``v = argmin_{v >= u} v^T H v``, exactly (:func:`_qp.nonneg_qp`).

  .. math::
    v = u + s, \qquad s = \operatorname*{argmin}_{s \ge 0}
      \tfrac12 s^\top H s + (H u)^\top s

  ``J^T v`` is the projection of ``J^T u`` onto the dual cone
  ``{d : J d >= 0}`` when ``H = J J^T`` (Quinton & Rey, Prop. 1):
  ``H v >= 0``, with equality where ``v_k > u_k``.

  Args:
    gram_hat: ``[K, K]`` ``H``, positive semi-definite.
    lower: ``[K]`` ``u``.
    max_iter: the QP's cap (default ``5 K + 10``).

  Returns:
    The :class:`QPResult` with ``x = v``.
  """
  res = nonneg_qp(gram_hat, gram_hat @ lower, max_iter=max_iter)
  return res._replace(x=lower + res.x)


def _preference(gram: jax.Array, preference: ArrayLike | None) -> jax.Array:
  k = gram.shape[0]
  if preference is None:
    return jnp.full((k,), 1.0 / k, gram.dtype)
  return jnp.asarray(preference, gram.dtype)


def _upgrad(gram, preference, norm_eps, reg_eps, max_iter):
  gram = jnp.asarray(gram)
  h = regularised_gramian(gram, norm_eps, reg_eps)
  p = _preference(gram, preference)
  res = jax.vmap(lambda u: project_dual_cone(h, u, max_iter=max_iter))(
      jnp.diag(p)
  )
  return jnp.sum(res.x, axis=0), jnp.max(res.iterations)


def _dualproj(gram, preference, norm_eps, reg_eps, max_iter):
  gram = jnp.asarray(gram)
  h = regularised_gramian(gram, norm_eps, reg_eps)
  res = project_dual_cone(h, _preference(gram, preference), max_iter=max_iter)
  return res.x, res.iterations


def upgrad_weights(
    gram: jax.Array,
    preference: ArrayLike | None = None,
    *,
    norm_eps: ArrayLike = NORM_EPS,
    reg_eps: ArrayLike = REG_EPS,
    max_iter: int | None = None,
) -> jax.Array:
  r"""UPGrad's weights: ``w = sum_i argmin_{v >= p_i e_i} v^T Ghat v``.

  ``Ghat`` from :func:`regularised_gramian`; the ``K`` projections run as
  one ``vmap``. See :func:`upgrad`.

  Args:
    gram: ``[K, K]``.
    preference: ``[K]`` ``p`` (default ``1/K``).
    norm_eps: trace threshold (absolute; 0 for the exact rule).
    reg_eps: ridge (0 for the exact rule).
    max_iter: the QP's cap.

  Returns:
    ``[K]`` the weights, ``w_k >= p_k``.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> gram = jnp.array([[1.0, -0.5], [-0.5, 1.0]])   # two conflicting units
    >>> [round(x, 4) for x in sa.upgrad_weights(gram).tolist()]   # the ridge
    [0.7499, 0.7499]
    >>> sa.upgrad_weights(gram, norm_eps=0.0, reg_eps=0.0).tolist()   # exact
    [0.75, 0.75]

  References:
    Quinton, Rey, arXiv:2406.16232, 2024; torchjd ``aggregation/_upgrad.py``.
  """
  return _upgrad(gram, preference, norm_eps, reg_eps, max_iter)[0]


def dualproj_weights(
    gram: jax.Array,
    preference: ArrayLike | None = None,
    *,
    norm_eps: ArrayLike = NORM_EPS,
    reg_eps: ArrayLike = REG_EPS,
    max_iter: int | None = None,
) -> jax.Array:
  r"""DualProj's weights: ``w = argmin_{v >= p} v^T Ghat v``. See :func:`dualproj`.

  Args:
    gram: ``[K, K]``.
    preference: ``[K]`` ``p`` (default ``1/K``).
    norm_eps: trace threshold (absolute; 0 for the exact rule).
    reg_eps: ridge (0 for the exact rule).
    max_iter: the QP's cap.

  Returns:
    ``[K]`` the weights, ``w >= p``.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> gram = jnp.array([[4.0, -1.8], [-1.8, 1.0]])   # the mean conflicts
    >>> w = sa.dualproj_weights(gram, norm_eps=0.0, reg_eps=0.0)
    >>> [round(x, 4) for x in w.tolist()]   # w_2 raised until g_2 . d = 0
    [0.5, 0.9]

  References:
    Quinton, Rey, arXiv:2406.16232, 2024; torchjd ``aggregation/_dualproj.py``.
  """
  return _dualproj(gram, preference, norm_eps, reg_eps, max_iter)[0]


def _rule(
    num_losses: LossSpec,
    state_type: type[UPGradState] | type[DualProjState],
    core: Callable[..., tuple[jax.Array, jax.Array]],
    preference: ArrayLike | None,
    norm_eps: ArrayLike,
    reg_eps: ArrayLike,
    max_iter: int | None,
    wrt: Callable[[str, jax.Array], bool] | None,
    axis_name: str | tuple[str, ...] | None,
) -> _protocol.LossWeighting:
  k = LossStructure(num_losses).num_losses
  _checks.check_float("norm_eps", norm_eps, minimum=0.0)
  _checks.check_float("reg_eps", reg_eps, minimum=0.0)
  if max_iter is not None:
    max_iter = _checks.check_int("max_iter", max_iter, minimum=1)
  pref = None if preference is None else jnp.asarray(preference)
  if pref is not None and pref.shape != (k,):
    raise ValueError(f"`preference` must have shape ({k},), got {pref.shape}.")

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> Any:
    del key
    return state_type(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.full((k,), 1.0 / k, dtype) if pref is None
        else pref.astype(dtype),
        iterations=jnp.zeros((), jnp.int32),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def weights_fn(gram, losses, state):
    del losses
    w, iterations = core(gram, pref, norm_eps, reg_eps, max_iter)
    return w, state._replace(iterations=iterations)

  def diagnostics_fn(state: Any) -> dict[str, jax.Array]:
    return {"iterations": state.iterations}

  return gramian_rule(
      num_losses, init_fn, weights_fn, wrt=wrt, axis_name=axis_name,
      diagnostics_fn=diagnostics_fn,
  )


def upgrad(
    num_losses: LossSpec,
    *,
    preference: ArrayLike | None = None,
    norm_eps: ArrayLike = NORM_EPS,
    reg_eps: ArrayLike = REG_EPS,
    max_iter: int | None = None,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""UPGrad (Quinton & Rey, 2024): each gradient projected onto the dual cone.

  .. math::
    \hat G = \frac{G}{\operatorname{tr} G} + \epsilon_r I, \qquad
    w = \sum_i \operatorname*{argmin}_{v \ge p_i e_i} v^\top \hat G v

  ``J^T v_i`` is ``p_i g_i`` projected onto the dual cone of the gradients
  (the directions that conflict with none), and ``d = J^T w`` their sum:
  non-conflicting (``G w >= 0``) for the exact rule. torchjd's defaults:
  ``G / tr G`` is 0 when ``tr G < norm_eps = 1e-4`` (absolute: then
  ``w = p``, the mean, whatever the conflicts) and ``reg_eps = 1e-4`` is
  added to the diagonal. The ridge is not negligible: against the exact
  rule (``norm_eps=0, reg_eps=0``) the direction moves by up to 13 % at
  ``K = 8`` and is not conflict-free (torchjd's own output has cosines down
  to -0.11 with some ``g_k``); the guarantee is ``G v_i / tr G >= -reg_eps
  v_i``. Each QP is solved exactly (Lawson-Hanson, :mod:`_qp`, where torchjd
  calls quadprog); the ``K`` of them run as one ``vmap``. ``w_k >= p_k``; the
  weights sum to ``>= 1`` with the default ``p = 1/K``.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    preference: ``[K]`` ``p`` (default ``1/K``), non-negative.
    norm_eps: trace threshold, ``>= 0`` (0 for the exact rule).
    reg_eps: ridge, ``>= 0`` (0 for the exact rule).
    max_iter: the QP's cap on linear solves (default ``5 K + 10``).
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is an :class:`UPGradState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.upgrad(2, norm_eps=0.0, reg_eps=0.0)   # the exact rule
    >>> gram = jnp.array([[1.0, -0.5], [-0.5, 1.0]])    # two conflicting units
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]   # each g_i/2 + g_j/4: G w = 3/8
    [0.75, 0.75]

  References:
    Quinton, Rey, *Jacobian Descent for Multi-Objective Optimization*,
    arXiv:2406.16232, 2024; torchjd ``aggregation/_upgrad.py``.
  """
  return _rule(
      num_losses, UPGradState, _upgrad, preference, norm_eps, reg_eps, max_iter,
      wrt, axis_name,
  )


def dualproj(
    num_losses: LossSpec,
    *,
    preference: ArrayLike | None = None,
    norm_eps: ArrayLike = NORM_EPS,
    reg_eps: ArrayLike = REG_EPS,
    max_iter: int | None = None,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""DualProj (torchjd): the mean gradient projected onto the dual cone.

  .. math::
    \hat G = \frac{G}{\operatorname{tr} G} + \epsilon_r I, \qquad
    w = \operatorname*{argmin}_{v \ge p} v^\top \hat G v

  ``d = J^T w`` is the projection of ``J^T p`` (the mean, with the default
  ``p = 1/K``) onto the cone of directions that conflict with no gradient.
  The same ``Ghat`` and defaults as :func:`upgrad` (``norm_eps = reg_eps =
  1e-4``, torchjd's; 0 and 0 for the exact rule, whose direction is
  conflict-free: ``G w >= 0``; with the ridge ``G w / tr G >= -reg_eps w``).
  One exact QP. ``w >= p``; the weights sum to ``>= 1`` with ``p = 1/K``.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    preference: ``[K]`` ``p`` (default ``1/K``), non-negative.
    norm_eps: trace threshold, ``>= 0`` (0 for the exact rule).
    reg_eps: ridge, ``>= 0`` (0 for the exact rule).
    max_iter: the QP's cap on linear solves (default ``5 K + 10``).
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`DualProjState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.dualproj(2, norm_eps=0.0, reg_eps=0.0)   # the exact rule
    >>> gram = jnp.array([[4.0, -1.8], [-1.8, 1.0]])
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]   # w_2 raised until g_2 . d = 0
    [0.5, 0.9]

  References:
    Quinton, Rey, *Jacobian Descent for Multi-Objective Optimization*,
    arXiv:2406.16232, 2024; torchjd ``aggregation/_dualproj.py``.
  """
  return _rule(
      num_losses, DualProjState, _dualproj, preference, norm_eps, reg_eps, max_iter,
      wrt, axis_name,
  )
