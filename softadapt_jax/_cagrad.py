"""CAGrad: the best worst-case improvement within a ball around the mean gradient."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypedDict

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._aggregation import gramian_rule, safe_divide
from softadapt_jax._structure import LossSpec, LossStructure

# The official code's rescalings of the direction: 0 none, 1 by 1 + alpha^2
# (nyuv2 and LibMTL's default), 2 by 1 + alpha.
RESCALES = (0, 1, 2)
# Iteration budget of the simplex solver: K drops (one per blocked Newton
# step) and K additions at most on a typical path, a few Newton steps per
# face. Measured: <= 27 iterations at K = 16 over 400 random problems.
_ITERS_PER_LOSS = 4
_ITERS_BASE = 20


class CAGradConvention(TypedDict):
  """The settings of :func:`cagrad` of one reference."""

  rescale: int
  epsilon: float
  norm_eps: float


CAGRAD_CONVENTIONS: Mapping[str, CAGradConvention] = types.MappingProxyType({
    # Cranial-XIX/CAGrad nyuv2/utils.py l.377-401 (alpha 0.5, rescale 1): the
    # 1e-8 terms in c, in the objective's sqrt and in lambda; d / (1 + a^2).
    "official": CAGradConvention(rescale=1, epsilon=1e-8, norm_eps=0.0),
    # LibMTL weighting/CAGrad.py l.37-64, config.py (calpha 0.5, rescale 1):
    # the official form for any K.
    "libmtl": CAGradConvention(rescale=1, epsilon=1e-8, norm_eps=0.0),
    # torchjd aggregation/_cagrad.py l.48-71: no epsilon, no rescale; the
    # weights are 0 where tr G < 1e-4 or ||g_w|| / sqrt(tr G) < 1e-4.
    "torchjd": CAGradConvention(rescale=0, epsilon=0.0, norm_eps=1e-4),
})


class CAGradState(NamedTuple):
  """State of :func:`cagrad`.

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


def _check_rescale(rescale: object) -> None:
  if isinstance(rescale, bool) or rescale not in RESCALES:
    raise ValueError(
        f"`rescale` must be one of 0 (none), 1 (1 + alpha^2) or 2 (1 + alpha); "
        f"got {rescale!r}."
    )


def default_max_iters(num_losses: int) -> int:
  """The iteration budget of :func:`simplex_newton` for ``K`` losses."""
  return _ITERS_PER_LOSS * num_losses + _ITERS_BASE


def simplex_newton(
    fgh: Callable[[jax.Array], tuple[jax.Array, jax.Array, jax.Array]],
    x0: jax.Array,
    max_iters: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""``argmin f`` over the simplex by Newton steps on the active face.

  A primal active-set method in a capped ``lax.while_loop``: on the free
  face ``F`` (``x_i = 0`` off it, ``sum x = 1``) a Newton step solves the
  ``(K+1) x (K+1)`` KKT system with the Hessian damped by
  ``delta = ||P grad|| + 100 eps scale`` (a Levenberg term that vanishes at
  a face optimum, keeps the system regular where ``f`` is flat or linear,
  e.g. dependent gradients, and turns a linear direction into a step to the
  boundary); a ratio test caps the step at the boundary and an Armijo search
  over ``2^-j`` (all candidates evaluated at once) shortens it; a blocked
  step drops its coordinate from ``F``. When the face is solved (the step
  below ``10 K eps``) the coordinate with the most negative reduced gradient
  ``grad_i - x^T grad`` (below ``-100 K eps max|grad|``) enters ``F``; if
  none does, the KKT conditions hold and the loop stops.

  Args:
    fgh: ``x -> (f, grad, hessian)``, convex on the simplex.
    x0: ``[K]`` a point of the simplex; its support is the first face.
    max_iters: the iteration cap (static).

  Returns:
    ``(x, iterations, converged)``.
  """
  k = x0.shape[0]
  dtype = x0.dtype
  eps = jnp.finfo(dtype).eps
  tiny = jnp.finfo(dtype).tiny
  line_steps = 52 if dtype == jnp.float64 else 24
  halvings = 0.5 ** jnp.arange(line_steps, dtype=dtype)
  index = jnp.arange(k)

  def body(carry):
    x, free, it, _ = carry
    f, g, h = fgh(x)
    fm = free.astype(dtype)
    n_free = jnp.maximum(jnp.sum(fm), 1.0)
    scale = jnp.max(jnp.abs(jnp.diag(h)) * fm) + jnp.max(jnp.abs(g)) + tiny
    gp = g * fm
    gp = gp - fm * jnp.sum(gp) / n_free
    delta = jnp.linalg.norm(gp) + 100 * eps * scale
    hm = h * fm[:, None] * fm[None, :] + jnp.diag(jnp.where(free, delta, 1.0))
    kkt = jnp.block([[hm, fm[:, None]], [fm[None, :], jnp.zeros((1, 1), dtype)]])
    rhs = jnp.concatenate([-g * fm, jnp.zeros((1,), dtype)])
    p = jnp.linalg.solve(kkt, rhs)[:k] * fm
    p = p - fm * jnp.sum(p) / n_free
    p = jnp.where(jnp.all(jnp.isfinite(p)), p, 0.0)
    dec = -jnp.dot(g, p)
    face_done = (jnp.max(jnp.abs(p)) <= 10 * k * eps) | (dec <= 0)
    # The coordinate that would lower f most if it entered the face.
    reduced = jnp.where(free, jnp.inf, g - jnp.dot(g, x))
    j = jnp.argmin(reduced)
    violated = reduced[j] < -100 * k * eps * (jnp.max(jnp.abs(g)) + tiny)
    # Ratio test, then an Armijo search below the boundary.
    neg = free & (p < 0)
    ratios = jnp.where(neg, x / jnp.where(neg, -p, 1.0), jnp.inf)
    b = jnp.argmin(ratios)
    alpha_max = jnp.minimum(1.0, ratios[b])
    steps = alpha_max * halvings
    values = jax.vmap(lambda y: fgh(y)[0])(x[None, :] + steps[:, None] * p)
    # Armijo; near the optimum (a decrement at rounding level) the full step.
    ok = (values <= f - 1e-4 * steps * dec) | (
        (jnp.arange(line_steps) == 0) & (dec <= 1e3 * eps * jnp.abs(f))
    )
    ok = ok & jnp.isfinite(values)
    moved = ~face_done & jnp.any(ok)
    first = jnp.argmax(ok)
    blocked = moved & (first == 0) & (ratios[b] <= 1.0)
    x_new = x + steps[first] * p
    x_new = jnp.where(blocked & (index == b), 0.0, x_new)
    x_new = jnp.maximum(x_new, 0.0) * fm
    x_new = x_new / jnp.sum(x_new)
    settled = ~moved  # the face is solved, or no step lowers f
    enter = settled & violated
    x_out = jnp.where(moved, x_new, x)
    free_out = jnp.where(
        moved, free & ~(blocked & (index == b)), free | (enter & (index == j))
    )
    return x_out, free_out, it + 1, settled & ~violated

  def cond(carry):
    return (carry[2] < max_iters) & ~carry[3]

  x, _, it, done = jax.lax.while_loop(
      cond, body, (x0, x0 > 0, jnp.zeros((), jnp.int32), jnp.bool_(False))
  )
  return x, it, done


def cagrad_solve(
    gram: jax.Array,
    alpha: ArrayLike,
    epsilon: ArrayLike,
    max_iters: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  r"""CAGrad's sub-problem on the Gramian: ``x``, ``c``, ``||g_w||``, budget.

  ``x = argmin_{simplex} x^T G b + c sqrt(x^T G x + eps)`` with
  ``c = alpha sqrt(mean G + eps) + eps``, solved on ``G / tr G`` (the same
  problem, scale-free) by :func:`simplex_newton` from ``x = b``.

  Returns:
    ``(x, c, ||g_w||, iterations, converged)`` with ``||g_w|| = sqrt(x^T G x)``.
  """
  gram = jax.lax.stop_gradient(jnp.asarray(gram))
  k = gram.shape[0]
  dtype = gram.dtype
  max_iters = default_max_iters(k) if max_iters is None else max_iters
  alpha = jnp.asarray(alpha, dtype)
  eps = jnp.asarray(epsilon, dtype)
  b = jnp.full((k,), 1.0 / k, dtype)
  tr = jnp.trace(gram)
  positive = tr > 0
  s = jnp.where(positive, tr, 1.0)
  a = jnp.where(positive, gram / s, jnp.zeros_like(gram))
  c = alpha * jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0) + eps) + eps
  kappa = c / jnp.sqrt(s)
  eps_q = eps / s
  v = a @ b
  floor = jnp.finfo(dtype).eps ** 2

  def fgh(x):
    ax = a @ x
    q = jnp.sqrt(jnp.maximum(jnp.dot(x, ax) + eps_q, floor))
    return (
        jnp.dot(v, x) + kappa * q,
        v + kappa * ax / q,
        (kappa / q) * (a - jnp.outer(ax, ax) / q**2),
    )

  x, iterations, converged = simplex_newton(fgh, b, max_iters)
  gw = jnp.sqrt(jnp.maximum(x @ gram @ x, 0.0))
  return x, c, gw, iterations, converged


def cagrad_weights(
    gram: jax.Array,
    alpha: ArrayLike = 0.5,
    *,
    rescale: int = 1,
    epsilon: ArrayLike = 1e-8,
    norm_eps: ArrayLike = 0.0,
    max_iters: int | None = None,
) -> jax.Array:
  r"""CAGrad's weights from the Gramian.

  .. math::
    x = \operatorname*{argmin}_{x \in \Delta} x^\top G b
        + c \sqrt{x^\top G x + \epsilon}, \quad
    c = \alpha \sqrt{\bar G + \epsilon} + \epsilon, \quad
    w = \frac{1}{r}\Big(b + \frac{c}{\|g_w\| + \epsilon}\, x\Big)

  with ``b = 1/K``, ``\bar G`` the mean entry of ``G`` (``||g_0||^2``,
  ``g_0`` the mean gradient), ``||g_w|| = sqrt(x^T G x)`` and ``r`` 1,
  ``1 + alpha^2`` or ``1 + alpha`` (``rescale`` 0, 1, 2), so that
  ``d = J^T w = (g_0 + c g_w / ||g_w||) / r``. With ``norm_eps > 0`` the
  weights are 0 where ``tr G < norm_eps`` or
  ``||g_w|| < norm_eps sqrt(tr G)`` (torchjd, on the trace-normalised
  Gramian). ``CAGRAD_CONVENTIONS`` holds the references' settings. Where
  ``||g_w|| + eps = 0`` (0 in the hull and no epsilon) the weights are ``b/r``.

  Args:
    gram: ``[K, K]`` the Gramian.
    alpha: the radius ``alpha >= 0`` (0.5: the official and LibMTL default).
    rescale: 0, 1 or 2 (static).
    epsilon: the official code's ``1e-8`` terms (0: the exact rule).
    norm_eps: torchjd's thresholds on the trace-normalised Gramian.
    max_iters: the solver's cap (default ``4 K + 20``; static).

  Returns:
    ``[K]`` the weights.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> gram = jnp.array([[1.0, -0.6], [-0.6, 1.0]])   # two units, cos -0.6
    >>> w = sa.cagrad_weights(gram, 0.5, rescale=0, epsilon=0.0)
    >>> [round(v, 4) for v in w.tolist()]   # symmetric: x = b, w = (1 + alpha) b
    [0.75, 0.75]
  """
  _check_rescale(rescale)
  gram = jax.lax.stop_gradient(jnp.asarray(gram))
  k = gram.shape[0]
  dtype = gram.dtype
  alpha = jnp.asarray(alpha, dtype)
  eps = jnp.asarray(epsilon, dtype)
  x, c, gw, _, _ = cagrad_solve(gram, alpha, eps, max_iters)
  lam = safe_divide(c, gw + eps)
  r = {0: jnp.ones((), dtype), 1: 1 + alpha**2, 2: 1 + alpha}[rescale]
  w = (jnp.full((k,), 1.0 / k, dtype) + lam * x) / r
  tr = jnp.trace(gram)
  threshold = jnp.asarray(norm_eps, dtype)
  keep = (tr >= threshold) & (gw >= threshold * jnp.sqrt(jnp.maximum(tr, 0.0)))
  return jnp.where(keep, w, jnp.zeros_like(w))


def cagrad(
    num_losses: LossSpec,
    *,
    alpha: ArrayLike = 0.5,
    rescale: int = 1,
    epsilon: ArrayLike = 1e-8,
    norm_eps: ArrayLike = 0.0,
    max_iters: int | None = None,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""CAGrad (Liu et al., NeurIPS 2021): conflict-averse gradient descent.

  .. math::
    \max_d \min_k g_k^\top d \ \text{ s.t. } \ \|d - g_0\| \le c\,\|g_0\|
    \quad\Longrightarrow\quad
    d = \frac{1}{r}\Big(g_0 + \frac{c}{\|g_w\|}\, g_w\Big), \quad g_w = J^\top x

  The direction that most improves the worst loss within a ball of radius
  ``c = alpha ||g_0||`` around the mean gradient ``g_0``; ``x`` solves the
  dual on the simplex, a small convex problem solved in the graph by an
  active-set Newton method (:func:`cagrad_weights`; measured against the
  exact solve: ``<= 1e-13`` at float64 on well-posed problems; SciPy's
  SLSQP in the official code stops at ``ftol = 1e-6`` and torchjd's CLARABEL
  ``2e-4`` from the optimum). ``CAGRAD_CONVENTIONS``: the official code and
  LibMTL (``1e-8`` terms, ``r = 1 + alpha^2``: the default here) and torchjd
  (no epsilon, ``r = 1``, weights 0 below its thresholds). The weights sum
  to ``(1 + c / (||g_w|| + eps)) / r`` (or 0).

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    alpha: the radius, ``>= 0`` (traced allowed).
    rescale: 0 (none), 1 (``1 + alpha^2``) or 2 (``1 + alpha``).
    epsilon: the official ``1e-8`` terms, ``>= 0``.
    norm_eps: torchjd's thresholds, ``>= 0`` (0: none).
    max_iters: the solver's iteration cap (default ``4 K + 20``).
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`CAGradState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.cagrad(2, **sa.CAGRAD_CONVENTIONS["torchjd"])
    >>> gram = jnp.array([[4.0, 0.0], [0.0, 1.0]])   # orthogonal, norms 2, 1
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(v, 4) for v in w.tolist()]   # x = e_2: c = 0.559 goes to g_2
    [0.5, 1.059]

  References:
    Liu, Liu, Jin, Stone, Liu, *Conflict-Averse Gradient Descent for
    Multi-task Learning*, NeurIPS 2021; code ``Cranial-XIX/CAGrad``;
    LibMTL; torchjd.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_float("alpha", alpha, minimum=0.0)
  _checks.check_float("epsilon", epsilon, minimum=0.0)
  _checks.check_float("norm_eps", norm_eps, minimum=0.0)
  _check_rescale(rescale)
  if max_iters is not None:
    max_iters = _checks.check_int("max_iters", max_iters, minimum=1)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> CAGradState:
    del key
    return CAGradState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.ones((k,), dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def weights_fn(gram, losses, state):
    del losses
    w = cagrad_weights(
        gram, alpha, rescale=rescale, epsilon=epsilon, norm_eps=norm_eps,
        max_iters=max_iters,
    )
    return w, state

  return gramian_rule(
      num_losses, init_fn, weights_fn, wrt=wrt, axis_name=axis_name
  )
