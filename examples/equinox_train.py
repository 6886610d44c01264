"""Equinox: SoftAdapt with ``eqx.filter_jit`` and Optax, one backward pass per step.

An ``eqx.nn.MLP`` fits two regression targets of very different scale from the
same inputs; the loss components are the mean squared error of each output,
``[smooth, scaled]``. The SoftAdapt state lives in ``opt_state``; the step is::

  optim = optax.chain(sa.softadapt_track(K, **settings), optax.adam(lr))
  opt_state = optim.init(eqx.filter(model, eqx.is_array))
  grad_fn = sa.softadapt_value_and_grad(loss_fn, **settings)

  @eqx.filter_jit
  def train_step(model, opt_state, batch):
    params, static = eqx.partition(model, eqx.is_array)
    out = grad_fn(opt_state, params, static, batch)
    updates, opt_state = optim.update(out.grad, opt_state, params,
                                      losses=out.losses)
    return eqx.apply_updates(model, updates), opt_state, out.losses, out.weights

``loss_fn(params, static, batch)`` rebuilds the model with
``eqx.combine(params, static)`` and returns the ``[K]`` loss vector; the
direction ``sum_k alpha_k grad f_k`` comes from one ``jax.vjp`` taken with
respect to the array leaves only (the part ``eqx.filter_grad`` would
differentiate).

Each chunk of steps is one ``eqx.filter_jit``-compiled ``lax.scan`` over a
stack of minibatches (``--loop scan``, default; the model's arrays are the
carry) or one ``train_step`` call per step (``--loop jit``); the progress bar
advances once per chunk.

Run::

  python examples/equinox_train.py              # ~10 s on a 2-core CPU
  python examples/equinox_train.py --loop jit
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

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


def loss_components(model: eqx.Module, batch: dict[str, jax.Array]) -> jax.Array:
  """``[K]``: the mean squared error of each output."""
  pred = jax.vmap(model)(batch["x"])
  return jnp.mean((pred - batch["y"]) ** 2, axis=0)


def loss_fn(params, static, batch):
  """The function SoftAdapt differentiates, with respect to ``params``."""
  return loss_components(eqx.combine(params, static), batch)


def make_train_step(optim, grad_fn):
  def train_step(model, opt_state, batch):
    params, static = eqx.partition(model, eqx.is_array)
    out = grad_fn(opt_state, params, static, batch)
    updates, opt_state = optim.update(
        out.grad, opt_state, params, losses=out.losses
    )
    model = eqx.apply_updates(model, updates)
    return model, opt_state, out.losses, out.weights

  return train_step


def make_train_chunk(train_step):
  """``len(batches)`` steps as one ``lax.scan`` in one ``eqx.filter_jit``."""

  @eqx.filter_jit
  def train_chunk(model, opt_state, batches):
    params, static = eqx.partition(model, eqx.is_array)

    def body(carry, batch):
      params, opt_state = carry
      model, opt_state, losses, weights = train_step(
          eqx.combine(params, static), opt_state, batch
      )
      return (eqx.filter(model, eqx.is_array), opt_state), (losses, weights)

    (params, opt_state), history = jax.lax.scan(
        body, (params, opt_state), batches
    )
    return eqx.combine(params, static), opt_state, history

  return train_chunk


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--steps", type=int, default=4000, help="training steps")
  parser.add_argument("--chunk", type=int, default=250, help="steps per chunk")
  parser.add_argument("--loop", choices=("scan", "jit"), default="scan")
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
    "softadapt_count", "train_seconds", "model"}``: the per-step loss
    components and weights (``[steps, K]`` arrays), the full-dataset losses
    before and after training, the SoftAdapt state's count at the end, the
    training time (compilation included) and the trained model.
  """
  args = parse_args(argv)
  settings = {"beta": args.beta, "variant": args.variant}
  data_key, batch_key, model_key = jax.random.split(jax.random.key(args.seed), 3)
  data = make_dataset(data_key, args.dataset_size)

  model = eqx.nn.MLP(
      in_size=2,
      out_size=len(COMPONENTS),
      width_size=args.hidden,
      depth=2,
      activation=jnp.tanh,
      key=model_key,
  )
  optim = optax.chain(
      sa.softadapt_track(len(COMPONENTS), **settings), optax.adam(args.lr)
  )
  opt_state = optim.init(eqx.filter(model, eqx.is_array))
  grad_fn = sa.softadapt_value_and_grad(loss_fn, **settings)
  train_step = make_train_step(optim, grad_fn)
  jit_step = eqx.filter_jit(train_step)
  train_chunk = make_train_chunk(train_step)
  evaluate = eqx.filter_jit(loss_components)

  config = {
      "model": f"eqx.nn.MLP 2 -> {args.hidden} -> {args.hidden} -> 2 (tanh)",
      "losses": ", ".join(COMPONENTS) + " (mean squared error)",
      "optimizer": f"chain(softadapt_track, adam({args.lr}))",
      "softadapt": f"variant={args.variant!r}, beta={args.beta}",
      "loop": f"{args.loop}, chunks of {args.chunk} steps",
      "steps": args.steps,
      "backend": jax.default_backend(),
  }
  print("Config:")
  for key, value in config.items():
    print(f"  {key:10s} {value}")

  initial = np.asarray(evaluate(model, data))
  losses, weights = [], []
  start = time.perf_counter()
  with tqdm.tqdm(total=args.steps, desc="Equinox", unit="step", leave=False) as bar:
    for first in range(0, args.steps, args.chunk):
      length = min(args.chunk, args.steps - first)
      batches = sample_batches(
          data, batch_key, jnp.asarray(first), length, args.batch_size
      )
      if args.loop == "scan":
        model, opt_state, (chunk_losses, chunk_weights) = train_chunk(
            model, opt_state, batches
        )
      else:
        out = []
        for i in range(length):
          model, opt_state, *step_out = jit_step(
              model, opt_state, jax.tree.map(lambda a, i=i: a[i], batches)
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
  final = np.asarray(evaluate(model, data))
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
      "softadapt_count": int(sa.find_softadapt_state(opt_state).count),
      "train_seconds": elapsed,
      "model": model,
  }


if __name__ == "__main__":
  main()
