"""Integrations: Flax NNX (``nnx.jit`` and ``nnx.scan``), Flax Linen, Equinox.

Each training recipe of ``docs/integrations`` runs against the pure-Optax run
of the same model (parameters as a plain pytree, ``tx.update`` and
``optax.apply_updates`` in a ``lax.scan``): the per-step losses and weights,
the trained parameters and the rule's state agree to float32 tolerance.
The examples run with tiny settings.
"""

import importlib.util
import math
import pathlib
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import softadapt_jax as sa

K = 2
STEPS = 16
# The framework run and the pure run compile to different programs (fusion
# and summation order may differ): float32 rounding, compounded over STEPS.
RTOL, ATOL = 1e-5, 1e-6
SETTINGS = {"beta": 1.0, "variant": "loss_weighted"}
# Every setting given once, to the rule; the routes take the rule only.
RULE = sa.softadapt(K, **SETTINGS)
_EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _data():
  x = jax.random.uniform(jax.random.key(0), (STEPS, 16, 2), minval=-1.0)
  y = jnp.stack(
      [jnp.sin(jnp.pi * x[..., 0]), 10.0 * x[..., 0] * x[..., 1]], axis=-1
  )
  return {"x": x, "y": y}  # one minibatch per step: [STEPS, 16, ...]


def _mse(pred, y):
  return jnp.mean((pred - y) ** 2, axis=0)  # [K]


def _step_batch(batches, t):
  return jax.tree.map(lambda a: a[t], batches)


def _assert_moved(weights, losses):
  """The comparison is not vacuous: the weights left 1/K and the losses fell."""
  assert np.max(np.abs(np.asarray(weights) - 1.0 / K)) > 0.05
  assert float(jnp.sum(losses[-1])) < float(jnp.sum(losses[0]))


def _load_example(name):
  spec = importlib.util.spec_from_file_location(
      f"_example_{name}", _EXAMPLES / f"{name}.py"
  )
  assert spec is not None
  assert spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  # Registered first: dataclasses (a Flax TrainState subclass) look it up.
  sys.modules.setdefault(f"_example_{name}", module)
  spec.loader.exec_module(module)
  return module


def _pure_run(loss_fn, params, batches, *, has_aux=False, aux_init=None):
  """The reference: plain Optax on a params pytree, one ``lax.scan``.

  ``loss_fn(params, [aux,] batch)`` returns the ``[K]`` losses (or
  ``(losses, new_aux)`` with ``has_aux``: state carried from step to step).
  """
  tx = optax.chain(sa.track_weights(RULE), optax.adam(1e-2))
  grad_fn = sa.weighted_value_and_grad(loss_fn, RULE, has_aux=has_aux)

  def step(carry, batch):
    params, aux, opt_state = carry
    args = (aux, batch) if has_aux else (batch,)
    out = grad_fn(opt_state, params, *args)
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    new_aux = out.aux if has_aux else aux
    carry = (optax.apply_updates(params, updates), new_aux, opt_state)
    return carry, (out.losses, out.weights)

  carry = (params, aux_init, tx.init(params))
  (params, aux, opt_state), (losses, weights) = jax.jit(
      lambda c, b: jax.lax.scan(step, c, b)
  )(carry, batches)
  return params, aux, opt_state, losses, weights


# ---------------------------------------------------------------------------
# Flax NNX.
# ---------------------------------------------------------------------------


def _nnx_model(nnx, batchnorm):
  class MLP(nnx.Module):

    def __init__(self, rngs):
      self.hidden = nnx.Linear(2, 16, rngs=rngs)
      self.norm = nnx.BatchNorm(16, rngs=rngs) if batchnorm else None
      self.out = nnx.Linear(16, K, rngs=rngs)

    def __call__(self, x):
      h = jnp.tanh(self.hidden(x))
      if self.norm is not None:
        h = self.norm(h)
      return self.out(h)

  return MLP(nnx.Rngs(1))


@pytest.mark.parametrize(
    ("loop", "batchnorm"), [("jit", False), ("scan", False), ("scan", True)]
)
def test_nnx_optimizer_matches_pure_optax(loop, batchnorm):
  nnx = pytest.importorskip("flax.nnx")
  batches = _data()
  model = _nnx_model(nnx, batchnorm)
  graphdef, params0, rest0 = nnx.split(model, nnx.Param, ...)
  params0, rest0 = nnx.as_pure(params0), nnx.as_pure(rest0)

  # The recipe (docs/integrations/nnx.md): the rule's state lives in the
  # nnx.Optimizer; its opt_state goes into grad_fn as is; the non-Param state
  # (BatchNorm statistics) comes back as aux.
  def loss_fn(params, graphdef, rest, batch):
    model = nnx.merge(graphdef, params, rest, copy=True)
    losses = _mse(model(batch["x"]), batch["y"])
    return losses, nnx.state(model, nnx.Not(nnx.Param))

  tx = optax.chain(sa.track_weights(RULE), optax.adam(1e-2))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grad_fn = sa.weighted_value_and_grad(loss_fn, RULE, has_aux=True)

  def train_step(model, optimizer, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    out = grad_fn(optimizer.opt_state, params, graphdef, rest, batch)
    nnx.update(model, out.aux)
    optimizer.update(model, out.grad, weighting_state=out.state)
    return out.losses, out.weights

  if loop == "jit":
    jit_step = nnx.jit(train_step)
    outs = [jit_step(model, optimizer, _step_batch(batches, t)) for t in range(STEPS)]
    losses, weights = (jnp.stack(o) for o in zip(*outs, strict=True))
  else:

    @nnx.jit
    def train_chunk(model, optimizer, batches):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
      def body(carry, batch):
        return carry, train_step(carry[0], carry[1], batch)

      return body((model, optimizer), batches)[1]

    # Two chunks: the state carries over between compiled calls.
    half = STEPS // 2
    first = train_chunk(model, optimizer, jax.tree.map(lambda a: a[:half], batches))
    second = train_chunk(model, optimizer, jax.tree.map(lambda a: a[half:], batches))
    losses, weights = (
        jnp.concatenate(pair) for pair in zip(first, second, strict=True)
    )

  def pure_loss(params, rest, batch):
    model = nnx.merge(graphdef, params, rest, copy=True)
    losses = _mse(model(batch["x"]), batch["y"])
    return losses, nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param)))

  params, rest, opt_state, ref_losses, ref_weights = _pure_run(
      pure_loss, params0, batches, has_aux=True, aux_init=rest0
  )
  chex.assert_trees_all_close(losses, ref_losses, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(weights, ref_weights, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(
      nnx.as_pure(nnx.state(model, nnx.Param)), params, rtol=RTOL, atol=ATOL
  )
  chex.assert_trees_all_close(
      nnx.as_pure(nnx.state(model, nnx.Not(nnx.Param))), rest, rtol=RTOL,
      atol=ATOL,
  )
  state = sa.find_weighting_state(optimizer.opt_state, RULE)
  chex.assert_trees_all_close(
      state, sa.find_weighting_state(opt_state, RULE), rtol=RTOL, atol=ATOL
  )
  assert int(optimizer.step[...]) == STEPS
  assert int(state.count) == STEPS
  _assert_moved(weights, losses)
  if batchnorm:  # the running statistics were updated through aux
    assert float(jnp.max(jnp.abs(rest["norm"]["mean"]))) > 1e-3


# ---------------------------------------------------------------------------
# Flax Linen: the apply_gradients helper.
# ---------------------------------------------------------------------------


def _linen_setup():
  nn = pytest.importorskip("flax.linen")
  train_state = pytest.importorskip("flax.training.train_state")
  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(K)(jnp.tanh(nn.Dense(16)(x)))

  model = MLP()
  params = model.init(jax.random.key(1), jnp.zeros((1, 2)))["params"]
  return model, params, train_state, sa.apply_gradients


def test_linen_apply_gradients_matches_manual_and_pure_optax():
  model, params0, train_state, apply_gradients = _linen_setup()
  batches = _data()

  def loss_fn(params, batch):
    return _mse(model.apply({"params": params}, batch["x"]), batch["y"])

  tx = optax.chain(sa.track_weights(RULE), optax.adam(1e-2))
  grad_fn = sa.weighted_value_and_grad(loss_fn, RULE)

  class MethodState(train_state.TrainState):  # the documented subclass
    def apply_gradients(self, *, grads, **kwargs):
      return apply_gradients(self, grads, **kwargs)

  def helper(state, out):
    return apply_gradients(state, out)

  def method(state, out):
    return state.apply_gradients(grads=out)

  def manual(state, out):
    updates, opt_state = state.tx.update(
        out.grad, state.opt_state, state.params, weighting_state=out.state
    )
    return state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )

  def run(state_cls, update):
    def step(state, batch):
      out = grad_fn(state.opt_state, state.params, batch)
      return update(state, out), (out.losses, out.weights)

    state = state_cls.create(apply_fn=model.apply, params=params0, tx=tx)
    return jax.jit(lambda s, b: jax.lax.scan(step, s, b))(state, batches)

  TrainState = train_state.TrainState
  state, (losses, weights) = run(TrainState, helper)
  # The helper does exactly what the hand-written update does.
  for other in (run(MethodState, method), run(TrainState, manual)):
    jax.tree.map(
        np.testing.assert_array_equal,
        (state.params, state.opt_state, losses, weights),
        (other[0].params, other[0].opt_state, *other[1]),
    )
  params, _, opt_state, ref_losses, ref_weights = _pure_run(
      lambda p, b: loss_fn(p, b), params0, batches
  )
  chex.assert_trees_all_close(losses, ref_losses, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(weights, ref_weights, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(state.params, params, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(
      sa.find_weighting_state(state.opt_state, RULE),
      sa.find_weighting_state(opt_state, RULE),
      rtol=RTOL,
      atol=ATOL,
  )
  assert int(state.step) == STEPS
  _assert_moved(weights, losses)


@pytest.mark.parametrize("overwrite_with_gradient", [False, True])
def test_linen_apply_gradients_is_train_state_apply_gradients(
    overwrite_with_gradient,
):
  """With a chain that ignores losses=, the helper equals the Flax method.

  Also with the ``_overwrite_with_gradient`` collection (FP8 scales), which
  the method copies from the gradients instead of optimizing; and any extra
  field is replaced, as the method's ``**kwargs``.
  """
  _, params, train_state, apply_gradients = _linen_setup()
  owg = train_state.OVERWRITE_WITH_GRADIENT
  if overwrite_with_gradient:
    params = {"params": params, owg: {"scale": jnp.ones(3)}}

  class State(train_state.TrainState):
    extra: jax.Array

  tx = optax.chain(optax.adam(1e-2))  # chain: accepts (ignores) losses=
  state = State.create(
      apply_fn=None, params=params, tx=tx, extra=jnp.zeros(())
  )
  grads = jax.tree.map(lambda p: jnp.cos(p) + 0.5, params)
  for _ in range(3):
    ours = apply_gradients(
        state, grads, losses=jnp.ones(K), extra=state.extra + 1.0
    )
    theirs = state.apply_gradients(grads=grads, extra=state.extra + 1.0)
    jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    state = ours
  assert int(state.step) == 3
  assert float(state.extra) == 3.0
  if overwrite_with_gradient:
    np.testing.assert_array_equal(state.params[owg]["scale"], grads[owg]["scale"])


def test_linen_apply_gradients_forwards_update_kwargs():
  _, params, train_state, apply_gradients = _linen_setup()

  def scale_by_factor():
    def update(updates, state, params=None, *, factor, **extra):
      del params, extra
      return jax.tree.map(lambda u: factor * u, updates), state

    # `factor` is a required extra argument on purpose (see the last check).
    return optax.GradientTransformationExtraArgs(
        lambda params: optax.EmptyState(),
        update,  # pyright: ignore[reportArgumentType]
    )

  rule = sa.softadapt(K)
  tx = optax.chain(sa.track_weights(rule), scale_by_factor(), optax.sgd(1.0))
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
  grads = jax.tree.map(jnp.ones_like, params)
  # A WeightedGrad as weighted_value_and_grad returns it: direction and state.
  losses = jnp.array([1.0, 2.0])
  weights, rule_state = rule.update(rule.init(), losses)
  out = sa.WeightedGrad(
      losses=losses, aux=None, weights=weights, state=rule_state, grad=grads
  )
  new = apply_gradients(state, out, update_kwargs={"factor": 0.25})
  chex.assert_trees_all_close(
      new.params, jax.tree.map(lambda p: p - 0.25, params)
  )
  assert int(sa.find_weighting_state(new.opt_state, rule).count) == 1
  with pytest.raises(TypeError, match="factor"):
    apply_gradients(state, out)


# ---------------------------------------------------------------------------
# Equinox.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["jit", "scan"])
def test_equinox_filter_jit_matches_pure_jax(loop):
  eqx = pytest.importorskip("equinox")
  batches = _data()
  model = eqx.nn.MLP(2, K, 16, depth=2, activation=jnp.tanh, key=jax.random.key(1))

  # The recipe (docs/integrations/equinox.md).
  def loss_fn(params, static, batch):
    model = eqx.combine(params, static)
    return _mse(jax.vmap(model)(batch["x"]), batch["y"])

  optim = optax.chain(sa.track_weights(RULE), optax.adam(1e-2))
  opt_state = optim.init(eqx.filter(model, eqx.is_array))
  grad_fn = sa.weighted_value_and_grad(loss_fn, RULE)

  def train_step(model, opt_state, batch):
    params, static = eqx.partition(model, eqx.is_array)
    out = grad_fn(opt_state, params, static, batch)
    updates, opt_state = optim.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    return eqx.apply_updates(model, updates), opt_state, out.losses, out.weights

  if loop == "jit":
    step = eqx.filter_jit(train_step)
    history = []
    for t in range(STEPS):
      model, opt_state, *out = step(model, opt_state, _step_batch(batches, t))
      history.append(out)
    losses, weights = (jnp.stack(h) for h in zip(*history, strict=True))
  else:

    @eqx.filter_jit
    def train_chunk(model, opt_state, batches):
      params, static = eqx.partition(model, eqx.is_array)

      def body(carry, batch):
        model, opt_state, *out = train_step(
            eqx.combine(carry[0], static), carry[1], batch
        )
        return (eqx.filter(model, eqx.is_array), opt_state), out

      (params, opt_state), out = jax.lax.scan(body, (params, opt_state), batches)
      return eqx.combine(params, static), opt_state, out

    model0 = model
    model, opt_state, (losses, weights) = train_chunk(model, opt_state, batches)
    assert model.activation is model0.activation  # static part kept

  # The reference: the same MLP in plain JAX on a list of (w, b).
  initial = eqx.nn.MLP(2, K, 16, depth=2, activation=jnp.tanh, key=jax.random.key(1))
  params0 = [(layer.weight, layer.bias) for layer in initial.layers]

  def pure_loss(params, batch):
    h = batch["x"]
    for w, b in params[:-1]:
      h = jnp.tanh(h @ w.T + b)
    w, b = params[-1]
    return _mse(h @ w.T + b, batch["y"])

  params, _, ref_opt_state, ref_losses, ref_weights = _pure_run(
      pure_loss, params0, batches
  )
  chex.assert_trees_all_close(losses, ref_losses, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(weights, ref_weights, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(
      [(layer.weight, layer.bias) for layer in model.layers],
      params,
      rtol=RTOL,
      atol=ATOL,
  )
  chex.assert_trees_all_close(
      sa.find_weighting_state(opt_state, RULE),
      sa.find_weighting_state(ref_opt_state, RULE),
      rtol=RTOL,
      atol=ATOL,
  )
  _assert_moved(weights, losses)


# ---------------------------------------------------------------------------
# The examples, with tiny settings.
# ---------------------------------------------------------------------------


_TINY = ["--steps", "40", "--chunk", "20", "--batch-size", "16", "--hidden", "8"]


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("nnx_train", "flax.nnx", ["--batchnorm"]),
        ("linen_train", "flax.linen", ["--batchnorm", "--loop", "jit"]),
        ("equinox_train", "equinox", []),
    ],
)
def test_example_runs(name, module, extra, capsys):
  pytest.importorskip(module)
  metrics = _load_example(name).main([*_TINY, "--beta", "1.0", *extra])
  losses, weights = metrics["losses"], metrics["weights"]
  assert losses.shape == weights.shape == (40, K)
  assert np.all(np.isfinite(losses))
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(weights[0], 1.0 / K)  # warm-up
  assert metrics["softadapt_count"] == 40
  assert metrics.get("step", 40) == 40
  assert all(math.isfinite(v) for v in metrics["final_losses"])
  assert sum(metrics["final_losses"]) < sum(metrics["initial_losses"])
  assert "SoftAdapt weights during training" in capsys.readouterr().out
