"""The maths (SPEC sections 2-4): stencils, slopes, the three variants, parity.

Numbers are checked three ways: against hand-derived values, against the
reference package (the oracle, when installed) on random histories of its
well-defined domain, and against stored golden values of that oracle.
"""

from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import softadapt_jax as sa
from softadapt_jax._slopes import _exact_forward_coefficients

from helpers import stable_seed  # isort: skip
from _oracle import (  # isort: skip
    EXAMPLE_1,
    EXAMPLE_2,
    EXAMPLES,
    GOLDEN,
    HAVE_ORACLE,
    ORACLE_EPSILON,
    oracle_weights,
)

VARIANTS = ("original", "normalized", "loss_weighted")
needs_oracle = pytest.mark.skipif(not HAVE_ORACLE, reason="oracle not installed")


# ----------------------------------------------------------------- stencils


@pytest.mark.parametrize("order", range(1, 13))
def test_forward_coefficients_solve_the_moment_equations_exactly(order):
  c = _exact_forward_coefficients(order)
  assert len(c) == order + 1
  for m in range(order + 1):
    moment = sum(cj * Fraction(j) ** m for j, cj in enumerate(c))
    assert moment == (1 if m == 1 else 0), (order, m)


def test_forward_coefficients_match_the_spec_table():
  table = {
      1: [-1, 1],
      2: [-3 / 2, 2, -1 / 2],
      3: [-11 / 6, 3, -3 / 2, 1 / 3],
      4: [-25 / 12, 4, -3, 4 / 3, -1 / 4],
      5: [-137 / 60, 5, -5, 10 / 3, -5 / 4, 1 / 5],
  }
  for order, expected in table.items():
    np.testing.assert_allclose(
        sa.finite_difference_coefficients(order), expected, rtol=1e-15
    )


@pytest.mark.parametrize("order", [1, 2, 3, 6])
def test_backward_stencil_is_the_derivative_at_the_newest_point(order):
  c = sa.finite_difference_coefficients(order, "backward")
  for m in range(order + 1):
    moment = sum(cj * float(j - order) ** m for j, cj in enumerate(c))
    np.testing.assert_allclose(moment, 1.0 if m == 1 else 0.0, atol=1e-9)


# ------------------------------------------------------------------- slopes


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5, 7])
@pytest.mark.parametrize("stencil", ["forward", "backward"])
def test_slopes_are_exact_on_polynomials_of_degree_order(order, stencil):
  # A degree-p polynomial is differentiated exactly by a (p+1)-point stencil:
  # the forward one at the window's oldest time, the backward one at its
  # newest.
  rng = np.random.default_rng(order)
  n = order + 3
  t = np.arange(n, dtype=np.float64)
  coeffs = rng.normal(size=(order + 1, 2))
  history = sum(coeffs[d] * t[:, None] ** d for d in range(order + 1))
  deriv = lambda x: sum(
      d * coeffs[d] * x ** (d - 1) for d in range(1, order + 1)
  )
  at = t[n - order - 1] if stencil == "forward" else t[-1]
  with jax.enable_x64(True):
    got = sa.slopes(jnp.asarray(history), order, stencil=stencil)
  np.testing.assert_allclose(got, deriv(at), rtol=1e-8, atol=1e-8)


def test_slopes_hand_derived_p1_p2_and_window():
  h = jnp.array([[9.0, 0.0], [1.0, 4.0], [2.0, 1.0], [4.0, 0.0]])
  np.testing.assert_allclose(sa.slopes(h, 1), [4.0 - 2.0, 0.0 - 1.0])
  # p = 2 on rows 1..3: -3/2 h1 + 2 h2 - 1/2 h3.
  np.testing.assert_allclose(
      sa.slopes(h, 2), [-1.5 * 1 + 2 * 2 - 0.5 * 4, -1.5 * 4 + 2 * 1 - 0]
  )
  # order=None uses all 4 rows (p = 3).
  c = sa.finite_difference_coefficients(3)
  np.testing.assert_allclose(sa.slopes(h), c @ np.asarray(h), rtol=1e-6)


def test_slopes_keep_the_history_dtype_and_jit():
  h = jnp.arange(12.0, dtype=jnp.bfloat16).reshape(4, 3)
  assert sa.slopes(h, 2).dtype == jnp.bfloat16
  np.testing.assert_allclose(
      jax.jit(sa.slopes, static_argnums=1)(EXAMPLE_1, 2), sa.slopes(EXAMPLE_1, 2)
  )


# ------------------------------------------------------ hand-derived weights


def _softmax_reference(z, beta, w=None, eps=1e-8):
  z = np.asarray(z, np.float64)
  w = np.ones_like(z) if w is None else np.asarray(w, np.float64)
  e = w * np.exp(beta * (z - z.max()))
  return e / (e.sum() + eps)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS)
def test_weights_hand_derived(order, variant):
  h = np.array([[4.0, 2.0, 9.0], [3.0, 2.5, 6.0], [2.5, 2.0, 2.0]])
  beta = 0.7
  s = h[2] - h[1] if order == 1 else -1.5 * h[0] + 2 * h[1] - 0.5 * h[2]
  if variant == "original":
    expected = _softmax_reference(s, beta)
  elif variant == "normalized":
    expected = _softmax_reference(s / s.sum(), beta)
  else:
    expected = _softmax_reference(s, beta, h.mean(axis=0))
  got = sa.weights_from_history(
      jnp.asarray(h, jnp.float32), beta=beta, variant=variant, order=order
  )
  np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)


def test_scale_by_num_losses_and_beta_zero():
  w = sa.weights_from_history(EXAMPLE_2, beta=0.1, scale_by_num_losses=True)
  np.testing.assert_allclose(jnp.sum(w), 4.0, rtol=1e-6)
  np.testing.assert_allclose(
      w / 4, sa.weights_from_history(EXAMPLE_2, beta=0.1), rtol=1e-6
  )
  for variant in ("original", "normalized"):
    w0 = sa.weights_from_history(EXAMPLE_2, beta=0.0, variant=variant)
    np.testing.assert_allclose(w0, 0.25, rtol=1e-6)


# ------------------------------------------------------- oracle golden values


@pytest.mark.parametrize("key", sorted(GOLDEN, key=str))
def test_golden_values(key):
  example, variant, order = key
  got = sa.weights_from_history(
      EXAMPLES[example],
      beta=0.1,
      variant=variant,
      order=order,
      epsilon=ORACLE_EPSILON,
  )
  np.testing.assert_allclose(got, GOLDEN[key], rtol=1e-4, atol=1e-6)
  if HAVE_ORACLE:
    ref = oracle_weights(EXAMPLES[example], variant, order=order)
    np.testing.assert_allclose(ref, GOLDEN[key], rtol=1e-6, atol=1e-12)


def test_golden_values_spec_table():
  # SPEC section 3, to the digits printed there.
  spec = {
      "original": [9.9343324e-01, 6.5666274e-03, 3.8908036e-22],
      "normalized": [0.32207233, 0.32507926, 0.35284847],
      "loss_weighted": [8.79777193e-01, 1.20222814e-01, 7.12334210e-20],
  }
  for variant, expected in spec.items():
    got = sa.weights_from_history(
        EXAMPLE_1, beta=0.1, variant=variant, epsilon=ORACLE_EPSILON
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


# --------------------------------------------- parity on random histories


def _random_domain_history(rng, variant, order, num_losses, beta):
  """A history on the reference's well-defined domain (SPEC section 4)."""
  p = order if order is not None else int(rng.integers(1, 6))
  n = p + 1 + (int(rng.integers(0, 3)) if order is not None else 0)
  while True:
    start = np.exp(rng.uniform(np.log(0.05), np.log(20.0), size=num_losses))
    rate = rng.normal(0.0, 0.3, size=(n, num_losses))
    history = start * np.exp(np.cumsum(rate, axis=0))
    if beta * np.abs(history).max() > 100 or history.mean(axis=0).min() < 1e-2:
      continue
    s = np.asarray(sa.slopes(jnp.asarray(history), p), np.float64)
    if variant == "normalized" and abs(s.sum()) < 1e-2 * np.abs(s).sum():
      continue
    return history.astype(np.float32), p


PARITY_ORDERS = (1, 2, 3, 4, 5, None)


@needs_oracle
@pytest.mark.parametrize("x64", [False, True], ids=["f32", "x64"])
@pytest.mark.parametrize("order", [  # orders 2 and 4 under -m slow
    pytest.param(o, marks=pytest.mark.slow) if o in (2, 4) else o
    for o in PARITY_ORDERS
])
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_oracle_on_random_histories(variant, order, x64):
  rng = np.random.default_rng(stable_seed(variant, order, x64))
  rtol, atol = (1e-5, 1e-7) if x64 else (1e-4, 1e-6)
  worst = 0.0
  for num_losses in range(2, 9):
    beta = float(rng.uniform(0.0, 2.0))
    history, p = _random_domain_history(rng, variant, order, num_losses, beta)
    ref = oracle_weights(history, variant, beta=beta, order=order)
    with jax.enable_x64(x64):
      h = jnp.asarray(history, jnp.float64 if x64 else jnp.float32)
      got = np.asarray(
          sa.weights_from_history(
              h, beta=beta, variant=variant, order=order,
              epsilon=ORACLE_EPSILON,
          )
      )
    np.testing.assert_allclose(
        got, ref, rtol=rtol, atol=atol,
        err_msg=f"K={num_losses} p={p} beta={beta}\n{history}",
    )
    worst = max(worst, float(np.max(np.abs(got - ref) / (np.abs(ref) + atol))))
  assert worst < rtol * 10


# ---------------------------------- SPEC section 4: where the reference breaks


def _assert_convex(w, total=1.0):
  w = np.asarray(w)
  assert np.all(np.isfinite(w)), w
  assert np.all(w >= 0), w
  np.testing.assert_allclose(w.sum(), total, rtol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_negative_beta_stays_finite(variant):
  w = sa.weights_from_history(EXAMPLE_1, beta=-10.0, variant=variant)
  _assert_convex(w)
  if variant != "normalized":
    # beta < 0 favours the fastest-falling component, C.
    assert int(np.argmax(w)) == 2
  if HAVE_ORACLE and variant == "original":
    ref = oracle_weights(EXAMPLE_1, variant, beta=-10.0)
    assert np.isnan(ref).any()  # what the reference returns


def test_loss_weighted_tiny_losses_sum_to_one():
  history = (EXAMPLE_1 / 1500 + 1) * 1e-7  # losses ~1e-7
  w = sa.weights_from_history(history, beta=0.1, variant="loss_weighted")
  _assert_convex(w)
  s = np.asarray(sa.slopes(history), np.float64)
  expected = _softmax_reference(s, 0.1, history.mean(0), eps=0.0)
  np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-30)
  if HAVE_ORACLE:
    ref = oracle_weights(history, "loss_weighted", beta=0.1)
    assert ref.sum() < 0.8  # the reference loses mass to epsilon


def test_loss_weighted_negative_mean_is_clamped():
  history = np.array(
      [[-3.0, 1.0, 2.0], [-2.0, 0.9, 1.5], [-1.0, 0.8, 1.2]], np.float32
  )
  w = sa.weights_from_history(history, beta=0.1, variant="loss_weighted")
  _assert_convex(w)
  assert float(w[0]) == 0.0
  if HAVE_ORACLE:
    assert oracle_weights(history, "loss_weighted").min() < 0


def test_loss_weighted_all_nonpositive_means_fall_back_to_original():
  history = -np.abs(EXAMPLE_1) - 1.0
  w = sa.weights_from_history(history, beta=0.1, variant="loss_weighted")
  _assert_convex(w)
  np.testing.assert_allclose(w, sa.weights_from_history(history, beta=0.1))


@pytest.mark.parametrize("delta", [0.0, 1e-9, -1e-9])
def test_normalized_near_zero_sum_falls_back_to_original(delta):
  # Slopes (1, -1 + delta, 0.5, -0.5): sum ~ delta, far below 1e-6 * sum|s|.
  history = np.array([[0.0, 1.0, 0.0, 3.0], [1.0, delta, 0.5, 2.5]], np.float64)
  with jax.enable_x64(True):
    w = sa.weights_from_history(history, beta=0.5, variant="normalized")
    expected = sa.weights_from_history(history, beta=0.5, variant="original")
  _assert_convex(w)
  np.testing.assert_allclose(w, expected, rtol=1e-12)


def test_normalized_all_zero_slopes_is_uniform():
  history = np.ones((3, 4), np.float32)
  w = sa.weights_from_history(history, beta=5.0, variant="normalized")
  np.testing.assert_allclose(w, 0.25, rtol=1e-6)
  if HAVE_ORACLE:
    ref = oracle_weights(history, "normalized", beta=5.0)
    assert not np.allclose(ref, 0.25)  # nan from 0 / 0 in the reference


def test_normalized_signed_vs_l1_ranking_on_example_2():
  # Only D (index 3) rises fastest. The signed normalisation divides by a
  # negative sum and gives it the lowest weight; L1 gives it the highest.
  signed = sa.weights_from_history(EXAMPLE_2, beta=0.1, variant="normalized")
  l1 = sa.weights_from_history(
      EXAMPLE_2, beta=0.1, variant="normalized", normalization="l1"
  )
  assert int(np.argmin(signed)) == 3
  assert int(np.argmax(l1)) == 3
  assert list(np.argsort(np.asarray(l1))) == [2, 1, 0, 3]
  _assert_convex(l1)


def test_order_equal_to_rows_is_a_value_error():
  with pytest.raises(ValueError, match=r"`order`=5 needs 6 rows.*has 5 rows"):
    sa.weights_from_history(EXAMPLE_1, order=5)
  if HAVE_ORACLE:
    with pytest.raises(IndexError):
      oracle_weights(EXAMPLE_1, "original", order=5)


@pytest.mark.parametrize("order", [6, 7, 9])
def test_orders_the_reference_rejects(order):
  # The reference rejects odd p > 5; the general stencil handles every p.
  rng = np.random.default_rng(order)
  history = np.cumsum(rng.uniform(0.5, 1.5, size=(order + 1, 3)), axis=0)
  w = sa.weights_from_history(history.astype(np.float32), order=order)
  s = sa.finite_difference_coefficients(order) @ history
  np.testing.assert_allclose(w, _softmax_reference(s, 0.1), rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", [1e-30, 1e-7, 1.0, 1e7, 1e30])
@pytest.mark.parametrize("beta", [-1e3, -1.0, 0.1, 1e3])
def test_extreme_scales_stay_convex(variant, scale, beta):
  w = sa.weights_from_history(
      (EXAMPLE_2 * scale).astype(np.float32), beta=beta, variant=variant
  )
  _assert_convex(w)


def test_bf16_history_gives_convex_weights():
  w = sa.weights_from_history(EXAMPLE_2.astype(jnp.bfloat16), beta=0.1)
  assert w.dtype == jnp.float32
  _assert_convex(w)
