"""Data parallel on 4 forced CPU devices equals the single-device run (SPEC §8).

JAX fixes its device count at start-up, so the check runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import functools
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import softadapt_jax as sa

    assert jax.device_count() == 4, jax.devices()
    K, STEPS = 3, 12
    key = jax.random.key(0)
    kx, ky, kw = jax.random.split(key, 3)
    x = jax.random.normal(kx, (64, 5))
    y = jax.random.normal(ky, (64, K)) * jnp.array([10.0, 1.0, 0.1])
    params0 = {"w": 0.1 * jax.random.normal(kw, (5, K)), "b": jnp.zeros(K)}

    def losses(params, x, y):
      return jnp.mean((x @ params["w"] + params["b"] - y) ** 2, axis=0)

    settings = dict(beta=0.5, variant="loss_weighted")

    def make(axis_name, factory=None):
      if factory is None:
        rule = sa.softadapt(K, order=2, axis_name=axis_name, **settings)
      else:
        rule = factory(axis_name)
      tx = optax.chain(sa.track_weights(rule), optax.adam(0.05))
      grad_fn = sa.weighted_value_and_grad(losses, rule)

      def run(params, x, y):
        def step(carry, _):
          params, opt_state = carry
          out = grad_fn(opt_state, params, x, y)
          updates, opt_state = tx.update(
              out.grad, opt_state, params, weighting_state=out.state
          )
          return (optax.apply_updates(params, updates), opt_state), out.weights
        (params, opt_state), weights = jax.lax.scan(
            step, (params, tx.init(params)), None, length=STEPS
        )
        return params, weights
      return run

    single_params, single_w = jax.jit(make(None))(params0, x, y)
    assert np.ptp(np.asarray(single_w[-1])) > 1e-3  # weights moved

    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.jit(
        jax.shard_map(
            make("data"), mesh=mesh,
            in_specs=(P(), P("data"), P("data")), out_specs=(P(), P()),
        )
    )
    dp_params, dp_w = sharded(params0, x, y)
    np.testing.assert_allclose(dp_w, single_w, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(dp_params), jax.tree.leaves(single_params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # Every device holds the same weights: gather them per shard.
    per_device = jax.jit(
        jax.shard_map(
            lambda p, x, y: make("data")(p, x, y)[1][None],
            mesh=mesh, in_specs=(P(), P("data"), P("data")),
            out_specs=P("data"), check_vma=False,
        )
    )(params0, x, y)
    assert per_device.shape[0] == 4
    for d in range(4):
      np.testing.assert_array_equal(per_device[d], per_device[0])

    # jit with a NamedSharding on the batch: the losses are already global.
    batch = NamedSharding(mesh, P("data"))
    jit_params, jit_w = jax.jit(make(None))(
        params0, jax.device_put(x, batch), jax.device_put(y, batch)
    )
    np.testing.assert_allclose(jit_w, single_w, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(jit_params), jax.tree.leaves(single_params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # The gradient-information rules: per-component gradients averaged over
    # the devices before the statistics, so the same numbers as one device.
    GRADIENT_RULES = {
        "grad_balance": lambda a: sa.grad_balance(
            K, **sa.GRAD_BALANCE_CONVENTIONS["pinnacle"], axis_name=a),
        "grad_balance_every_3": lambda a: sa.grad_balance(
            K, update_every=3, weights_only=False, axis_name=a),
        "gradnorm": lambda a: sa.gradnorm(K, learning_rate=0.05, axis_name=a),
        "famo": lambda a: sa.famo(K, form="one_pass", axis_name=a),
        "uncertainty": lambda a: sa.uncertainty_weighting(
            K, learning_rate=0.05, axis_name=a),
    }
    for name, factory in GRADIENT_RULES.items():
      single_params, single_w = jax.jit(make(None, factory))(params0, x, y)
      assert np.ptp(np.asarray(single_w)) > 1e-3, name
      dp_params, dp_w = jax.jit(
          jax.shard_map(
              make("data", factory), mesh=mesh,
              in_specs=(P(), P("data"), P("data")), out_specs=(P(), P()),
          )
      )(params0, x, y)
      np.testing.assert_allclose(dp_w, single_w, rtol=1e-4, atol=1e-6, err_msg=name)
      for a, b in zip(jax.tree.leaves(dp_params), jax.tree.leaves(single_params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)

    # One step's direction and weights themselves (not only where Adam takes
    # them): the gradient of the global mean, with and without shard_map's
    # type checks, scale-sensitive rules included.
    def one_call(factory, axis_name):
      rule = factory(axis_name)
      grad_fn = sa.weighted_value_and_grad(losses, rule)
      def call(params, x, y):
        out = grad_fn(rule.init(), params, x, y)
        return out.grad, out.weights
      return call

    ONE_CALL = {
        "equal_weights": lambda a: sa.equal_weights(K, axis_name=a),
        "grad_balance": lambda a: sa.grad_balance(
            K, update_every=1, after_step=False, weights_only=False,
            axis_name=a),
        "upgrad": lambda a: sa.upgrad(K, axis_name=a),
        "nash_mtl": lambda a: sa.nash_mtl(K, max_norm=0.0, axis_name=a),
    }
    for name, factory in ONE_CALL.items():
      g1, w1 = jax.jit(one_call(factory, None))(params0, x, y)
      for check in (True, False):
        gd, wd = jax.jit(
            jax.shard_map(
                one_call(factory, "data"), mesh=mesh,
                in_specs=(P(), P("data"), P("data")), out_specs=(P(), P()),
                check_vma=check,
            )
        )(params0, x, y)
        np.testing.assert_allclose(wd, w1, rtol=1e-4, atol=1e-7,
                                   err_msg=f"{name} check_vma={check}")
        for a, b in zip(jax.tree.leaves(gd), jax.tree.leaves(g1)):
          np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7,
                                     err_msg=f"{name} check_vma={check}")
    print("DATA-PARALLEL-OK")
    """
)


def test_data_parallel_equals_single_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
      env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
  )
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run(
      [sys.executable, "-c", _SCRIPT],
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  assert "DATA-PARALLEL-OK" in result.stdout


_EXAMPLE = textwrap.dedent(
    """
    import importlib.util, sys
    import numpy as np

    assert "jax" not in sys.modules
    spec = importlib.util.spec_from_file_location(
        "data_parallel", "examples/data_parallel.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # sets XLA_FLAGS, then imports JAX
    import jax

    assert jax.device_count() == 4, jax.devices()
    m = example.main(["--steps", "20", "--batch", "64"])
    assert m["num_devices"] == 4
    ref = m["single"]
    assert np.ptp(np.asarray(ref["weights"][-1])) > 1e-3  # weights moved
    for name in ("jit_sharded", "shard_map"):
      run = m[name]
      assert run["identical_on_devices"], name
      # Every device's copy of the weights and parameters is the same bits.
      for leaf in jax.tree.leaves((run["params"], run["weights"])):
        assert len(leaf.addressable_shards) == 4
        first = np.asarray(leaf.addressable_shards[0].data)
        for shard in leaf.addressable_shards[1:]:
          np.testing.assert_array_equal(np.asarray(shard.data), first)
      np.testing.assert_allclose(
          run["weights"], ref["weights"], rtol=1e-5, atol=1e-6
      )
      np.testing.assert_allclose(run["losses"], ref["losses"], rtol=1e-5)
      for a, b in zip(
          jax.tree.leaves(run["params"]), jax.tree.leaves(ref["params"])
      ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      assert run["max_weight_diff"] < 1e-5, (name, run["max_weight_diff"])
    print("EXAMPLE-OK")
    """
)


def test_data_parallel_example_on_four_cpu_devices():
  """examples/data_parallel.py forces 4 CPU devices itself and matches 1."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (root, env.get("PYTHONPATH")) if p
  )
  result = subprocess.run(
      [sys.executable, "-c", _EXAMPLE],
      env=env,
      cwd=root,
      capture_output=True,
      text=True,
      timeout=300,
      check=False,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  assert "EXAMPLE-OK" in result.stdout
