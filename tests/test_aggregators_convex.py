"""CAGrad and Nash-MTL (the aggregators with a convex sub-problem) against the peers.

Golden values: torchjd 0.18.0 on 17 fixed Jacobians and a three-step Nash-MTL
warm-start sequence (``tests/golden/aggregators.json``; the default suite
needs no torch). NumPy/SciPy float64 oracles (``tests/_reference_aggregators.py``):
CAGrad's official form (SciPy SLSQP at its default ``ftol``, as the official
code and LibMTL), the exact CAGrad solve (SLSQP at ``1e-15`` then Newton on
the face, KKT checked) and Nash-MTL's sequential convex steps (log-barrier
Newton at a 1e-12 duality gap). Properties: CAGrad's optimality (KKT and no
better point), its closed form where every ``x_k > 0`` (``w = nu G^{-1} 1``:
equal gains ``g_k^T d``, ``K = 2`` included); Nash-MTL's
``a_k (G a)_k = 1`` on the active constraints and the KKT conditions of each
convex step (exact, in 40-digit arithmetic on one case); unbounded and
infeasible steps; the cadence and clipping; jit, vmap, float32, zero
gradients; the iteration budgets.

Measured (float64; directions ``J^T w`` relative to their norm):

- CAGrad, torchjd form, against the exact solve: <= 1.3e-14 on the 17 cases
  (weights too where ``x`` is unique), <= 3e-14 over 300 random problems;
  against torchjd's CLARABEL: <= 2.2e-4 (CLARABEL stops early; the oracle
  measured the same). Official form against SLSQP at its default ``ftol``:
  <= 3.1e-4 (SLSQP's own error: our objective is lower or equal on every
  case; on tiny_K3_n5 SLSQP never leaves ``x0``). Solver iterations: <= 19
  on the golden cases, <= 27 at ``K = 16`` over 400 random problems (cap
  ``4 K + 20``).
- Nash-MTL against the oracle: <= 2.3e-11 on the golden cases (max_norm 0 and
  1), the warm-start sequence <= 2e-10; over 550 random problems <= 1e-9
  but for a few ill-conditioned ones (up to 2e-7) where the oracle's barrier
  is the less exact one (ours meets the KKT conditions to 1e-15, the
  oracle's active constraints are up to 5e-8 from tight). Where a convex step
  is unbounded the oracle returns a finite point (its ``c.a < 0``): there
  ours, as torchjd's ECOS, reports no solution and keeps alpha. Against
  torchjd's ECOS: <= 1.5e-6 on well-posed cases, 2.0e-4 at random_K5_n40,
  5.7e-5 at random_K8_n40, 5.2e-2 at random_K16_n40 (ECOS
  ``optimal_inaccurate``); the sequence 1.7e-6. Budgets, per convex step:
  <= 54 KKT Newton steps, <= 223 barrier steps (cap 400; the barrier runs
  only where the warm-started KKT Newton fails, 54 of ~1,000 steps).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import softadapt_jax as sa
from softadapt_jax import _cagrad, _nash_mtl

import _reference_aggregators as ref  # isort: skip

GOLDEN = json.loads(
    (pathlib.Path(__file__).parent / "golden" / "aggregators.json").read_text()
)
CASES = {c["name"]: c for c in GOLDEN["cases"]}
NAMES = sorted(CASES)
TORCHJD = sa.CAGRAD_CONVENTIONS["torchjd"]
OFFICIAL = sa.CAGRAD_CONVENTIONS["official"]
# 0 in the convex hull of the gradients, or a zero gradient: Nash-MTL's convex
# step has no solution (the previous alpha is kept).
INFEASIBLE = ("random_K16_n5", "antiparallel_K2_n5", "zero_row_K3_n5")
# Where torchjd's ECOS output is not a solution (the notes: wandering
# "optimal_inaccurate" values when infeasible; an iteration limit then a zero
# weight on tiny gradients).
ECOS_GARBAGE = ("random_K16_n5", "tiny_K3_n5")
# torchjd's ECOS (max_iters 100) against the exact steps, max relative error.
ECOS_LEVEL = {"random_K5_n40": 5e-4, "random_K8_n40": 2e-4, "random_K16_n40": 6e-2}


def _case(name):
  c = CASES[name]
  return np.asarray(c["J"], np.float64), np.asarray(c["gramian"], np.float64)


def _golden(name, key, field="weights") -> np.ndarray:
  return np.asarray(CASES[name]["results"][key][field], np.float64)


def _array(value: Any) -> np.ndarray:
  """An oracle's or a route's output as an array (for the type checker)."""
  return np.asarray(cast(Any, value), np.float64)


def _rel(a, b):
  scale = max(float(np.linalg.norm(b)), 1e-300)
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b))) / scale


_cagrad_weights = jax.jit(
    sa.cagrad_weights, static_argnames=("rescale", "max_iters")
)
_cagrad_solve = jax.jit(_cagrad.cagrad_solve, static_argnums=3)
# One compilation per K and dtype (optim_niter traced: it only bounds a loop).
_nash_solve = jax.jit(_nash_mtl.nash_mtl_solve)
_nash_weights = jax.jit(sa.nash_mtl_weights, static_argnames=("optim_niter",))


def _cagrad64(gram, alpha=0.5, **kw):
  with jax.enable_x64(True):
    return np.asarray(_cagrad_weights(jnp.asarray(gram, jnp.float64), alpha, **kw))


def _nash64(gram, alpha=None, optim_niter=20, dtype=jnp.float64):
  k = gram.shape[0]
  with jax.enable_x64(True):
    prev = jnp.ones(k, dtype) if alpha is None else jnp.asarray(alpha, dtype)
    a, info = _nash_solve(jnp.asarray(gram, dtype), prev, optim_niter)
    return np.asarray(a), jax.tree.map(np.asarray, info)


def _clip(j, a, max_norm, epsilon=0.0):
  """The clipping of :func:`sa.nash_mtl_weights` (checked there on its own)."""
  norm = np.linalg.norm(j.T @ a)
  return a * min(1.0, max_norm / (norm + epsilon)) if max_norm > 0 else a


def _random_gramians(seed, count):
  """Random Gramians of K = 2..16 gradients in n = 3..100 dimensions."""
  rng = np.random.default_rng(seed)
  out = []
  for trial in range(count):
    k = int(rng.choice([2, 3, 4, 5, 8, 12, 16]))
    n = int(rng.choice([3, 5, 10, 40, 100]))
    j = rng.normal(size=(k, n)) * np.exp(rng.normal(size=(k, 1)))
    if trial % 3 == 0:  # a shared component: agreeing gradients
      j += rng.normal(size=(1, n)) * rng.uniform(0, 2)
    j *= np.exp(rng.uniform(-5, 5))
    out.append(j)
  return out


def _in_hull_interior(gram):
  """Whether 0 is (numerically) in the convex hull of the gradients."""
  x = ref.mgda_exact_weights(gram)
  return float(x @ gram @ x) <= 1e-8 * float(np.max(np.diag(gram)))


# ===================================================================== CAGrad


@pytest.mark.parametrize("name", NAMES)
def test_cagrad_torchjd_form_equals_the_exact_solve(name):
  """The torchjd form (no epsilon, no rescale, its thresholds) to rounding."""
  j, g = _case(name)
  w = _cagrad64(g, **TORCHJD)
  expected = _array(ref.cagrad_torchjd_weights(g))
  np.testing.assert_allclose(j.T @ w, j.T @ expected, rtol=1e-12, atol=1e-13)
  if np.linalg.matrix_rank(g) == g.shape[0] or not np.any(expected):
    # x is unique where the gradients are independent.
    np.testing.assert_allclose(w, expected, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_cagrad_against_torchjd_clarabel(name):
  """torchjd's CLARABEL stops ~1e-4 short of the optimum: that level here."""
  j, g = _case(name)
  w = _cagrad64(g, **TORCHJD)
  key = "torchjd.CAGrad[c=0.5]"
  d, expected = j.T @ w, _golden(name, key, "direction")
  assert _rel(d, expected) <= 3e-4
  assert np.max(np.abs(w - _golden(name, key))) <= 3e-4 * max(np.max(np.abs(w)), 1)
  # Ours is the better point of the same problem.
  gn = ref.trace_normalize(g, 1e-4)
  k = g.shape[0]
  b = np.full(k, 1.0 / k)
  phi = 0.5 * np.sqrt(max(b @ gn @ b, 0.0))

  def f(x):
    return float(gn @ b @ x + phi * np.sqrt(max(x @ gn @ x, 0.0)))

  with jax.enable_x64(True):
    x, *_ = _cagrad_solve(jnp.asarray(g), 0.5, 0.0, 4 * k + 20)
  x_torchjd = (_golden(name, key) - b) if np.any(_golden(name, key)) else None
  if x_torchjd is not None and np.sum(x_torchjd) > 0:
    x_torchjd = x_torchjd / np.sum(x_torchjd)  # w - b is proportional to x
    assert f(np.asarray(x)) <= f(x_torchjd) + 1e-14


@pytest.mark.parametrize("name", NAMES)
def test_cagrad_official_against_slsqp(name):
  """The official form (1e-8 terms, rescale 1) against SLSQP at ftol 1e-6."""
  j, g = _case(name)
  w = _cagrad64(g, **OFFICIAL)
  expected, info = ref.cagrad_official_weights(g, _with_info=True)
  k = g.shape[0]
  b = np.full(k, 1.0 / k)
  c = 0.5 * np.sqrt(g.mean() + 1e-8) + 1e-8

  def f(x):
    return float(x @ g @ b + c * np.sqrt(x @ g @ x + 1e-8))

  x = w * (1 + 0.5**2) - b  # w = (b + lam x) / r: x is proportional to r w - b
  x = x / np.sum(x)
  assert f(x) <= f(info["x"]) + 1e-12 * abs(f(info["x"]))
  if name == "tiny_K3_n5":
    # The objective is below SLSQP's absolute ftol: it never leaves x0 = b.
    np.testing.assert_allclose(info["x"], b)
    return
  assert _rel(j.T @ w, j.T @ expected) <= 4e-4


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("convention", ["official", "torchjd"])
def test_cagrad_solution_is_optimal(name, convention):
  """KKT on the simplex, and no vertex, centre or random point does better."""
  _, g = _case(name)
  conv = sa.CAGRAD_CONVENTIONS[convention]
  eps = conv["epsilon"]
  k = g.shape[0]
  with jax.enable_x64(True):
    x, c, _, _, converged = _cagrad_solve(jnp.asarray(g), 0.5, eps, 4 * k + 20)
  x, c = np.asarray(x), float(c)
  assert bool(converged) or _in_hull_interior(g)
  assert np.all(x >= 0)
  assert abs(np.sum(x) - 1) < 1e-14
  b = np.full(k, 1.0 / k)

  def f(y):
    return float(y @ g @ b + c * np.sqrt(max(y @ g @ y + eps, 0.0)))

  rng = np.random.default_rng(0)
  others = [*np.eye(k), b, *rng.dirichlet(np.ones(k), size=200)]
  scale = max(abs(f(x)), float(np.max(np.diag(g))) * 1e-3)
  assert all(f(x) <= f(y) + 1e-13 * scale for y in others)
  if _in_hull_interior(g) and eps == 0:
    return  # the optimum is the kink sqrt(x^T G x) = 0: no gradient there
  q = np.sqrt(max(x @ g @ x + eps, 0.0))
  grad = g @ b + c * (g @ x) / q
  nu = float(grad @ x)
  tol = 1e-11 * float(np.max(np.abs(grad)))
  assert np.all(grad >= nu - tol)  # no coordinate would lower f
  np.testing.assert_allclose(grad[x > 1e-12], nu, atol=tol)


def _interior_closed_form(g, alpha):
  """``w = nu G^{-1} 1`` with ``nu = (1 + sqrt(D)) / s``, ``s = 1^T G^{-1} 1``,
  ``D = 1 - s ||g_0||^2 (1 - alpha^2)``: CAGrad where every ``x_k > 0``
  (epsilon 0, no rescale); ``x = (nu G^{-1} 1 - b) / sqrt(D)``."""
  k = g.shape[0]
  b = np.full(k, 1.0 / k)
  a = np.linalg.solve(g, np.ones(k))
  s = float(np.sum(a))
  disc = 1.0 - s * float(b @ g @ b) * (1.0 - alpha**2)
  if disc <= 0:  # no minimum on the plane sum x = 1: the optimum is on a face
    return None
  nu = (1.0 + np.sqrt(disc)) / s
  return nu * a, (nu * a - b) / np.sqrt(disc), nu


def test_cagrad_closed_forms():
  """Symmetric pair: x = b, w = (1 + alpha) b; interior optimum: G w = nu 1."""
  cos = -0.6
  g = np.array([[1.0, cos], [cos, 1.0]])
  for alpha in (0.2, 0.5, 0.9):
    w = _cagrad64(g, alpha, rescale=0, epsilon=0.0)
    np.testing.assert_allclose(w, [(1 + alpha) / 2] * 2, rtol=1e-13)
    w = _cagrad64(g, alpha, rescale=1, epsilon=0.0)
    np.testing.assert_allclose(w, [(1 + alpha) / 2 / (1 + alpha**2)] * 2, rtol=1e-13)
  rng = np.random.default_rng(3)
  checked = 0
  for k in (2, 2, 2, 3, 5):
    for _ in range(30):
      j = rng.normal(size=(k, 8)) + rng.normal(size=(1, 8))
      g = j @ j.T
      alpha = float(rng.uniform(0.1, 0.9))
      closed = _interior_closed_form(g, alpha)
      if closed is None or np.min(closed[1]) <= 1e-6:
        continue  # the optimum is on a face: the closed form does not apply
      w_closed, _, nu = closed
      w = _cagrad64(g, alpha, rescale=0, epsilon=0.0)
      np.testing.assert_allclose(w, w_closed, rtol=1e-11)
      np.testing.assert_allclose(g @ w, nu, rtol=1e-11)  # equal gains g_k^T d
      checked += 1
  assert checked >= 15
  # K = 2 with the optimum at a vertex: x = e_k, w = b + c / ||g_k|| e_k.
  g = np.array([[4.0, 0.0], [0.0, 1.0]])
  c = 0.5 * np.sqrt(np.mean(g))
  np.testing.assert_allclose(
      _cagrad64(g, 0.5, rescale=0, epsilon=0.0), [0.5, 0.5 + c], rtol=1e-13
  )


def test_cagrad_random_problems_and_iteration_budget():
  """30 random problems: the exact solve to 1e-12, within the budget.

  (400 random problems measured during development: at most 27 iterations
  at K = 16.)
  """
  worst, most = 0.0, 0
  with jax.enable_x64(True):
    for j in _random_gramians(2, 30):
      g = j @ j.T
      k = g.shape[0]
      _, _, _, it, converged = _cagrad_solve(
          jnp.asarray(g), 0.5, 0.0, _cagrad.default_max_iters(k)
      )
      most = max(most, int(it))
      if _in_hull_interior(g):
        continue
      assert bool(converged)
      w = np.asarray(_cagrad_weights(jnp.asarray(g), 0.5, rescale=0, epsilon=0.0))
      expected = ref.cagrad_torchjd_weights(g, norm_eps=0.0)
      worst = max(worst, _rel(j.T @ w, j.T @ expected))
  assert worst <= 1e-12
  assert most <= 30  # measured 27 at K = 16; the cap is 4 K + 20 = 84


def test_cagrad_tiny_zero_and_degenerate_gramians_stay_finite():
  k = 3
  cases = {
      "zero": np.zeros((k, k)),
      "tiny": np.eye(k) * 1e-30,
      "zero_row": _case("zero_row_K3_n5")[1],
      "antiparallel": _case("antiparallel_K2_n5")[1],
      "ones": np.ones((k, k)),  # what the kit feeds on a skipped step
  }
  for name, g in cases.items():
    for dtype in (jnp.float32, jnp.float64):
      for conv in (TORCHJD, OFFICIAL, {"rescale": 0, "epsilon": 0.0, "norm_eps": 0.0}):
        with jax.enable_x64(True):
          w = np.asarray(_cagrad_weights(jnp.asarray(g, dtype), 0.5, **conv))
        assert np.all(np.isfinite(w)), (name, dtype, conv)
  # torchjd: zero weights below its thresholds; the official form's mean.
  assert not np.any(_cagrad64(np.zeros((3, 3)), **TORCHJD))
  w = _cagrad64(np.zeros((3, 3)), **OFFICIAL)
  np.testing.assert_allclose(w, w[0])  # x stays at b: a multiple of the mean


@pytest.mark.parametrize("k", [2, 3, 4, 5, pytest.param(8, marks=pytest.mark.slow),
                               pytest.param(16, marks=pytest.mark.slow)])
def test_cagrad_float32_close_to_float64(k):
  for name in NAMES:
    j, g = _case(name)
    if g.shape[0] != k:
      continue
    w64 = _cagrad64(g, **TORCHJD)
    w32 = np.asarray(_cagrad_weights(jnp.asarray(g, jnp.float32), 0.5, **TORCHJD))
    assert w32.dtype == np.float32
    assert np.all(np.isfinite(w32))
    if np.any(w64):
      assert _rel(j.T @ w32, j.T @ w64) <= 2e-5, name


def test_cagrad_jit_vmap_and_rule():
  _, g = _case("random_K5_n40")
  with jax.enable_x64(True):
    gram = jnp.asarray(g)
    eager = sa.cagrad_weights(gram, 0.5, rescale=1)
    jitted = jax.jit(sa.cagrad_weights, static_argnames="rescale")(gram, 0.5)
    np.testing.assert_allclose(eager, jitted, rtol=1e-13)
    alphas = jnp.array([0.1, 0.5, 0.9])
    swept = jax.vmap(lambda a: _cagrad_weights(gram, a))(alphas)
    for a, w in zip(alphas, swept, strict=True):
      np.testing.assert_allclose(w, _cagrad_weights(gram, a), rtol=1e-12)
    grams = jnp.stack([jnp.asarray(_case(n)[1]) for n in
                       ("random_K3_n5", "random_K3_n40", "all_agree_K3_n40")])
    batched = jax.vmap(lambda m: _cagrad_weights(m, 0.5))(grams)
    for m, w in zip(grams, batched, strict=True):
      np.testing.assert_allclose(w, _cagrad_weights(m, 0.5), rtol=1e-12)
    rule = sa.cagrad(5, **TORCHJD)
    w, state = jax.jit(rule.update)(
        rule.init(dtype=jnp.float64), jnp.ones(5), {"gramian": gram}
    )
    np.testing.assert_allclose(w, _array(ref.cagrad_torchjd_weights(g)), rtol=1e-11)
    assert isinstance(state, sa.CAGradState)


def test_cagrad_argument_checks():
  with pytest.raises(ValueError, match="rescale"):
    sa.cagrad(3, rescale=3)
  with pytest.raises(ValueError, match="alpha"):
    sa.cagrad(3, alpha=-0.1)
  with pytest.raises(TypeError, match="max_iters"):
    sa.cagrad(3, max_iters=2.5)  # pyright: ignore[reportArgumentType]


# ================================================================== Nash-MTL


# The oracle's barrier method runs in Python: a case per K and the
# degenerate ones (torchjd's golden values cover every case below).
ORACLE_CASES = [
    "antiparallel_K2_n5", "random_K2_n40", "random_K3_n5", "random_K5_n40",
    "random_K8_n40", "random_K16_n40", "random_K16_n5", "zero_row_K3_n5",
    "tiny_K3_n5", "rank_deficient_K5_n40",
]


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if "K16" in n else n  # 3 s each
    for n in ORACLE_CASES
])
@pytest.mark.parametrize("max_norm", [0.0, 1.0])
def test_nash_mtl_against_the_oracle(name, max_norm):
  """The references' sequential steps, fresh state, to the oracle's accuracy."""
  j, g = _case(name)
  agg, _ = ref.nash_mtl(j, G=g, max_norm=max_norm)
  alpha, _ = _nash64(g)
  np.testing.assert_allclose(alpha, agg.info["alpha"], rtol=1e-9)
  np.testing.assert_allclose(_clip(j, alpha, max_norm), _array(agg.weights), rtol=1e-9)
  if name in INFEASIBLE:
    np.testing.assert_array_equal(alpha, np.ones(g.shape[0]))


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if "K16" in n else n  # 3 s each
    for n in NAMES
])
@pytest.mark.parametrize("max_norm", [0, 1])
def test_nash_mtl_against_torchjd_ecos(name, max_norm):
  """torchjd's ECOS is only this accurate (the notes: 2e-6 / 2e-4 / 5e-2)."""
  j, g = _case(name)
  key = f"torchjd.NashMTL[max_norm={max_norm}]"
  w = _clip(j, _nash64(g)[0], max_norm)
  if name in ECOS_GARBAGE:
    return  # not a solution there (see ECOS_GARBAGE)
  expected = _golden(name, key)
  level = ECOS_LEVEL.get(name, 5e-6)
  assert np.max(np.abs(w - expected)) <= level * np.max(np.abs(expected))
  assert _rel(j.T @ w, _golden(name, key, "direction")) <= 2 * level


def test_nash_mtl_warm_start_sequence():
  """Three calls of one rule: torchjd's sequence and the oracle's, step by step."""
  steps = GOLDEN["nash_sequence"]["steps"]
  rule = sa.nash_mtl(3, max_norm=0.0)
  state_ref = None
  with jax.enable_x64(True):
    update = jax.jit(rule.update)
    state = rule.init(dtype=jnp.float64)
    for step in steps:
      g = np.asarray(step["gramian"])
      w, state = update(state, jnp.ones(3), {"gramian": jnp.asarray(g)})
      a_ref, state_ref, _ = ref.nash_mtl_weights(g, state_ref)
      np.testing.assert_allclose(w, a_ref, rtol=1e-9)
      np.testing.assert_allclose(w, step["weights"], rtol=3e-6)
      np.testing.assert_allclose(state.alpha, a_ref, rtol=1e-9)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if "K16" in n else n  # 3 s each
    for n in sorted(set(NAMES) - set(INFEASIBLE))
])
def test_nash_mtl_bargaining_conditions(name):
  """``a_k (G a)_k >= 1``, with equality on the active constraints (every one
  where the loop stopped after two steps: the paper's ``G a = 1/a``)."""
  _, g = _case(name)
  a, info = _nash64(g)
  prod = a * (g @ a)
  assert np.all(prod >= 1 - 1e-10)
  assert np.sum(np.abs(prod - 1) <= 1e-10) >= 1
  if int(info.steps) == 2:
    np.testing.assert_allclose(prod, 1.0, atol=1e-11)


def _step_kkt(gram, a_prev, a_new):
  """KKT residuals of one convex step at ``a_new`` (raw scale): stationarity
  with non-negative multipliers on the active constraints, feasibility."""
  nf = np.linalg.norm(gram)
  gn = gram / nf
  c = gn.sum(0) + (1 / a_prev + gn.T @ (1 / (gn @ a_prev))) / nf
  prod = a_new * (gram @ a_new)
  active = np.abs(prod - 1) <= 1e-8
  # grad of log a_k + log (G a)_k, rows; c = sum_k mu_k grad_k on the active.
  rows = np.diag(1 / a_new) + gram / (gram @ a_new)[:, None]
  mu, *_ = np.linalg.lstsq(rows[active].T, c, rcond=None)
  residual = np.max(np.abs(c - rows[active].T @ mu)) / np.max(np.abs(c))
  return residual, mu, prod


@pytest.mark.parametrize("name", ["random_K3_n5", "random_K5_n40", "random_K16_n40"])
def test_nash_mtl_convex_steps_meet_their_kkt_conditions(name):
  _, g = _case(name)
  a_prev = np.ones(g.shape[0])
  for _ in range(3):
    a_new, _ = _nash64(g, a_prev, optim_niter=1)
    if np.array_equal(a_new, a_prev):
      break  # stopped: a small step
    residual, mu, prod = _step_kkt(g, a_prev, a_new)
    assert residual <= 1e-12
    assert np.all(mu >= -1e-12)
    assert np.all(prod >= 1 - 1e-12)
    a_prev = a_new


def test_nash_mtl_convex_step_is_exact_where_the_oracle_is_not():
  """An ill-conditioned step (norms 7e3 to 2e2): ours meets the KKT
  conditions to rounding; the oracle's barrier stops at a finite t, with its
  constraints 5e-8 from tight (2e-8 from ours)."""
  g = np.array([
      [7145174.510640849, -84635.57524809142, -162551.77141020715],
      [-84635.57524809142, 51935.58071494171, -15262.28779494243],
      [-162551.77141020715, -15262.28779494243, 559192.2253946066],
  ])
  ones = np.ones(3)
  a_new, _ = _nash64(g, ones, optim_niter=1)
  residual, mu, prod = _step_kkt(g, ones, a_new)
  assert residual <= 1e-14
  assert np.all(mu > 0)
  np.testing.assert_allclose(prod, 1.0, atol=1e-15)
  nf = np.linalg.norm(g)
  oracle = _array(ref._nash_convex_step(g / nf, float(nf), ones))
  assert np.max(np.abs(oracle * (g @ oracle) - 1)) > 1e-8
  np.testing.assert_allclose(a_new, oracle, rtol=5e-8)


def test_nash_mtl_unbounded_step_keeps_the_previous_alpha():
  """A convex step can be unbounded (a feasible point with c.a < 0: 2a is
  feasible too); torchjd's ECOS then reports no solution and the previous
  alpha is kept. The NumPy oracle's barrier returns a finite point there."""
  g = np.array([[9.5, -1.5], [-1.5, 1.25]])
  nf = np.linalg.norm(g)
  gn = g / nf
  ones = np.ones(2)
  c = gn.sum(0) + (1 / ones + gn.T @ (1 / (gn @ ones))) / nf
  oracle = ref._nash_convex_step(gn, float(nf), ones)
  assert oracle is not None
  assert np.all(oracle * (g @ oracle) >= 1 - 1e-9)
  assert c @ oracle < 0  # feasible and below 0: the step is unbounded
  a, info = _nash64(g)
  np.testing.assert_array_equal(a, ones)
  assert int(info.stop) == 1
  assert bool(info.feasible)


def test_nash_mtl_infeasible_keeps_any_previous_alpha():
  previous = np.array([0.3, 2.0, 1.5])
  for g in (_case("zero_row_K3_n5")[1], np.zeros((3, 3))):
    a, info = _nash64(g, previous)
    np.testing.assert_array_equal(a, previous)
    assert not bool(info.feasible)
    assert int(info.stop) == 1


def test_nash_mtl_random_problems_and_iteration_budgets():
  """Against the oracle on random problems, and every loop below its cap."""
  worst, most = 0.0, np.zeros(3, int)
  for j in _random_gramians(7, 15):  # 550 measured during development
    g = j @ j.T
    a, info = _nash64(g)
    most = np.maximum(most, [int(info.steps), int(info.newton), int(info.barrier)])
    expected, _, meta = ref.nash_mtl_weights(g)
    if int(info.stop) == 1 and meta["stop"] != "solver":
      # An unbounded step (see above): the oracle's answer is no solution.
      assert np.array_equal(a, np.ones(g.shape[0]))
      continue
    assert int(info.steps) == meta["iterations"]
    worst = max(worst, float(np.max(np.abs(a - expected)) / np.max(np.abs(expected))))
  assert worst <= 2e-8  # the oracle's accuracy on ill-conditioned steps
  assert most[0] <= 20
  assert most[1] <= 20 * (_nash_mtl.NEWTON_ITERS)
  assert most[2] <= 3 * _nash_mtl.BARRIER_ITERS


@pytest.mark.parametrize("convention", ["torchjd", "libmtl"])
def test_nash_mtl_clipping(convention):
  j, g = _case("random_K3_n40")
  conv = sa.NASH_MTL_CONVENTIONS[convention]
  with jax.enable_x64(True):
    w, alpha = _nash_weights(jnp.asarray(g), jnp.ones(3), **conv)
  agg, _ = ref.nash_mtl(j, G=g, convention=convention)
  np.testing.assert_allclose(w, _array(agg.weights), rtol=1e-9)
  norm = np.linalg.norm(j.T @ np.asarray(alpha))
  assert norm > 1  # clipped: to 1 (torchjd), to 1 / (1 + 1e-6) of it (LibMTL)
  expected = 1.0 if convention == "torchjd" else norm / (norm + 1e-6)
  np.testing.assert_allclose(np.linalg.norm(j.T @ np.asarray(w)), expected, rtol=1e-12)


def test_nash_mtl_cadence_holds_weights_between_updates():
  grams = [jnp.asarray(s["gramian"]) for s in GOLDEN["nash_sequence"]["steps"]]
  rule = sa.nash_mtl(3, max_norm=0.0, update_weights_every=2)
  with jax.enable_x64(True):
    update = jax.jit(rule.update)
    state = rule.init(dtype=jnp.float64)
    seen = []
    for t in range(5):
      w, state = update(state, jnp.ones(3), {"gramian": grams[t % 3]})
      seen.append(np.asarray(w))
    a0, s0, _ = ref.nash_mtl_weights(np.asarray(grams[0]))
    a2, _, _ = ref.nash_mtl_weights(np.asarray(grams[2]), s0._replace(step=0))
    np.testing.assert_allclose(seen[0], a0, rtol=1e-9)
    np.testing.assert_array_equal(seen[1], seen[0])  # held
    np.testing.assert_allclose(seen[2], a2, rtol=1e-9)  # warm from a0
    np.testing.assert_array_equal(seen[3], seen[2])
    assert int(state.clock) == 5


@pytest.mark.slow  # 16 s of compilation; the routes' test jits it by default
def test_nash_mtl_jit_vmap_and_zero_gradients():
  names = ("random_K3_n5", "random_K3_n40", "all_agree_K3_n40")
  grams = [_case(n)[1] for n in names]
  with jax.enable_x64(True):
    stacked = jnp.asarray(np.stack(grams))
    batched, _ = jax.vmap(lambda m: _nash_solve(m, jnp.ones(3), 20))(stacked)
    for g, a in zip(grams, batched, strict=True):
      np.testing.assert_allclose(a, _nash64(g)[0], rtol=1e-12)
    eager, _ = sa.nash_mtl_weights(stacked[0], jnp.ones(3), max_norm=0.0)
    np.testing.assert_allclose(eager, _nash64(grams[0])[0], rtol=1e-12)
    norms = jnp.array([0.0, 0.5, 1.0])
    swept = jax.vmap(
        lambda m: _nash_weights(stacked[0], jnp.ones(3), max_norm=m)[0]
    )(norms)
    for m, w in zip(norms, swept, strict=True):
      np.testing.assert_allclose(
          w, _nash_weights(stacked[0], jnp.ones(3), max_norm=m)[0], rtol=1e-12
      )
  # Zero, tiny and all-equal gradients (what the kit feeds on a skipped step).
  for g in (np.zeros((3, 3)), np.eye(3) * 1e-30, np.ones((3, 3))):
    for dtype in (jnp.float32, jnp.float64):
      a, _ = _nash64(g, dtype=dtype)
      assert np.all(np.isfinite(a))
      with jax.enable_x64(True):
        w, _ = _nash_weights(jnp.asarray(g), jnp.ones(3))
      assert np.all(np.isfinite(np.asarray(w)))


@pytest.mark.parametrize("k", [3, pytest.param(5, marks=pytest.mark.slow),
                               pytest.param(16, marks=pytest.mark.slow)])
def test_nash_mtl_float32_close_to_float64(k):
  """float32 is finite and close to float64 (one compilation per K)."""
  for name in NAMES:
    _, g = _case(name)
    if g.shape[0] != k:
      continue
    a32, _ = _nash64(g, dtype=jnp.float32)
    assert a32.dtype == np.float32
    assert np.all(np.isfinite(a32))
    a64, _ = _nash64(g)
    assert np.max(np.abs(a32 - a64)) <= 2e-6 * np.max(np.abs(a64)), name


def test_nash_mtl_argument_checks():
  with pytest.raises(TypeError, match="update_weights_every"):
    sa.nash_mtl(3, update_weights_every=1.5)  # pyright: ignore[reportArgumentType]
  with pytest.raises(ValueError, match="max_norm"):
    sa.nash_mtl(3, max_norm=-1.0)
  with pytest.raises(ValueError, match="optim_niter"):
    sa.nash_mtl(3, optim_niter=0)


# ==================================================================== routes


@pytest.mark.parametrize(
    "make", [lambda: sa.cagrad(3), lambda: sa.nash_mtl(3)], ids=["cagrad", "nash_mtl"]
)
def test_routes_give_j_transpose_w(make):
  """One VJP with the weights from the true Gramian; combine_grads agrees."""
  rule = make()
  x = jnp.array([0.3, -1.2, 2.0, 0.7])

  def losses(p):
    return jnp.stack([
        jnp.sum((p - 1.0) ** 2), jnp.sum(jnp.sin(p) * p), jnp.sum(p[:2] ** 3),
    ])

  jac = jax.jacrev(losses)(x)
  out = jax.jit(sa.weighted_value_and_grad(losses, rule))(rule.init(), x)
  gram = jac @ jac.T
  w, _ = rule.update(rule.init(), losses(x), {"gramian": gram})
  np.testing.assert_allclose(out.weights, w, rtol=2e-5)
  np.testing.assert_allclose(out.grad, jac.T @ w, rtol=2e-5, atol=1e-6)
  tx = sa.combine_grads(rule)
  updates, _ = tx.update(jac, tx.init(x), x, losses=losses(x))
  np.testing.assert_allclose(_array(updates), jac.T @ w, rtol=2e-5, atol=1e-6)
