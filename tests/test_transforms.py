"""Tests of the Optax contracts of the SoftAdapt transformations.

Adapted from optax's common tests for contributed optimizers
(``optax/contrib/_common_test.py``) and its transform tests, for both
``sa.softadapt_combine_grads`` (per-component gradients stacked on a leading
``K`` axis, plus ``losses=``) and ``sa.softadapt_track`` (the state only, with
the direction from ``sa.softadapt_value_and_grad``): extra arguments, no
recompilation, dtypes, ``MultiSteps``, ``apply_if_finite``,
``inject_hyperparams``, convergence under ``lax.scan`` and Flax NNX.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import softadapt_jax as sa

VARIANTS = ("original", "normalized", "loss_weighted")
KINDS = ("track", "combine")
NUM_LOSSES = 3
DIM = 6
# Different scales, one common minimiser: every component can reach 0.
SCALES = jnp.array([10.0, 1.0, 0.1])
RTOL, ATOL = 1e-5, 1e-6


def _problem():
  """A small least-squares multi-task problem with K=3 components."""
  keys = jax.random.split(jax.random.key(0), NUM_LOSSES + 1)
  mats = jnp.stack([jax.random.normal(k, (8, DIM)) for k in keys[:-1]])
  x_star = jax.random.normal(keys[-1], (DIM,))
  targets = mats @ x_star

  def losses(params, data_scale=1.0):
    x = params["x"]
    pred = jnp.einsum("kmd,d->km", mats, x) + params["bias"]
    residual = (pred - targets) * data_scale
    return SCALES * jnp.mean(residual**2, axis=1)

  init = {"x": jnp.zeros((DIM,)), "bias": jnp.zeros((NUM_LOSSES, 1))}
  return init, losses


def _factory(kind):
  return {"track": sa.softadapt_track, "combine": sa.softadapt_combine_grads}[
      kind
  ]


def _direction_fn(kind, losses, **settings):
  """``(opt_state, params, *args) -> (updates_in, losses)`` for the kind.

  ``track``: the one-VJP direction from the helper; ``combine``: the stacked
  per-component gradients from ``jax.jacrev``.
  """
  if kind == "track":
    grad_fn = sa.softadapt_value_and_grad(losses, **settings)

    def direction(opt_state, params, *args):
      out = grad_fn(opt_state, params, *args)
      return out.grad, out.losses

  else:

    def direction(opt_state, params, *args):
      del opt_state
      return jax.jacrev(losses)(params, *args), losses(params, *args)

  return direction


def _contract(weights, stacked):
  return jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), stacked)


def _loss_sequence(num_steps, num_losses=NUM_LOSSES):
  """Losses falling at different rates, one rising, with some noise."""
  t = np.arange(num_steps, dtype=np.float64)[:, None]
  rates = np.linspace(-0.3, 0.2, num_losses)[None, :]
  noise = np.random.default_rng(0).uniform(0.0, 0.05, (num_steps, num_losses))
  return jnp.asarray(np.exp(rates * t) * (1.0 + noise), jnp.float32)


# Extra arguments.


@pytest.mark.parametrize("kind", KINDS)
def test_extra_args_in_chain(kind):
  params, losses = _problem()
  settings = {"beta": 1.0, "variant": "loss_weighted"}
  tx = optax.chain(
      _factory(kind)(NUM_LOSSES, order=2, **settings), optax.adam(1e-1)
  )
  direction = _direction_fn(kind, losses, **settings)

  def make_step(**extra_args):
    @jax.jit
    def step(params, opt_state):
      updates, values = direction(opt_state, params)
      updates, opt_state = tx.update(
          updates, opt_state, params, losses=values, **extra_args
      )
      return optax.apply_updates(params, updates), opt_state, values

    return step

  with_extra = make_step(unexpected_extra_args_your_optimizer_doesnt_expect=1)
  plain = make_step()
  state_a = state_b = tx.init(params)
  params_a = params_b = params
  for _ in range(10):
    params_a, state_a, values = with_extra(params_a, state_a)
    params_b, state_b, _ = plain(params_b, state_b)
  # The unexpected argument changes nothing.
  chex.assert_trees_all_equal((params_a, state_a), (params_b, state_b))
  recorded = sa.find_softadapt_state(state_a)
  assert int(recorded.count) == 10
  np.testing.assert_array_equal(recorded.history[-1], values)
  assert float(jnp.sum(losses(params_a))) < 0.5 * float(jnp.sum(losses(params)))


def test_linesearch_extra_args():
  """value=, grad=, value_fn= next to losses= (README: line searches).

  optax's line search forwards every extra argument to ``value_fn`` by name and
  rejects those it does not accept, so ``value_fn`` must take (and ignore) a
  ``losses`` argument.
  """
  params, loss_fn = _problem()
  settings = {"beta": 1.0, "variant": "original"}
  tx = optax.chain(
      sa.softadapt_track(NUM_LOSSES, **settings),
      optax.sgd(learning_rate=1.0),
      optax.scale_by_backtracking_linesearch(max_backtracking_steps=15),
  )
  grad_fn = sa.softadapt_value_and_grad(loss_fn, **settings)

  @jax.jit
  def step(params, opt_state):
    out = grad_fn(opt_state, params)

    # The weighted objective with this step's weights held fixed.
    def value_fn(p, losses):
      del losses  # the current step's losses, forwarded by the line search
      return jnp.dot(out.weights, loss_fn(p))

    value = jnp.dot(out.weights, out.losses)
    updates, opt_state = tx.update(
        out.grad,
        opt_state,
        params,
        losses=out.losses,
        value=value,
        grad=out.grad,
        value_fn=value_fn,
    )
    new_params = optax.apply_updates(params, updates)
    return new_params, opt_state, value, value_fn(new_params, None), out

  opt_state = tx.init(params)
  with pytest.raises(TypeError, match="losses"):  # a value_fn without it
    tx.update(
        params,
        opt_state,
        params,
        losses=loss_fn(params),
        value=jnp.sum(loss_fn(params)),
        grad=params,
        value_fn=lambda p: jnp.sum(loss_fn(p)),
    )
  start = float(jnp.sum(loss_fn(params)))
  for _ in range(8):
    params, opt_state, before, after, out = step(params, opt_state)
    # Armijo: the held-weights objective never goes up.
    assert float(after) <= float(before), (after, before)
  recorded = sa.find_softadapt_state(opt_state)
  chex.assert_trees_all_equal(recorded, out.state)
  assert int(recorded.count) == 8
  assert float(jnp.sum(loss_fn(params))) < 0.1 * start


@pytest.mark.parametrize("kind", KINDS)
def test_missing_losses_raises(kind):
  params, _ = _problem()
  updates = jax.tree.map(jnp.ones_like, params)
  if kind == "combine":
    updates = jax.tree.map(lambda u: jnp.stack([u] * NUM_LOSSES), updates)
  bare = _factory(kind)(NUM_LOSSES)
  with pytest.raises(TypeError, match="losses"):
    bare.update(updates, bare.init(params), params)
  chained = optax.chain(_factory(kind)(NUM_LOSSES), optax.adam(1e-3))
  with pytest.raises(TypeError, match="losses"):
    chained.update(updates, chained.init(params), params, value=1.0)


# softadapt_combine_grads: the hand contraction.


@pytest.mark.parametrize("use_jit", [True, False], ids=["jit", "nojit"])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_combine_grads_equals_hand_contraction(variant, order, use_jit):
  settings = {"beta": 2.0, "variant": variant}
  tx = sa.softadapt_combine_grads(NUM_LOSSES, order=order, **settings)
  update = jax.jit(tx.update) if use_jit else tx.update
  params = {"a": jnp.zeros((2,)), "b": jnp.zeros((2, 3))}
  state = tx.init(params)
  reference_state = sa.init_state(NUM_LOSSES, order=order)
  num_steps = order + 4
  keys = jax.random.split(jax.random.key(1), num_steps)
  for key, values in zip(keys, _loss_sequence(num_steps), strict=True):
    ka, kb = jax.random.split(key)
    stacked = {
        "a": jax.random.normal(ka, (NUM_LOSSES, 2)),
        "b": jax.random.normal(kb, (NUM_LOSSES, 2, 3)),
    }
    updates, state = update(stacked, state, params, losses=values)
    weights, reference_state = sa.softadapt_weights(
        reference_state, values, **settings
    )
    chex.assert_trees_all_close(
        updates, _contract(weights, stacked), rtol=RTOL, atol=ATOL
    )
    chex.assert_trees_all_close(state, reference_state, rtol=RTOL, atol=ATOL)
  assert int(state.count) == num_steps
  assert np.ptp(np.asarray(weights)) > 1e-2, weights


def test_combine_grads_wrong_leading_axis_raises():
  tx = sa.softadapt_combine_grads(NUM_LOSSES)
  params = {"a": jnp.zeros((2,)), "b": jnp.zeros(())}
  state = tx.init(params)
  values = jnp.ones((NUM_LOSSES,))
  with pytest.raises(ValueError, match="num_losses"):
    tx.update(
        {"a": jnp.ones((NUM_LOSSES + 1, 2)), "b": jnp.ones((NUM_LOSSES,))},
        state,
        params,
        losses=values,
    )
  with pytest.raises(ValueError, match="num_losses"):  # forgot to stack
    tx.update({"a": jnp.ones((2,)), "b": jnp.ones(())}, state, losses=values)
  with pytest.raises(ValueError, match="num_losses"):
    jax.jit(tx.update)(
        {"a": jnp.ones((NUM_LOSSES, 2)), "b": jnp.ones(())},
        state,
        losses=values,
    )


# No recompilation.


@pytest.mark.parametrize("kind", KINDS)
def test_no_retrace_through_warm_up(kind):
  chex.clear_trace_counter()  # counted per function name, across tests
  params, losses = _problem()
  order = 2
  tx = optax.chain(_factory(kind)(NUM_LOSSES, order=order), optax.adam(1e-2))
  direction = _direction_fn(kind, losses)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, opt_state):
    updates, values = direction(opt_state, params)
    updates, opt_state = tx.update(updates, opt_state, params, losses=values)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  weights = []
  for _ in range(order + 4):
    params, opt_state = step(params, opt_state)
    weights.append(sa.find_softadapt_state(opt_state).weights)
  # It went through warm-up (initial weights) and past it (new weights).
  np.testing.assert_array_equal(weights[order - 1], jnp.full((3,), 1 / 3))
  assert not np.allclose(weights[-1], weights[order - 1])


def test_inject_hyperparams_beta_no_retrace():
  chex.clear_trace_counter()
  tx = optax.inject_hyperparams(
      sa.softadapt_combine_grads,
      static_args=("num_losses", "order", "update_every"),
  )(num_losses=NUM_LOSSES, beta=0.1)
  # With identity per-component gradients the output is the weights.
  params = jnp.zeros((NUM_LOSSES,))
  stacked = jnp.eye(NUM_LOSSES)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(opt_state, values):
    return tx.update(stacked, opt_state, params, losses=values)

  values = _loss_sequence(4) * jnp.array([1.0, 10.0, 100.0])
  opt_state = tx.init(params)
  for v in values[:-1]:
    _, opt_state = step(opt_state, v)
  before = sa.find_softadapt_state(opt_state)

  weights_low, _ = step(opt_state, values[-1])
  opt_state.hyperparams["beta"] = jnp.asarray(0.5, jnp.float32)
  weights_high, _ = step(opt_state, values[-1])
  expected_low, _ = sa.softadapt_weights(before, values[-1], beta=0.1)
  expected_high, _ = sa.softadapt_weights(before, values[-1], beta=0.5)
  np.testing.assert_allclose(weights_low, expected_low, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(weights_high, expected_high, rtol=RTOL, atol=ATOL)
  assert np.max(np.abs(weights_high - weights_low)) > 1e-2


# Dtypes.


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_preserve_dtype(dtype, kind):
  """Updates keep the params' dtype; the history is float32 or wider."""
  with jax.enable_x64(dtype == "float64"):
    dtype = jnp.dtype(dtype)
    tx = optax.chain(_factory(kind)(NUM_LOSSES, order=1), optax.adam(1e-2))
    params = {"w": jnp.array([1.0, 2.0], dtype), "b": jnp.array(0.5, dtype)}

    def losses(p):
      return jnp.stack(
          [jnp.sum(p["w"] ** 2), p["b"] ** 2, jnp.sum(p["w"]) * p["b"]]
      )

    direction = _direction_fn(kind, losses)

    @jax.jit
    def step(params, opt_state):
      updates, values = direction(opt_state, params)
      updates, opt_state = tx.update(updates, opt_state, params, losses=values)
      return updates, opt_state, values

    opt_state = tx.init(params)
    for _ in range(3):
      updates, opt_state, values = step(params, opt_state)
      params = optax.apply_updates(params, updates)
    assert values.dtype == dtype
    assert params["w"].dtype == params["b"].dtype == dtype
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_tree_all_finite(updates)
    recorded = sa.find_softadapt_state(opt_state)
    history_dtype = jnp.float64 if dtype == jnp.float64 else jnp.float32
    assert recorded.history.dtype == history_dtype
    assert recorded.weights.dtype == history_dtype
    assert int(recorded.count) == 3


# Wrappers: MultiSteps, apply_if_finite, optax.tree.get.


def test_multi_steps_records_last_micro_step():
  kind = "track"
  every_k = 3
  lr = 0.1
  tx = optax.MultiSteps(
      optax.chain(_factory(kind)(NUM_LOSSES, order=1, beta=1.0), optax.sgd(lr)),
      every_k_schedule=every_k,
  )
  params = jnp.zeros((2,))
  update = jax.jit(tx.update)
  opt_state = tx.init(params)
  values = _loss_sequence(3 * every_k)
  keys = jax.random.split(jax.random.key(2), 3 * every_k)
  micro_grads = []
  reference = sa.init_state(NUM_LOSSES)
  for step, (key, v) in enumerate(zip(keys, values, strict=True), start=1):
    shape = (NUM_LOSSES, 2) if kind == "combine" else (2,)
    grads = jax.random.normal(key, shape)
    micro_grads.append(grads)
    updates, opt_state = update(grads, opt_state, params, losses=v)
    recorded = sa.find_softadapt_state(opt_state)
    assert int(recorded.count) == step // every_k
    if step % every_k:
      np.testing.assert_array_equal(updates, jnp.zeros((2,)))
      continue
    weights, reference = sa.softadapt_weights(reference, v, beta=1.0)
    chex.assert_trees_all_close(recorded, reference, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(recorded.history[-1], v)
    mean_grads = jnp.mean(jnp.stack(micro_grads[-every_k:]), axis=0)
    if kind == "combine":
      mean_grads = weights @ mean_grads
    np.testing.assert_allclose(updates, -lr * mean_grads, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(recorded.history[-2], values[2 * every_k - 1])
  assert np.ptp(np.asarray(recorded.weights)) > 1e-2


def test_combine_grads_before_multi_steps():
  # MultiSteps sizes its accumulator like the params, so the stacked [K, ...]
  # gradients must be combined before it (README caveat): SoftAdapt then
  # records every micro-step and MultiSteps averages the directions.
  every_k, lr = 3, 0.1
  tx = optax.chain(
      sa.softadapt_combine_grads(NUM_LOSSES, order=1, beta=1.0),
      optax.MultiSteps(optax.sgd(lr), every_k_schedule=every_k)
      .gradient_transformation(),
  )
  params = jnp.zeros((2,))
  update = jax.jit(tx.update)
  opt_state = tx.init(params)
  reference = sa.init_state(NUM_LOSSES)
  directions = []
  values = _loss_sequence(2 * every_k)
  keys = jax.random.split(jax.random.key(3), 2 * every_k)
  for step, (key, v) in enumerate(zip(keys, values, strict=True), start=1):
    grads = jax.random.normal(key, (NUM_LOSSES, 2))
    weights, reference = sa.softadapt_weights(reference, v, beta=1.0)
    directions.append(weights @ grads)
    updates, opt_state = update(grads, opt_state, params, losses=v)
    recorded = sa.find_softadapt_state(opt_state)
    assert int(recorded.count) == step
    chex.assert_trees_all_close(recorded, reference, rtol=RTOL, atol=ATOL)
    expected = (
        -lr * jnp.mean(jnp.stack(directions[-every_k:]), axis=0)
        if step % every_k == 0
        else jnp.zeros((2,))
    )
    np.testing.assert_allclose(updates, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_tree_get_and_apply_if_finite(kind):
  params, losses = _problem()
  inner = optax.sgd(1e-2)
  if kind == "track":
    tx = optax.apply_if_finite(
        optax.chain(sa.softadapt_track(NUM_LOSSES, beta=1.0), inner),
        max_consecutive_errors=5,
    )
  else:
    # apply_if_finite's reject branch returns zeros shaped like its input, so
    # the stacked gradients are combined outside it (README caveat).
    tx = optax.chain(
        sa.softadapt_combine_grads(NUM_LOSSES, beta=1.0),
        optax.apply_if_finite(inner, max_consecutive_errors=5),
    )
  guard = (lambda s: s) if kind == "track" else (lambda s: s[1])
  direction = _direction_fn(kind, losses, beta=1.0)

  @jax.jit
  def step(params, opt_state, data_scale):
    updates, values = direction(opt_state, params, data_scale)
    updates, opt_state = tx.update(updates, opt_state, params, losses=values)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  found = optax.tree.get(opt_state, "SoftAdaptState")
  chex.assert_trees_all_equal(found, sa.init_state(NUM_LOSSES))
  for _ in range(3):
    params, opt_state = step(params, opt_state, 1.0)
  before_params, before = params, sa.find_softadapt_state(opt_state)
  params, opt_state = step(params, opt_state, jnp.nan)  # NaN losses and grads
  chex.assert_trees_all_equal(params, before_params)  # no update
  recorded = optax.tree.get(opt_state, "SoftAdaptState")
  # Inside apply_if_finite SoftAdapt is not even called; outside it, it skips
  # the NaN losses itself. Either way the history is untouched.
  skipped = 0 if kind == "track" else 1
  chex.assert_trees_all_equal(recorded, before._replace(num_skipped=skipped))
  assert int(guard(opt_state).notfinite_count) == 1
  assert int(guard(opt_state).total_notfinite) == 1
  params, opt_state = step(params, opt_state, 1.0)
  after = sa.find_softadapt_state(opt_state)
  assert int(after.count) == 4
  assert int(after.num_skipped) == skipped
  assert int(guard(opt_state).notfinite_count) == 0
  assert not np.allclose(after.weights, before.weights)


# Convergence.


@pytest.mark.parametrize(
    ("variant", "order"),
    [("original", 1), ("normalized", 2), ("loss_weighted", 3)],
)
def test_converges_in_scan(variant, order):
  params, losses = _problem()
  settings = {"beta": 0.1, "variant": variant}
  tx = optax.chain(
      sa.softadapt_track(NUM_LOSSES, order=order, **settings), optax.adam(5e-2)
  )
  grad_fn = sa.softadapt_value_and_grad(losses, **settings)

  def body(carry, _):
    params, opt_state = carry
    out = grad_fn(opt_state, params)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, losses=out.losses
    )
    return (optax.apply_updates(params, updates), opt_state), out.weights

  @jax.jit
  def run(params):
    return jax.lax.scan(body, (params, tx.init(params)), length=600)

  (final, opt_state), weights = run(params)
  start, end = float(jnp.sum(losses(params))), float(jnp.sum(losses(final)))
  assert end < 1e-6, end
  assert end < 1e-6 * start, (start, end)
  assert int(sa.find_softadapt_state(opt_state).count) == 600
  # The weights did move away from uniform on the way.
  assert float(jnp.max(jnp.ptp(weights, axis=1))) > 1e-2


@pytest.mark.parametrize("variant", VARIANTS)
def test_combine_and_track_routes_agree(variant):
  """jacrev + softadapt_combine_grads == one VJP + softadapt_track, in a scan."""
  params, losses = _problem()
  settings = {"beta": 1.0, "variant": variant}
  routes = {
      kind: (
          optax.chain(
              _factory(kind)(NUM_LOSSES, order=2, **settings), optax.adam(5e-2)
          ),
          _direction_fn(kind, losses, **settings),
      )
      for kind in KINDS
  }

  def body(carry, _):
    new = {}
    for kind, (tx, direction) in routes.items():
      params, opt_state = carry[kind]
      updates, values = direction(opt_state, params)
      updates, opt_state = tx.update(updates, opt_state, params, losses=values)
      new[kind] = (optax.apply_updates(params, updates), opt_state)
    return new, None

  init = {kind: (params, tx.init(params)) for kind, (tx, _) in routes.items()}
  final, _ = jax.jit(lambda c: jax.lax.scan(body, c, length=40))(init)
  (p_track, s_track), (p_combine, s_combine) = final["track"], final["combine"]
  chex.assert_trees_all_close(p_track, p_combine, rtol=1e-4, atol=1e-5)
  assert not np.allclose(p_track["x"], params["x"])
  chex.assert_trees_all_close(
      sa.find_softadapt_state(s_track),
      sa.find_softadapt_state(s_combine),
      rtol=1e-4,
      atol=1e-5,
  )
  assert float(jnp.sum(losses(p_track))) < 0.5 * float(jnp.sum(losses(params)))


# Flax NNX.


def _nnx_setup(nnx):
  x = jax.random.normal(jax.random.key(3), (16, 4))
  y = jax.random.normal(jax.random.key(4), (16, NUM_LOSSES))

  class MLP(nnx.Module):

    def __init__(self, rngs):
      self.hidden = nnx.Linear(4, 8, rngs=rngs)
      self.out = nnx.Linear(8, NUM_LOSSES, rngs=rngs)

    def __call__(self, x):
      return self.out(jnp.tanh(self.hidden(x)))

  def losses(params, graphdef):
    pred = nnx.merge(graphdef, params)(x)
    return SCALES * jnp.mean((pred - y) ** 2, axis=0)

  settings = {"beta": 1.0, "variant": "loss_weighted"}
  tx = optax.chain(sa.softadapt_track(NUM_LOSSES, **settings), optax.adam(1e-2))
  grad_fn = sa.softadapt_value_and_grad(losses, **settings)
  return MLP(nnx.Rngs(0)), tx, grad_fn, losses


def test_nnx_optimizer_matches_pure_optax():
  nnx = pytest.importorskip("flax.nnx")
  model, tx, grad_fn, losses = _nnx_setup(nnx)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, params0 = nnx.split(model, nnx.Param)
  params0 = nnx.as_pure(params0)

  @nnx.jit
  def nnx_step(model, optimizer):
    graphdef, params = nnx.split(model, nnx.Param)
    # The optimizer's opt_state (leaves wrapped in nnx Variables) goes in as
    # is. Differentiate the Param state itself: the grads are then nnx.Param
    # Variables, as optimizer.update(model, grads) expects.
    out = grad_fn(optimizer.opt_state, params, graphdef)
    optimizer.update(model, out.grad, losses=out.losses)
    return out

  @jax.jit
  def pure_step(params, opt_state):
    out = grad_fn(opt_state, params, graphdef)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, losses=out.losses
    )
    return optax.apply_updates(params, updates), opt_state, out

  params, opt_state = params0, tx.init(params0)
  for _ in range(8):
    nnx_out = nnx_step(model, optimizer)
    params, opt_state, pure_out = pure_step(params, opt_state)
    chex.assert_trees_all_close(nnx_out.weights, pure_out.weights, rtol=RTOL)

  trained = nnx.as_pure(nnx.state(model, nnx.Param))
  chex.assert_trees_all_close(trained, params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(
      sa.find_softadapt_state(nnx.as_pure(optimizer.opt_state)),
      sa.find_softadapt_state(opt_state),
      rtol=RTOL,
      atol=ATOL,
  )
  assert int(optimizer.step[...]) == 8
  assert int(sa.find_softadapt_state(opt_state).count) == 8
  start = float(jnp.sum(losses(params0, graphdef)))
  assert float(jnp.sum(losses(trained, graphdef))) < 0.8 * start


def test_nnx_optimizer_state_passes_to_helper():
  """README: the helper takes "any opt_state holding" a SoftAdaptState."""
  nnx = pytest.importorskip("flax.nnx")
  model, tx, grad_fn, _ = _nnx_setup(nnx)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, params = nnx.split(model, nnx.Param)
  params = nnx.as_pure(params)
  expected = grad_fn(nnx.as_pure(optimizer.opt_state), params, graphdef)
  out = grad_fn(optimizer.opt_state, params, graphdef)
  chex.assert_trees_all_close(
      (out.losses, out.weights, out.grad),
      (expected.losses, expected.weights, expected.grad),
      rtol=RTOL,
  )
  chex.assert_trees_all_equal(
      jax.tree.map(jnp.asarray, out.state), expected.state
  )
