"""Float64 NumPy/SciPy reference transcriptions of the Gramian aggregators.

Test oracles for the rules of GRADIENT.md section D (MGDA, PCGrad, IMTL-G,
Aligned-MTL, UPGrad, DualProj, ConFIG, CAGrad, Nash-MTL). Each one is written
from the formulas of the reference code named in its docstring (facts only:
nothing here is copied), in float64, with one function per convention where
the references disagree.

Notation: ``J`` is the K x n matrix whose rows are the per-component
gradients g_k, ``G = J J^T`` its Gramian, and the update direction is
``d = J^T w``. Every ``*_weights`` function takes ``G`` only; the matching
function without the suffix takes ``J`` (and optionally the ``G`` to use, so
that a test can feed exactly the Gramian a peer saw) and returns an
:class:`Aggregation` ``(weights, direction, info)`` with
``direction == J.T @ weights``. Where a method has no fixed ``w`` (PCGrad's
``w`` depends on the permutation; ConFIG's K = 2 form is written on vectors)
the docstring says so.

Solvers: UPGrad, DualProj and the exact MGDA use :func:`nonneg_qp`, a
Lawson-Hanson style primal active-set method on the KKT system (a relative
1e-13 on the dual test; the final active set is re-solved with a direct linear
solve and the KKT conditions are checked to 1e-9 relative, else it raises).
The official CAGrad form calls SciPy's SLSQP with the reference's own default
tolerance (reproducing it, not the optimum); the torchjd CAGrad form solves
the same convex problem to rounding level (SLSQP at ftol 1e-15, then Newton
on the active face, KKT checked); Nash-MTL's convex sub-problems use a
log-barrier Newton method (duality gap 1e-12 relative).

Measured against tests/golden/aggregators.json (torchjd 0.18.0, conflictfree
0.1.8; max relative error over the well-posed cases): MGDA (Frank-Wolfe),
PCGrad, ConFIG: <= 3e-15; IMTL-G, Aligned-MTL, UPGrad, DualProj: <= 2e-12;
CAGrad: 3e-4 (torchjd's CLARABEL stops early; this module is the more exact
one); Nash-MTL: 5e-2 (torchjd's ECOS with max_iters=100 is only that
accurate, K = 16 "optimal_inaccurate"; infeasible cases are garbage there).
Ill-posed inputs (exactly antiparallel pairs for ConFIG, dependent rows for
LibMTL's IMTL-G form) give rounding noise in the peers; this module gives the
exact-arithmetic answer where one exists and says so.

Reference commits read: torchjd 0.18.0 (PyPI wheel; GitHub TorchJD/torchjd
46962c2 has the same formulas except Aligned-MTL's eps, see there),
conflictfree 0.1.8 (tum-pbs/ConFIG 9486243), isl-org/MultiObjectiveOptimization
bf5bbb3, median-research-group/LibMTL 4336804, Cranial-XIX/CAGrad dc3d481.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import numpy as np

F64_EPS = float(np.finfo(np.float64).eps)
F32_EPS = float(np.finfo(np.float32).eps)


class Aggregation(NamedTuple):
  """Weights ``w`` (or None where no fixed ``w`` exists), ``d = J^T w``, extras."""

  weights: np.ndarray | None
  direction: np.ndarray
  info: dict[str, Any]


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------


def as_jacobian(J) -> np.ndarray:
  J = np.asarray(J, dtype=np.float64)
  if J.ndim != 2:
    raise ValueError(f"J must be K x n, got shape {J.shape}")
  return J


def gramian(J) -> np.ndarray:
  """``G = J J^T`` in float64."""
  J = as_jacobian(J)
  return J @ J.T


def _gram(J: np.ndarray, G) -> np.ndarray:
  return gramian(J) if G is None else np.asarray(G, dtype=np.float64)


def _combine(J, G, weights_fn, *args, **kwargs) -> Aggregation:
  J = as_jacobian(J)
  w, info = weights_fn(_gram(J, G), *args, **kwargs, _with_info=True)
  return Aggregation(w, J.T @ w, info)


def pinv_torch_default(A: np.ndarray) -> np.ndarray:
  """Pseudo-inverse by SVD with torch.linalg.pinv's default cut-off.

  Singular values at or below ``max(m, n) * eps * s_max`` are dropped
  (torch: ``rtol = eps * max(m, n)``, ``atol = 0``). NumPy's own default
  differs, so it is spelled out here.
  """
  A = np.asarray(A, dtype=np.float64)
  U, s, Vt = np.linalg.svd(A, full_matrices=False)
  if s.size == 0 or s[0] == 0.0:
    return np.zeros(A.T.shape)
  keep = s > max(A.shape) * F64_EPS * s[0]
  return (Vt[keep].T / s[keep]) @ U[:, keep].T


def trace_normalize(G: np.ndarray, eps: float) -> np.ndarray:
  """torchjd ``normalize``: ``G / tr G``, or all zeros when ``tr G < eps``.

  The threshold is ABSOLUTE (torchjd ``_linalg/_gramian.py`` l.63-68).
  """
  tr = float(np.trace(G))
  return np.zeros_like(G) if tr < eps else G / tr


def nonneg_qp(H, q, *, simplex: bool = False, max_outer: int | None = None):
  """Exact minimiser of ``1/2 x^T H x + q^T x`` over ``x >= 0`` (and ``sum x = 1``).

  ``H`` symmetric positive semi-definite, K <= a few dozen. Primal active
  set in the manner of Lawson and Hanson: grow the free set by the most
  violated dual, solve the equality-constrained sub-problem on the free set
  directly (least squares, so a singular ``H`` is fine), step back to the
  feasible region when a free variable would go negative. The end point is
  re-solved on its free set and the KKT conditions are checked (raises
  ``RuntimeError`` if they fail by more than 1e-9 relative). When ``H`` is
  singular the minimiser ``x`` may not be unique; ``H x`` is.

  Returns ``(x, multiplier)``: the bound multipliers ``H x + q - lam 1``
  (``lam`` the simplex multiplier, 0 without the simplex).
  """
  H = np.asarray(H, dtype=np.float64)
  q = np.asarray(q, dtype=np.float64)
  K = q.size
  scale = max(
    float(np.abs(H).max(initial=0.0)), float(np.abs(q).max(initial=0.0)), 1e-300
  )
  tol = 1e-13 * scale * max(K, 1)
  max_outer = 10 * K + 10 if max_outer is None else max_outer

  def solve_free(free: np.ndarray) -> tuple[np.ndarray, float]:
    z = np.zeros(K)
    idx = np.flatnonzero(free)
    if idx.size == 0:
      return z, 0.0
    Hff = H[np.ix_(idx, idx)]
    if simplex:
      m = idx.size
      kkt = np.zeros((m + 1, m + 1))
      kkt[:m, :m] = Hff
      kkt[:m, m] = -1.0
      kkt[m, :m] = 1.0
      rhs = np.concatenate([-q[idx], [1.0]])
      sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
      z[idx] = sol[:m]
      return z, float(sol[m])
    z[idx] = np.linalg.lstsq(Hff, -q[idx], rcond=None)[0]
    return z, 0.0

  def multipliers(x: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, float]:
    grad = H @ x + q
    lam = float(np.mean(grad[free])) if simplex and free.any() else 0.0
    return grad - lam, lam

  if simplex:
    x = np.zeros(K)
    start = int(np.argmin(0.5 * np.diag(H) + q))
    x[start] = 1.0
    free = np.zeros(K, bool)
    free[start] = True
  else:
    x = np.zeros(K)
    free = np.zeros(K, bool)

  for _ in range(max_outer):
    mu, _lam = multipliers(x, free)
    cand = np.where(~free, -mu, -np.inf)
    j = int(np.argmax(cand)) if K else 0
    if K == 0 or cand[j] <= tol:
      break
    free[j] = True
    for _inner in range(4 * K + 4):
      z, _ = solve_free(free)
      if np.all(z[free] > 0.0):
        x = z
        break
      # step from x towards z until the first free variable hits zero
      bad = free & (z <= 0.0)
      denom = x[bad] - z[bad]
      with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(denom > 0, x[bad] / denom, np.inf)
      alpha = float(min(1.0, ratios.min(initial=np.inf)))
      x = x + alpha * (z - x)
      drop = free & (x <= 1e-15 * max(1.0, float(np.abs(x).max())))
      if simplex and drop.sum() == free.sum():
        keep = int(np.argmax(np.where(free, x, -np.inf)))
        drop[keep] = False
      x[drop] = 0.0
      free &= ~drop
    else:
      raise RuntimeError("nonneg_qp: inner loop did not settle")
  else:
    raise RuntimeError("nonneg_qp: outer loop did not settle")

  # polish on the final free set, keep it only if it stays feasible
  z, _ = solve_free(free)
  if np.all(z[free] >= 0.0):
    x = z
  x = np.maximum(x, 0.0)
  if simplex and x.sum() > 0:
    x = x / x.sum()
  mu, _ = multipliers(x, free)
  viol = max(float(-mu.min(initial=0.0)), float(np.abs(mu[free]).max(initial=0.0)))
  if viol > 1e-9 * scale * max(K, 1) + 1e-300:
    raise RuntimeError(f"nonneg_qp: KKT violated by {viol:.3e} (scale {scale:.3e})")
  return x, mu


# --------------------------------------------------------------------------
# MGDA
# --------------------------------------------------------------------------


def _two_point_min_norm(v11: float, v12: float, v22: float) -> tuple[float, float]:
  """Official MGDA closed form for ``min_c |c x1 + (1-c) x2|^2``, with its clamps.

  Returns ``(c, cost)``. When the minimiser is an end point the official code
  returns 0.999 or 0.001 (not 1 or 0): kept here.
  """
  if v12 >= v11:
    return 0.999, v11
  if v12 >= v22:
    return 0.001, v22
  c = -(v12 - v22) / (v11 + v22 - 2.0 * v12)
  return c, v22 + c * (v12 - v22)


def _simplex_projection_official(y: np.ndarray) -> np.ndarray:
  """Euclidean projection onto the simplex as the official solver writes it."""
  m = y.size
  ys = np.sort(y)[::-1]
  partial = 0.0
  shift = (np.sum(y) - 1.0) / m
  for i in range(m - 1):
    partial += ys[i]
    cand = (partial - 1.0) / (i + 1.0)
    if cand > ys[i + 1]:
      shift = cand
      break
  return np.maximum(y - shift, 0.0)


def _ordered_form(a: np.ndarray, b: np.ndarray, G: np.ndarray) -> float:
  """``a^T G b`` summed as the official loop does: row-major, one term at a time.

  Near convergence the two-point rule compares nearly equal numbers, so the
  summation order changes the path; this keeps the official order.
  """
  terms = (a[:, None] * b[None, :]) * G
  return float(np.add.accumulate(terms.ravel())[-1])


def _official_next_point(x: np.ndarray, grad: np.ndarray) -> np.ndarray:
  n = x.size
  pg = grad - np.sum(grad) / n
  neg, pos = pg < 0, pg > 0
  t_lo = -x[neg] / pg[neg]
  t_hi = (1.0 - x[pos]) / pg[pos]
  t = 1.0
  if np.any(t_lo > 1e-7):
    t = float(np.min(t_lo[t_lo > 1e-7]))
  if np.any(t_hi > 1e-7):
    t = min(t, float(np.min(t_hi[t_hi > 1e-7])))
  return _simplex_projection_official(pg * t + x)


def mgda_official_weights(
  G,
  *,
  max_iter: int | None = 250,
  tol: float = 1e-5,
  dmin_init: float = 1e8,
  _with_info: bool = False,
):
  """MGDA min-norm weights, official solver: best pair, then projected gradient.

  Source: isl-org/MultiObjectiveOptimization ``multi_task/min_norm_solvers.py``
  ``MinNormSolver.find_min_norm_element`` (l.92-137, helpers l.9-90); LibMTL
  ``LibMTL/weighting/MGDA.py`` ``_find_min_norm_element`` (l.22-108).

  1. Best pair: over all i < j the closed-form two-point minimum (with the
     0.999 / 0.001 clamps); a pair is taken only if its cost is below the
     running minimum, which starts at ``dmin_init = 1e8`` (so if every pair
     costs >= 1e8 the official code fails; here: ``ValueError``).
  2. K < 3: return the pair solution (so K = 2 with one end point optimal
     gives 0.999 / 0.001, not 1 / 0).
  3. Loop: ``p = next_point(x, -G x)`` (gradient centred, step to the first
     face, projected onto the simplex), line search between x and p with the
     same two-point rule, stop when ``sum |x_new - x| < tol`` returning the
     OLD x.

  ``max_iter``: LibMTL counts 250 iterations (MGDA.py l.76, 107). The
  official loop never increments its counter (min_norm_solvers.py
  l.112-137), so it runs until the tolerance test passes:
  ``max_iter=None`` reproduces that (capped at 10**6 here). After the last
  allowed iteration LibMTL returns the newest x.
  Weights sum to 1 and are >= 0.
  """
  G = np.asarray(G, dtype=np.float64)
  K = G.shape[0]
  best, dmin = None, dmin_init
  for i in range(K):
    for j in range(i + 1, K):
      c, cost = _two_point_min_norm(G[i, i], G[i, j], G[j, j])
      if cost < dmin:
        dmin, best = cost, (i, j, c)
  if best is None:
    if K == 1:
      x = np.ones(1)
      return (x, {"iterations": 0}) if _with_info else x
    raise ValueError(
      "official MGDA: every pair costs >= dmin_init (1e8); the reference fails here"
    )
  x = np.zeros(K)
  x[best[0]], x[best[1]] = best[2], 1.0 - best[2]
  info = {"pair": best[:2], "iterations": 0, "converged": K < 3}
  if K < 3:
    return (x, info) if _with_info else x
  limit = 10**6 if max_iter is None else max_iter
  it = 0
  while it < limit:
    p = _official_next_point(x, -(G @ x))
    # the official double loop: sum over i then j of (a_i b_j) G_ij, in order
    v11, v12, v22 = (_ordered_form(a, b, G) for a, b in ((x, x), (x, p), (p, p)))
    c, _ = _two_point_min_norm(v11, v12, v22)
    x_new = c * x + (1.0 - c) * p
    if np.sum(np.abs(x_new - x)) < tol:
      info["converged"] = True
      break
    x = x_new
    it += 1
  info["iterations"] = it
  return (x, info) if _with_info else x


def mgda_gradient_normalizers(J, losses=None, kind: str = "none") -> np.ndarray:
  """Per-component divisors of the official/LibMTL ``gradient_normalizers``.

  ``none``: 1; ``l2``: ``||g_k||``; ``loss``: ``L_k``; ``loss+``: ``L_k ||g_k||``
  (min_norm_solvers.py l.183-199; LibMTL MGDA.py l.110-122).
  """
  J = as_jacobian(J)
  norms = np.sqrt(np.sum(J * J, axis=1))
  if kind == "none":
    return np.ones(J.shape[0])
  if losses is None and kind in ("loss", "loss+"):
    raise ValueError(f"normalization {kind!r} needs the losses")
  if kind == "l2":
    return norms
  if kind == "loss":
    return np.asarray(losses, dtype=np.float64)
  if kind == "loss+":
    return np.asarray(losses, dtype=np.float64) * norms
  raise ValueError(f"unknown normalization {kind!r}")


def mgda_official(
  J,
  *,
  G=None,
  losses=None,
  normalization: str = "none",
  direction_from: str = "official",
  max_iter: int | None = 250,
  tol: float = 1e-5,
) -> Aggregation:
  """MGDA with the official solver and optional gradient normalisation.

  The solver runs on the Gramian of the NORMALISED rows ``g_k / gn_k``.
  Then the two references part ways:

  * ``direction_from="official"``: the train loop uses the solver's output
    as loss scales on the raw losses (train_multi_task.py l.158-183), so
    ``d = J^T sol`` and ``w = sol``.
  * ``direction_from="libmtl"``: LibMTL combines the NORMALISED gradients
    (MGDA.py l.130-135), so ``d = sum_k sol_k g_k / gn_k`` and
    ``w = sol / gn``.

  With ``normalization="none"`` both agree. ``G`` if given is the raw
  Gramian (it is rescaled by the normalisers here).
  """
  J = as_jacobian(J)
  G = _gram(J, G)
  gn = mgda_gradient_normalizers(J, losses, normalization)
  Gs = G / np.outer(gn, gn)
  sol, info = cast(
    tuple[np.ndarray, dict[str, Any]],
    mgda_official_weights(Gs, max_iter=max_iter, tol=tol, _with_info=True),
  )
  if direction_from == "official":
    w = sol
  elif direction_from == "libmtl":
    w = sol / gn
  else:
    raise ValueError(direction_from)
  info = dict(info, solver_weights=sol, normalizers=gn)
  return Aggregation(w, J.T @ w, info)


def mgda_frank_wolfe_weights(
  G, *, epsilon: float = 1e-3, max_iters: int = 100, _with_info=False
):
  """MGDA weights, torchjd's Frank-Wolfe (torchjd ``aggregation/_mgda.py`` l.24-49).

  Start at ``1/K``; each iteration: ``t = argmin (G x)`` (first index on
  ties), exact line search toward the vertex ``e_t``: with
  ``a = x^T G e_t``, ``b = x^T G x``, ``c = G_tt``: step 1 if ``c <= a``,
  0 if ``b <= a``, else ``(b - a) / (b + c - 2a)``; update x; THEN stop if
  the step was below ``epsilon``. At most ``max_iters`` iterations.
  Weights sum to 1, >= 0. Not the optimum in general (see ``mgda_exact``).
  """
  G = np.asarray(G, dtype=np.float64)
  K = G.shape[0]
  x = np.full(K, 1.0 / K)
  it = 0
  for step in range(1, max_iters + 1):
    it = step
    t = int(np.argmin(G @ x))
    a = float(x @ G[:, t])
    b = float(x @ G @ x)
    c = float(G[t, t])
    if c <= a:
      gamma = 1.0
    elif b <= a:
      gamma = 0.0
    else:
      gamma = (b - a) / (b + c - 2.0 * a)
    x = (1.0 - gamma) * x
    x[t] += gamma
    if gamma < epsilon:
      break
  return (x, {"iterations": it}) if _with_info else x


def mgda_exact_weights(G, *, _with_info=False):
  """The true MGDA optimum ``argmin_{x in simplex} x^T G x`` (:func:`nonneg_qp`).

  Not a reference's output: the yardstick for the iterative solvers. When
  the minimiser is not unique (0 in the hull of a rank-deficient set)
  ``J^T x`` still is.
  """
  G = np.asarray(G, dtype=np.float64)
  x, _ = nonneg_qp(G, np.zeros(G.shape[0]), simplex=True)
  return (x, {"objective": float(x @ G @ x)}) if _with_info else x


def mgda_frank_wolfe(J, *, G=None, epsilon=1e-3, max_iters=100) -> Aggregation:
  return _combine(J, G, mgda_frank_wolfe_weights, epsilon=epsilon, max_iters=max_iters)


def mgda_exact(J, *, G=None) -> Aggregation:
  return _combine(J, G, mgda_exact_weights)


# --------------------------------------------------------------------------
# PCGrad
# --------------------------------------------------------------------------


def pcgrad_weights(
  G,
  permutations: Sequence[Sequence[int]],
  *,
  convention: str = "torchjd",
  _with_info=False,
):
  """PCGrad in Gramian form: the weights ``w`` with ``d = J^T w`` FOR THE GIVEN ORDERS.

  ``w`` depends on the random orders, so it is not a function of ``G``
  alone: ``permutations[i]`` is the order in which component i is projected
  against the others. ``pc_i`` is tracked by its coefficients ``c`` (so
  ``pc_i = J^T c``, ``c = e_i`` at the start); for each ``j`` in the order:
  ``s = (G c)_j = pc_i . g_j``; if ``s < 0``: ``c_j -= s / (G_jj + eps)``.
  ``w = sum_i c``. The dot product is against the ORIGINAL g_j, the running
  pc_i is updated in place.

  * ``torchjd``: skip ``j == i``, ``eps = 0`` (torchjd
    ``aggregation/_pcgrad.py`` l.29-46; order ``torch.randperm(K)`` drawn
    afresh for each i; a zero g_j never triggers since then s = 0).
  * ``libmtl``: ``j == i`` is NOT skipped, ``eps = 1e-8`` (LibMTL
    ``PCGrad.py`` l.28-37, order ``random.shuffle`` per i; its returned
    ``batch_weight`` is this ``w``).
  * ``conflictfree``: ``PCGradOperator`` (grad_operator.py l.304-331) is the
    torchjd rule with the identity order for every i.

  Every w_k >= 1 (corrections only add) under torchjd/conflictfree.
  """
  G = np.asarray(G, dtype=np.float64)
  K = G.shape[0]
  if convention in ("torchjd", "conflictfree"):
    skip_self, eps = True, 0.0
  elif convention == "libmtl":
    skip_self, eps = False, 1e-8
  else:
    raise ValueError(convention)
  if len(permutations) != K:
    raise ValueError("need one order per component")
  w = np.zeros(K)
  n_proj = 0
  for i in range(K):
    c = np.zeros(K)
    c[i] = 1.0
    order = [int(j) for j in permutations[i]]
    if sorted(order) != list(range(K)):
      raise ValueError(f"permutations[{i}] is not a permutation of range({K})")
    for j in order:
      if skip_self and j == i:
        continue
      s = float(G[j] @ c)
      if s < 0.0:
        c[j] -= s / (G[j, j] + eps)
        n_proj += 1
    w += c
  return (w, {"projections": n_proj}) if _with_info else w


def pcgrad(J, permutations, *, G=None, convention: str = "torchjd") -> Aggregation:
  """PCGrad direction ``J^T w`` with :func:`pcgrad_weights` (see there)."""
  return _combine(J, G, pcgrad_weights, permutations, convention=convention)


def pcgrad_vector_form(J, permutations, *, convention: str = "torchjd") -> np.ndarray:
  """PCGrad on the vectors themselves (for checking the Gramian form)."""
  J = as_jacobian(J)
  K = J.shape[0]
  skip_self, eps = (
    (True, 0.0) if convention in ("torchjd", "conflictfree") else (False, 1e-8)
  )
  total = np.zeros(J.shape[1])
  for i in range(K):
    v = J[i].copy()
    for j in permutations[i]:
      j = int(j)
      if skip_self and j == i:
        continue
      s = float(v @ J[j])
      if s < 0.0:
        v = v - s * J[j] / (float(J[j] @ J[j]) + eps)
    total += v
  return total


# --------------------------------------------------------------------------
# IMTL-G
# --------------------------------------------------------------------------


def imtlg_weights(G, *, _with_info=False):
  """IMTL-G, torchjd form (``aggregation/_imtl_g.py`` l.17-24).

  ``v = pinv(G) sqrt(diag G)`` (torch's default pinv cut-off, see
  :func:`pinv_torch_default`), ``w = v / sum v``; all zeros when
  ``|sum v| < 1e-12``. Sum 1 (or 0). ``d`` has equal projection on every
  unit vector ``g_k/||g_k||`` (for the rows in the range of G).
  """
  G = np.asarray(G, dtype=np.float64)
  v = pinv_torch_default(G) @ np.sqrt(np.diag(G))
  s = float(v.sum())
  w = np.zeros_like(v) if abs(s) < 1e-12 else v / s
  return (w, {"sum_v": s}) if _with_info else w


def imtlg_libmtl_weights(G, *, inverse: str = "inv", _with_info=False):
  """IMTL-G as LibMTL writes it (``LibMTL/weighting/IMTL.py`` l.28-34), in Gramian form.

  With ``u_k = g_k / ||g_k||``, rows ``D_k = g_0 - g_k`` and
  ``U_k = u_0 - u_k`` (k = 1..K-1): ``a = g_0 U^T (D U^T)^{-1}``,
  ``w = [1 - sum a, a]``. Every dot product ``g_a . u_b = G_ab / ||g_b||``.
  ``inverse="inv"``: LibMTL's ``torch.inverse`` (raises on an exactly
  singular matrix, here ``LinAlgError``; a zero gradient makes its unit
  vector 0/0, so every weight is NaN, kept here); ``"pinv"``:
  conflictfree's ``IMTLGOperator`` (grad_operator.py l.365-379, which zeroes
  the unit vector of a zero gradient). Both forms are ill-posed when the
  g_k are linearly dependent (K > n included): then they return rounding
  noise or a direction near 0, where the torchjd pinv form stays defined.
  LibMTL's learnable loss scales (IMTL-L part) start at 0 and are not
  modelled. Sum 1.
  """
  G = np.asarray(G, dtype=np.float64)
  norms = np.sqrt(np.diag(G))
  with np.errstate(divide="ignore", invalid="ignore"):
    inv_norm = np.where(norms > 0, 1.0 / norms, 0.0)
  GU = G * inv_norm[None, :]  # GU[a, b] = g_a . u_b
  # (D U^T)[k-1, l-1] = (g0 - gk) . (u0 - ul)
  DU = GU[0, 0] - GU[0, 1:][None, :] - GU[1:, 0][:, None] + GU[1:, 1:]
  g0U = GU[0, 0] - GU[0, 1:]
  if inverse == "inv":
    M = np.linalg.inv(DU)
  elif inverse == "pinv":
    M = pinv_torch_default(DU)
  else:
    raise ValueError(inverse)
  a = g0U @ M
  w = np.concatenate([[1.0 - a.sum()], a])
  if inverse == "inv" and np.any(norms == 0):
    w = np.full(G.shape[0], np.nan)
  return (w, {}) if _with_info else w


def imtlg(J, *, G=None) -> Aggregation:
  return _combine(J, G, imtlg_weights)


def imtlg_libmtl(J, *, G=None, inverse="inv") -> Aggregation:
  return _combine(J, G, imtlg_libmtl_weights, inverse=inverse)


# --------------------------------------------------------------------------
# Aligned-MTL
# --------------------------------------------------------------------------


def aligned_mtl_weights(
  G,
  *,
  convention: str = "torchjd",
  scale_mode: str = "min",
  eps: float | None = None,
  pref=None,
  _with_info=False,
):
  """Aligned-MTL: ``B = sqrt(s) V Lam^{-1/2} V^T`` over the kept eigenpairs of G.

  Eigen-decomposition of G (upper triangle read, as torchjd's
  ``eigh(UPLO="U")``); keep eigenvalues ``> lam_max * K * eps`` (the rank),
  ordered descending; ``s`` = the smallest kept (``min``), torch's LOWER
  median of the kept ones (``median``: for an even count the smaller of the
  two middle values, not their mean) or their mean (``rmse``).

  * ``torchjd`` (``aggregation/_aligned_mtl.py`` l.47-87): ``w = B p`` with
    ``p = 1/K`` (or ``pref``); ``eps`` = eps of the input dtype (float64
    here) in 0.18.0, but ``torch.finfo().eps`` (the DEFAULT dtype's, i.e.
    float32's 1.19e-7) at GitHub 46962c2 ``_aligned_mtl.py`` l.114; rank 0
    gives ``B = I`` so ``w = p``. ``scale_mode`` min / median / rmse.
  * ``libmtl`` (``LibMTL/weighting/Aligned_MTL.py`` l.24-38):
    ``w = B.sum(0) = B^T 1`` (K times torchjd's with ``p = 1/K``), ``min``
    only, ``eps = torch.finfo().eps`` (float32's); rank 0 fails
    (here: ``ValueError``). It also calls ``torch.symeig``, which current
    torch no longer has.

  No fixed sum.
  """
  G = np.asarray(G, dtype=np.float64)
  K = G.shape[0]
  if eps is None:
    eps = F64_EPS if convention == "torchjd" else F32_EPS
  lam, V = np.linalg.eigh(G, UPLO="U")
  tol = float(np.max(lam)) * K * eps
  kept = lam > tol
  rank = int(kept.sum())
  if convention == "torchjd":
    p = np.full(K, 1.0 / K) if pref is None else np.asarray(pref, dtype=np.float64)
  elif convention == "libmtl":
    if scale_mode != "min":
      raise ValueError("LibMTL has only the 'min' scale")
    p = np.ones(K)
  else:
    raise ValueError(convention)
  if rank == 0:
    if convention == "libmtl":
      raise ValueError(
        "LibMTL Aligned-MTL fails on a zero Gramian (empty eigenvalue list)"
      )
    return (p.copy(), {"rank": 0}) if _with_info else p.copy()
  order = np.argsort(-lam, kind="stable")
  lam_k = lam[order][:rank]
  V_k = V[:, order][:, :rank]
  if scale_mode == "min":
    s = lam_k[-1]
  elif scale_mode == "median":
    s = np.sort(lam_k)[(rank - 1) // 2]
  elif scale_mode == "rmse":
    s = lam_k.mean()
  else:
    raise ValueError(scale_mode)
  B = np.sqrt(s) * (V_k / np.sqrt(lam_k)) @ V_k.T
  w = B.T @ p if convention == "libmtl" else B @ p
  return (w, {"rank": rank, "scale": float(s)}) if _with_info else w


def aligned_mtl(
  J, *, G=None, convention="torchjd", scale_mode="min", eps=None, pref=None
):
  return _combine(
    J,
    G,
    aligned_mtl_weights,
    convention=convention,
    scale_mode=scale_mode,
    eps=eps,
    pref=pref,
  )


# --------------------------------------------------------------------------
# UPGrad and DualProj (projection onto the dual cone)
# --------------------------------------------------------------------------


def dual_cone_weights(u, G) -> np.ndarray:
  """``argmin_v v^T G v`` subject to ``v >= u`` (exact, via :func:`nonneg_qp`).

  Then ``J^T v`` is the projection of ``J^T u`` onto the dual cone of the
  rows of J (Quinton & Rey, Prop. 1). Written as ``v = u + s``, ``s >= 0``,
  ``min 1/2 s^T G s + (G u)^T s``.
  """
  u = np.asarray(u, dtype=np.float64)
  G = np.asarray(G, dtype=np.float64)
  s, _ = nonneg_qp(G, G @ u)
  return u + s


def _upgrad_gramian(G, norm_eps, reg_eps):
  G = np.asarray(G, dtype=np.float64)
  return trace_normalize(G, norm_eps) + reg_eps * np.eye(G.shape[0])


def upgrad_weights(
  G, *, pref=None, norm_eps: float = 1e-4, reg_eps: float = 1e-4, _with_info=False
):
  """UPGrad weights.

  Sources: torchjd ``aggregation/_upgrad.py`` l.35-38 and
  ``_linalg/_dual_cone.py`` l.108-125.

  ``Ghat = G / tr G`` (all zeros if ``tr G < norm_eps``, absolute) ``+ reg_eps I``;
  for each i, ``v_i = argmin_{v >= p_i e_i} v^T Ghat v`` with ``p = 1/K`` (or
  ``pref``); ``w = sum_i v_i``. torchjd solves each QP with quadprog
  (Goldfarb-Idnani); here :func:`nonneg_qp`. ``norm_eps=reg_eps=0`` gives the
  unregularised rule. Every ``w_k >= p_k``; with a zero (normalised) Gramian
  ``w = p`` exactly.
  """
  Gh = _upgrad_gramian(G, norm_eps, reg_eps)
  K = Gh.shape[0]
  p = np.full(K, 1.0 / K) if pref is None else np.asarray(pref, dtype=np.float64)
  V = np.stack([dual_cone_weights(p[i] * np.eye(K)[i], Gh) for i in range(K)])
  w = V.sum(axis=0)
  return (w, {"per_row": V}) if _with_info else w


def dualproj_weights(
  G, *, pref=None, norm_eps: float = 1e-4, reg_eps: float = 1e-4, _with_info=False
):
  """DualProj weights: ``argmin_{v >= p} v^T Ghat v``.

  Source: torchjd ``aggregation/_dualproj.py`` l.34-37.

  Same ``Ghat`` as :func:`upgrad_weights`, ``p = 1/K`` by default: the mean
  gradient projected onto the dual cone. ``w >= p``.
  """
  Gh = _upgrad_gramian(G, norm_eps, reg_eps)
  K = Gh.shape[0]
  p = np.full(K, 1.0 / K) if pref is None else np.asarray(pref, dtype=np.float64)
  w = dual_cone_weights(p, Gh)
  return (w, {}) if _with_info else w


def upgrad(J, *, G=None, pref=None, norm_eps=1e-4, reg_eps=1e-4) -> Aggregation:
  return _combine(J, G, upgrad_weights, pref=pref, norm_eps=norm_eps, reg_eps=reg_eps)


def dualproj(J, *, G=None, pref=None, norm_eps=1e-4, reg_eps=1e-4) -> Aggregation:
  return _combine(J, G, dualproj_weights, pref=pref, norm_eps=norm_eps, reg_eps=reg_eps)


# --------------------------------------------------------------------------
# ConFIG
# --------------------------------------------------------------------------


def config_weights(G, *, pref=None, convention: str = "torchjd", _with_info=False):
  """ConFIG (general K) in Gramian form.

  Sources: conflictfree ``grad_operator.py`` ``ConFIG_update`` (l.81-140,
  ``lstsq`` by default, ``pinv`` with ``use_least_square=False``) with the
  ``ProjectionLength`` length model (``length_model.py``); torchjd
  ``aggregation/_config.py`` l.35-43 (``pinv``). Unit rows
  ``u_k = g_k/||g_k||`` (a zero row stays zero); ``x = U^+ p`` (``p = 1``
  by default); ``x_hat = x/||x||`` (zero if x = 0);
  ``d = (sum_k g_k . x_hat) x_hat`` (the length uses the UNweighted sum).
  With ``D = diag ||g_k||`` (pseudo-inverted), ``C = D^+ G D^+``,
  ``beta = D^+ C^+ p``: ``x = J^T beta`` and
  ``w = (1^T G beta / beta^T G beta) beta``. No fixed sum.

  The normalisation of x differs when x is (numerically) zero, i.e. when
  ``p`` has no component in the range of ``C`` (two exactly antiparallel
  gradients; then the exact answer is ``d = 0``):

  * ``torchjd``: ``F.normalize`` divides by ``max(||x||, 1e-12)``, so
    ``w = (1^T G beta / max(||x||, 1e-12)^2) beta``: rounding noise in x gives
    a direction of order 1e-8 relative (about 0).
  * ``conflictfree``: ``unit_vector`` divides by ``||x||`` unless it is
    exactly 0: rounding noise in x becomes an O(1) direction (not
    reproducible; the golden file shows g1 + g2 for ``lstsq`` and another
    vector for ``pinv``).
  """
  G = np.asarray(G, dtype=np.float64)
  K = G.shape[0]
  p = np.ones(K) if pref is None else np.asarray(pref, dtype=np.float64)
  norms = np.sqrt(np.diag(G))
  with np.errstate(divide="ignore", invalid="ignore"):
    dinv = np.where(norms > 0, 1.0 / norms, 0.0)
  C = G * np.outer(dinv, dinv)
  beta = dinv * (pinv_torch_default(C) @ p)
  q = max(float(beta @ G @ beta), 0.0)  # ||x||^2
  if convention == "torchjd":
    q = max(np.sqrt(q), 1e-12) ** 2
  elif convention != "conflictfree":
    raise ValueError(convention)
  w = np.zeros(K) if q == 0.0 else (float(np.sum(G @ beta)) / q) * beta
  return (
    (w, {"beta": beta, "x_norm": float(np.sqrt(max(float(beta @ G @ beta), 0.0)))})
    if _with_info
    else w
  )


def config(J, *, G=None, pref=None, convention: str = "torchjd") -> Aggregation:
  return _combine(J, G, config_weights, pref=pref, convention=convention)


def config_double(J, *, pref=None) -> Aggregation:
  """conflictfree's K = 2 form (``ConFIG_update_double``, grad_operator.py l.10-78).

  What ``ConFIGOperator()`` runs by default when K = 2. On the vectors:
  ``o_1 = g_2 - (g_1.g_2/||g_1||^2) g_1`` (g_2 without its g_1 part),
  ``o_2 = g_1 - (g_1.g_2/||g_2||^2) g_2``, unit vectors ``uo_k`` (zero if
  the vector is exactly zero), ``coef_1 = (uo_2 . u_1) / ((p_1/p_2)(uo_1 . u_2))``
  (utils.py l.193-227), ``x = coef_1 uo_1 + uo_2``, then the same length
  rule as :func:`config`. Equal to the general form up to rounding when g_1,
  g_2 are independent; NaN (0/0) when they are exactly (anti)parallel in
  floating point, garbage when nearly so. ``w`` given in the
  ``d = J^T w`` form, computed from the Gramian expressions of the same
  quantities.
  """
  J = as_jacobian(J)
  if J.shape[0] != 2:
    raise ValueError("the double form is for K = 2")
  p = np.ones(2) if pref is None else np.asarray(pref, dtype=np.float64)
  g1, g2 = J
  n1, n2 = np.linalg.norm(g1), np.linalg.norm(g2)
  u1, u2 = g1 / n1, g2 / n2
  cos = float(g1 @ g2) / n1 / n2
  o2 = g1 - n1 * cos * u2
  o1 = g2 - n2 * cos * u1

  def unit(v):
    nv = np.linalg.norm(v)
    return np.zeros_like(v) if nv == 0 else v / nv

  uo1, uo2 = unit(o1), unit(o2)
  with np.errstate(divide="ignore", invalid="ignore"):
    coef1 = float(uo2 @ u1) / ((p[0] / p[1]) * float(uo1 @ u2))
    x = coef1 * uo1 + uo2
    xh = unit(x)
    length = float(np.sum(J @ xh))
    d = length * xh
    # the same in d = J^T w form: x = b1 g1 + b2 g2
    G = J @ J.T
    no1 = np.linalg.norm(o1)
    no2 = np.linalg.norm(o2)
    beta = (coef1 / no1) * np.array([-G[0, 1] / G[0, 0], 1.0]) + (1.0 / no2) * np.array(
      [1.0, -G[0, 1] / G[1, 1]]
    )
    q = float(beta @ G @ beta)
    w = (float(np.sum(G @ beta)) / q) * beta
  return Aggregation(w, d, {"coef_1": coef1})


# --------------------------------------------------------------------------
# CAGrad
# --------------------------------------------------------------------------


def cagrad_official_weights(
  G, *, alpha: float = 0.5, rescale: int = 1, _with_info=False
):
  """CAGrad, official form.

  Sources: Cranial-XIX/CAGrad ``nyuv2/utils.py`` l.377-401; LibMTL
  ``LibMTL/weighting/CAGrad.py`` l.37-64.

  ``g0_norm = sqrt(mean(G) + 1e-8)``, ``c = alpha * g0_norm + 1e-8``;
  ``x = argmin_{x in simplex} x^T G b + c sqrt(x^T G x + 1e-8)``, ``b = 1/K``,
  by ``scipy.optimize.minimize`` from ``x0 = b`` with bounds [0, 1] and the
  equality constraint, i.e. SLSQP with its default tolerance (as the
  references: so x is only ~1e-6 accurate, but reproducible);
  ``lam = c / (||J^T x|| + 1e-8)``; ``d = (mean g + lam J^T x) / r`` with
  ``r = 1`` (rescale 0), ``1 + alpha^2`` (1, the nyuv2 and LibMTL default) or
  ``1 + alpha`` (2). So ``w = (b + lam x) / r``; ``||J^T x||`` is taken as
  ``sqrt(x^T G x)``. The official nyuv2 code is written for K = 3 (and the
  caller multiplies by 3, nyuv2/utils.py l.418); LibMTL generalises to K;
  LibMTL default ``calpha = 0.5, rescale = 1`` (config.py l.50-51). The
  references round x and the direction to float32; not modelled.
  """
  from scipy.optimize import minimize

  G = np.asarray(G, dtype=np.float64)
  K = G.shape[0]
  b = np.full(K, 1.0 / K)
  g0_norm = np.sqrt(G.mean() + 1e-8)
  c = alpha * g0_norm + 1e-8

  def objective(x):
    return float(x @ G @ b + c * np.sqrt(x @ G @ x + 1e-8))

  res = minimize(
    objective,
    b.copy(),
    bounds=[(0, 1)] * K,
    constraints=({"type": "eq", "fun": lambda x: 1 - sum(x)},),
  )
  x = res.x
  gw_norm = float(np.sqrt(max(x @ G @ x, 0.0)))
  lam = c / (gw_norm + 1e-8)
  r = {0: 1.0, 1: 1.0 + alpha**2, 2: 1.0 + alpha}[rescale]
  w = (b + lam * x) / r
  return (w, {"x": x, "lam": lam, "nit": int(res.nit)}) if _with_info else w


def cagrad_exact_solve(Gn: np.ndarray, c_phi: float) -> np.ndarray:
  """``argmin_{w in simplex} w^T Gn b + c_phi sqrt(w^T Gn w)`` to high accuracy.

  SLSQP with ``ftol = 1e-15`` and the analytic gradient, started from the
  MGDA optimum and from ``b``; the better end point is kept and polished by
  Newton steps on its face (:func:`_cagrad_newton_polish`). Used for the
  torchjd form, which solves the same convex problem with CLARABEL at its
  default tolerance (its weights are ~1e-4 off this optimum).
  """
  from scipy.optimize import minimize

  K = Gn.shape[0]
  b = np.full(K, 1.0 / K)
  lin = Gn @ b

  def f(w):
    q = max(float(w @ Gn @ w), 0.0)
    return float(lin @ w + c_phi * np.sqrt(q))

  def df(w):
    q = max(float(w @ Gn @ w), 1e-300)
    return lin + c_phi * (Gn @ w) / np.sqrt(q)

  best = None
  starts: list[np.ndarray] = [b]
  with contextlib.suppress(RuntimeError):
    starts.append(cast(np.ndarray, mgda_exact_weights(Gn)))
  for x0 in starts:
    res = minimize(
      f,
      x0,
      jac=df,
      method="SLSQP",
      bounds=[(0, 1)] * K,
      constraints=(
        {"type": "eq", "fun": lambda w: np.sum(w) - 1.0, "jac": lambda w: np.ones(K)},
      ),
      options={"ftol": 1e-15, "maxiter": 1000},
    )
    x = np.clip(res.x, 0.0, None)
    x = x / x.sum()
    if best is None or f(x) < f(best):
      best = x
  return _cagrad_newton_polish(Gn, lin, c_phi, best, f)


def _cagrad_newton_polish(Gn, lin, c_phi, x, f, iters: int = 30):
  """Newton steps on the face ``{x_i = 0 off the support, sum x = 1}``.

  SLSQP leaves ~1e-6 in x where the objective is flat; a few Newton steps on
  the KKT system of the current face bring it to rounding level. Kept only
  if the result stays in the simplex, satisfies the off-face KKT signs and
  is not worse.
  """
  supp = x > 1e-9
  if supp.sum() < 2 or c_phi == 0.0:
    return x
  idx = np.flatnonzero(supp)
  y = x.copy()
  for _ in range(iters):
    q = float(y @ Gn @ y)
    if q <= 0:
      return x
    Gy = Gn @ y
    grad = lin + c_phi * Gy / np.sqrt(q)
    hess = c_phi * (Gn / np.sqrt(q) - np.outer(Gy, Gy) / q**1.5)
    m = idx.size
    kkt = np.zeros((m + 1, m + 1))
    kkt[:m, :m] = hess[np.ix_(idx, idx)]
    kkt[:m, m] = 1.0
    kkt[m, :m] = 1.0
    rhs = np.concatenate([-grad[idx], [0.0]])
    step = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:m]
    y_new = y.copy()
    y_new[idx] += step
    if np.any(y_new[idx] < 0):
      return x
    y = y_new
    if np.abs(step).max() < 1e-15:
      break
  q = float(y @ Gn @ y)
  grad = lin + c_phi * (Gn @ y) / np.sqrt(q)
  lam = float(np.mean(grad[idx]))
  if np.any(grad[~supp] < lam - 1e-10 * max(1.0, abs(lam))) or f(y) > f(x) + 1e-15:
    return x
  return y / y.sum()


def cagrad_torchjd_weights(
  G, *, c: float = 0.5, norm_eps: float = 1e-4, _with_info=False
):
  """CAGrad, torchjd form (``aggregation/_cagrad.py`` l.48-71).

  ``Gn`` = trace-normalised G (zeros if ``tr G < norm_eps``, absolute);
  ``phi = c ||g0||`` with ``||g0||^2 = b^T Gn b``, ``b = 1/K``;
  ``x = argmin_{simplex} x^T Gn b + phi ||J_n^T x||`` (solved exactly here,
  CLARABEL there, no epsilons); if ``||J_n^T x|| >= norm_eps`` (on the
  normalised scale): ``w = b + (phi / ||J_n^T x||) x``, else ``w = 0``.
  NO ``1/(1+c^2)`` rescale (it equals the official ``rescale=0``); ``c`` has
  no default in torchjd (0.5 here, GRADIENT.md's alpha).
  """
  G = np.asarray(G, dtype=np.float64)
  K = G.shape[0]
  Gn = trace_normalize(G, norm_eps)
  b = np.full(K, 1.0 / K)
  phi = c * float(np.sqrt(max(b @ Gn @ b, 0.0)))
  x = cagrad_exact_solve(Gn, phi)
  gw = float(np.sqrt(max(x @ Gn @ x, 0.0)))
  w = b + (phi / gw) * x if gw >= norm_eps else np.zeros(K)
  return (w, {"x": x, "phi": phi, "gw_norm": gw}) if _with_info else w


def cagrad_official(J, *, G=None, alpha=0.5, rescale=1) -> Aggregation:
  return _combine(J, G, cagrad_official_weights, alpha=alpha, rescale=rescale)


def cagrad_torchjd(J, *, G=None, c=0.5, norm_eps=1e-4) -> Aggregation:
  return _combine(J, G, cagrad_torchjd_weights, c=c, norm_eps=norm_eps)


# --------------------------------------------------------------------------
# Nash-MTL
# --------------------------------------------------------------------------


class NashState(NamedTuple):
  """What Nash-MTL carries between calls (torchjd/LibMTL: ``prvs_alpha``, ``step``)."""

  alpha: np.ndarray
  step: int


def nash_mtl_init(K: int) -> NashState:
  """Initial state: ``alpha = 1`` (float32 ones in both references), step 0."""
  return NashState(np.ones(K, dtype=np.float32).astype(np.float64), 0)


def _nash_convex_step(Gn: np.ndarray, nf: float, a_prev: np.ndarray):
  """One convex sub-problem of the references' sequential scheme.

  ECOS there, a log-barrier Newton method here.

  ``min_a  1^T Gn a + phi'(a_prev) . (a - a_prev) / nf``
  s.t. ``log(nf a_k) + log((Gn a)_k) >= 0`` for every k (so ``a > 0``), with
  ``phi'(a_prev) = 1/a_prev + Gn^T (1 / (Gn a_prev))`` (``a_prev`` need not be
  feasible: on the first call it is all ones, where ``Gn a_prev`` may have
  negative entries). The constraint reads ``a_k (G a)_k >= 1`` on the
  UNnormalised ``G = nf Gn``. Convex (each constraint is concave), solved by
  a log-barrier Newton method to a duality gap of 1e-12 relative, from a
  strictly feasible point built from the MGDA optimum. Returns None where the
  references' solver reports no solution: infeasible (0 in the convex hull of
  the g_k, or a zero g_k) or unbounded.
  """
  G = Gn * nf
  K = G.shape[0]
  a_prev = np.asarray(a_prev, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    phi_tag = 1.0 / a_prev + Gn.T @ (1.0 / (Gn @ a_prev))
  cvec = Gn.sum(axis=0) + phi_tag / nf
  if not np.all(np.isfinite(cvec)):
    return None
  # strictly feasible start: MGDA optimum x has (G x)_k >= x^T G x = lam > 0
  try:
    x = cast(np.ndarray, mgda_exact_weights(G))
  except RuntimeError:
    return None
  lam = float(x @ G @ x)
  if not lam > 1e-13 * float(np.max(np.diag(G))):
    return None
  g1 = G @ np.ones(K)
  v = x + 0.5 * lam / max(float(np.abs(g1).max()), 1e-300)
  prod = v * (G @ v)
  if not np.all(prod > 0):
    return None
  a = v * np.sqrt(2.0 / prod.min())

  def parts(a):
    g = G @ a
    if np.any(a <= 0) or np.any(g <= 0):
      return None
    h = np.log(a) + np.log(g)
    return (g, h) if np.all(h > 0) else None

  def barrier_value(a, t):
    pr = parts(a)
    if pr is None:
      return np.inf
    return t * float(cvec @ a) - float(np.sum(np.log(pr[1])))

  t = K / max(abs(float(cvec @ a)), 1.0)
  for _outer in range(200):
    for _newton in range(50):
      pr = parts(a)
      assert pr is not None  # every accepted step keeps a strictly feasible
      g, h = pr
      dh = np.eye(K) / a[:, None] + G / g[:, None]  # row k: grad h_k
      grad = t * cvec - (dh / h[:, None]).sum(axis=0)
      hess = (dh[:, :, None] * dh[:, None, :] / (h**2)[:, None, None]).sum(axis=0)
      hess += np.diag((1.0 / h) / a**2)
      hess += (G.T / (h * g**2)) @ G
      try:
        step = -np.linalg.solve(hess, grad)
      except np.linalg.LinAlgError:
        step = -np.linalg.lstsq(hess, grad, rcond=None)[0]
      dec = float(-grad @ step)
      if dec / 2 <= 1e-12:  # below this, rounding at large t dominates
        break
      s = 1.0
      if dec < 0.1:
        # quadratic regime: full Newton step, only kept inside the domain
        # (an Armijo test would compare values ~t that rounding swamps)
        while s > 1e-12 and parts(a + s * step) is None:
          s *= 0.5
      else:
        f0 = barrier_value(a, t)
        while s > 1e-12:
          if barrier_value(a + s * step, t) <= f0 - 0.25 * s * dec:
            break
          s *= 0.5
      if s <= 1e-12:
        break
      a = a + s * step
      if not np.all(np.isfinite(a)) or np.abs(a).max() > 1e15:
        return None
    if K / t <= 1e-12 * max(1.0, abs(float(cvec @ a))):
      break
    t *= 8.0
  return a


def nash_mtl_weights(
  G,
  state: NashState | None = None,
  *,
  optim_niter: int = 20,
  update_weights_every: int = 1,
):
  """Nash-MTL weights as torchjd (``aggregation/_nash_mtl.py`` l.115-200) and LibMTL
  (``Nash_MTL.py`` l.35-124) compute them; returns ``(alpha, new_state, info)``.

  ``nf = ||G||_F``, ``Gn = G / nf``. Starting from ``a_t = state.alpha``
  (ones on the first call: warm start afterwards), up to ``optim_niter``
  times: solve :func:`_nash_convex_step` from ``a_t``; stop if the solver
  failed, or ``||Gn a_t - 1/(a_t + 1e-10)|| < 1e-3`` (note: Gn, normalised,
  although the constraint is on the raw G, so this test rarely fires unless
  nf ~ 1), or ``||a_new - a_t|| < 1e-6``; on a stop the PREVIOUS iterate
  ``a_t`` is kept, else ``a_t = a_new``. Cadence: weights are recomputed
  only when ``step % update_weights_every == 0``. Clipping is applied by
  :func:`nash_mtl`. Weights positive, no fixed sum (the fixed point of the
  paper is ``G a = 1/a``).
  """
  G = np.asarray(G, dtype=np.float64)
  K = G.shape[0]
  state = nash_mtl_init(K) if state is None else state
  if state.step % update_weights_every != 0:
    return (
      state.alpha.copy(),
      NashState(state.alpha, state.step + 1),
      {"updated": False},
    )
  nf = float(np.linalg.norm(G))
  Gn = G / nf
  a_t = np.asarray(state.alpha, dtype=np.float64)
  iters = 0
  reason = "niter"
  for _ in range(optim_niter):
    iters += 1
    a_new = _nash_convex_step(Gn, nf, a_t)
    if a_new is None:
      reason = "solver"
      break
    if np.linalg.norm(Gn @ a_t - 1.0 / (a_t + 1e-10)) < 1e-3:
      reason = "stationary"
      break
    if np.linalg.norm(a_new - a_t) < 1e-6:
      reason = "small_step"
      break
    a_t = a_new
  return (
    a_t.copy(),
    NashState(a_t.copy(), state.step + 1),
    {"iterations": iters, "stop": reason, "nf": nf},
  )


def nash_mtl(
  J,
  state: NashState | None = None,
  *,
  G=None,
  max_norm: float = 1.0,
  optim_niter: int = 20,
  update_weights_every: int = 1,
  convention: str = "torchjd",
):
  """Nash-MTL direction; returns ``(Aggregation, new_state)``.

  After :func:`nash_mtl_weights`, with ``m = max_norm > 0``:

  * ``torchjd``: if ``||J^T a|| > m``: ``a <- a m / ||J^T a||`` (the returned
    weights are the clipped ones; ``_nash_mtl.py`` l.190-194).
  * ``libmtl``: ``torch.nn.utils.clip_grad_norm_`` on the shared parameters:
    factor ``min(1, m / (||J^T a|| + 1e-6))`` (Nash_MTL.py l.126-130); the
    weights it RETURNS are the unclipped alpha (cast to float32), the
    clipped ones are given here.

  Defaults (both): ``max_norm = 1.0``, ``optim_niter = 20``,
  ``update_weights_every = 1``.
  """
  J = as_jacobian(J)
  G = _gram(J, G)
  alpha, new_state, info = nash_mtl_weights(
    G, state, optim_niter=optim_niter, update_weights_every=update_weights_every
  )
  w = alpha.copy()
  if max_norm > 0:
    norm = float(np.linalg.norm(J.T @ w))
    if convention == "torchjd":
      if norm > max_norm:
        w = w / norm * max_norm
    elif convention == "libmtl":
      w = w * min(1.0, max_norm / (norm + 1e-6))
    else:
      raise ValueError(convention)
  info = dict(info, alpha=alpha)
  return Aggregation(w, J.T @ w, info), new_state


__all__ = [
  "F32_EPS",
  "F64_EPS",
  "Aggregation",
  "NashState",
  "aligned_mtl",
  "aligned_mtl_weights",
  "as_jacobian",
  "cagrad_exact_solve",
  "cagrad_official",
  "cagrad_official_weights",
  "cagrad_torchjd",
  "cagrad_torchjd_weights",
  "config",
  "config_double",
  "config_weights",
  "dual_cone_weights",
  "dualproj",
  "dualproj_weights",
  "gramian",
  "imtlg",
  "imtlg_libmtl",
  "imtlg_libmtl_weights",
  "imtlg_weights",
  "mgda_exact",
  "mgda_exact_weights",
  "mgda_frank_wolfe",
  "mgda_frank_wolfe_weights",
  "mgda_gradient_normalizers",
  "mgda_official",
  "mgda_official_weights",
  "nash_mtl",
  "nash_mtl_init",
  "nash_mtl_weights",
  "nonneg_qp",
  "pcgrad",
  "pcgrad_vector_form",
  "pcgrad_weights",
  "pinv_torch_default",
  "trace_normalize",
  "upgrad",
  "upgrad_weights",
]
