"""Every contract, once, over every rule (as optax's ``contrib/_common_test.py``).

The rules are listed in ``tests/helpers.py``. Each contract here holds for all
of them: the protocol (jit, scan, vmap, no retrace, skips, dtypes, named
losses, diagnostics, stop_gradient, debug modes, strict promotion, a fuzz of
random histories) and the Optax routes (one VJP == jacrev == a hand loop,
extra arguments, missing arguments, ``MultiSteps``, ``apply_if_finite``, line
search, ``inject_hyperparams``, Flax NNX, one backward pass). What belongs to
one rule alone lives in that rule's own test file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

import softadapt_jax as sa

from helpers import (  # isort: skip
    ALL,
    K,
    NAMES,
    RULES,
    contract,
    least_squares_problem,
    losses_sequence,
    named,
    params,
    quadratic_problem,
    scan_rule,
    stable_seed,
    true_statistics,
)

SWEPT = params([n for n in sorted(RULES) if RULES[n].swept])
LOSS_VALUE_RULES = params(
    [n for n in sorted(RULES) if RULES[n].rule().statistics is None]
)
KEYED = params([n for n in sorted(RULES) if RULES[n].keyed])


# ------------------------------------------------------------------ protocol


@pytest.mark.parametrize("name", ALL)
def test_jit_nojit_and_scan_agree(name):
  rule = RULES[name].rule()
  losses = losses_sequence()
  state, eager, jitted = rule.init(), [], []
  jstate, update = rule.init(), jax.jit(rule.update)
  for loss in losses:
    w, state = rule.update(state, loss)
    eager.append(w)
    w, jstate = update(jstate, loss)
    jitted.append(w)
  final, scanned = jax.jit(scan_rule, static_argnums=0)(rule, losses)
  rtol = RULES[name].rtol
  np.testing.assert_allclose(np.stack(eager), np.stack(jitted), rtol=rtol)
  np.testing.assert_allclose(np.stack(eager), scanned, rtol=rtol)
  chex.assert_trees_all_close(state, final, rtol=max(rtol, 1e-5))
  if RULES[name].adaptive:
    assert not np.allclose(scanned[-1], scanned[0])


@pytest.mark.parametrize("name", ALL)
def test_vmap_over_hyperparameter_equals_loop(name):
  case = RULES[name]
  losses = losses_sequence(1)
  if case.keyed:
    args = jax.random.split(jax.random.key(0), 2)
    one = jax.jit(lambda k: scan_rule(case.rule(), losses, k)[1])
  else:
    args = jnp.asarray(case.hypers)
    one = jax.jit(lambda h: scan_rule(case.rule(h), losses)[1])
  batched = jax.vmap(one)(args)
  single = [one(a) for a in args]  # one compilation for both
  np.testing.assert_allclose(batched, np.stack(single), rtol=1e-5, atol=1e-7)
  if case.swept or case.keyed:
    assert not np.allclose(batched[0], batched[1])


@pytest.mark.parametrize("name", ALL)
def test_no_recompilation(name):
  case = RULES[name]
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(state, loss, h):
    return case.rule(h).update(state, loss)

  state = case.rule().init()
  bad = jnp.array([jnp.nan, 1.0, 1.0])
  for i, loss in enumerate([*losses_sequence()[:4], bad]):
    _, state = step(state, loss, jnp.float32(case.hypers[i % 2]))
  assert step._cache_size() == 1  # pyright: ignore[reportAttributeAccessIssue]  # private jax API, not in its stubs


def _insert(losses, rows, values):
  out = np.array(losses)
  for r, v in zip(rows, values, strict=True):
    out = np.insert(out, r, v, axis=0)
  return jnp.asarray(out)


@pytest.mark.parametrize("name", ALL)
def test_non_finite_vectors_are_skipped_without_poisoning(name):
  rule = RULES[name].rule()
  clean = losses_sequence(2)
  bad = [[np.nan, 1.0, 1.0], [1.0, np.inf, 1.0], [-np.inf, 1.0, 1.0]]
  rows = [1, 4, 9]
  dirty = _insert(clean, rows, bad)
  state_d, w_dirty = scan_rule(rule, dirty)
  keep = np.ones(len(dirty), bool)
  keep[rows] = False
  for r in rows:  # a skipped step returns the weights held before it
    np.testing.assert_array_equal(w_dirty[r], w_dirty[r - 1])
  assert int(state_d.num_skipped) == len(bad)
  assert int(state_d.count) == len(clean)
  if RULES[name].cadence > 1:
    # The cadence counts calls (optimizer steps), skipped or not, as the
    # reference codes count iterations: a skipped step shifts which recorded
    # steps update, so no run without the bad steps is the same. The clock
    # still counts every call.
    assert int(state_d.clock) == len(dirty)
    assert np.all(np.isfinite(np.asarray(w_dirty)))
  elif RULES[name].epoch is None:
    # The recorded steps are bit-identical to the run without the bad ones.
    state_c, w_clean = scan_rule(rule, clean)
    np.testing.assert_array_equal(np.asarray(w_dirty)[keep], w_clean)
    if "clock" in state_c._fields:
      state_c = state_c._replace(clock=state_d.clock)
    chex.assert_trees_all_equal(
        state_c._replace(num_skipped=state_d.num_skipped), state_d
    )
  else:
    # An epoch is n steps, recorded or not: the inner rule is fed the mean of
    # each epoch's finite vectors, so the epochs stay aligned with the caller.
    make_inner, n = cast(
        tuple[Callable[..., sa.LossWeighting], int], RULES[name].epoch
    )
    inner = make_inner(RULES[name].hypers[0], K)
    hand = inner.init()
    finite = np.asarray(dirty)[keep]
    epochs = [
        np.asarray(dirty)[i : i + n][keep[i : i + n]]
        for i in range(0, len(dirty) - len(dirty) % n, n)
    ]
    for rows_of_epoch in epochs:
      if len(rows_of_epoch):
        _, hand = inner.update(hand, jnp.asarray(rows_of_epoch.mean(axis=0)))
    chex.assert_trees_all_close(state_d.inner, hand, rtol=1e-6)
    assert np.all(np.isfinite(finite))


@pytest.mark.parametrize("name", ALL)
def test_a_component_at_exactly_zero_never_freezes_the_rule(name):
  """A satisfied constraint (a loss of 0) is recorded, not skipped."""
  case = RULES[name]
  losses = np.array(losses_sequence(5, steps=16))
  losses[:, 2] = 0.0  # e.g. a boundary loss that is exactly 0 throughout
  losses[3, 1] = 0.0  # and one that touches 0 once
  state, w = jax.jit(scan_rule, static_argnums=0)(case.rule(), jnp.asarray(losses))
  w = np.asarray(w)
  assert int(state.num_skipped) == 0
  assert int(state.count) == len(losses)
  assert np.all(np.isfinite(w))
  assert np.all(w >= 0) or not case.nonnegative
  total = case.total(case.hypers[0])
  if total is not None:
    np.testing.assert_allclose(w.sum(axis=1), total, rtol=1e-5)
  if case.adaptive and not case.zero_dominates:
    # The weights keep moving after the warm-up, with one component at 0.
    assert len({tuple(np.round(row, 6)) for row in w[6:]}) > 2


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("loss_dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_state_is_float32_or_wider(name, loss_dtype):
  rule = RULES[name].rule()
  state = rule.init(dtype=jnp.bfloat16)  # promoted: weights need float32
  assert state.weights.dtype == jnp.float32
  for loss in losses_sequence()[:3]:
    w, state = rule.update(state, loss.astype(loss_dtype))
  assert w.dtype == jnp.float32  # pyright: ignore[reportPossiblyUnboundVariable]  # the loop ran
  chex.assert_trees_all_equal_dtypes(state, rule.init())


@pytest.mark.parametrize("name", ALL)
def test_float64_state_under_x64(name):
  with jax.enable_x64(True):
    rule = RULES[name].rule()
    state = rule.init(dtype=jnp.float64)
    w, _ = rule.update(state, losses_sequence()[0].astype(jnp.float64))
    assert w.dtype == jnp.float64
    tx = sa.track_weights(rule)
    assert cast(Any, tx.init(jnp.zeros(2, jnp.float64))).weights.dtype == jnp.float64


@pytest.mark.parametrize("name", ALL)
def test_named_losses_give_named_weights(name):
  case = RULES[name]
  losses = losses_sequence(3)
  by_index = case.rule()
  by_name = case.rule(spec=list(NAMES))
  by_tree = case.rule(spec=jax.tree.structure({"pde": 0.0, "bc": (0.0, 0.0)}))
  _, w_index = scan_rule(by_index, losses)
  _, w_name = scan_rule(by_name, named(losses))
  assert set(w_name) == set(NAMES)
  for i, n in enumerate(NAMES):
    np.testing.assert_array_equal(w_name[n], w_index[:, i])
  # Any pytree of scalars: leaves in tree order.
  tree_losses = {"bc": (losses[:, 0], losses[:, 1]), "pde": losses[:, 2]}
  _, w_tree = scan_rule(by_tree, tree_losses)
  np.testing.assert_array_equal(w_tree["bc"][1], w_index[:, 1])
  np.testing.assert_array_equal(w_tree["pde"], w_index[:, 2])
  assert by_name.names == NAMES
  assert by_tree.names == ("bc/0", "bc/1", "pde")
  # The order of a dict's keys does not matter, only the names.
  shuffled = {n: named(losses[0])[n] for n in reversed(NAMES)}
  w1, _ = by_name.update(by_name.init(), shuffled)
  w2, _ = by_name.update(by_name.init(), named(losses[0]))
  chex.assert_trees_all_equal(w1, w2)


@pytest.mark.parametrize("name", ALL)
def test_a_changed_loss_structure_is_an_error_naming_both(name):
  case = RULES[name]
  by_name = case.rule(spec=list(NAMES))
  state = by_name.init()
  renamed = {"residual": 1.0, "boundary": 1.0, "data": 1.0}
  with pytest.raises(ValueError, match=r"\['boundary', 'data', 'residual'\]") as e:
    by_name.update(state, renamed)
  assert "residual', 'boundary', 'initial'" in str(e.value)
  with pytest.raises(ValueError, match=r"named losses"):
    by_name.update(state, jnp.ones(K))
  with pytest.raises(ValueError, match=r"build it from the names"):
    case.rule().update(case.rule().init(), named(jnp.ones(K)))
  tree_rule = case.rule(spec=jax.tree.structure({"a": 0.0, "b": (0.0, 0.0)}))
  with pytest.raises(ValueError, match=r"structure .*'a'.*'b'.*got .*'a'.*'c'"):
    tree_rule.update(tree_rule.init(), {"a": 1.0, "c": (1.0, 1.0)})
  with pytest.raises(ValueError, match=r"`losses`\['residual'\] must be a scalar"):
    by_name.update(state, {n: jnp.ones(2) for n in NAMES})


@pytest.mark.parametrize("name", ALL)
def test_weights_carry_no_gradient(name):
  rule = RULES[name].rule()
  state = rule.init()
  for loss in losses_sequence()[:5]:
    _, state = rule.update(state, loss)
  probe = jnp.array([1.0, -2.0, 3.0])

  def weighted(losses):
    w, _ = rule.update(state, losses)
    return jnp.dot(probe, w)

  g = jax.grad(weighted)(losses_sequence()[5])
  np.testing.assert_array_equal(g, jnp.zeros(K))


@pytest.mark.parametrize("name", ALL)
def test_diagnostics_agree_with_the_applied_weights(name):
  """Weights applied == state recorded == weights logged, at every step."""
  rule = RULES[name].rule(spec=list(NAMES))

  def body(state, loss):
    w, state = rule.update(state, loss)
    logged = sa.diagnostics(state, rule)
    return state, (w, logged, sa.diagnostics(state, rule, flat=True))

  _state, (w, diag, flat) = jax.lax.scan(
      body, rule.init(), named(losses_sequence(6))
  )
  for n in NAMES:
    np.testing.assert_array_equal(diag["weight"][n], w[n])
    np.testing.assert_array_equal(flat[f"weight/{n}"], w[n])
  np.testing.assert_array_equal(diag["count"], np.arange(1, 13))
  np.testing.assert_array_equal(flat["num_skipped"], np.zeros(12))
  for key, value in flat.items():
    assert value.shape == (12,), key
    assert np.all(np.isfinite(value)), key
  # Every per-component entry comes with the names.
  per_component = [k for k, v in diag.items() if isinstance(v, dict)]
  assert "weight" in per_component
  for key in per_component:
    assert {f"{key}/{n}" for n in NAMES} <= set(flat)
  # A rule built from K: components are named by index.
  by_index = RULES[name].rule()
  flat_k = sa.diagnostics(by_index.init(), by_index, flat=True)
  assert {"weight/0", "weight/1", "weight/2", "count", "num_skipped"} <= set(flat_k)


@pytest.mark.parametrize("name", ALL)
def test_debug_nans_and_infs_do_not_trip_on_finite_losses(name):
  case = RULES[name]
  loss_fn = quadratic_problem()
  rule = case.rule()
  losses = np.array(losses_sequence(7, steps=8))
  losses[:, 1] = 0.0
  with jax.debug_nans(True), jax.debug_infs(True):
    state = rule.init()
    for loss in losses:  # eager: every primitive is checked
      _, state = rule.update(state, jnp.asarray(loss))
    sa.diagnostics(state, rule, flat=True)
    tx = optax.chain(sa.track_weights(rule), optax.sgd(0.01))
    grad_fn = sa.weighted_value_and_grad(loss_fn, rule)
    x = jnp.array([0.3, -0.2])
    opt_state = tx.init(x)
    for i in range(4):
      out = grad_fn(opt_state, x, 0.01 * i)
      updates, opt_state = tx.update(
          out.grad, opt_state, x, weighting_state=out.state
      )
      x = optax.apply_updates(x, updates)
    comb = optax.chain(sa.combine_grads(rule), optax.sgd(0.01))
    comb.update(jax.jacrev(loss_fn)(x, 0.0), comb.init(x), x, losses=loss_fn(x, 0.0))


@pytest.mark.parametrize("name", ALL)
def test_strict_dtype_promotion_and_unusual_params(name):
  """Strict promotion; mixed float widths, integer and PRNG-key leaves."""
  rule = RULES[name].rule()
  params = {
      "w": jnp.array([0.3, -0.2], jnp.float32),
      "h": jnp.array([0.5], jnp.bfloat16),
      "n": jnp.int32(3),
      "key": jax.random.key(0),
  }

  def loss_fn(p):
    w = p["w"] * p["h"].astype(jnp.float32)[0]
    return jnp.stack([
        jnp.sum(w**2),
        jnp.sum((w - 1.0) ** 2) * p["n"].astype(jnp.float32),
        (jnp.sum(p["h"]) ** 2).astype(jnp.float32),
    ])

  with jax.numpy_dtype_promotion("strict"):
    tx = sa.track_weights(rule)
    opt_state = tx.init(params)
    assert sa.find_weighting_state(opt_state, rule).weights.dtype == jnp.float32
    grad_fn = jax.jit(sa.weighted_value_and_grad(loss_fn, rule))
    updates: Any
    for _ in range(4):
      out = grad_fn(opt_state, params)
      updates, opt_state = tx.update(
          out.grad, opt_state, params, weighting_state=out.state
      )
    assert updates["h"].dtype == jnp.bfloat16  # pyright: ignore[reportPossiblyUnboundVariable]  # the loop ran
    assert updates["n"].dtype == jax.dtypes.float0  # pyright: ignore[reportPossiblyUnboundVariable]  # the loop ran
    assert np.all(np.isfinite(np.asarray(updates["w"])))  # pyright: ignore[reportPossiblyUnboundVariable]  # the loop ran
    comb = sa.combine_grads(rule)
    float_params = {"w": params["w"], "h": params["h"]}
    stacked = {"w": jnp.ones((K, 2)), "h": jnp.ones((K, 1), jnp.bfloat16)}
    h: Any
    h, _ = comb.update(
        stacked, comb.init(float_params), float_params, losses=loss_fn(params)
    )
    assert h["h"].dtype == jnp.bfloat16


# Fuzz: ten thousand random histories per rule (``RuleCase.fuzz_runs``), in
# one compiled program.
FUZZ_STEPS = 8


def _fuzz_histories(seed: int, runs: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  magnitude = 10.0 ** rng.uniform(-38, 38, size=(runs, FUZZ_STEPS, K))
  sign = np.where(rng.random(magnitude.shape) < 0.2, -1.0, 1.0)
  h = (magnitude * sign).astype(np.float32)
  h[rng.random(h.shape) < 0.05] = 0.0
  h[rng.random(h.shape) < 0.03] = np.nan
  h[rng.random(h.shape) < 0.02] = np.inf
  h[rng.random(h.shape) < 0.02] = -np.inf
  return h


@pytest.mark.parametrize("name", ALL)
def test_fuzz_random_histories_give_valid_weights(name):
  case = RULES[name]
  histories = _fuzz_histories(stable_seed(name), case.fuzz_runs)
  hs = jnp.asarray(
      np.random.default_rng(1).choice(case.hypers, size=case.fuzz_runs), jnp.float32
  )
  keys = jax.random.split(jax.random.key(0), case.fuzz_runs)

  @jax.jit
  def run(hs, keys, histories):
    return jax.vmap(lambda h, k, x: scan_rule(case.rule(h), x, k))(hs, keys, histories)

  state, w = run(hs, keys, jnp.asarray(histories))
  w = np.asarray(w, np.float64)
  assert np.all(np.isfinite(w)), np.argwhere(~np.isfinite(w))[:5]
  assert np.all(w >= 0) or not case.nonnegative
  if case.total(case.hypers[0]) is not None:
    totals = np.array([case.total(float(h)) for h in np.asarray(hs)])[:, None]
    np.testing.assert_allclose(
        w.sum(axis=-1), np.broadcast_to(totals, w.shape[:2]), rtol=1e-5
    )
  bad = ~np.all(np.isfinite(histories), axis=-1)
  np.testing.assert_array_equal(state.num_skipped, bad.sum(axis=1))


@pytest.mark.parametrize("name", ALL)
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    data=hnp.arrays(
        np.float32,
        (6, K),
        elements=st.floats(0.0, float(np.float32(1e20)), width=32),
    ),
    hyper_scale=st.floats(0.01, 100.0),
)
def test_weights_are_finite_and_sum_as_configured(name, data, hyper_scale):
  case = RULES[name]
  h = case.hypers[0] * hyper_scale
  _, w = _jitted_scan(name, h, jnp.asarray(data))
  w = np.asarray(w, np.float64)
  assert np.all(np.isfinite(w))
  assert np.all(w >= 0) or not case.nonnegative
  total = case.total(h)
  if total is not None:
    np.testing.assert_allclose(w.sum(axis=1), total, rtol=1e-5)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_scan(name, hyper, losses):
  """One compilation per rule: the hyperparameter is traced."""
  return scan_rule(RULES[name].rule(hyper), losses)


@pytest.mark.parametrize("name", KEYED)
def test_random_rules_are_reproducible_and_key_driven(name):
  case = RULES[name]
  losses = losses_sequence(4)
  a = scan_rule(case.rule(), losses, jax.random.key(7))[1]
  b = scan_rule(case.rule(), losses, jax.random.PRNGKey(7))[1]  # raw keys too
  c = scan_rule(case.rule(), losses, jax.random.key(8))[1]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  np.testing.assert_array_equal(scan_rule(case.rule(seed=7), losses)[1], a)


@pytest.mark.parametrize("name", ALL)
def test_axis_name_averages_losses_over_replicas(name):
  case = RULES[name]
  losses = losses_sequence(3)
  per_replica = jnp.stack([losses * 0.5, losses * 1.5])  # mean: losses
  replicas = jax.jit(jax.vmap(
      lambda local: scan_rule(case.rule(axis_name="data"), local),
      axis_name="data",
  ))
  _, w_dp = replicas(per_replica)
  w_single = scan_rule(case.rule(), losses)[1]
  np.testing.assert_array_equal(w_dp[0], w_dp[1])
  # (Rules stepping a learnable parameter with Adam amplify float32 rounding.)
  np.testing.assert_allclose(w_dp[0], w_single, rtol=1e-4, atol=1e-7)
  # A NaN on one replica is skipped on all of them (the same program).
  state, _ = replicas(per_replica.at[0, 2, 1].set(jnp.nan))
  np.testing.assert_array_equal(state.num_skipped, [1, 1])


@pytest.mark.parametrize("name", ALL)
def test_errors_name_the_argument(name):
  case = RULES[name]
  rule = case.rule()
  with pytest.raises(ValueError, match=r"`losses` must have shape \(3,\)"):
    rule.update(rule.init(), jnp.ones(K + 1))
  with pytest.raises(TypeError, match=r"`losses`.*floating dtype"):
    rule.update(rule.init(), jnp.ones(K, jnp.int32))
  other = sa.fixed_weights(jnp.ones(K)) if name not in (
      "equal_weights", "fixed_weights"
  ) else sa.softadapt(K)
  with pytest.raises(TypeError, match=rf"`state` must be a {rule.state_type.__name__}"):
    rule.update(other.init(), jnp.ones(K))
  with pytest.raises(TypeError, match="`key` must be a PRNG key"):
    sa.random_weighting(K).init(key=jnp.zeros(2, jnp.float32))
  with pytest.raises(ValueError, match=rf"no {rule.state_type.__name__} found"):
    sa.find_weighting_state(optax.sgd(0.1).init(0.0), rule)
  with pytest.raises(TypeError, match="`rule` must be a LossWeighting"):
    sa.track_weights(cast(Any, optax.sgd(0.1)))


# -------------------------------------------------------------------- routes


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("use_jit", [True, False], ids=["jit", "nojit"])
def test_routes_agree(name, use_jit):
  """One VJP + track_weights == jacrev + combine_grads == a hand loop.

  The state is advanced once per step on the one-VJP route (the helper's);
  the tracker records exactly that state, and the same rule fed the same
  losses by hand gives bit-identical weights and state.
  """
  rule = RULES[name].rule()
  loss_fn = quadratic_problem()
  tx_track = optax.chain(sa.track_weights(rule), optax.sgd(0.01))
  tx_comb = optax.chain(sa.combine_grads(rule), optax.sgd(0.01))
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)
  maybe_jit = jax.jit if use_jit else (lambda f: f)

  @maybe_jit
  def step_track(x, opt_state, shift):
    out = grad_fn(opt_state, x, shift=shift)
    updates, opt_state = tx_track.update(
        out.grad, opt_state, x, weighting_state=out.state,
        unexpected_extra_arg=1.0,
    )
    return optax.apply_updates(x, updates), opt_state, out

  @maybe_jit
  def step_comb(x, opt_state, shift):
    stacked = jax.jacrev(loss_fn)(x, shift)
    updates, opt_state = tx_comb.update(
        stacked, opt_state, x, losses=loss_fn(x, shift)
    )
    return optax.apply_updates(x, updates), opt_state

  @maybe_jit
  def step_hand(x, state, shift):
    # A gradient rule is given its real statistics, from jacrev.
    stats = true_statistics(rule, lambda y: loss_fn(y, shift), x)
    w, state = rule.update(state, loss_fn(x, shift), stats)
    g = jax.grad(lambda y: jnp.dot(w, loss_fn(y, shift)))(x)
    return x - 0.01 * g, state, w

  @maybe_jit
  def again(state, x, shift, losses):
    stats = true_statistics(rule, lambda y: loss_fn(y, shift), x)
    return rule.update(state, losses, stats)

  x1 = x2 = x3 = jnp.array([0.3, -0.2])
  s1, s2, s3 = tx_track.init(x1), tx_comb.init(x2), rule.init()
  for i in range(4 if use_jit else 3):
    shift = 0.01 * i
    before = sa.find_weighting_state(s1, rule)
    x_before = x1
    x1, s1, out = step_track(x1, s1, shift)
    recorded = sa.find_weighting_state(s1, rule)
    # Advanced once: what the tracker holds is what the helper computed, and
    # what the rule computes from the state before on the same losses.
    chex.assert_trees_all_equal(recorded, out.state)
    chex.assert_trees_all_equal(recorded.weights, out.weights)
    np.testing.assert_array_equal(
        sa.diagnostics(s1, rule)["weight"], out.weights
    )
    w_again, s_again = again(before, x_before, shift, out.losses)
    chex.assert_trees_all_close(
        (w_again, s_again), (out.weights, recorded), rtol=1e-5
    )
    x2, s2 = step_comb(x2, s2, shift)
    x3, s3, w3 = step_hand(x3, s3, shift)
    np.testing.assert_allclose(out.weights, w3, rtol=1e-5)
  np.testing.assert_allclose(cast(jax.Array, x1), x3, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(cast(jax.Array, x2), x3, rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(sa.find_weighting_state(s1, rule), s3, rtol=1e-5)
  chex.assert_trees_all_close(sa.find_weighting_state(s2, rule), s3, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_routes_with_named_losses_and_aux(name):
  rule = RULES[name].rule(spec=list(NAMES))
  loss_vec = quadratic_problem()

  def loss_fn(x):
    v = loss_vec(x, 0.0)
    return named(v), {"norm": jnp.sum(x**2)}

  grad_fn = jax.jit(sa.weighted_value_and_grad(loss_fn, rule, has_aux=True))
  x = jnp.array([0.3, -0.2])
  opt_state = sa.track_weights(rule).init(x)
  out = grad_fn(opt_state, x)
  assert set(out.losses) == set(out.weights) == set(NAMES)
  np.testing.assert_allclose(out.aux["norm"], 0.13, rtol=1e-6)
  w = jnp.stack([out.weights[n] for n in NAMES])
  np.testing.assert_allclose(
      out.grad, w @ jax.jacrev(lambda y: loss_vec(y, 0.0))(x), rtol=1e-5, atol=1e-6
  )
  # combine_grads takes one gradient per name (jacrev of the dict of losses).
  comb = sa.combine_grads(rule)
  per_name = jax.jacrev(lambda y: loss_fn(y)[0])(x)
  h, _ = comb.update(per_name, comb.init(x), x, losses=loss_fn(x)[0])
  np.testing.assert_allclose(cast(jax.Array, h), out.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_missing_arguments_raise(name):
  rule = RULES[name].rule()
  params = {"a": jnp.zeros(2)}
  track = optax.chain(sa.track_weights(rule), optax.adam(1e-3))
  with pytest.raises(TypeError, match=r"weighting_state=out\.state"):
    track.update(params, track.init(params), params)
  with pytest.raises(TypeError, match=r"`losses=` is what combine_grads takes"):
    track.update(params, track.init(params), params, losses=jnp.ones(K))
  comb = optax.chain(sa.combine_grads(rule), optax.adam(1e-3))
  stacked = {"a": jnp.zeros((K, 2))}
  with pytest.raises(TypeError, match="combine_grads needs the loss components"):
    comb.update(stacked, comb.init(params), params, value=1.0)
  with pytest.raises(ValueError, match="leading axis of size num_losses=3"):
    comb.update({"a": jnp.zeros((2,))}, comb.init(params), params, losses=jnp.ones(K))
  # A state of another rule, or of another shape, is refused by the tracker.
  other = sa.softadapt(K, order=3) if name != "softadapt" else sa.softadapt(K)
  with pytest.raises((TypeError, ValueError), match="weighting_state"):
    track.update(params, track.init(params), params, weighting_state=other.init())


@pytest.mark.parametrize("name", ALL)
def test_a_nan_step_leaves_params_finite_and_training_going(name):
  params, loss_fn = least_squares_problem()
  rule = RULES[name].rule()
  tx = optax.chain(sa.track_weights(rule), optax.adam(5e-2))
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)

  @jax.jit
  def step(params, opt_state, data_scale):
    out = grad_fn(opt_state, params, data_scale)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    return optax.apply_updates(params, updates), opt_state, out

  opt_state = tx.init(params)
  for scale in (1.0, 1.0, jnp.nan, jnp.inf, 1.0):
    params, opt_state, out = step(params, opt_state, scale)
    chex.assert_tree_all_finite(params)
    if not np.isfinite(scale):
      chex.assert_trees_all_equal(out.grad, jax.tree.map(jnp.zeros_like, out.grad))
  assert int(sa.find_weighting_state(opt_state, rule).num_skipped) == 2
  start = float(jnp.sum(loss_fn(least_squares_problem()[0])))
  for _ in range(40):
    params, opt_state, out = step(params, opt_state, 1.0)
  assert float(jnp.sum(loss_fn(params))) < 0.5 * start


@pytest.mark.parametrize("name", ALL)
def test_one_backward_pass(name):
  """The helper runs the backward pass of the model once per step."""
  calls = []

  @jax.custom_vjp
  def layer(w, x):
    return jnp.tanh(x @ w)

  def layer_fwd(w, x):
    return layer(w, x), (w, x)

  def layer_bwd(res, g):
    calls.append(g.shape)
    w, x = res
    d = g * (1 - jnp.tanh(x @ w) ** 2)
    return x.T @ d, d @ w.T

  layer.defvjp(layer_fwd, layer_bwd)
  x = jax.random.normal(jax.random.key(0), (8, 4))

  def loss_fn(w):
    out = layer(w, x)
    return jnp.stack([jnp.mean(out[:, k] ** 2) for k in range(K)])

  rule = RULES[name].rule()
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)
  w = jax.random.normal(jax.random.key(1), (4, K))
  jax.make_jaxpr(grad_fn)(rule.init(), w)
  # A rule of loss values: one backward pass. A rule of gradient statistics:
  # one for the direction, plus K (one per component, unrolled) in the
  # branch that runs on the steps its cadence asks for.
  assert len(calls) == (1 if rule.statistics is None else 1 + K)


@pytest.mark.parametrize("name", SWEPT)
def test_inject_hyperparams_changes_the_value_without_retracing(name):
  case = RULES[name]
  h0, h1 = case.hypers
  tx = optax.inject_hyperparams(lambda hyper: sa.combine_grads(case.rule(hyper)))(
      hyper=h0
  )
  chex.clear_trace_counter()
  loss_fn = quadratic_problem()
  x = jnp.array([0.3, -0.2])

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(opt_state, shift):
    stacked = jax.jacrev(loss_fn)(x, shift)
    return tx.update(stacked, opt_state, x, losses=loss_fn(x, shift))

  opt_state: Any = tx.init(x)
  hand_state = case.rule(h0).init()
  for i in range(6):
    hyper = h0 if i < 3 else h1
    opt_state.hyperparams["hyper"] = jnp.float32(hyper)
    updates, opt_state = step(opt_state, 0.01 * i)
    stats = true_statistics(case.rule(hyper), lambda y: loss_fn(y, 0.01 * i), x)
    w, hand_state = case.rule(hyper).update(
        hand_state, loss_fn(x, 0.01 * i), stats
    )
    expected = w @ jax.jacrev(loss_fn)(x, 0.01 * i)
    np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-7)
  assert step._cache_size() == 1  # pyright: ignore[reportAttributeAccessIssue]  # private jax API, not in its stubs
  chex.assert_trees_all_close(
      opt_state.inner_state, hand_state, rtol=1e-4, atol=1e-6
  )


@pytest.mark.parametrize("name", LOSS_VALUE_RULES)
def test_multi_steps_per_epoch_records_the_mean_of_the_micro_steps(name):
  """The MultiSteps recipe: per_epoch(rule, k) outside MultiSteps(opt, k).

  The inner rule records the mean loss of each k micro-steps, and all k
  micro-steps of an accumulation use the same weights.
  """
  every_k, lr = 3, 0.1
  rule = RULES[name].rule()
  accumulated = sa.per_epoch(rule, every_k)
  tx = optax.chain(
      sa.track_weights(accumulated),
      optax.MultiSteps(optax.sgd(lr), every_k_schedule=every_k)
      .gradient_transformation(),
  )
  loss_fn = quadratic_problem()
  grad_fn = jax.jit(sa.weighted_value_and_grad(loss_fn, accumulated))
  update = jax.jit(tx.update)
  x = jnp.array([0.3, -0.2])
  opt_state = tx.init(x)
  hand = rule.init()
  micro, directions, weights_in_epoch = [], [], []
  for step in range(1, 4 * every_k + 1):
    shift = 0.05 * step
    out = grad_fn(opt_state, x, shift)
    micro.append(out.losses)
    directions.append(out.grad)
    weights_in_epoch.append(out.weights)
    updates, opt_state = update(out.grad, opt_state, x, weighting_state=out.state)
    if step % every_k:
      np.testing.assert_array_equal(updates, jnp.zeros(2))
      continue
    # One accumulation: constant weights, the mean direction applied ...
    for w in weights_in_epoch:
      np.testing.assert_array_equal(w, weights_in_epoch[0])
    np.testing.assert_allclose(
        updates, -lr * jnp.mean(jnp.stack(directions), axis=0), rtol=1e-5,
        atol=1e-7,
    )
    # ... and the inner rule recorded the mean of the micro-steps' losses.
    _, hand = rule.update(hand, jnp.mean(jnp.stack(micro), axis=0))
    inner = sa.find_weighting_state(opt_state, accumulated).inner
    chex.assert_trees_all_close(inner, hand, rtol=1e-6, atol=1e-7)
    x = optax.apply_updates(x, updates)
    micro, directions, weights_in_epoch = [], [], []
  assert int(inner.count) == 4  # pyright: ignore[reportPossiblyUnboundVariable]  # the loop ran


@pytest.mark.parametrize("name", ALL)
def test_apply_if_finite_around_the_tracker(name):
  params, loss_fn = least_squares_problem()
  rule = RULES[name].rule()
  # optax annotates apply_if_finite's result as a GradientTransformation, but it
  # is a GradientTransformationExtraArgs: its update forwards extra arguments.
  tx = cast(optax.GradientTransformationExtraArgs, optax.apply_if_finite(
      optax.chain(sa.track_weights(rule), optax.sgd(1e-2)),
      max_consecutive_errors=5,
  ))
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)

  def step(params, opt_state, data_scale):  # eagerly: a few steps
    out = grad_fn(opt_state, params, data_scale)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for _ in range(3):
    params, opt_state = step(params, opt_state, 1.0)
  before = params
  params, opt_state = step(params, opt_state, jnp.nan)
  # The helper's direction is zero (finite), so apply_if_finite applies it:
  # params stay put and the rule's state records the skip.
  chex.assert_trees_all_close(params, before)
  recorded = sa.find_weighting_state(opt_state, rule)
  assert int(recorded.num_skipped) == 1
  assert int(recorded.count) == 3
  params, opt_state = step(params, opt_state, 1.0)
  assert int(sa.find_weighting_state(opt_state, rule).count) == 4
  assert int(cast(optax.ApplyIfFiniteState, opt_state).total_notfinite) == 0
  # combine_grads goes before apply_if_finite (its reject branch returns
  # zeros shaped like its input, which the stacked gradients are not).
  comb = optax.chain(
      sa.combine_grads(rule), optax.apply_if_finite(optax.sgd(1e-2), 5)
  )
  cstate = comb.init(params)
  stacked = jax.jacrev(loss_fn)(params, jnp.nan)
  updates, cstate = comb.update(
      stacked, cstate, params, losses=loss_fn(params, jnp.nan)
  )
  chex.assert_tree_all_finite(updates)
  assert int(sa.find_weighting_state(cstate, rule).num_skipped) == 1


@pytest.mark.parametrize("name", ALL)
def test_line_search_value_fn_takes_the_weighting_state(name):
  """optax's line searches forward every extra argument to ``value_fn``."""
  params, loss_fn = least_squares_problem()
  rule = RULES[name].rule()
  tx = optax.chain(
      sa.track_weights(rule),
      optax.sgd(learning_rate=1.0),
      optax.scale_by_backtracking_linesearch(max_backtracking_steps=60),
  )
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)

  @jax.jit
  def step(params, opt_state):
    out = grad_fn(opt_state, params)
    w = jnp.asarray(out.weights)

    def value_fn(p, weighting_state):  # the weights of this step, held fixed
      del weighting_state
      return jnp.dot(w, loss_fn(p))

    value = jnp.dot(w, loss_fn(params))
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state,
        value=value, grad=out.grad, value_fn=value_fn,
    )
    new_params = optax.apply_updates(params, updates)
    return new_params, opt_state, value, value_fn(new_params, None)

  opt_state = tx.init(params)
  start = float(jnp.sum(loss_fn(params)))
  for _ in range(4):
    params, opt_state, before, after = step(params, opt_state)
    assert float(after) <= float(before) + 1e-6  # Armijo, weights held
  assert int(sa.find_weighting_state(opt_state, rule).count) == 4
  assert float(jnp.sum(loss_fn(params))) < start


@pytest.mark.parametrize("name", ALL)
def test_flax_nnx_optimizer_matches_pure_optax(name):
  nnx = pytest.importorskip("flax.nnx")
  rule = RULES[name].rule(spec=list(NAMES))
  x = jax.random.normal(jax.random.key(3), (16, 4))
  y = jax.random.normal(jax.random.key(4), (16, K))

  class MLP(nnx.Module):

    def __init__(self, rngs):
      self.hidden = nnx.Linear(4, 8, rngs=rngs)
      self.out = nnx.Linear(8, K, rngs=rngs)

    def __call__(self, x):
      return self.out(jnp.tanh(self.hidden(x)))

  def loss_fn(params, graphdef):
    pred = nnx.merge(graphdef, params)(x)
    return named(jnp.array([10.0, 1.0, 0.1]) * jnp.mean((pred - y) ** 2, axis=0))

  tx = optax.chain(sa.track_weights(rule), optax.adam(1e-2))
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)
  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.as_pure(params)
  opt_state = tx.init(params)

  # Eagerly: the contract is the forwarding of weighting_state through
  # nnx.Optimizer.update (nnx.jit is tested in test_integrations.py).
  def nnx_step(model, optimizer):
    graphdef, params = nnx.split(model, nnx.Param)
    out = grad_fn(optimizer.opt_state, params, graphdef)
    optimizer.update(model, out.grad, weighting_state=out.state)
    return out

  def pure_step(params, opt_state):
    out = grad_fn(opt_state, params, graphdef)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    return optax.apply_updates(params, updates), opt_state, out

  for _ in range(3):
    nnx_out = nnx_step(model, optimizer)
    params, opt_state, pure_out = pure_step(params, opt_state)
    chex.assert_trees_all_close(nnx_out.weights, pure_out.weights, rtol=1e-5)
  trained = nnx.as_pure(nnx.state(model, nnx.Param))
  chex.assert_trees_all_close(trained, params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
      sa.find_weighting_state(nnx.as_pure(optimizer.opt_state), rule),
      sa.find_weighting_state(opt_state, rule),
      rtol=1e-5,
      atol=1e-6,
  )


@pytest.mark.parametrize("name", ALL)
def test_converges_in_scan(name):
  params, loss_fn = least_squares_problem()
  rule = RULES[name].rule()
  tx = optax.chain(sa.track_weights(rule), optax.adam(5e-2))
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)

  def body(carry, _):
    params, opt_state = carry
    out = grad_fn(opt_state, params)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    return (optax.apply_updates(params, updates), opt_state), out.weights

  (final, opt_state), weights = jax.jit(
      lambda p: jax.lax.scan(body, (p, tx.init(p)), length=400)
  )(params)
  start, end = float(jnp.sum(loss_fn(params))), float(jnp.sum(loss_fn(final)))
  if RULES[name].pareto:
    # MGDA stops where some convex combination of the gradients vanishes (a
    # Pareto-stationary point), not at the minimum of the sum.
    def hull_norm(p):
      jac = jnp.concatenate(
          [g.reshape(K, -1) for g in jax.tree.leaves(jax.jacrev(loss_fn)(p))],
          axis=1,
      )
      gram = jac @ jac.T
      a = sa.mgda_weights(gram)
      return float(jnp.sqrt(a @ gram @ a))

    assert end < start
    assert hull_norm(final) < 0.05 * hull_norm(params)
  else:
    assert end < 1e-4 * start, (start, end)
  assert int(sa.find_weighting_state(opt_state, rule).count) == 400
  chex.assert_tree_all_finite(weights)


def test_direction_equals_jacrev_then_contract_on_a_shared_trunk():
  """h = J^T w with w held fixed: stop_gradient matters (SPEC section 7)."""
  key = jax.random.key(0)
  params = {
      "w1": jax.random.normal(key, (3, 8)),
      "w2": jax.random.normal(jax.random.key(1), (8, K)),
  }
  x = jax.random.normal(jax.random.key(2), (16, 3))

  def loss_fn(p):
    out = jnp.tanh(x @ p["w1"]) @ p["w2"]
    return jnp.array([1.0, 10.0, 0.1]) * jnp.mean(out**2, axis=0)

  rule = sa.softadapt(K, beta=5.0, variant="loss_weighted")
  state = rule.init()
  for i in range(3):
    state = sa.weighted_value_and_grad(loss_fn, rule)(
        state, jax.tree.map(lambda a, i=i: a * (1 + 0.1 * i), params)
    ).state
  out = sa.weighted_value_and_grad(loss_fn, rule)(state, params)
  expected = contract(out.weights, jax.jacrev(loss_fn)(params))
  chex.assert_trees_all_close(out.grad, expected, rtol=1e-5, atol=1e-7)
  # The rule's weights carry no gradient, so differentiating the weighted sum
  # through rule.update gives the same direction; differentiating through the
  # weight formula itself (no stop_gradient) would give another one.
  def through_rule(p):
    w, _ = rule.update(state, loss_fn(p))
    return jnp.dot(w, loss_fn(p))

  chex.assert_trees_all_close(
      jax.grad(through_rule)(params), out.grad, rtol=1e-5, atol=1e-7
  )

  def through_formula(p):
    history = jnp.concatenate([state.history[1:], loss_fn(p)[None]])
    w = sa.weights_from_history(history, beta=5.0, variant="loss_weighted")
    return jnp.dot(w, loss_fn(p))

  wrong = jax.grad(through_formula)(params)
  assert not np.allclose(wrong["w2"], out.grad["w2"], rtol=1e-2)
