"""An exact, jittable solver of the small non-negative QPs of the aggregators.

UPGrad and DualProj project onto the dual cone of the gradients
(``min v^T H v`` over ``v >= u``) and the exact MGDA finds the min-norm point
of their convex hull (``min a^T G a`` over the simplex). Both are a
non-negative least-squares problem on ``K`` variables: this module solves
``min 1/2 x^T H x + q^T x`` over ``x >= 0`` by the primal active-set method of
Lawson and Hanson, in a ``lax.while_loop`` with an iteration cap, with masked
``K x K`` linear solves (the inactive rows and columns replaced by the
identity: no dynamic shapes) and no host callback. It is exact: the end point
is the solution of the KKT system on its free set, to rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


class QPResult(NamedTuple):
  """What :func:`nonneg_qp` returns.

  Attributes:
    x: ``[K]`` the minimiser, ``>= 0``.
    iterations: int32, linear solves made (one per loop pass).
    additions: int32, variables freed (Lawson-Hanson's outer iterations).
    converged: bool, the dual test passed before the cap.
  """

  x: jax.Array
  iterations: jax.Array
  additions: jax.Array
  converged: jax.Array


def default_max_iter(k: int) -> int:
  """The default cap on the loop passes of :func:`nonneg_qp`: ``5 K + 10``.

  Each pass is one masked linear solve; Lawson-Hanson frees one variable per
  outer iteration and drops at least one per inner step, so a problem whose
  solution has ``m`` free variables takes ``m + 1`` passes when nothing is
  dropped. Measured (tests/test_aggregators_qp.py and random degenerate
  Gramians: zero rows, antiparallel pairs, ``K > n``): at most 13 passes at
  ``K = 8`` and 25 at ``K = 16`` (the min-norm form), far below the cap,
  which only bounds the loop (it returns its last feasible point there).
  """
  return 5 * k + 10


def nonneg_qp(
    hessian: ArrayLike,
    linear: ArrayLike,
    *,
    max_iter: int | None = None,
    tol: ArrayLike | None = None,
) -> QPResult:
  r"""Exact ``argmin_{x >= 0} 1/2 x^T H x + q^T x`` by Lawson-Hanson's active set.

  .. math::
    \min_{x \ge 0}\ \tfrac12 x^\top H x + q^\top x, \qquad
    \text{KKT: } x \ge 0,\ \ H x + q \ge 0,\ \ x_i (H x + q)_i = 0

  ``H`` symmetric positive semi-definite (a Gramian), ``K`` small. Start
  from ``x = 0`` with every variable bound; each pass solves the
  equality-constrained problem on the free set ``P`` (``H_PP z_P = -q_P``,
  as one ``K x K`` solve with the bound rows and columns set to the
  identity). If ``z_P > 0`` the pass takes ``x = z`` and frees the bound
  variable of the most negative gradient ``(H x + q)_j`` (stop when none is
  below ``-tol`` minus its rounding bound ``16 eps (|H| |x| + |q|)_j``);
  otherwise it steps from ``x`` toward ``z`` until the first free variable
  reaches 0 and binds it. A variable bound again at once (its solve gives
  ``z_j <= 0`` with no step: its gradient was at the rounding level) stays
  bound until the objective decreases, so rounding cannot make the loop
  cycle. With ``H = A^T A`` the free columns of ``A`` stay independent (a
  column enters only with a positive dual), so a singular ``H`` is fine.
  ``H`` and ``q`` are first divided by ``max(max diag H, max |q|)`` (the
  minimiser does not change). A non-finite solve stops the loop at the last
  feasible point (``converged`` is then false).

  Args:
    hessian: ``[K, K]`` ``H``, positive semi-definite.
    linear: ``[K]`` ``q``.
    max_iter: cap on the passes (static; default :func:`default_max_iter`).
    tol: dual tolerance on the scaled problem, on top of the rounding bound
      (default 0: exact to rounding).

  Returns:
    A :class:`QPResult`: ``x`` and the loop's counters.

  Example:
    >>> import jax.numpy as jnp
    >>> from softadapt_jax._qp import nonneg_qp
    >>> h = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    >>> res = nonneg_qp(h, jnp.array([-1.0, 1.0]))   # x_2 binds at 0
    >>> res.x.tolist(), int(res.additions)
    ([0.5, 0.0], 1)

  References:
    Lawson, Hanson, *Solving Least Squares Problems*, Prentice-Hall 1974,
    ch. 23 (algorithm NNLS).
  """
  h = jnp.asarray(hessian)
  q = jnp.asarray(linear)
  dtype = jnp.result_type(h, q, jnp.float32)
  h = h.astype(dtype)
  q = q.astype(dtype)
  k = q.shape[0]
  cap = default_max_iter(k) if max_iter is None else max_iter
  scale = jnp.maximum(jnp.max(jnp.diag(h)), jnp.max(jnp.abs(q)))
  ok = scale > 0
  scale = jnp.where(ok, scale, 1.0)
  h = h / scale
  q = q / scale
  tol = jnp.asarray(0.0 if tol is None else tol, dtype)
  eps = jnp.finfo(dtype).eps
  eye = jnp.eye(k, dtype=dtype)

  def solve(free: jax.Array) -> jax.Array:
    both = free[:, None] & free[None, :]
    z = jnp.linalg.solve(jnp.where(both, h, eye), jnp.where(free, -q, 0.0))
    return jnp.where(free, z, 0.0)

  class Carry(NamedTuple):
    x: jax.Array
    free: jax.Array
    iterations: jax.Array
    additions: jax.Array
    done: jax.Array
    converged: jax.Array
    blocked: jax.Array
    last: jax.Array

  def cond(c: Carry) -> jax.Array:
    return ~c.done & (c.iterations < cap)

  def body(c: Carry) -> Carry:
    z = solve(c.free)
    finite = jnp.all(jnp.isfinite(z))
    feasible = jnp.all(jnp.where(c.free, z > 0, True))
    # Feasible: accept z, then free the most violated bound variable. A
    # variable freed and at once bound again (its dual was at the rounding
    # level: z_j <= 0, no step) is blocked until the objective decreases.
    progress = (c.last >= 0) & c.free[jnp.maximum(c.last, 0)]
    blocked = c.blocked & ~progress
    # The gradient's own rounding: a violation below it is noise.
    noise = 16 * eps * (jnp.abs(h) @ jnp.abs(z) + jnp.abs(q))
    dual = -(h @ z + q) - noise
    cand = jnp.where(c.free | blocked, -jnp.inf, dual)
    j = jnp.argmax(cand)
    optimal = cand[j] <= tol
    free_a = c.free.at[j].set(c.free[j] | ~optimal)
    # Infeasible: step toward z until the first free variable hits zero.
    bad = c.free & (z <= 0)
    den = c.x - z
    good = bad & (den > 0)
    ratio = jnp.where(good, c.x / jnp.where(good, den, 1.0), jnp.inf)
    alpha = jnp.minimum(jnp.min(ratio), 1.0)
    x_b = c.x + alpha * (z - c.x)
    hit = jnp.argmin(ratio)
    drop = c.free & ((x_b <= 0) | (jnp.arange(k) == hit) & bad)
    x_b = jnp.where(drop, 0.0, x_b)
    free_b = c.free & ~drop
    blocked_b = jnp.where(alpha > 0, False, c.blocked | (drop & (c.x <= 0)))
    x = jnp.where(feasible, z, x_b)
    free = jnp.where(feasible, free_a, free_b)
    stop = (feasible & optimal) | ~finite
    return Carry(
        x=jnp.where(finite, x, c.x),
        free=jnp.where(finite, free, c.free),
        iterations=c.iterations + 1,
        additions=c.additions + (feasible & ~optimal & finite).astype(jnp.int32),
        done=stop,
        converged=feasible & optimal & finite,
        blocked=jnp.where(feasible, blocked, blocked_b),
        last=jnp.where(feasible, jnp.where(optimal, -1, j), c.last).astype(
            jnp.int32
        ),
    )

  zero = jnp.zeros((), jnp.int32)
  init = Carry(
      x=jnp.zeros((k,), dtype),
      free=jnp.zeros((k,), bool),
      iterations=zero,
      additions=zero,
      done=jnp.bool_(False),
      converged=jnp.bool_(False),
      blocked=jnp.zeros((k,), bool),
      last=jnp.full((), -1, jnp.int32),
  )
  out = jax.lax.while_loop(cond, body, init)
  return QPResult(out.x, out.iterations, out.additions, out.converged)


def min_norm_simplex(gram: ArrayLike, *, max_iter: int | None = None) -> QPResult:
  r"""Exact ``argmin_{a in simplex} a^T G a`` through one :func:`nonneg_qp`.

  .. math::
    y^\star = \operatorname*{argmin}_{y \ge 0}\ \|J^\top y\|^2
      + (\mathbf 1^\top y - 1)^2, \qquad a^\star = y^\star / \mathbf 1^\top y^\star

  (on the rows of ``J`` scaled by ``1/sqrt(max diag G)``): along a ray
  ``y = t a`` the objective is ``t^2 a^T G a + (t - 1)^2``, so the best ray
  is the min-norm ``a`` and ``t = 1 / (1 + a^T G a) > 0``. The min-norm point
  of the convex hull is an NNLS with ``H = G + 1 1^T``, ``q = -1``.

  Args:
    gram: ``[K, K]`` the Gramian.
    max_iter: cap on the passes (default :func:`default_max_iter`).

  Returns:
    A :class:`QPResult` whose ``x`` is ``a`` (``>= 0``, sum 1).

  Example:
    >>> import jax.numpy as jnp
    >>> from softadapt_jax._qp import min_norm_simplex
    >>> gram = jnp.array([[1.0, -0.5], [-0.5, 4.0]])
    >>> [round(v, 4) for v in min_norm_simplex(gram).x.tolist()]
    [0.75, 0.25]

  References:
    Lawson, Hanson, *Solving Least Squares Problems*, 1974, ch. 23 (least
    distance programming through NNLS).
  """
  g = jnp.asarray(gram)
  g = g.astype(jnp.result_type(g, jnp.float32))
  k = g.shape[0]
  top = jnp.max(jnp.diag(g))
  g = g / jnp.where(top > 0, top, 1.0)
  res = nonneg_qp(
      g + jnp.ones((k, k), g.dtype), -jnp.ones((k,), g.dtype), max_iter=max_iter
  )
  total = jnp.sum(res.x)
  a = jnp.where(total > 0, res.x / jnp.where(total > 0, total, 1.0), 1.0 / k)
  return res._replace(x=a)
