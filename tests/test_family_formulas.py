"""Each family rule against hand-derived values, in every peer's convention.

The expected values are computed here in float64 NumPy straight from the
formulas of ../shared/FAMILY.md (and a few by hand), never from the library.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import softadapt_jax as sa

LOSSES = np.array(
    [
        [4.0, 1.0, 0.50],
        [3.0, 1.1, 0.40],
        [2.5, 0.9, 0.45],
        [2.0, 1.0, 0.30],
        [1.0, 0.8, 0.35],
        [0.9, 0.9, 0.20],
        [0.5, 0.7, 0.25],
    ]
)
K = LOSSES.shape[1]


def _softmax(z):
  e = np.exp(z - np.max(z))
  return e / e.sum()


def _run(rule, losses=LOSSES, key=None):
  state = rule.init(key=key)
  out = []
  for row in losses:
    w, state = rule.update(state, jnp.asarray(row, jnp.float32))
    out.append(np.asarray(w, np.float64))
  return np.stack(out), state


# --- ratio SoftAdapt, one test per peer convention -------------------------


def _ratio_reference(losses, temperature, total, eps, reweight_every=1,
                     last_update=False, relative_change=False):
  """Peer loop: weights held until a reweight step; S * softmax(r / T)."""
  weights = [np.full(K, total / K)]
  ref = losses[0]
  for t in range(1, len(losses)):
    w = weights[-1]
    if t % reweight_every == 0:
      r = losses[t] / (ref + eps)
      if relative_change:  # NeuralPDE.jl: (L - L_prev) / L_prev
        r = (losses[t] - ref) / (ref + eps)
      w = total * _softmax(r / temperature)
    if not last_update or t % reweight_every == 0:
      ref = losses[t]
    weights.append(w)
  return np.stack(weights)


def test_ratio_physicsnemo():
  conv = sa.RATIO_SOFTADAPT_CONVENTIONS["physicsnemo"]
  got, _ = _run(sa.ratio_softadapt(K, **conv))
  want = _ratio_reference(LOSSES, 1.0, K, 1e-8)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_array_equal(got[0], np.ones(K))  # step 0: plain sum
  # By hand, step 1: r = (0.75, 1.1, 0.8), w = 3 softmax(r).
  e = np.exp([0.75, 1.1, 0.8])
  np.testing.assert_allclose(got[1], 3 * e / e.sum(), rtol=1e-6)


def test_ratio_neuralpde_relative_change_and_reweight_every():
  conv = sa.RATIO_SOFTADAPT_CONVENTIONS["neuralpde"]
  got, _ = _run(sa.ratio_softadapt(K, update_every=2, **conv))
  want = _ratio_reference(
      LOSSES, 10.0, K, 1e-8, reweight_every=2, last_update=True,
      relative_change=True,
  )
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Held between reweight steps; the reference is the last reweight step's.
  np.testing.assert_array_equal(got[1], got[0])
  np.testing.assert_array_equal(got[3], got[2])
  r = LOSSES[4] / LOSSES[2]
  np.testing.assert_allclose(got[4], K * _softmax(r / 10.0), rtol=1e-6)


def test_ratio_jinns():
  conv = sa.RATIO_SOFTADAPT_CONVENTIONS["jinns"]
  got, _ = _run(sa.ratio_softadapt(K, **conv))
  want = _ratio_reference(LOSSES, 1.0, 1.0, 1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)


def test_ratio_jno():
  conv = sa.RATIO_SOFTADAPT_CONVENTIONS["jno"]
  got, _ = _run(sa.ratio_softadapt(K, **conv))
  want = _ratio_reference(LOSSES, 0.1, K, 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ratio_defaults_are_neuralpde_temperature_every_step():
  """The default: PhysicsNeMo's settings with NeuralPDE.jl's T = 10."""
  got, _ = _run(sa.ratio_softadapt(K))
  want = _ratio_reference(LOSSES, 10.0, K, 1e-8)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  neuralpde, _ = _run(
      sa.ratio_softadapt(K, **sa.RATIO_SOFTADAPT_CONVENTIONS["neuralpde"])
  )
  np.testing.assert_allclose(got, neuralpde, rtol=1e-6)


def test_ratio_is_scale_free():
  rule = sa.ratio_softadapt(K, epsilon=0.0)
  a, _ = _run(rule)
  b, _ = _run(rule, LOSSES * np.array([1e4, 1.0, 1e-3]))
  np.testing.assert_allclose(a, b, rtol=1e-5)


# --- DWA --------------------------------------------------------------------


def _dwa_reference(epoch_means, temperature, total):
  """LibMTL's loop: weights for epoch e from the means of e-1 and e-2."""
  weights = []
  for e in range(len(epoch_means) + 1):
    if e > 1:
      w = epoch_means[e - 1] / epoch_means[e - 2]
      weights.append(total * _softmax(w / temperature))
    else:
      weights.append(np.full(K, total / K))
  return np.stack(weights)


def test_dwa_given_epoch_means():
  got, _ = _run(sa.dwa(K))
  # The call with epoch e's mean returns the weights for epoch e + 1.
  want = _dwa_reference(LOSSES, 2.0, K)[1:]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_dwa_accumulates_epochs_itself():
  steps = 3
  rng = np.random.default_rng(0)
  per_step = np.repeat(LOSSES, steps, axis=0) * rng.uniform(
      0.5, 1.5, (len(LOSSES) * steps, K)
  )
  got, state = _run(sa.dwa(K, temperature=0.5, steps_per_epoch=steps), per_step)
  means = per_step.reshape(len(LOSSES), steps, K).mean(axis=1)
  want_per_epoch = _dwa_reference(means, 0.5, K)[: len(LOSSES)]
  np.testing.assert_allclose(
      got, np.repeat(want_per_epoch, steps, axis=0), rtol=1e-5
  )
  # A per_epoch state around DWA fed the epoch means: its inner state has
  # seen every epoch and holds the weights of the next one, while its own
  # weights are those applied at the last step.
  assert int(state.inner.count) == len(LOSSES)
  np.testing.assert_allclose(
      state.inner.weights, _dwa_reference(means, 0.5, K)[-1], rtol=1e-5
  )
  np.testing.assert_allclose(state.weights, got[-1], rtol=0)


def test_dwa_sum_one_option():
  got, _ = _run(sa.dwa(K, scale_by_num_losses=False))
  np.testing.assert_allclose(got, _dwa_reference(LOSSES, 2.0, 1.0)[1:], rtol=1e-6)


# --- ReLoBRaLo ---------------------------------------------------------------


def _rhos(key, expected_rho, n):
  """The Bernoulli draws the rule makes, from the same key sequence."""
  data = jax.random.key_data(key)
  out = []
  for _ in range(n):
    k, sub = jax.random.split(jax.random.wrap_key_data(data))
    out.append(float(jax.random.bernoulli(sub, expected_rho)))
    data = jax.random.key_data(k)
  return out


def _relobralo_reference(losses, alpha, temperature, rhos, total):
  """The author's Keras class, step by step, in float64."""

  def bal(t, ref):
    return total * _softmax(losses[t] / (temperature * ref + 1e-12))

  lam = np.full(K, total / K)
  out = []
  for t in range(len(losses)):
    if t == 0:
      a, rho = 1.0, 1.0
      bal0 = balp = np.zeros(K)
    else:
      a = 0.0 if t == 1 else alpha
      rho = 1.0 if t == 1 else rhos[t]
      bal0, balp = bal(t, losses[0]), bal(t, losses[t - 1])
    lam = rho * a * lam + (1 - rho) * a * bal0 + (1 - a) * balp
    out.append(lam)
  return np.stack(out)


@pytest.mark.parametrize("convention", ["author", "author_cli", "physicsnemo"])
def test_relobralo_conventions(convention):
  conv = sa.RELOBRALO_CONVENTIONS[convention]
  key = jax.random.key(3)
  got, state = _run(sa.relobralo(K, **conv), key=key)
  rhos = _rhos(key, conv["expected_rho"], len(LOSSES))
  want = _relobralo_reference(
      LOSSES, conv["alpha"], conv["temperature"], rhos, K
  )
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got.sum(axis=1), K, rtol=1e-5)
  np.testing.assert_array_equal(state.initial_losses, LOSSES[0].astype(np.float32))


def test_relobralo_lookback_and_warmup_by_hand():
  # E[rho] = 0: always look back to t = 0; alpha = 0.5, T = 1, K = 2.
  losses = np.array([[1.0, 1.0], [1.0, 0.5], [2.0, 0.5]])
  rule = sa.relobralo(2, alpha=0.5, temperature=1.0, expected_rho=0.0)
  got, _ = _run(rule, losses)
  np.testing.assert_array_equal(got[0], [1.0, 1.0])
  e = np.exp([1.0, 0.5])
  np.testing.assert_allclose(got[1], 2 * e / e.sum(), rtol=1e-6)
  b0 = 2 * _softmax(np.array([2.0, 0.5]))   # L(2) / L(0)
  bp = 2 * _softmax(np.array([2.0, 1.0]))   # L(2) / L(1)
  np.testing.assert_allclose(got[2], 0.5 * b0 + 0.5 * bp, rtol=1e-6)


# --- log-slope SoftAdapt and RLW ---------------------------------------------


@pytest.mark.parametrize("order", [1, 2, 3])
def test_log_softadapt_is_softadapt_of_log_losses(order):
  rule = sa.softadapt(K, beta=2.0, order=order, log_losses=True)
  got, _ = _run(rule)
  plain = sa.softadapt(K, beta=2.0, order=order)
  want, _ = _run(plain, np.log(LOSSES) + 10.0)  # shift keeps them positive
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Scale-free: multiplying a component by a constant changes nothing.
  scaled, _ = _run(rule, LOSSES * np.array([1e3, 1.0, 1e-3]))
  np.testing.assert_allclose(scaled, got, rtol=1e-4)


def test_log_softadapt_by_hand():
  rule = sa.softadapt(2, beta=1.0, log_losses=True)
  got, _ = _run(rule, np.array([[1.0, 10.0], [0.5, 20.0]]))
  s = np.array([np.log(0.5), np.log(2.0)])
  np.testing.assert_allclose(got[1], _softmax(s), rtol=1e-6)


def test_random_weighting_draws_softmax_of_gaussians():
  key = jax.random.key(5)
  got, _ = _run(sa.random_weighting(K, scale_by_num_losses=True), key=key)
  data = jax.random.key_data(key)
  for t in range(len(LOSSES)):
    k, sub = jax.random.split(jax.random.wrap_key_data(data))
    g = np.asarray(jax.random.normal(sub, (K,), jnp.float32), np.float64)
    np.testing.assert_allclose(got[t], K * _softmax(g), rtol=1e-6)
    data = jax.random.key_data(k)
  assert len({tuple(np.round(w, 6)) for w in got}) == len(LOSSES)
