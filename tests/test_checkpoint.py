"""Checkpoint and resume with Orbax: the rule's state round-trips exactly.

- In a fresh process (``examples/checkpoint_resume.py``): a run interrupted
  after a checkpoint and resumed by another Python process equals the
  uninterrupted run bit for bit (losses, weights, parameters, the whole
  optimizer state), with a NaN loss vector right before the checkpoint.
- In process, for several chains: the restored state equals the saved one
  leaf for leaf (types and dtypes included), and training continues
  identically; resuming with a fresh SoftAdapt state does not (the state
  matters, so the comparison can fail).
"""

import importlib.util
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import softadapt_jax as sa

ocp = pytest.importorskip("orbax.checkpoint")

K = 2
_EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _assert_trees_equal(a, b):
  """Same structure, and every leaf bitwise equal with the same dtype."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True)


@pytest.fixture(scope="module")
def checkpoint_resume():
  name = "_example_checkpoint_resume"
  spec = importlib.util.spec_from_file_location(
      name, _EXAMPLES / "checkpoint_resume.py"
  )
  assert spec is not None
  assert spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  sys.modules.setdefault(name, module)
  spec.loader.exec_module(module)
  return module


def test_resume_in_fresh_process_is_bit_exact(checkpoint_resume, tmp_path):
  steps, stop = 30, 20
  ckpt_dir = tmp_path / "ckpt"
  metrics = checkpoint_resume.main([
      "--steps", str(steps), "--stop-at", str(stop), "--chunk", "10",
      "--save-every", "10", "--hidden", "8", "--batch-size", "16",
      "--beta", "1.0", "--ckpt-dir", str(ckpt_dir),
  ])  # fmt: skip
  full, first = metrics["uninterrupted"], metrics["interrupted"]
  resumed = metrics["resumed"]  # from the other process

  # The resumed steps equal the uninterrupted run's, bit for bit.
  assert resumed.start == stop
  np.testing.assert_array_equal(resumed.losses, full.losses[stop:], strict=True)
  np.testing.assert_array_equal(resumed.weights, full.weights[stop:], strict=True)
  _assert_trees_equal(resumed.state, full.state)
  # The other process restored exactly what this one saved.
  _assert_trees_equal(resumed.restored, first.state)
  np.testing.assert_array_equal(first.losses, full.losses[:stop], strict=True)
  assert metrics["bitwise_equal"]
  assert metrics["differences"] == []
  assert sorted(int(p.name) for p in ckpt_dir.iterdir()) == [10, 20, 30]

  # The NaN loss vector of the step before the checkpoint was skipped:
  # the weights were held, the counters restored, the parameters are finite.
  nan_at = stop - 1
  assert np.all(np.isnan(full.losses[nan_at]))
  assert np.all(np.isfinite(np.delete(full.losses, nan_at, axis=0)))
  np.testing.assert_array_equal(full.weights[nan_at], full.weights[nan_at - 1])
  rule = sa.softadapt(checkpoint_resume.COMPONENTS)  # finds its state type
  restored = sa.find_weighting_state(resumed.restored["opt_state"], rule)
  assert int(restored.num_skipped) == 1
  assert int(restored.count) == stop - 1
  assert np.all(np.isfinite(restored.history))
  # weighted_value_and_grad gave that step a zero direction: the NaN never
  # reached the chain, so apply_if_finite (kept for non-finite gradients of
  # finite losses) counted nothing.
  if_finite = resumed.restored["opt_state"][1]
  assert int(if_finite.total_notfinite) == 0
  final = sa.find_weighting_state(resumed.state["opt_state"], rule)
  assert (int(final.count), int(final.num_skipped)) == (steps - 1, 1)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(resumed.state))

  # Not vacuous: the weights move, and the first resumed step already used
  # the restored history (a fresh state would give the warm-up 1/K).
  assert np.max(np.abs(full.weights - 1.0 / K)) > 0.05
  assert np.max(np.abs(resumed.weights[0] - 1.0 / K)) > 1e-3


# ---------------------------------------------------------------------------
# In process: several chains, orbax.checkpoint.StandardCheckpointer.
# ---------------------------------------------------------------------------


def _losses(params, x):
  pred = jnp.tanh(x @ params["w1"]) @ params["w2"]
  return jnp.stack([jnp.mean(pred[:, 0] ** 2), jnp.mean((pred[:, 1] - 3.0) ** 2)])


# Each chain: (tx, the rule of a step given its opt_state).


def _track_chain():
  rule = sa.softadapt(K, beta=1.0, order=2, update_every=2)
  return optax.chain(sa.track_weights(rule), optax.adam(0.05)), lambda _: rule


def _inject_chain():
  # The documented inject_hyperparams recipe: the tracker only installs the
  # state; the step builds the rule from the injected (traced) beta.
  inject = optax.inject_hyperparams(
      lambda beta: sa.track_weights(sa.softadapt(K, beta=beta))
  )
  tx = optax.chain(inject(beta=1.0), optax.adam(0.05))
  return tx, lambda opt_state: sa.softadapt(
      K, beta=opt_state[0].hyperparams["beta"]
  )


def _combine_chain():
  rule = sa.softadapt(K, beta=1.0)
  return optax.chain(sa.combine_grads(rule), optax.sgd(0.05)), lambda _: rule


@pytest.mark.parametrize(
    "make_tx", [_track_chain, _inject_chain, _combine_chain],
    ids=["track", "inject_hyperparams", "combine_grads"],
)  # fmt: skip
def test_orbax_round_trip_continues_identically(make_tx, tmp_path):
  tx, rule_of = make_tx()
  stacked = make_tx is _combine_chain
  x = jax.random.normal(jax.random.key(0), (8, 3))

  @jax.jit
  def step(state, _):
    params, opt_state = state["params"], state["opt_state"]
    rule = rule_of(opt_state)
    if stacked:  # per-component gradients, [K, ...]
      losses, grads = _losses(params, x), jax.jacrev(_losses)(params, x)
      updates, opt_state = tx.update(grads, opt_state, params, losses=losses)
    else:
      out = sa.weighted_value_and_grad(_losses, rule)(opt_state, params, x)
      updates, opt_state = tx.update(
          out.grad, opt_state, params, weighting_state=out.state
      )
    new = {"params": optax.apply_updates(params, updates), "opt_state": opt_state}
    return new, sa.find_weighting_state(opt_state, rule).weights

  def run(state, n):
    return jax.lax.scan(step, state, None, length=n)

  def fresh():
    keys = jax.random.split(jax.random.key(1), 2)
    params = {
        "w1": jax.random.normal(keys[0], (3, 4)),
        "w2": jax.random.normal(keys[1], (4, K)),
    }
    return {"params": params, "opt_state": tx.init(params)}

  state, _ = run(fresh(), 6)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(tmp_path / "step_6", state)
    ckptr.wait_until_finished()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh())
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(tmp_path / "step_6", abstract)

  _assert_trees_equal(restored, state)
  (after, w_after), (cont, w_cont) = run(restored, 6), run(state, 6)
  _assert_trees_equal((after, w_after), (cont, w_cont))
  rule = rule_of(restored["opt_state"])
  assert int(sa.find_weighting_state(after["opt_state"], rule).count) == 12

  # Control: the same parameters and Adam state with a fresh SoftAdapt state
  # restart the warm-up; the weights differ, so the check above has teeth.
  if make_tx is _track_chain:
    reset = dict(restored, opt_state=(tx.init(restored["params"])[0],
                                      *restored["opt_state"][1:]))
    _, w_reset = run(reset, 6)
    assert np.max(np.abs(np.asarray(w_reset) - np.asarray(w_cont))) > 1e-3
