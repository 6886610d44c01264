"""Multi-task learning with the Gramian aggregators: a shared trunk and three heads.

A synthetic problem (no data set to download) whose three tasks, at very
different scales, compete for a narrow shared trunk: 8 Gaussian inputs, a
tanh layer of 32 units, a linear bottleneck of 8 features, and three linear
heads:

- ``big``: a regression of scale 10 (targets of variance about 50);
- ``small``: a regression of scale 0.1 (variance about 0.005);
- ``label``: a binary classification (cross-entropy) whose label depends on
  the same direction of the input as ``big``, with the opposite sign in one
  half of the space.

Under the plain sum the large-scale task dominates the trunk; the aggregators
choose the weights from the Gramian of the three gradients instead (at their
defaults; the heads get the same weights, since the direction is ``J^T w``
over every parameter). Every
rule sees the same initialisation and the same batches (paired), trains for
the same number of Adam steps in one compiled ``lax.scan``, and is scored on
a held-out test set: for each regression the normalised test MSE (its MSE
over the variance of its targets: 1 is the mean predictor, lower is better)
and the test accuracy of the classification. It also prints the time per
step (the compiled run, divided by the steps) and the compile time. One
seed, one problem: a demonstration of the routes, not a ranking of the rules
(``examples/studies/multitask.py`` is the paired-seed study).

The Gramian is taken on a parameter subset (``--gramian-on``):

- ``trunk`` (the default): the shared parameters, as torchjd's
  ``mtl_backward`` and LibMTL's default;
- ``all``: every parameter (torchjd's ``backward``);
- ``features``: the shared features, LibMTL's ``rep_grad``: a zero "probe"
  vector is added to the features and the rules look at it alone, so the
  three per-task gradients run through the heads only; an ``optax.masked``
  keeps the probe at zero.

Run::

  python examples/multitask_aggregators.py --rule upgrad
  python examples/multitask_aggregators.py --rule equal_weights mgda nash_mtl
  python examples/multitask_aggregators.py --rule all --steps 2000
  python examples/multitask_aggregators.py --rule cagrad --gramian-on features
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa

TASKS = ("big", "small", "label")
INPUTS, HIDDEN, FEATURES = 8, 32, 8
AGGREGATORS = (
    "mgda", "upgrad", "dualproj", "conflict_free", "pcgrad", "imtl_g",
    "aligned_mtl", "cagrad", "nash_mtl",
)
RULES = ("equal_weights", *AGGREGATORS)
Params = dict[str, jax.Array]
Batch = tuple[jax.Array, jax.Array]


@functools.partial(jax.jit, static_argnums=1)
def make_data(key: jax.Array, size: int) -> Batch:
  """Inputs ``[size, 8]`` and targets ``[size, 3]`` (big, small, label 0/1).

  The teacher directions come from a fixed key, so every split (and every
  seed) shares one task.
  """
  u = jax.random.normal(jax.random.key(1234), (INPUTS, 3)) / math.sqrt(INPUTS)
  x = jax.random.normal(key, (size, INPUTS))
  z = x @ u
  big = 10.0 * jnp.sin(2.0 * z[:, 0])
  small = 0.1 * jnp.sin(2.0 * z[:, 1])
  # The label follows sin(2 z_0) where z_2 > 0 and its opposite elsewhere:
  # in half of the space it asks the trunk for the opposite of ``big``.
  label = (jnp.sin(2.0 * z[:, 0]) * jnp.sign(z[:, 2]) > 0).astype(x.dtype)
  return x, jnp.stack([big, small, label], axis=1)


def init_params(key: jax.Array) -> Params:
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "w1": jax.random.normal(k1, (INPUTS, HIDDEN)) / math.sqrt(INPUTS),
      "b1": jnp.zeros((HIDDEN,)),
      "w2": jax.random.normal(k2, (HIDDEN, FEATURES)) / math.sqrt(HIDDEN),
      "b2": jnp.zeros((FEATURES,)),
      "heads": jax.random.normal(k3, (FEATURES, 3)) / math.sqrt(FEATURES),
      "head_bias": jnp.zeros((3,)),
      # Zero, and kept at zero: the rules look at it with --gramian-on
      # features (its gradient is the features' gradient summed over the
      # batch).
      "probe": jnp.zeros((FEATURES,)),
  }


def predict(params: Params, x: jax.Array) -> jax.Array:
  """``[batch, 3]``: the two regressions and the classification's logit."""
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  features = h @ params["w2"] + params["b2"] + params["probe"]  # probe: 0
  return features @ params["heads"] + params["head_bias"]


def task_losses(params: Params, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
  """The three losses by name: two mean squared errors and a cross-entropy."""
  out = predict(params, x)
  return {
      "big": jnp.mean((out[:, 0] - y[:, 0]) ** 2),
      "small": jnp.mean((out[:, 1] - y[:, 1]) ** 2),
      "label": jnp.mean(optax.sigmoid_binary_cross_entropy(out[:, 2], y[:, 2])),
  }


@jax.jit
def _evaluate(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  out = predict(params, x)
  nmse = jnp.mean((out[:, :2] - y[:, :2]) ** 2, axis=0) / jnp.var(y[:, :2], axis=0)
  accuracy = jnp.mean((out[:, 2] > 0) == (y[:, 2] > 0.5))
  return jnp.append(nmse, accuracy)


def evaluate(params: Params, x: jax.Array, y: jax.Array) -> dict[str, float]:
  """Normalised MSE of each regression (1: the mean predictor) and accuracy."""
  big, small, accuracy = np.asarray(_evaluate(params, x, y)).tolist()
  return {"big_nmse": big, "small_nmse": small, "label_accuracy": accuracy}


def selector(gramian_on: str) -> Callable[[str, jax.Array], bool]:
  """The ``wrt=`` of the rules: which parameters the Gramian is taken on."""
  if gramian_on == "all":
    return lambda path, leaf: "probe" not in path
  if gramian_on == "features":
    return lambda path, leaf: path == "['probe']"
  return lambda path, leaf: path in ("['w1']", "['b1']", "['w2']", "['b2']")


def make_rule(name: str, gramian_on: str, seed: int) -> sa.LossWeighting:
  """The rule ``name`` over the three named losses, at its defaults."""
  if name == "equal_weights":
    return sa.equal_weights(list(TASKS))
  kwargs: dict[str, Any] = {"wrt": selector(gramian_on)}
  if name == "pcgrad":
    kwargs["seed"] = seed  # its projection orders
  return getattr(sa, name)(list(TASKS), **kwargs)


def make_train(
    rule: sa.LossWeighting, steps: int, batch: int, lr: float, gradients: str
) -> Callable[[Params, jax.Array, jax.Array, jax.Array], Any]:
  """``train(params, x, y, key) -> (params, weights [steps, 3], losses)``.

  Minibatches of ``batch`` rows drawn from ``key``; one ``lax.scan``.
  """
  def probe_only(params: Params) -> dict[str, bool]:
    return {k: k == "probe" for k in params}

  keep_probe_at_zero = optax.masked(optax.set_to_zero(), probe_only)
  tx = optax.chain(sa.track_weights(rule), keep_probe_at_zero, optax.adam(lr))
  grad_fn = sa.weighted_value_and_grad(task_losses, rule, gradients=gradients)

  def train(params: Params, x: jax.Array, y: jax.Array, key: jax.Array) -> Any:
    def step(carry: Any, k: jax.Array) -> Any:
      params, opt_state = carry
      rows = jax.random.choice(k, x.shape[0], (batch,), replace=False)
      out = grad_fn(opt_state, params, x[rows], y[rows])
      updates, opt_state = tx.update(
          out.grad, opt_state, params, weighting_state=out.state
      )
      params = optax.apply_updates(params, updates)
      weights = jnp.stack([out.weights[t] for t in TASKS])
      losses = jnp.stack([out.losses[t] for t in TASKS])
      return (params, opt_state), (weights, losses)

    (params, _), (weights, losses) = jax.lax.scan(
        step, (params, tx.init(params)), jax.random.split(key, steps)
    )
    return params, weights, losses

  return train


@jax.jit
def gradient_cosines(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  """``[3, 3]`` cosines between the tasks' gradients on the trunk."""

  def losses(p: Params) -> jax.Array:
    values = task_losses(p, x, y)
    return jnp.stack([values[t] for t in TASKS])

  jac = jax.jacrev(losses)(params)
  rows = jnp.concatenate(
      [jac[k].reshape(3, -1) for k in ("w1", "b1", "w2", "b2")], axis=1
  )
  gram = rows @ rows.T
  norms = jnp.sqrt(jnp.diag(gram))
  return gram / jnp.outer(norms, norms)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=(__doc__ or "").splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument(
      "--rule", nargs="+", default=["equal_weights", "upgrad"],
      choices=(*RULES, "all"), help="rules to train (all: every one)",
  )
  parser.add_argument("--steps", type=int, default=1500, help="Adam steps")
  parser.add_argument("--batch", type=int, default=128, help="minibatch size")
  parser.add_argument("--train", type=int, default=1024, help="training rows")
  parser.add_argument("--test", type=int, default=2048, help="test rows")
  parser.add_argument("--lr", type=float, default=1e-2, help="Adam step size")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
      "--gramian-on", default="trunk", choices=("trunk", "all", "features"),
      help="the parameters the Gramian is taken on (the rules' wrt=)",
  )
  parser.add_argument(
      "--gradients", default="unrolled", choices=("unrolled", "map", "jacrev"),
      help="how weighted_value_and_grad computes the per-task gradients",
  )
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error("--steps must be >= 1")
  if not 1 <= args.batch <= args.train:
    parser.error("--batch must be between 1 and --train")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
  """Trains each rule on the same data and initialisation; prints a table.

  Args:
    argv: command-line arguments (``None``: ``sys.argv[1:]``).

  Returns:
    ``{rule: {"metrics": {...}, "weights": [steps, 3], "losses": [steps,
    3], "ms_per_step": float, "compile_s": float}}``.
  """
  args = parse_args(argv)
  names = list(RULES) if "all" in args.rule else list(dict.fromkeys(args.rule))
  k_train, k_test, k_init, k_batches = jax.random.split(jax.random.key(args.seed), 4)
  x, y = make_data(k_train, args.train)
  x_test, y_test = make_data(k_test, args.test)
  params0 = init_params(k_init)
  cos = np.asarray(gradient_cosines(params0, x, y))
  print(
      f"{args.train} training rows, {args.test} test rows, {args.steps} steps "
      f"of {args.batch}; Gramian on: {args.gramian_on}; "
      f"{jax.default_backend()} backend"
  )
  print(
      "cosines of the trunk gradients at initialisation: "
      + ", ".join(
          f"{TASKS[i]}/{TASKS[j]} {cos[i, j]:+.2f}"
          for i in range(3) for j in range(i + 1, 3)
      )
  )
  header = (
      f"{'rule':14} {'big nMSE':>9} {'small nMSE':>10} {'label acc':>9} "
      f"{'ms/step':>8} {'compile s':>9}  final weights (big, small, label)"
  )
  print(header)
  print("-" * len(header))
  results: dict[str, dict[str, Any]] = {}
  for name in names:
    rule = make_rule(name, args.gramian_on, args.seed)
    train = jax.jit(
        make_train(rule, args.steps, args.batch, args.lr, args.gradients)
    )
    start = time.perf_counter()
    compiled = train.lower(params0, x, y, k_batches).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    params, weights, losses = jax.block_until_ready(
        compiled(params0, x, y, k_batches)
    )
    ms_per_step = 1e3 * (time.perf_counter() - start) / args.steps
    metrics = evaluate(params, x_test, y_test)
    weights, losses = np.asarray(weights), np.asarray(losses)
    results[name] = {
        "metrics": metrics, "weights": weights, "losses": losses,
        "ms_per_step": ms_per_step, "compile_s": compile_s,
    }
    final = ", ".join(f"{w:.3g}" for w in weights[-1])
    print(
        f"{name:14} {metrics['big_nmse']:9.3f} {metrics['small_nmse']:10.3f} "
        f"{metrics['label_accuracy']:9.3f} {ms_per_step:8.3f} {compile_s:9.2f}"
        f"  {final}"
    )
  return results


if __name__ == "__main__":
  main()
