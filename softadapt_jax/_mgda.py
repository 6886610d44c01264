"""MGDA: the min-norm point of the convex hull of the gradients."""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypedDict

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from softadapt_jax import _checks, _protocol
from softadapt_jax._aggregation import gramian_rule, safe_divide
from softadapt_jax._qp import min_norm_simplex
from softadapt_jax._structure import LossSpec, LossStructure

MGDA_SOLVERS = ("exact", "projected_gradient", "frank_wolfe")
MGDA_NORMALIZATIONS = ("none", "l2", "loss", "loss+")
MGDA_COMBINES = ("raw", "normalised")

# Per-solver defaults of (max_iter, tol); None: the QP's own cap, no tol.
_DEFAULTS: Mapping[str, tuple[int | None, float]] = types.MappingProxyType({
    "exact": (None, 0.0),
    "projected_gradient": (250, 1e-5),
    "frank_wolfe": (100, 1e-3),
})


class MGDAConvention(TypedDict):
  """The settings of :func:`mgda` of one reference."""

  solver: str
  max_iter: int | None
  tol: float
  combine: str
  uniform_mix: float


MGDA_CONVENTIONS: Mapping[str, MGDAConvention] = types.MappingProxyType({
    # The optimum, by an exact active-set solve (no reference computes it).
    "exact": MGDAConvention(
        solver="exact", max_iter=None, tol=0.0, combine="raw",
        uniform_mix=0.0,
    ),
    # isl-org/MultiObjectiveOptimization, multi_task/min_norm_solvers.py:
    # best pair, then projected gradient, stop at sum|dx| < 1e-5. Its loop
    # never increments its counter (no cap): 250 here, as LibMTL's.
    # train_multi_task.py combines the RAW gradients with the solution.
    "official": MGDAConvention(
        solver="projected_gradient", max_iter=250, tol=1e-5, combine="raw",
        uniform_mix=0.0,
    ),
    # LibMTL, weighting/MGDA.py: the same solver, 250 iterations, combines
    # the NORMALISED gradients (w = sol / gn).
    "libmtl": MGDAConvention(
        solver="projected_gradient", max_iter=250, tol=1e-5,
        combine="normalised", uniform_mix=0.0,
    ),
    # torchjd, aggregation/_mgda.py: Frank-Wolfe, epsilon 1e-3, 100 iterations.
    "torchjd": MGDAConvention(
        solver="frank_wolfe", max_iter=100, tol=1e-3, combine="raw",
        uniform_mix=0.0,
    ),
})


class MGDAState(NamedTuple):
  """State of :func:`mgda`.

  Attributes:
    count: int32 scalar, steps recorded (saturating).
    clock: int32 scalar, calls.
    weights: ``[K]`` the weights of the last step (``>= 0``; sum 1 unless
      ``combine="normalised"`` with a normalisation).
    iterations: int32 scalar, the solver's iterations on the last step.
    num_skipped: int32 scalar, skipped steps.
  """

  count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
  clock: jax.Array
  weights: jax.Array
  iterations: jax.Array
  num_skipped: jax.Array


def _two_point(
    v11: jax.Array, v12: jax.Array, v22: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The official ``min_c |c x1 + (1-c) x2|^2`` with its 0.999/0.001 clamps."""
  mid = safe_divide(v22 - v12, v11 + v22 - 2 * v12)
  first, second = v12 >= v11, v12 >= v22
  c = jnp.where(first, 0.999, jnp.where(second, 0.001, mid))
  cost = jnp.where(first, v11, jnp.where(second, v22, v22 + mid * (v12 - v22)))
  return c.astype(v11.dtype), cost


def _project_simplex(y: jax.Array) -> jax.Array:
  """The official Euclidean projection on the simplex (its early-break loop)."""
  k = y.shape[0]
  ys = jnp.sort(y)[::-1]
  cands = (jnp.cumsum(ys)[:-1] - 1.0) / jnp.arange(1, k, dtype=y.dtype)
  hit = cands > ys[1:]
  shift = jnp.where(
      jnp.any(hit), cands[jnp.argmax(hit)], (jnp.sum(y) - 1.0) / k
  )
  return jnp.maximum(y - shift, 0.0)


def _next_point(x: jax.Array, grad: jax.Array) -> jax.Array:
  """The official step: centred gradient, to the first face, projected."""
  k = x.shape[0]
  pg = grad - jnp.sum(grad) / k
  neg, pos = pg < 0, pg > 0
  t_lo = jnp.where(neg, -x / jnp.where(neg, pg, 1.0), -jnp.inf)
  t_hi = jnp.where(pos, (1.0 - x) / jnp.where(pos, pg, 1.0), -jnp.inf)
  lo = jnp.min(jnp.where(t_lo > 1e-7, t_lo, jnp.inf))
  hi = jnp.min(jnp.where(t_hi > 1e-7, t_hi, jnp.inf))
  t = jnp.where(jnp.isfinite(lo), lo, 1.0)
  t = jnp.where(jnp.isfinite(hi), jnp.minimum(t, hi), t)
  return _project_simplex(pg * t + x)


def _form(a: jax.Array, b: jax.Array, gram: jax.Array) -> jax.Array:
  return jnp.sum((a[:, None] * b[None, :]) * gram)


def _projected_gradient(
    gram: jax.Array, max_iter: int, tol: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """The official solver: best pair, then projected gradient (see :func:`mgda`)."""
  k = gram.shape[0]
  if k == 1:
    return jnp.ones((1,), gram.dtype), jnp.zeros((), jnp.int32)
  diag = jnp.diag(gram)
  c, cost = _two_point(diag[:, None], gram, diag[None, :])
  upper = jnp.arange(k)[:, None] < jnp.arange(k)[None, :]
  # Strict `<` over the row-major pairs: the first of equal costs wins. The
  # official running minimum starts at 1e8 (and fails when every pair costs
  # more); the largest float here.
  best = jnp.argmin(jnp.where(upper, cost, jnp.finfo(cost.dtype).max).ravel())
  i, j = best // k, best % k
  x = jnp.zeros((k,), gram.dtype).at[i].set(c.ravel()[best])
  x = x.at[j].set(1.0 - c.ravel()[best])
  if k < 3:
    return x, jnp.zeros((), jnp.int32)

  def cond(carry):
    _, it, done = carry
    return ~done & (it < max_iter)

  def body(carry):
    x, it, _ = carry
    p = _next_point(x, -(gram @ x))
    step, _ = _two_point(_form(x, x, gram), _form(x, p, gram), _form(p, p, gram))
    x_new = step * x + (1.0 - step) * p
    stop = jnp.sum(jnp.abs(x_new - x)) < tol
    return jnp.where(stop, x, x_new), it + (~stop).astype(jnp.int32), stop

  x, it, _ = jax.lax.while_loop(
      cond, body, (x, jnp.zeros((), jnp.int32), jnp.bool_(False))
  )
  return x, it


def _frank_wolfe(
    gram: jax.Array, max_iter: int, tol: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """torchjd's Frank-Wolfe (see :func:`mgda`)."""
  k = gram.shape[0]
  eye = jnp.eye(k, dtype=gram.dtype)

  def cond(carry):
    _, it, done = carry
    return ~done & (it < max_iter)

  def body(carry):
    x, it, _ = carry
    gx = gram @ x
    t = jnp.argmin(gx)  # the first index on ties, as torch.argmin
    a, b, c = gx[t], x @ gx, gram[t, t]
    gamma = jnp.where(
        c <= a, 1.0, jnp.where(b <= a, 0.0, safe_divide(b - a, b + c - 2 * a))
    ).astype(gram.dtype)
    x = (1.0 - gamma) * x + gamma * eye[t]
    return x, it + 1, gamma < tol

  x, it, _ = jax.lax.while_loop(
      cond,
      body,
      (jnp.full((k,), 1.0 / k, gram.dtype), jnp.zeros((), jnp.int32),
       jnp.bool_(False)),
  )
  return x, it


def mgda_solve(
    gram: jax.Array,
    *,
    solver: str = "exact",
    max_iter: int | None = None,
    tol: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
  r"""``argmin_{a in simplex} a^T G a`` by one of MGDA's solvers.

  Args:
    gram: ``[K, K]`` the Gramian (already normalised, if at all).
    solver: ``"exact"``, ``"projected_gradient"`` (official) or
      ``"frank_wolfe"`` (torchjd); see :func:`mgda`.
    max_iter: iteration cap (static; default 250, 100, or the QP's own).
    tol: stopping tolerance (default 1e-5, 1e-3; unused by ``"exact"``).

  Returns:
    ``(a, iterations)``: ``a`` on the simplex and the solver's iterations
    (``"exact"``: the QP's linear solves).
  """
  _checks.check_choice("solver", solver, MGDA_SOLVERS)
  gram = jnp.asarray(gram)
  default_iter, default_tol = _DEFAULTS[solver]
  max_iter = default_iter if max_iter is None else max_iter
  tol_ = jnp.asarray(default_tol if tol is None else tol, gram.dtype)
  if solver == "exact":
    res = min_norm_simplex(gram, max_iter=max_iter)
    return res.x, res.iterations
  assert max_iter is not None
  if solver == "projected_gradient":
    return _projected_gradient(gram, max_iter, tol_)
  return _frank_wolfe(gram, max_iter, tol_)


def mgda_normalizers(
    gram: jax.Array, losses: jax.Array, normalization: str
) -> jax.Array:
  """The official ``gradient_normalizers``: 1, ``||g_k||``, ``L_k``, ``L_k ||g_k||``."""
  _checks.check_choice("normalization", normalization, MGDA_NORMALIZATIONS)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  losses = losses.astype(gram.dtype)
  return {
      "none": jnp.ones_like(norms),
      "l2": norms,
      "loss": losses,
      "loss+": losses * norms,
  }[normalization]


def mgda_weights(
    gram: jax.Array,
    losses: jax.Array | None = None,
    *,
    solver: str = "exact",
    normalization: str = "none",
    combine: str = "raw",
    max_iter: int | None = None,
    tol: ArrayLike | None = None,
    uniform_mix: ArrayLike = 0.0,
) -> jax.Array:
  r"""MGDA's weights from the Gramian.

  .. math::
    a = \operatorname*{argmin}_{a \ge 0,\ \mathbf 1^\top a = 1}
        a^\top \tilde G a, \quad \tilde G = N^{-1} G N^{-1}, \qquad
    w = a \ \ (\text{raw}) \quad\text{or}\quad w = N^{-1} a \ \
    (\text{normalised})

  with ``N = diag(n_k)`` the normalisers of :func:`mgda_normalizers`
  (``1/0`` read as 0). See :func:`mgda`.

  Args:
    gram: ``[K, K]``.
    losses: ``[K]``, needed by the ``"loss"`` normalisations (positive).
    solver: ``"exact"``, ``"projected_gradient"`` or ``"frank_wolfe"``.
    normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
    combine: ``"raw"`` (official) or ``"normalised"`` (LibMTL).
    max_iter: the solver's cap.
    tol: the solver's tolerance.
    uniform_mix: ``m``, ``w <- (1 - m) w + m sum(w) / K``; 0 here (the
      published rule), 0.01 in :func:`mgda`'s default.

  Returns:
    ``[K]`` the weights.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])   # orthogonal, norms 1, 2
    >>> [round(x, 4) for x in sa.mgda_weights(gram).tolist()]
    [0.8, 0.2]
    >>> w = sa.mgda_weights(gram, normalization="l2", combine="normalised")
    >>> [round(x, 4) for x in w.tolist()]   # units: a = 1/2, then a / ||g||
    [0.5, 0.25]

  References:
    Sener, Koltun, NeurIPS 2018 (``isl-org/MultiObjectiveOptimization``);
    LibMTL ``weighting/MGDA.py``; torchjd ``aggregation/_mgda.py``.
  """
  _checks.check_choice("combine", combine, MGDA_COMBINES)
  gram = jnp.asarray(gram)
  if losses is None:
    if normalization in ("loss", "loss+"):
      raise ValueError(f"normalization={normalization!r} needs the losses.")
    losses = jnp.ones(gram.shape[:1], gram.dtype)
  losses = jnp.asarray(losses)
  w = _mgda(gram, losses, solver, normalization, combine, max_iter, tol)[0]
  return _protocol.mix_uniform(w, uniform_mix)


def _mgda(gram, losses, solver, normalization, combine, max_iter, tol):
  inv = safe_divide(
      jnp.ones((), gram.dtype), mgda_normalizers(gram, losses, normalization)
  )
  a, iterations = mgda_solve(
      gram * inv[:, None] * inv[None, :], solver=solver, max_iter=max_iter,
      tol=tol,
  )
  return (a * inv if combine == "normalised" else a), iterations


def mgda(
    num_losses: LossSpec,
    *,
    solver: str = "exact",
    normalization: str = "none",
    combine: str = "raw",
    max_iter: int | None = None,
    tol: ArrayLike | None = None,
    uniform_mix: ArrayLike = 0.01,
    wrt: Callable[[str, jax.Array], bool] | None = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> _protocol.LossWeighting:
  r"""MGDA (Désidéri 2012; Sener & Koltun, NeurIPS 2018): the min-norm direction.

  .. math::
    a = \operatorname*{argmin}_{a \ge 0,\ \mathbf 1^\top a = 1} a^\top G a,
    \qquad d = J^\top a

  ``d`` is the point of the convex hull of the gradients nearest the origin:
  it makes a non-negative inner product with every ``g_k``
  (``G a >= a^T G a``, with equality on the support of ``a``), and is 0 at a
  Pareto-stationary point. The weights are ``>= 0`` and sum to 1.

  **The default mixes in 1 % of the equal weights** (``uniform_mix=0.01``:
  ``w <- 0.99 w + 0.01 sum(w) / K``, every weight at least ``0.01 / K`` of
  the total). A loss
  that can reach its minimum alone makes a Pareto-stationary point of its
  own: MGDA then gives it all the weight and stops training the others. On
  the Helmholtz PINN of the studies (boundary loss 0 at ``u = 0``) the
  published rule learned nothing (relative L2 1.05, seed 0); with the mix it
  reached 0.0155 [0.0099, 0.0168] (3 seeds; equal weights 0.20).
  ``uniform_mix=0`` is the published rule (every ``MGDA_CONVENTIONS`` entry
  sets it).

  Solvers (``MGDA_CONVENTIONS`` names each reference's settings):

  - ``"exact"`` (default): the optimum, by a Lawson-Hanson active-set NNLS
    (``_qp.min_norm_simplex``) exact to rounding; at most ``5 K + 10``
    linear solves.
  - ``"projected_gradient"``: the official solver of
    ``isl-org/MultiObjectiveOptimization`` (``min_norm_solvers.py``), step
    for step: the best pair ``(i < j)`` by the closed-form two-point rule
    with its clamps (0.999 / 0.001 when an end point is optimal, so ``K = 2``
    returns 0.999 / 0.001, not 1 / 0); for ``K >= 3``, from there: the
    gradient ``-G x`` centred, a step ``t`` to the first face (the smallest
    ``> 1e-7``, else 1), the official simplex projection, a two-point line
    search; stop when ``sum |x_new - x| < tol`` (1e-5), returning the OLD
    ``x``. The official loop never increments its counter, so it has no
    iteration cap; here ``max_iter`` (250, LibMTL's) caps it and then
    returns the newest ``x``. Its running minimum over pairs starts at 1e8
    (the official code fails when every pair costs more): +inf here. Sums
    are vectorised (the official code sums term by term), so on slowly
    converging problems the path can part from the official one at the last
    bits: the two-point rule compares nearly equal numbers there.
  - ``"frank_wolfe"``: torchjd's: from ``1/K``, vertex ``t = argmin G x``
    (first index on ties), exact line search (step 1 if ``G_tt <= x^T G e_t``,
    0 if ``x^T G x <= x^T G e_t``), update, THEN stop if the step is below
    ``tol`` (1e-3); at most ``max_iter`` (100). Far from the optimum when
    ``K`` is large (3.3x the optimal objective at ``K = 8`` measured).

  Normalisation (official ``gradient_normalizers``): the solver runs on the
  gradients ``g_k / n_k``, ``n_k`` = 1 (``"none"``), ``||g_k||``
  (``"l2"``), ``L_k`` (``"loss"``) or ``L_k ||g_k||`` (``"loss+"``); a zero
  ``n_k`` zeroes that gradient. Then ``combine="raw"`` (default, the
  official ``train_multi_task.py``) combines the raw gradients, ``w = a``
  (sum 1); ``combine="normalised"`` (LibMTL) combines the normalised ones,
  ``w = a / n`` (no fixed sum). With ``"none"`` both are the same.

  Args:
    num_losses: ``K``, or the names of the losses, or a ``PyTreeDef``.
    solver: ``"exact"``, ``"projected_gradient"`` or ``"frank_wolfe"``.
    normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
    combine: ``"raw"`` or ``"normalised"``.
    uniform_mix: ``m`` in ``[0, 1]``, the share of the equal weights mixed
      in (traced); 0 is the published rule.
    max_iter: the solver's cap (a Python int; default per solver).
    tol: the solver's stopping tolerance (default per solver).
    wrt: ``(path, leaf) -> bool``, the parameters of the Gramian.
    axis_name: mapped data axis, or ``None``.

  Returns:
    A :class:`LossWeighting` whose state is an :class:`MGDAState`.

  Example:
    >>> import jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.mgda(2, uniform_mix=0.0)   # the published rule
    >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])   # orthogonal, norms 1, 2
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]   # g_1 . d = g_2 . d = 0.8
    [0.8, 0.2]
    >>> rule = sa.mgda(2)                    # the default: 1 % equal mixed in
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]
    [0.797, 0.203]
    >>> rule = sa.mgda(2, **sa.MGDA_CONVENTIONS["official"])
    >>> w, _ = rule.update(rule.init(), jnp.ones(2), {"gramian": gram})
    >>> [round(x, 4) for x in w.tolist()]   # the same: an interior optimum
    [0.8, 0.2]

  References:
    Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective
    optimization*, C. R. Math. 2012; Sener, Koltun, *Multi-Task Learning as
    Multi-Objective Optimization*, NeurIPS 2018, code
    ``isl-org/MultiObjectiveOptimization``; LibMTL; torchjd.
  """
  k = LossStructure(num_losses).num_losses
  _checks.check_choice("solver", solver, MGDA_SOLVERS)
  _checks.check_choice("normalization", normalization, MGDA_NORMALIZATIONS)
  _checks.check_choice("combine", combine, MGDA_COMBINES)
  if max_iter is not None:
    max_iter = _checks.check_int("max_iter", max_iter, minimum=1)
  if tol is not None:
    _checks.check_float("tol", tol, minimum=0.0)
  _checks.check_float("uniform_mix", uniform_mix, minimum=0.0, maximum=1.0)

  def init_fn(dtype: jnp.dtype, key: ArrayLike | None) -> MGDAState:
    del key
    return MGDAState(
        count=jnp.zeros((), jnp.int32),
        clock=jnp.zeros((), jnp.int32),
        weights=jnp.full((k,), 1.0 / k, dtype),
        iterations=jnp.zeros((), jnp.int32),
        num_skipped=jnp.zeros((), jnp.int32),
    )

  def weights_fn(gram, losses, state):
    w, iterations = _mgda(
        gram, losses, solver, normalization, combine, max_iter, tol
    )
    return w, state._replace(iterations=iterations)

  def diagnostics_fn(state: MGDAState) -> dict[str, jax.Array]:
    return {"iterations": state.iterations}

  return gramian_rule(
      num_losses, init_fn, weights_fn, wrt=wrt, axis_name=axis_name,
      diagnostics_fn=diagnostics_fn, uniform_mix=uniform_mix,
  )
