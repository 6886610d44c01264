"""Flax NNX: SoftAdapt inside ``nnx.Optimizer``, one backward pass per step.

A small NNX MLP fits two regression targets of very different scale from the
same inputs (``x`` in ``[-1, 1]^2``); the loss has one component per target,
``[smooth, scaled]``, the mean squared error of each output. The SoftAdapt
state lives in the optimizer's ``opt_state``; the step is::

  tx = optax.chain(sa.softadapt_track(K, **settings), optax.adam(lr))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grad_fn = sa.softadapt_value_and_grad(loss_fn, has_aux=True, **settings)

  @nnx.jit
  def train_step(model, optimizer, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    out = grad_fn(optimizer.opt_state, params, graphdef, rest, batch)
    nnx.update(model, out.aux)        # BatchNorm statistics, RNG counts
    optimizer.update(model, out.grad, losses=out.losses)
    return out.losses, out.weights

``loss_fn(params, graphdef, rest, batch)`` merges the model back, returns the
``[K]`` loss vector and, as auxiliary output, the model's non-parameter state
(empty for a plain MLP, the running statistics with ``--batchnorm``). The
direction ``sum_k alpha_k grad f_k`` comes from one ``jax.vjp``; the
optimizer's ``opt_state`` goes into ``grad_fn`` as is (its Variable-wrapped
leaves are read by ``sa.find_softadapt_state``), and ``optimizer.update``
forwards ``losses=`` to ``tx.update`` so the state records them.

Two loops (``--loop``): ``scan`` (default) runs each chunk of steps as one
``nnx.scan`` over a stack of minibatches inside ``nnx.jit``; ``jit`` calls the
jitted step once per step from Python. Both see the same minibatches and give
the same result. The progress bar advances once per chunk.

Run::

  python examples/nnx_train.py                  # ~10 s on a 2-core CPU
  python examples/nnx_train.py --loop jit --batchnorm
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

import softadapt_jax as sa

COMPONENTS = ("smooth", "scaled")


def make_dataset(key: jax.Array, size: int) -> dict[str, jax.Array]:
  """``x`` uniform in ``[-1, 1]^2``; targets of scale 1 and 10."""
  x = jax.random.uniform(key, (size, 2), minval=-1.0, maxval=1.0)
  smooth = jnp.sin(jnp.pi * x[:, 0]) * jnp.cos(jnp.pi * x[:, 1])
  scaled = 10.0 * (x[:, 0] ** 2 - x[:, 1] ** 2)
  return {"x": x, "y": jnp.stack([smooth, scaled], axis=1)}


@functools.partial(jax.jit, static_argnames=("length", "batch_size"))
def sample_batches(
    data: dict[str, jax.Array],
    key: jax.Array,
    start: jax.Array,
    length: int,
    batch_size: int,
) -> dict[str, jax.Array]:
  """``[length, batch_size, ...]`` minibatches; step ``t`` uses ``fold_in(key, t)``."""

  def one(step):
    idx = jax.random.randint(
        jax.random.fold_in(key, step), (batch_size,), 0, data["x"].shape[0]
    )
    return jax.tree.map(lambda a: a[idx], data)

  return jax.vmap(one)(start + jnp.arange(length))


class MLP(nnx.Module):
  """``2 -> hidden -> hidden -> K``, tanh, optionally with BatchNorm."""

  def __init__(self, hidden: int, *, batchnorm: bool, rngs: nnx.Rngs):
    self.linear1 = nnx.Linear(2, hidden, rngs=rngs)
    self.linear2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.head = nnx.Linear(hidden, len(COMPONENTS), rngs=rngs)
    self.norm = nnx.BatchNorm(hidden, rngs=rngs) if batchnorm else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.tanh(self.linear1(x))
    if self.norm is not None:
      h = self.norm(h)
    return self.head(jnp.tanh(self.linear2(h)))


def loss_components(model: MLP, batch: dict[str, jax.Array]) -> jax.Array:
  """``[K]``: the mean squared error of each output."""
  return jnp.mean((model(batch["x"]) - batch["y"]) ** 2, axis=0)


def loss_fn(params, graphdef, rest, batch):
  """The function SoftAdapt differentiates: ``(losses, new non-param state)``."""
  model = nnx.merge(graphdef, params, rest, copy=True)
  return loss_components(model, batch), nnx.state(model, nnx.Not(nnx.Param))


def make_train_step(grad_fn):
  """One step; ``model`` and ``optimizer`` are updated in place."""

  def train_step(model, optimizer, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    out = grad_fn(optimizer.opt_state, params, graphdef, rest, batch)
    nnx.update(model, out.aux)
    optimizer.update(model, out.grad, losses=out.losses)
    return out.losses, out.weights

  return train_step


def make_train_chunk(train_step):
  """``len(batches)`` steps as one ``nnx.scan`` (compiled by ``nnx.jit``)."""

  @nnx.jit
  def train_chunk(model, optimizer, batches):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def body(carry, batch):
      model, optimizer = carry
      return (model, optimizer), train_step(model, optimizer, batch)

    _, (losses, weights) = body((model, optimizer), batches)
    return losses, weights

  return train_chunk


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--steps", type=int, default=4000, help="training steps")
  parser.add_argument("--chunk", type=int, default=250, help="steps per chunk")
  parser.add_argument("--loop", choices=("scan", "jit"), default="scan")
  parser.add_argument("--batchnorm", action="store_true", help="add BatchNorm")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--dataset-size", type=int, default=1024)
  parser.add_argument("--hidden", type=int, default=64)
  parser.add_argument("--lr", type=float, default=3e-3, help="Adam step size")
  parser.add_argument("--beta", type=float, default=0.1, help="SoftAdapt beta")
  parser.add_argument(
      "--variant",
      default="loss_weighted",
      choices=("original", "normalized", "loss_weighted"),
  )
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  if args.steps < 1 or args.chunk < 1:
    parser.error("--steps and --chunk must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains the model and prints the losses and weights.

  Args:
    argv: command-line arguments (``None``: ``sys.argv[1:]``).

  Returns:
    ``{"config", "losses", "weights", "initial_losses", "final_losses",
    "step", "softadapt_count", "train_seconds", "model"}``: the per-step loss
    components and weights (``[steps, K]`` arrays), the full-dataset losses
    before and after training, ``optimizer.step`` and the SoftAdapt state's
    count at the end, the training time (compilation included) and the
    trained model.
  """
  args = parse_args(argv)
  settings = {"beta": args.beta, "variant": args.variant}
  data_key, batch_key, model_key = jax.random.split(jax.random.key(args.seed), 3)
  data = make_dataset(data_key, args.dataset_size)

  model = MLP(args.hidden, batchnorm=args.batchnorm, rngs=nnx.Rngs(model_key))
  tx = optax.chain(
      sa.softadapt_track(len(COMPONENTS), **settings), optax.adam(args.lr)
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grad_fn = sa.softadapt_value_and_grad(loss_fn, has_aux=True, **settings)
  train_step = make_train_step(grad_fn)
  train_chunk = make_train_chunk(train_step)
  jit_step = nnx.jit(train_step)
  evaluate = nnx.jit(loss_components)

  config = {
      "model": f"nnx MLP 2 -> {args.hidden} -> {args.hidden} -> 2 (tanh)"
      + (", BatchNorm" if args.batchnorm else ""),
      "losses": ", ".join(COMPONENTS) + " (mean squared error)",
      "optimizer": f"nnx.Optimizer(chain(softadapt_track, adam({args.lr})))",
      "softadapt": f"variant={args.variant!r}, beta={args.beta}",
      "loop": f"{args.loop}, chunks of {args.chunk} steps",
      "steps": args.steps,
      "backend": jax.default_backend(),
  }
  print("Config:")
  for key, value in config.items():
    print(f"  {key:10s} {value}")

  model.eval()
  initial = np.asarray(evaluate(model, data))
  model.train()
  losses, weights = [], []
  start = time.perf_counter()
  with tqdm.tqdm(total=args.steps, desc="NNX", unit="step", leave=False) as bar:
    for first in range(0, args.steps, args.chunk):
      length = min(args.chunk, args.steps - first)
      batches = sample_batches(
          data, batch_key, jnp.asarray(first), length, args.batch_size
      )
      if args.loop == "scan":
        chunk_losses, chunk_weights = train_chunk(model, optimizer, batches)
      else:
        out = [
            jit_step(model, optimizer, jax.tree.map(lambda a, i=i: a[i], batches))
            for i in range(length)
        ]
        chunk_losses, chunk_weights = (jnp.stack(o) for o in zip(*out, strict=True))
      losses.append(np.asarray(chunk_losses))  # waits for the chunk
      weights.append(np.asarray(chunk_weights))
      bar.update(length)
      bar.set_postfix_str(
          " ".join(
              f"{n}={v:.2e}"
              for n, v in zip(COMPONENTS, losses[-1][-1], strict=True)
          )
      )
  elapsed = time.perf_counter() - start
  model.eval()
  final = np.asarray(evaluate(model, data))
  losses, weights = np.concatenate(losses), np.concatenate(weights)

  print(f"\nTrained {args.steps} steps in {elapsed:.1f} s (compilation included).")
  print(f"  {'':14s} " + " ".join(f"{n:>10s}" for n in COMPONENTS))
  print(f"  {'initial loss':14s} " + " ".join(f"{v:10.3e}" for v in initial))
  print(f"  {'final loss':14s} " + " ".join(f"{v:10.3e}" for v in final))
  print("\nSoftAdapt weights during training:")
  for t in np.unique(np.linspace(0, args.steps - 1, 6).round().astype(int)):
    print(f"  step {t:6d}  " + " ".join(f"{w:.4f}" for w in weights[t]))
  state = sa.find_softadapt_state(optimizer.opt_state)
  return {
      "config": config,
      "losses": losses,
      "weights": weights,
      "initial_losses": initial.tolist(),
      "final_losses": final.tolist(),
      "step": int(optimizer.step[...]),
      "softadapt_count": int(state.count),
      "train_seconds": elapsed,
      "model": model,
  }


if __name__ == "__main__":
  main()
