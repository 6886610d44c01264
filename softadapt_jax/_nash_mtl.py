"""Nash-MTL: the Nash bargaining solution ``G a = 1/a`` by sequential convex steps."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypedDict

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._aggregation import gramian_rule, safe_divide
from softadapt_jax._cagrad import default_max_iters, simplex_newton
from softadapt_jax._structure import LossSpec, LossStructure

# The references' stops (torchjd _nash_mtl.py, LibMTL Nash_MTL.py).
_STATIONARY_TOL = 1e-3
_STEP_TOL = 1e-6
# Iteration budgets of the in-graph solver of one convex step. Measured over
# the golden cases and 300 random ones (K = 2..16), per convex step: <= 54
# KKT Newton steps (all active-set rounds together); the barrier ran on 54 of
# about 1,000 steps (the first step of a call whose all-active guess fails),
# <= 223 steps. A solve that hits a cap fails like one with no solution.
NEWTON_ITERS = 30  # Newton steps on the KKT system of one active set
BARRIER_ITERS = 400  # Newton steps of the barrier method, all stages
BARRIER_STAGE_ITERS = 50  # Newton steps per barrier stage (as the oracle)
BARRIER_GROWTH = 8.0


class NashMTLConvention(TypedDict):
  """The settings of :func:`nash_mtl` of one reference."""

  max_norm: float
  clip_epsilon: float


NASH_MTL_CONVENTIONS: Mapping[str, NashMTLConvention] = types.MappingProxyType({
    # torchjd aggregation/_nash_mtl.py l.190-194: a <- a m / ||J^T a|| when
    # ||J^T a|| > m.
    "torchjd": NashMTLConvention(max_norm=1.0, clip_epsilon=0.0),
    # LibMTL weighting/Nash_MTL.py l.126-130: clip_grad_norm_ on the combined
    # gradient, factor min(1, m / (||J^T a|| + 1e-6)).
    "libmtl": NashMTLConvention(max_norm=1.0, clip_epsilon=1e-6),
})


class NashMTLState(NamedTuple):
  """State of :func:`nash_mtl`.

  Attributes:
    count: int32 scalar, steps recorded (saturating).
    clock: int32 scalar, calls: the references' ``step`` (drives
      ``update_weights_every``).
    weights: ``[K]`` the weights of the last update (``alpha``, clipped).
    alpha: ``[K]`` the bargaining solution before clipping, the warm start
      of the next update (the references' ``prvs_alpha``; ones at first).
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  alpha: jax.Array
  num_skipped: jax.Array


class NashInfo(NamedTuple):
  """What one :func:`nash_mtl_solve` did (for tests and budgets).

  Attributes:
    steps: int32, convex steps taken (the references' loop counter).
    stop: int32, why the loop stopped: 0 ``optim_niter`` reached, 1 the
      convex step had no solution (infeasible or unbounded), 2 stationary,
      3 small step.
    newton: int32, Newton steps on the KKT systems, all steps together.
    barrier: int32, barrier Newton steps, all steps together.
    feasible: bool, whether a strictly feasible point exists (0 is not in
      the convex hull of the gradients).
  """

  steps: jax.Array
  stop: jax.Array
  newton: jax.Array
  barrier: jax.Array
  feasible: jax.Array


def _logs(gn: jax.Array, a: jax.Array):
  """``G a``, ``h = log a + log (G a)`` and whether ``a > 0, G a > 0``."""
  g = gn @ a
  domain = jnp.all(a > 0) & jnp.all(g > 0)
  h = jnp.log(jnp.where(a > 0, a, 1.0)) + jnp.log(jnp.where(g > 0, g, 1.0))
  return g, h, domain


def _kkt_newton(gn, cvec, a, active, mu):
  """Newton on the KKT system of ``min c.a s.t. h_k(a) = 0`` (``k`` active).

  Unknowns ``a`` and the multipliers ``mu`` (0 off the active set):
  ``c = sum_k mu_k grad h_k(a)``, ``h_k(a) = 0``; each step is kept inside
  ``a > 0, G a > 0`` by halving. Converged when a full step moves ``a`` by
  at most ``sqrt(eps)`` relative (the next error is at rounding level) and
  the residuals are below ``sqrt(eps)`` relative.
  """
  k = gn.shape[0]
  dtype = gn.dtype
  eps = jnp.finfo(dtype).eps
  tol = jnp.sqrt(eps)
  am = active.astype(dtype)
  halvings = 0.5 ** jnp.arange(30, dtype=dtype)

  def residual(a, mu):
    g, h, _ = _logs(gn, a)
    dh = jnp.diag(1.0 / a) + gn / g[:, None]  # row k: grad h_k
    return g, h, dh, cvec - dh.T @ (mu * am)

  def body(carry):
    a, mu, it, _, _ = carry
    g, h, dh, r1 = residual(a, mu)
    w = jnp.diag(mu * am / a**2) + (gn.T * (mu * am / g**2)) @ gn
    jac = jnp.concatenate([
        jnp.concatenate([w, -(dh * am[:, None]).T], axis=1),
        jnp.concatenate([dh * am[:, None], jnp.diag(1.0 - am)], axis=1),
    ])
    step = -jnp.linalg.solve(jac, jnp.concatenate([r1, jnp.where(active, h, mu)]))
    da, dmu = step[:k], step[k:]
    cand = a[None, :] + halvings[:, None] * da[None, :]
    inside = jnp.all(cand > 0, 1) & jnp.all(cand @ gn.T > 0, 1)
    s = jnp.where(jnp.any(inside), halvings[jnp.argmax(inside)], 0.0)
    a_new, mu_new = a + s * da, mu + s * dmu
    small = (jnp.max(jnp.abs(da)) <= tol * jnp.max(jnp.abs(a))) & (s == 1)
    bad = (
        ~jnp.all(jnp.isfinite(step)) | (s == 0)
        | (jnp.max(jnp.abs(a_new)) > 1e15)
    )
    return (
        jnp.where(bad, a, a_new), jnp.where(bad, mu, mu_new), it + 1,
        small | bad, small & ~bad,
    )

  def cond(carry):
    return (carry[2] < NEWTON_ITERS) & ~carry[3]

  a, mu, it, _, converged = jax.lax.while_loop(
      cond, body, (a, mu, jnp.zeros((), jnp.int32), jnp.bool_(False),
                   jnp.bool_(False))
  )
  _, h, dh, r1 = residual(a, mu)
  _, _, domain = _logs(gn, a)
  scale = jnp.max(jnp.abs(cvec)) + jnp.max(jnp.abs(dh.T @ jnp.abs(mu * am)))
  converged = (
      converged & domain & jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(mu))
      & (jnp.max(jnp.abs(r1)) <= tol * scale)
      & jnp.all(jnp.where(active, jnp.abs(h) <= tol, True))
  )
  return a, mu, converged, h, it


def _active_set(gn, cvec, a, active, mu):
  """The convex step from a warm start: KKT Newton, active-set changes.

  Solves the KKT system of the active set; drops the constraint with the
  most negative multiplier, or adds the most violated one, and solves again
  (at most ``K + 2`` times). Returns ``(a, active, mu, ok, newton steps)``;
  ``ok``: the KKT conditions hold (so, the problem being convex, ``a`` is
  its solution).
  """
  k = gn.shape[0]
  tol = jnp.sqrt(jnp.finfo(gn.dtype).eps)
  index = jnp.arange(k)

  def body(carry):
    a, active, mu, rounds, _, _, steps = carry
    a1, mu1, converged, h, it = _kkt_newton(gn, cvec, a, active, mu)
    mu_scale = jnp.max(jnp.abs(jnp.where(active, mu1, 0.0)))
    mu_active = jnp.where(active, mu1, jnp.inf)
    h_inactive = jnp.where(active, jnp.inf, h)
    i, j = jnp.argmin(mu_active), jnp.argmin(h_inactive)
    drop = converged & (mu_active[i] < -tol * mu_scale)
    add = converged & ~drop & (h_inactive[j] < -tol)
    solved = converged & ~drop & ~add
    new_active = jnp.where(
        drop, active & (index != i), jnp.where(add, active | (index == j), active)
    )
    mu1 = jnp.where(drop & (index == i), 0.0, mu1)
    mu1 = jnp.where(add & (index == j), 1e-3 * mu_scale, mu1)
    return (
        jnp.where(converged, a1, a), new_active, mu1, rounds + 1,
        solved | ~converged, solved, steps + it,
    )

  def cond(carry):
    return (carry[3] < k + 2) & ~carry[4]

  a, active, mu, _, _, ok, steps = jax.lax.while_loop(
      cond, body, (a, active, mu, jnp.zeros((), jnp.int32), jnp.bool_(False),
                   jnp.bool_(False), jnp.zeros((), jnp.int32))
  )
  return a, active, mu, ok, steps


def _barrier(gn, cvec, a0):
  """The convex step by a log-barrier method from a strictly feasible ``a0``.

  ``min t c.a - sum_k log h_k(a)``, Newton with an Armijo search over
  ``2^-j`` (rounding slack), ``t`` times 8 per stage (at most 50 Newton
  steps a stage) until ``K / t <= gap |c.a|`` (``1e-9``; float32 ``1e-5``).
  A feasible point with ``c.a < 0`` certifies an unbounded problem (``2a``
  is feasible too): failure, as the references' solver reports. Returns
  ``(a, active, mu, ok, steps)`` with the active set ``h_k <= 1/sqrt(t)``
  and the dual estimate ``mu_k = 1 / (t h_k)`` for the KKT polish.
  """
  k = gn.shape[0]
  dtype = gn.dtype
  eps = jnp.finfo(dtype).eps
  double = dtype == jnp.float64
  halvings = 0.5 ** jnp.arange(45 if double else 24, dtype=dtype)
  centred_tol = 1e-10 if double else 1e-5
  gap = 1e-9 if double else 1e-5

  def value(a, t):
    g = a @ gn.T
    h = (jnp.log(jnp.where(a > 0, a, 1.0))
         + jnp.log(jnp.where(g > 0, g, 1.0)))
    inside = jnp.all(a > 0, -1) & jnp.all(g > 0, -1) & jnp.all(h > 0, -1)
    v = t * (a @ cvec) - jnp.sum(jnp.log(jnp.where(h > 0, h, 1.0)), -1)
    return jnp.where(inside, v, jnp.inf)

  def body(carry):
    a, t, it, _, _, stage_steps = carry
    g = gn @ a
    h = jnp.log(a) + jnp.log(g)
    dh = jnp.diag(1.0 / a) + gn / g[:, None]
    grad = t * cvec - jnp.sum(dh / h[:, None], axis=0)
    hess = (
        (dh.T / h**2) @ dh + jnp.diag((1.0 / h) / a**2)
        + (gn.T / (h * g**2)) @ gn
    )
    step = -jnp.linalg.solve(hess, grad)
    dec = -jnp.dot(grad, step)
    centred = ~(dec / 2 > centred_tol)  # also NaN or a rounding-negative dec
    f0 = value(a, t)
    cand = a[None, :] + halvings[:, None] * step[None, :]
    values = value(cand, t)
    slack = 100 * eps * (jnp.abs(f0) + t * jnp.abs(cvec) @ jnp.abs(a))
    accept = jnp.isfinite(values) & (values <= f0 - 0.25 * halvings * dec + slack)
    moved = ~centred & jnp.any(accept)
    a_new = jnp.where(moved, a + halvings[jnp.argmax(accept)] * step, a)
    stage_end = ~moved | (stage_steps + 1 >= BARRIER_STAGE_ITERS)
    reached = k / t <= gap * jnp.maximum(1.0, jnp.abs(jnp.dot(cvec, a_new)))
    unbounded = jnp.dot(cvec, a_new) < 0
    bad = (
        ~jnp.all(jnp.isfinite(a_new)) | (jnp.max(jnp.abs(a_new)) > 1e15)
        | unbounded
    )
    t_new = jnp.where(stage_end & ~reached, t * BARRIER_GROWTH, t)
    return (
        a_new, t_new, it + 1, (stage_end & reached) | bad, ~bad,
        jnp.where(stage_end, 0, stage_steps + 1),
    )

  def cond(carry):
    return (carry[2] < BARRIER_ITERS) & ~carry[3]

  t0 = k / jnp.maximum(jnp.abs(jnp.dot(cvec, a0)), 1.0)
  a, t, steps, done, ok, _ = jax.lax.while_loop(
      cond, body, (a0, t0, jnp.zeros((), jnp.int32), jnp.bool_(False),
                   jnp.bool_(True), jnp.zeros((), jnp.int32))
  )
  _, h, _ = _logs(gn, a)
  active = h <= 1.0 / jnp.sqrt(t)
  mu = jnp.where(active, 1.0 / (t * jnp.where(active, h, 1.0)), 0.0)
  return a, active, mu, ok & done, steps


def _convex_step(gn, cvec, warm, a0, solvable):
  """One convex step: the KKT Newton from ``warm``; where that fails, the
  barrier from ``a0`` then the KKT Newton from its end point (one copy of
  each solver in a loop of at most two rounds, to keep the graph small).
  Returns ``(a, active, mu, ok, newton steps, barrier steps)``."""
  zero = jnp.zeros((), jnp.int32)

  def body(carry):
    a, active, mu, rounds, _, _, newton, barrier, saved = carry
    a1, act1, mu1, ok1, n1 = _active_set(gn, cvec, a, active, mu)
    first = rounds == 0
    go_barrier = first & ~ok1 & solvable

    def run(_):
      return _barrier(gn, cvec, a0)

    def skip(_):
      return a, active, mu, jnp.bool_(False), zero

    a2, act2, mu2, ok2, n2 = jax.lax.cond(go_barrier, run, skip, None)
    # Second round: the polish failing (a degenerate active set) leaves the
    # barrier's own point, if the barrier converged.
    barrier_ok, a_b, act_b, mu_b = saved
    use_barrier = ~first & ~ok1 & barrier_ok
    out = (
        jnp.where(go_barrier, a2, jnp.where(use_barrier, a_b, a1)),
        jnp.where(go_barrier, act2, jnp.where(use_barrier, act_b, act1)),
        jnp.where(go_barrier, mu2, jnp.where(use_barrier, mu_b, mu1)),
    )
    ok = jnp.where(first, ok1, ok1 | barrier_ok) & solvable
    saved = (
        jnp.where(go_barrier, ok2, barrier_ok),
        jnp.where(go_barrier, a2, a_b), jnp.where(go_barrier, act2, act_b),
        jnp.where(go_barrier, mu2, mu_b),
    )
    return (*out, rounds + 1, ~(go_barrier & ok2), ok, newton + n1,
            barrier + n2, saved)

  def cond(carry):
    return ~carry[4]

  a, active, mu = warm
  saved = (jnp.bool_(False), a, active, mu)
  a, active, mu, _, _, ok, newton, barrier, _ = jax.lax.while_loop(
      cond, body,
      (a, active, mu, zero, jnp.bool_(False), jnp.bool_(False), zero, zero,
       saved),
  )
  return a, active, mu, ok, newton, barrier


def _strict_start(gn: jax.Array):
  """A strictly feasible point from the MGDA min-norm point, or none.

  ``x = argmin_{simplex} x^T G x`` (:func:`simplex_newton`); ``(G x)_k >=
  x^T G x = lam`` for every ``k``, so ``v = x + lam / (2 max|G 1|)`` has
  ``v > 0`` and ``G v > 0``, and scaling it gives ``min_k v_k (G v)_k = 2``.
  Feasible iff ``lam > max(1e-13, 30 eps) max diag G`` (the oracle's
  relative threshold at float64; 0 not in the hull, no zero gradient).
  """
  k = gn.shape[0]
  dtype = gn.dtype
  tr = jnp.trace(gn)
  a = gn / jnp.where(tr > 0, tr, 1.0)

  def fgh(x):
    ax = a @ x
    return 0.5 * jnp.dot(x, ax), ax, a

  x, _, _ = simplex_newton(
      fgh, jnp.full((k,), 1.0 / k, dtype), default_max_iters(k)
  )
  lam = x @ gn @ x
  v = x + 0.5 * lam / jnp.maximum(jnp.max(jnp.abs(gn @ jnp.ones_like(x))), 1e-30)
  prod = v * (gn @ v)
  eps = float(jnp.finfo(dtype).eps)
  feasible = (
      (lam > max(1e-13, 30 * eps) * jnp.max(jnp.diag(gn))) & jnp.all(prod > 0)
      & jnp.all(jnp.isfinite(prod))
  )
  a0 = v * jnp.sqrt(2.0 / jnp.min(jnp.where(feasible, prod, 1.0)))
  return jnp.where(feasible, a0, jnp.ones_like(a0)), feasible


def nash_mtl_solve(
    gram: jax.Array, alpha: jax.Array, optim_niter: int = 20
) -> tuple[jax.Array, NashInfo]:
  r"""The references' sequential convex steps, from the warm start ``alpha``.

  ``nf = ||G||_F``, ``Gn = G / nf``; up to ``optim_niter`` times from
  ``a_t`` (``alpha`` first): solve

  .. math::
    \min_a \ \mathbf 1^\top G_n a + \phi'(a_t)^\top (a - a_t) / n_f
    \ \text{ s.t. } \ a_k (G a)_k \ge 1, \qquad
    \phi'(a) = 1/a + G_n^\top (1 / G_n a)

  and stop, keeping ``a_t``, if it has no solution (0 in the hull of the
  gradients, a zero gradient, or unbounded), if
  ``||G_n a_t - 1/(a_t + 1e-10)|| < 1e-3`` or if
  ``||a_new - a_t|| < 1e-6``; else ``a_t = a_new``. Each convex step is
  solved in the graph (on ``\hat a = a \sqrt{n_f}``, where the constraint
  reads ``\hat a_k (G_n \hat a)_k \ge 1``): Newton on its KKT conditions
  from the previous step's solution and active set, with active-set changes;
  where that fails, a log-barrier method from a point built from the MGDA
  min-norm point, then the same KKT polish. Every loop is a capped
  ``lax.while_loop`` (budgets: ``NEWTON_ITERS``, ``BARRIER_ITERS``).

  Args:
    gram: ``[K, K]`` the Gramian.
    alpha: ``[K]`` the previous solution (ones at first).
    optim_niter: the cap on convex steps (an int; it only bounds a loop).

  Returns:
    ``(alpha, info)``: the new solution (unclipped) and a :class:`NashInfo`.
  """
  gram = jax.lax.stop_gradient(jnp.asarray(gram))
  alpha = jax.lax.stop_gradient(jnp.asarray(alpha)).astype(gram.dtype)
  k = gram.shape[0]
  dtype = gram.dtype
  nf = jnp.sqrt(jnp.sum(gram**2))
  nf_safe = jnp.where(nf > 0, nf, 1.0)
  gn = jnp.where(nf > 0, gram / nf_safe, jnp.zeros_like(gram))
  root = jnp.sqrt(nf_safe)
  a0, feasible = _strict_start(gn)
  # Warm start of the KKT Newton: the previous solution where it is inside
  # the domain (all constraints active at first), else the built point.
  prev = alpha * root
  inside = jnp.all(prev > 0) & jnp.all(gn @ prev > 0)
  start = jnp.where(inside, prev, a0)

  def body(carry):
    a_t, warm, warm_active, warm_mu, steps, _, _, newton, barrier = carry
    ga = gn @ a_t
    finite = jnp.all(a_t != 0) & jnp.all(ga != 0) & jnp.all(jnp.isfinite(a_t))
    ones = jnp.ones_like(a_t)
    phi = safe_divide(ones, a_t) + gn.T @ safe_divide(ones, ga)
    cvec = jnp.sum(gn, axis=0) + phi / nf_safe
    finite = finite & jnp.all(jnp.isfinite(cvec))
    cvec = jnp.where(finite, cvec, ones)
    a_hat, act, mu, ok, n_newton, n_barrier = _convex_step(
        gn, cvec, (warm, warm_active, warm_mu), a0, feasible & finite
    )
    ok = ok & finite & feasible
    a_new = a_hat / root
    stationary = jnp.linalg.norm(
        ga - safe_divide(ones, a_t + 1e-10)
    ) < _STATIONARY_TOL
    small = jnp.linalg.norm(a_new - a_t) < _STEP_TOL
    reason = jnp.where(
        ~ok, 1, jnp.where(stationary, 2, jnp.where(small, 3, 0))
    ).astype(jnp.int32)
    halt = reason > 0
    return (
        jnp.where(halt, a_t, a_new),
        jnp.where(ok, a_hat, warm), jnp.where(ok, act, warm_active),
        jnp.where(ok, mu, warm_mu), steps + 1, halt, reason,
        newton + n_newton, barrier + n_barrier,
    )

  def cond(carry):
    return (carry[4] < optim_niter) & ~carry[5]

  zero = jnp.zeros((), jnp.int32)
  a, *_, steps, _, stop, newton, barrier = jax.lax.while_loop(
      cond, body,
      (alpha, start, jnp.ones((k,), bool), jnp.zeros((k,), dtype), zero,
       jnp.bool_(False), zero, zero, zero),
  )
  return a, NashInfo(steps, stop, newton, barrier, feasible)


def nash_mtl_weights(
    gram: jax.Array,
    alpha: jax.Array,
    *,
    max_norm: ArrayLike = 1.0,
    clip_epsilon: ArrayLike = 0.0,
    optim_niter: int = 20,
) -> tuple[jax.Array, jax.Array]:
  r"""Nash-MTL's weights from the Gramian and the previous solution.

  .. math::
    a = \text{NashSolve}(G;\ \alpha), \qquad
    w = a \min\Big(1, \frac{m}{\|J^\top a\| + \epsilon}\Big), \quad
    \|J^\top a\| = \sqrt{a^\top G a}

  ``a`` from :func:`nash_mtl_solve` (where every constraint is active,
  ``a_k (G a)_k = 1``: the paper's ``G a = 1/a``); clipping only when
  ``m = max_norm > 0`` (torchjd: ``epsilon = 0``; LibMTL's
  ``clip_grad_norm_``: ``1e-6``).

  Args:
    gram: ``[K, K]`` the Gramian.
    alpha: ``[K]`` the previous solution (ones at first).
    max_norm: the norm cap on ``J^T w`` (0: no clipping).
    clip_epsilon: added to the norm in the clipping factor.
    optim_niter: the cap on convex steps (static).

  Returns:
    ``(weights, alpha)``: the clipped weights and the new solution.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> gram = jnp.array([[4.0, 0.0], [0.0, 1.0]])   # orthogonal, norms 2, 1
    >>> w, a = sa.nash_mtl_weights(gram, jnp.ones(2), max_norm=0.0)
    >>> [round(v, 4) for v in a.tolist()]   # a_k ||g_k||^2 a_k = 1
    [0.5, 1.0]
  """
  a, _ = nash_mtl_solve(gram, alpha, optim_niter)
  gram = jax.lax.stop_gradient(jnp.asarray(gram))
  m = jnp.asarray(max_norm, gram.dtype)
  norm = jnp.sqrt(jnp.maximum(a @ gram @ a, 0.0))
  factor = jnp.minimum(1.0, safe_divide(m, norm + jnp.asarray(clip_epsilon, m.dtype)))
  factor = jnp.where((m > 0) & (norm + clip_epsilon > 0), factor, 1.0)
  return a * factor, a


def nash_mtl(
    num_losses: LossSpec,
    *,
    max_norm: ArrayLike = 1.0,
    clip_epsilon: ArrayLike = 0.0,
    update_weights_every: int = 1,
    optim_niter: int = 20,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""Nash-MTL (Navon et al., ICML 2022): multi-task learning as a bargaining game.

  .. math::
    G a = 1 / a, \quad a > 0 \qquad (d = J^\top a)

  the Nash bargaining solution: the direction whose gain on each loss is
  the inverse of its weight (``g_k^T d = 1 / a_k``), computed as the
  references do, by up to ``optim_niter`` convex steps warm-started from
  the previous solution (:func:`nash_mtl_solve`; where a constraint stays
  inactive, the output has ``a_k (G a)_k > 1`` there, as in the references).
  Where 0 is in the hull of the gradients (or one is zero) the problem has
  no solution and the previous ``alpha`` is kept. The weights are then
  clipped so that ``||J^T w|| <= max_norm``. The weights are recomputed
  every ``update_weights_every`` calls (on the rule's clock) and held in
  between. ``NASH_MTL_CONVENTIONS``: torchjd and LibMTL (same solve, LibMTL
  clips with ``+ 1e-6``). No fixed sum.

  Measured at float64: the oracle's barrier solution to ``<= 3e-11`` on
  the golden cases (its own accuracy; exact KKT: ``1e-15``); torchjd's
  ECOS output to ``<= 2e-6`` on well-posed cases, ``2e-4`` at K5_n40,
  ``5e-2`` at K16_n40 (ECOS stops early there).

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    max_norm: the norm cap on ``J^T w``, ``>= 0`` (0: none; 1: both
      references' default).
    clip_epsilon: added to the norm in the clipping factor, ``>= 0``.
    update_weights_every: the cadence, in calls (static int >= 1). On the
      other calls the last weights are reused (the references re-clip them
      with the current Jacobian; here, without a Gramian, they are not).
    optim_niter: the cap on convex steps per update (static int >= 1).
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is a :class:`NashMTLState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.nash_mtl(2, max_norm=0.0)
    >>> gram = jnp.array([[1.0, 0.5], [0.5, 1.0]])   # units at 60 degrees
    >>> w, state = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(v, 4) for v in w.tolist()]   # G a = 1/a: a = 1/sqrt(1.5)
    [0.8165, 0.8165]

  References:
    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya,
    *Multi-Task Learning as a Bargaining Game*, ICML 2022; code
    ``AvivNavon/nash-mtl``; torchjd; LibMTL.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_float("max_norm", max_norm, minimum=0.0)
  _checks.check_float("clip_epsilon", clip_epsilon, minimum=0.0)
  every = _checks.check_int(
      "update_weights_every", update_weights_every, minimum=1
  )
  niter = _checks.check_int("optim_niter", optim_niter, minimum=1)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> NashMTLState:
    del key
    return NashMTLState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.ones((k,), dtype),
        alpha=jnp.ones((k,), dtype),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def cadence(clock: jax.Array) -> jax.Array:
    return clock % every == 0

  def weights_fn(gram, losses, state):
    del losses

    def solve(_):
      return nash_mtl_weights(
          gram, state.alpha, max_norm=max_norm, clip_epsilon=clip_epsilon,
          optim_niter=niter,
      )

    if every == 1:
      w, a = solve(None)
    else:
      # Off the cadence the kit discards the result: skip the solve (the
      # clock is unbatched, so this stays a branch under vmap).
      w, a = jax.lax.cond(
          cadence(state.clock), solve,
          lambda _: (state.weights.astype(gram.dtype), state.alpha.astype(gram.dtype)),
          None,
      )
    return w, state._replace(alpha=a.astype(state.alpha.dtype))

  return gramian_rule(
      num_losses, init_fn, weights_fn, wrt=wrt, axis_name=axis_name,
      cadence=None if every == 1 else cadence,
      diagnostics_fn=lambda state: {"alpha": state.alpha},
  )
