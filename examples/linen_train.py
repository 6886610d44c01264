"""Flax Linen: SoftAdapt with a ``TrainState``, one backward pass per step.

``TrainState.apply_gradients(grads=...)`` calls ``tx.update`` without extra
arguments, so the SoftAdapt transformation in the chain would never see the
losses. ``sa.apply_gradients(state, grads, losses=...)`` does the same update
with ``losses=`` forwarded (and replaces any further fields given as keywords,
here ``batch_stats``)::

  tx = optax.chain(sa.softadapt_track(K, **settings), optax.adam(lr))
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                            batch_stats=batch_stats)
  grad_fn = sa.softadapt_value_and_grad(loss_fn, has_aux=True, **settings)

  @jax.jit
  def train_step(state, batch):
    out = grad_fn(state.opt_state, state.params, state, batch)
    state = sa.apply_gradients(state, out.grad, losses=out.losses,
                               batch_stats=out.aux)
    return state, (out.losses, out.weights)

A small Linen MLP (optionally with ``nn.BatchNorm``) fits two regression
targets of very different scale from the same inputs; the loss components are
the mean squared error of each output, ``[smooth, scaled]``. Each chunk of
steps is one ``jax.jit``-compiled ``lax.scan`` over a stack of minibatches
(``--loop scan``, default) or one jitted call per step (``--loop jit``); the
progress bar advances once per chunk.

Run::

  python examples/linen_train.py                # ~10 s on a 2-core CPU
  python examples/linen_train.py --batchnorm --loop jit
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax.training import train_state

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


class MLP(nn.Module):
  """``2 -> hidden -> hidden -> K``, tanh, optionally with BatchNorm."""

  hidden: int
  batchnorm: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    h = jnp.tanh(nn.Dense(self.hidden)(x))
    if self.batchnorm:
      h = nn.BatchNorm(use_running_average=not train)(h)
    h = jnp.tanh(nn.Dense(self.hidden)(h))
    return nn.Dense(len(COMPONENTS))(h)


class TrainState(train_state.TrainState):
  """A ``TrainState`` with the BatchNorm statistics (empty without BatchNorm)."""

  batch_stats: Any


def loss_fn(params, state: TrainState, batch: dict[str, jax.Array]):
  """``([K] mean squared errors, new batch_stats)``, in training mode."""
  pred, updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      batch["x"],
      train=True,
      mutable=["batch_stats"],
  )
  losses = jnp.mean((pred - batch["y"]) ** 2, axis=0)
  return losses, updates.get("batch_stats", state.batch_stats)


def evaluate(state: TrainState, data: dict[str, jax.Array]) -> jax.Array:
  """``[K]`` losses on ``data`` in inference mode (running statistics)."""
  pred = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats},
      data["x"],
      train=False,
  )
  return jnp.mean((pred - data["y"]) ** 2, axis=0)


def make_train_step(grad_fn):
  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    out = grad_fn(state.opt_state, state.params, state, batch)
    state = sa.apply_gradients(
        state, out.grad, losses=out.losses, batch_stats=out.aux
    )
    return state, (out.losses, out.weights)

  return train_step


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
    "step", "softadapt_count", "train_seconds", "state"}``: the per-step loss
    components and weights (``[steps, K]`` arrays), the full-dataset losses
    before and after training, the train state's step and the SoftAdapt
    state's count at the end, the training time (compilation included) and
    the final train state.
  """
  args = parse_args(argv)
  settings = {"beta": args.beta, "variant": args.variant}
  data_key, batch_key, model_key = jax.random.split(jax.random.key(args.seed), 3)
  data = make_dataset(data_key, args.dataset_size)

  model = MLP(args.hidden, batchnorm=args.batchnorm)
  variables = model.init(model_key, data["x"][:1], train=False)
  tx = optax.chain(
      sa.softadapt_track(len(COMPONENTS), **settings), optax.adam(args.lr)
  )
  state = TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=tx,
      batch_stats=variables.get("batch_stats", {}),
  )
  grad_fn = sa.softadapt_value_and_grad(loss_fn, has_aux=True, **settings)
  train_step = make_train_step(grad_fn)
  jit_step = jax.jit(train_step)
  train_chunk = jax.jit(lambda s, b: jax.lax.scan(train_step, s, b))

  config = {
      "model": f"linen MLP 2 -> {args.hidden} -> {args.hidden} -> 2 (tanh)"
      + (", BatchNorm" if args.batchnorm else ""),
      "losses": ", ".join(COMPONENTS) + " (mean squared error)",
      "optimizer": f"TrainState, chain(softadapt_track, adam({args.lr}))",
      "softadapt": f"variant={args.variant!r}, beta={args.beta}",
      "loop": f"{args.loop}, chunks of {args.chunk} steps",
      "steps": args.steps,
      "backend": jax.default_backend(),
  }
  print("Config:")
  for key, value in config.items():
    print(f"  {key:10s} {value}")

  initial = np.asarray(jax.jit(evaluate)(state, data))
  losses, weights = [], []
  start = time.perf_counter()
  with tqdm.tqdm(total=args.steps, desc="Linen", unit="step", leave=False) as bar:
    for first in range(0, args.steps, args.chunk):
      length = min(args.chunk, args.steps - first)
      batches = sample_batches(
          data, batch_key, jnp.asarray(first), length, args.batch_size
      )
      if args.loop == "scan":
        state, (chunk_losses, chunk_weights) = train_chunk(state, batches)
      else:
        out = []
        for i in range(length):
          state, step_out = jit_step(
              state, jax.tree.map(lambda a, i=i: a[i], batches)
          )
          out.append(step_out)
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
  final = np.asarray(jax.jit(evaluate)(state, data))
  losses, weights = np.concatenate(losses), np.concatenate(weights)

  print(f"\nTrained {args.steps} steps in {elapsed:.1f} s (compilation included).")
  print(f"  {'':14s} " + " ".join(f"{n:>10s}" for n in COMPONENTS))
  print(f"  {'initial loss':14s} " + " ".join(f"{v:10.3e}" for v in initial))
  print(f"  {'final loss':14s} " + " ".join(f"{v:10.3e}" for v in final))
  print("\nSoftAdapt weights during training:")
  for t in np.unique(np.linspace(0, args.steps - 1, 6).round().astype(int)):
    print(f"  step {t:6d}  " + " ".join(f"{w:.4f}" for w in weights[t]))
  return {
      "config": config,
      "losses": losses,
      "weights": weights,
      "initial_losses": initial.tolist(),
      "final_losses": final.tolist(),
      "step": int(state.step),
      "softadapt_count": int(sa.find_softadapt_state(state.opt_state).count),
      "train_seconds": elapsed,
      "state": state,
  }


if __name__ == "__main__":
  main()
