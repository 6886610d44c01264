"""Flax Linen: SoftAdapt with a ``TrainState``, one backward pass per step.

``TrainState.apply_gradients(grads=...)`` calls ``tx.update`` without extra
arguments, so the ``track_weights`` transformation in the chain would never
receive the rule's new state. ``sa.apply_gradients(state, out)``, with ``out``
what ``sa.weighted_value_and_grad`` returned, does the same update with
``weighting_state=out.state`` forwarded (and replaces any further fields given
as keywords, here ``batch_stats``)::

  rule = sa.softadapt(["smooth", "scaled"], beta=beta, variant=variant)
  tx = optax.chain(sa.track_weights(rule), optax.adam(lr))
  state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                            batch_stats=batch_stats)
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule, has_aux=True)

  @jax.jit
  def train_step(state, batch):
    out = grad_fn(state.opt_state, state.params, state, batch)
    state = sa.apply_gradients(state, out, batch_stats=out.aux)
    return state, (out.losses, sa.diagnostics(state.opt_state, rule, flat=True))

A small Linen MLP (optionally with ``nn.BatchNorm``) fits two regression
targets of very different scale from the same inputs; the loss components are
the mean squared error of each output, named ``{"smooth": ..., "scaled":
...}``. Each chunk of
steps is one ``jax.jit``-compiled ``lax.scan`` over a stack of minibatches
(``--loop scan``, default) or one jitted call per step (``--loop jit``); the
progress bar advances once per chunk.

Run::

  python examples/linen_train.py                # ~10 s on a 2-core CPU
  python examples/linen_train.py --batchnorm --loop jit
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

import softadapt_jax as sa

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # also when loaded by file path, as the tests do
  sys.path.insert(0, _HERE)
import _toy_task as toy  # noqa: E402  (next to this file)

COMPONENTS = toy.COMPONENTS


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
  """``(named mean squared errors, new batch_stats)``, in training mode."""
  pred, updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      batch["x"],
      train=True,
      mutable=["batch_stats"],
  )
  losses = toy.named(jnp.mean((pred - batch["y"]) ** 2, axis=0))
  return losses, updates.get("batch_stats", state.batch_stats)


def evaluate(state: TrainState, data: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Named losses on ``data`` in inference mode (running statistics)."""
  pred = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats},
      data["x"],
      train=False,
  )
  return toy.named(jnp.mean((pred - data["y"]) ** 2, axis=0))


def make_train_step(rule: sa.LossWeighting):
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule, has_aux=True)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    out = grad_fn(state.opt_state, state.params, state, batch)
    # tx.update(out.grad, ..., weighting_state=out.state), then batch_stats.
    state = sa.apply_gradients(state, out, batch_stats=out.aux)
    return state, (out.losses, sa.diagnostics(state.opt_state, rule, flat=True))

  return train_step


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains the model and prints the losses and weights.

  Args:
    argv: command-line arguments (``None``: ``sys.argv[1:]``).

  Returns:
    ``{"config", "losses", "weights", "initial_losses", "final_losses",
    "step", "softadapt_count", "train_seconds", "state"}``: the per-step loss
    components and weights (``[steps, K]`` arrays, columns in COMPONENTS
    order), the full-dataset losses before and after training, the train
    state's step and the rule state's count at the end, the training time
    (compilation included) and the final train state.
  """
  args = toy.parse_args((__doc__ or "").splitlines()[0], argv, batchnorm=True)
  data_key, batch_key, model_key = jax.random.split(jax.random.key(args.seed), 3)
  data = toy.make_dataset(data_key, args.dataset_size)

  model = MLP(args.hidden, batchnorm=args.batchnorm)
  variables = model.init(model_key, data["x"][:1], train=False)
  rule = sa.softadapt(COMPONENTS, beta=args.beta, variant=args.variant)
  tx = optax.chain(sa.track_weights(rule), optax.adam(args.lr))
  state = TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      tx=tx,
      batch_stats=variables.get("batch_stats", {}),
  )
  train_step = make_train_step(rule)
  jit_step = jax.jit(train_step)
  train_chunk = jax.jit(lambda s, b: jax.lax.scan(train_step, s, b))

  config = {
      "model": f"linen MLP 2 -> {args.hidden} -> {args.hidden} -> 2 (tanh)"
      + (", BatchNorm" if args.batchnorm else ""),
      "losses": ", ".join(COMPONENTS) + " (mean squared error)",
      "optimizer": f"TrainState, chain(track_weights(rule), adam({args.lr}))",
      "softadapt": f"variant={args.variant!r}, beta={args.beta}",
      "loop": f"{args.loop}, chunks of {args.chunk} steps",
      "steps": args.steps,
      "backend": jax.default_backend(),
  }
  toy.print_config(config)

  initial = toy.columns(jax.jit(evaluate)(state, data))
  run_chunk = (
      train_chunk
      if args.loop == "scan"
      else lambda s, batches: toy.run_steps(jit_step, s, batches)
  )
  state, losses, weights, elapsed = toy.train(
      run_chunk, state, data, batch_key, args, desc="Linen"
  )
  final = toy.columns(jax.jit(evaluate)(state, data))

  toy.print_summary(elapsed, initial, final, weights)
  return {
      "config": config,
      "losses": losses,
      "weights": weights,
      "initial_losses": initial.tolist(),
      "final_losses": final.tolist(),
      "step": int(state.step),
      "softadapt_count": int(sa.find_weighting_state(state.opt_state, rule).count),
      "train_seconds": elapsed,
      "state": state,
  }


if __name__ == "__main__":
  main()
