"""Flax NNX: SoftAdapt inside ``nnx.Optimizer``, one backward pass per step.

A small NNX MLP fits two regression targets of very different scale from the
same inputs (``x`` in ``[-1, 1]^2``); the loss has one named component per
target, ``{"smooth": ..., "scaled": ...}``, the mean squared error of each
output. The rule carries every setting; its state lives in the optimizer's
``opt_state``; the step is::

  rule = sa.softadapt(["smooth", "scaled"], beta=beta, variant=variant)
  tx = optax.chain(sa.track_weights(rule), optax.adam(lr))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule, has_aux=True)

  @nnx.jit
  def train_step(model, optimizer, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    out = grad_fn(optimizer.opt_state, params, graphdef, rest, batch)
    nnx.update(model, out.aux)        # BatchNorm statistics, RNG counts
    optimizer.update(model, out.grad, weighting_state=out.state)
    return out.losses, sa.diagnostics(optimizer.opt_state, rule, flat=True)

``loss_fn(params, graphdef, rest, batch)`` merges the model back, returns the
named losses and, as auxiliary output, the model's non-parameter state (empty
for a plain MLP, the running statistics with ``--batchnorm``). The direction
``sum_k alpha_k grad f_k`` comes from one ``jax.vjp``; the optimizer's
``opt_state`` goes into ``grad_fn`` as is (its Variable-wrapped leaves are
read by ``sa.find_weighting_state``), and ``optimizer.update`` forwards
``weighting_state=`` to ``tx.update`` so ``opt_state`` records the rule's new
state. ``sa.diagnostics(..., flat=True)`` gives ``{"weight/smooth": ...,
"weight/scaled": ..., "loss/smooth": ..., "slope/smooth": ..., "count": ...}``
for any metric writer.

Two loops (``--loop``): ``scan`` (default) runs each chunk of steps as one
``nnx.scan`` over a stack of minibatches inside ``nnx.jit``; ``jit`` calls the
jitted step once per step from Python. Both see the same minibatches and give
the same result. The progress bar advances once per chunk.

Run::

  python examples/nnx_train.py                  # ~10 s on a 2-core CPU
  python examples/nnx_train.py --loop jit --batchnorm
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import softadapt_jax as sa

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # also when loaded by file path, as the tests do
  sys.path.insert(0, _HERE)
import _toy_task as toy  # noqa: E402  (next to this file)

COMPONENTS = toy.COMPONENTS


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


def loss_components(model: MLP, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The mean squared error of each output, named: ``{"smooth", "scaled"}``."""
  return toy.named(jnp.mean((model(batch["x"]) - batch["y"]) ** 2, axis=0))


def loss_fn(params, graphdef, rest, batch):
  """The function the rule weights: ``(losses, new non-param state)``."""
  model = nnx.merge(graphdef, params, rest, copy=True)
  return loss_components(model, batch), nnx.state(model, nnx.Not(nnx.Param))


def make_train_step(rule: sa.LossWeighting):
  """One step; ``model`` and ``optimizer`` are updated in place."""
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule, has_aux=True)

  def train_step(model, optimizer, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    out = grad_fn(optimizer.opt_state, params, graphdef, rest, batch)
    nnx.update(model, out.aux)
    optimizer.update(model, out.grad, weighting_state=out.state)
    return out.losses, sa.diagnostics(optimizer.opt_state, rule, flat=True)

  return train_step


def make_train_chunk(train_step):
  """``len(batches)`` steps as one ``nnx.scan`` (compiled by ``nnx.jit``)."""

  @nnx.jit
  def train_chunk(model, optimizer, batches):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def body(carry, batch):
      model, optimizer = carry
      return (model, optimizer), train_step(model, optimizer, batch)

    _, (losses, log) = body((model, optimizer), batches)
    return losses, log

  return train_chunk


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains the model and prints the losses and weights.

  Args:
    argv: command-line arguments (``None``: ``sys.argv[1:]``).

  Returns:
    ``{"config", "losses", "weights", "initial_losses", "final_losses",
    "step", "softadapt_count", "train_seconds", "model"}``: the per-step loss
    components and weights (``[steps, K]`` arrays, columns in COMPONENTS
    order), the full-dataset losses before and after training,
    ``optimizer.step`` and the rule state's count at the end, the training
    time (compilation included) and the trained model.
  """
  args = toy.parse_args((__doc__ or "").splitlines()[0], argv, batchnorm=True)
  data_key, batch_key, model_key = jax.random.split(jax.random.key(args.seed), 3)
  data = toy.make_dataset(data_key, args.dataset_size)

  model = MLP(args.hidden, batchnorm=args.batchnorm, rngs=nnx.Rngs(model_key))
  rule = sa.softadapt(COMPONENTS, beta=args.beta, variant=args.variant)
  tx = optax.chain(sa.track_weights(rule), optax.adam(args.lr))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  train_step = make_train_step(rule)
  train_chunk = make_train_chunk(train_step)
  jit_step = nnx.jit(train_step)
  evaluate = nnx.jit(loss_components)

  config = {
      "model": f"nnx MLP 2 -> {args.hidden} -> {args.hidden} -> 2 (tanh)"
      + (", BatchNorm" if args.batchnorm else ""),
      "losses": ", ".join(COMPONENTS) + " (mean squared error)",
      "optimizer": f"nnx.Optimizer(chain(track_weights(rule), adam({args.lr})))",
      "softadapt": f"variant={args.variant!r}, beta={args.beta}",
      "loop": f"{args.loop}, chunks of {args.chunk} steps",
      "steps": args.steps,
      "backend": jax.default_backend(),
  }
  toy.print_config(config)

  model.eval()
  initial = toy.columns(evaluate(model, data))
  model.train()

  def run_chunk(state, batches):
    if args.loop == "scan":
      return state, train_chunk(state[0], state[1], batches)
    return toy.run_steps(
        lambda s, batch: (s, jit_step(s[0], s[1], batch)), state, batches
    )

  _, losses, weights, elapsed = toy.train(
      run_chunk, (model, optimizer), data, batch_key, args, desc="NNX"
  )
  model.eval()
  final = toy.columns(evaluate(model, data))

  toy.print_summary(elapsed, initial, final, weights)
  state = sa.find_weighting_state(optimizer.opt_state, rule)
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
