"""Data-parallel SoftAdapt on several devices: jit + NamedSharding, and shard_map.

The batch is split over a 1-D device mesh with axis ``"data"``; parameters,
optimizer state and the rule's state are replicated. Two ways, the same
numbers as one device:

(a) ``jax.jit`` with a ``NamedSharding`` on the batch. The loss of each
    component is a mean over the global batch, so XLA inserts the
    all-reduces and every device records the same global losses: the
    single-device training step runs unchanged, with no ``axis_name``::

      batch = NamedSharding(mesh, P("data"))
      x = jax.make_array_from_process_local_data(batch, x_local)
      params, weights = jax.jit(train)(params, x, y)

(b) ``jax.shard_map`` over the mesh. Each device sees its slice of the batch
    and computes local losses; ``axis_name="data"``, given once to the rule,
    averages the losses (``lax.pmean``) before they enter the history, and
    ``sa.weighted_value_and_grad`` averages the direction, so every replica
    holds the same state and takes the same step::

      rule = sa.softadapt(K, axis_name="data", ...)
      grad_fn = sa.weighted_value_and_grad(losses, rule)
      tx = optax.chain(sa.track_weights(rule), adam)
      jax.jit(jax.shard_map(train, mesh=mesh,
                            in_specs=(P(), P("data"), P("data")),
                            out_specs=P()))

The example trains a small MLP with three regression heads of very different
scales (three loss components) with both, checks that every device holds
bitwise the same weights and parameters, and compares them with the
single-device run.

On a CPU-only machine it gives itself 4 devices: when run as a script (before
JAX is imported, and only if ``XLA_FLAGS`` is not set) it sets
``XLA_FLAGS=--xla_force_host_platform_device_count=4``. On GPUs or TPUs the
mesh spans the accelerators. The same program runs on many hosts after
``jax.distributed.initialize()``: see ``docs/integrations/data_parallel.md``.

Run::

  python examples/data_parallel.py                # ~10 s on a 2-core CPU
  python examples/data_parallel.py --steps 500 --batch 1024
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules and "XLA_FLAGS" not in os.environ:
  # Must happen before JAX starts; affects the CPU platform only.
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import argparse
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import softadapt_jax as sa

NUM_LOSSES = 3
SCALES = (10.0, 1.0, 0.1)  # the heads' target scales: losses ~100, ~1, ~0.01
FEATURES, HIDDEN = 8, 32


def make_data(key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
  """Inputs ``[batch, FEATURES]`` and targets ``[batch, 3]`` of three scales."""
  kx, kw = jax.random.split(key)
  x = jax.random.normal(kx, (batch, FEATURES))
  w = jax.random.normal(kw, (FEATURES, NUM_LOSSES))
  y = jnp.sin(x @ w) * jnp.asarray(SCALES)
  return x, y


def init_params(key: jax.Array) -> dict[str, jax.Array]:
  k1, k2 = jax.random.split(key)
  return {
      "w1": jax.random.normal(k1, (FEATURES, HIDDEN)) / math.sqrt(FEATURES),
      "b1": jnp.zeros((HIDDEN,)),
      "w2": jax.random.normal(k2, (HIDDEN, NUM_LOSSES)) / math.sqrt(HIDDEN),
      "b2": jnp.zeros((NUM_LOSSES,)),
  }


def loss_components(
    params: dict[str, jax.Array], x: jax.Array, y: jax.Array
) -> jax.Array:
  """``[K]``: the mean squared error of each head over the (local) batch."""
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  pred = h @ params["w2"] + params["b2"]
  return jnp.mean((pred - y) ** 2, axis=0)


def make_train(
    steps: int,
    *,
    beta: float,
    variant: str,
    order: int,
    lr: float,
    axis_name: str | None = None,
) -> Callable[..., tuple[Any, jax.Array, jax.Array]]:
  """``train(params, x, y) -> (params, weights [steps, K], losses [steps, K])``.

  The whole run is one ``lax.scan``. With ``axis_name`` it must run inside
  ``shard_map`` over that axis.
  """
  rule = sa.softadapt(
      NUM_LOSSES, beta=beta, variant=variant, order=order, axis_name=axis_name
  )
  tx = optax.chain(sa.track_weights(rule), optax.adam(lr))
  grad_fn = sa.weighted_value_and_grad(loss_components, rule)

  def train(params, x, y):
    def step(carry, _):
      params, opt_state = carry
      out = grad_fn(opt_state, params, x, y)  # one forward + one backward
      updates, opt_state = tx.update(
          out.grad, opt_state, params, weighting_state=out.state
      )
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (out.weights, out.losses)

    (params, _), (weights, losses) = jax.lax.scan(
        step, (params, tx.init(params)), None, length=steps
    )
    return params, weights, losses

  return train


def _max_abs_diff(a: Any, b: Any) -> float:
  return max(
      float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
      for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def _identical_on_every_device(tree: Any) -> bool:
  """Whether each device's copy of every (replicated) leaf is the same bits."""
  for leaf in jax.tree.leaves(tree):
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    if not all(np.array_equal(shards[0], s) for s in shards[1:]):
      return False
  return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=(__doc__ or "").splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--steps", type=int, default=300, help="training steps")
  parser.add_argument(
      "--batch", type=int, default=512,
      help="global batch size (a multiple of the device count)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--lr", type=float, default=1e-2, help="Adam step size")
  parser.add_argument("--beta", type=float, default=0.5)
  parser.add_argument(
      "--variant", default="loss_weighted",
      choices=("original", "normalized", "loss_weighted"),
  )
  parser.add_argument("--order", type=int, default=2, help="slope order")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error("--steps must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains on one device, then data-parallel both ways, and compares.

  Args:
    argv: command-line arguments (``None``: ``sys.argv[1:]``).

  Returns:
    ``{"num_devices", "single", "jit_sharded", "shard_map"}``. ``single``
    holds the reference run's ``params``, ``weights`` and ``losses``
    (``[steps, K]``); each data-parallel entry holds its run's ``params``,
    ``weights`` and ``losses``, ``max_param_diff`` and ``max_weight_diff``
    (largest absolute difference to the single-device run) and
    ``identical_on_devices`` (every device holds the same bits).
  """
  args = parse_args(argv)
  devices = jax.devices()
  num_devices = len(devices)
  if args.batch % num_devices:
    raise SystemExit(
        f"--batch {args.batch} is not a multiple of the {num_devices} devices"
    )
  mesh = Mesh(np.array(devices), ("data",))
  print(
      f"{num_devices} {jax.default_backend()} devices, mesh {dict(mesh.shape)}; "
      f"global batch {args.batch} ({args.batch // num_devices} per device), "
      f"{args.steps} steps, {args.variant} beta={args.beta} order={args.order}"
  )
  settings = {
      "beta": args.beta, "variant": args.variant, "order": args.order,
      "lr": args.lr,
  }
  kd, kp = jax.random.split(jax.random.key(args.seed))
  # What this process holds: the whole batch on one host; on many hosts,
  # each process loads its own slice.
  x_local, y_local = jax.device_get(make_data(kd, args.batch))
  params0 = init_params(kp)
  results: dict[str, Any] = {"num_devices": num_devices}

  def record(name, out, seconds):
    params, weights, losses = out
    results[name] = {
        "params": params, "weights": weights, "losses": losses,
        "seconds": seconds,
    }
    if name != "single":
      ref = results["single"]
      results[name].update(
          max_param_diff=_max_abs_diff(params, ref["params"]),
          max_weight_diff=_max_abs_diff(weights, ref["weights"]),
          identical_on_devices=_identical_on_every_device((params, weights)),
      )

  # Reference: one device, the plain jitted program.
  train = make_train(args.steps, **settings)
  start = time.perf_counter()
  out = jax.block_until_ready(
      jax.jit(train)(params0, jnp.asarray(x_local), jnp.asarray(y_local))
  )
  record("single", out, time.perf_counter() - start)

  # (a) jit + NamedSharding on the batch: the same program, global losses.
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  x = jax.make_array_from_process_local_data(batch_sharding, x_local)
  y = jax.make_array_from_process_local_data(batch_sharding, y_local)
  params = jax.device_put(params0, replicated)
  start = time.perf_counter()
  out = jax.block_until_ready(
      jax.jit(train, out_shardings=replicated)(params, x, y)
  )
  record("jit_sharded", out, time.perf_counter() - start)

  # (b) shard_map: local losses, averaged over "data" by the rule.
  local_train = make_train(args.steps, axis_name="data", **settings)
  sharded_train = jax.jit(
      jax.shard_map(
          local_train, mesh=mesh, in_specs=(P(), P("data"), P("data")),
          out_specs=P(),
      )
  )
  start = time.perf_counter()
  out = jax.block_until_ready(sharded_train(params, x, y))
  record("shard_map", out, time.perf_counter() - start)

  single = results["single"]
  w0, w1 = single["weights"][0], single["weights"][-1]
  print(
      f"\nSingle device: losses {np.asarray(single['losses'][0]).round(4)} -> "
      f"{np.asarray(single['losses'][-1]).round(4)}; weights "
      f"{np.asarray(w0).round(3)} -> {np.asarray(w1).round(3)}"
  )
  print(
      f"\n  {'run':12s} {'same on every device':>21s} {'max |dparams|':>14s} "
      f"{'max |dweights|':>15s} {'seconds':>8s}"
  )
  for name in ("jit_sharded", "shard_map"):
    r = results[name]
    print(
        f"  {name:12s} {r['identical_on_devices']!s:>21s} "
        f"{r['max_param_diff']:14.2e} {r['max_weight_diff']:15.2e} "
        f"{r['seconds']:8.2f}"
    )
  return results


if __name__ == "__main__":
  main()
