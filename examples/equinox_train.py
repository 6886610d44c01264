"""Equinox: SoftAdapt with ``eqx.filter_jit`` and Optax, one backward pass per step.

An ``eqx.nn.MLP`` fits two regression targets of very different scale from the
same inputs; the loss components are the mean squared error of each output,
named ``{"smooth": ..., "scaled": ...}``. The rule carries every setting; its
state lives in ``opt_state``; the step is::

  rule = sa.softadapt(["smooth", "scaled"], beta=beta, variant=variant)
  optim = optax.chain(sa.track_weights(rule), optax.adam(lr))
  opt_state = optim.init(eqx.filter(model, eqx.is_array))
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)

  @eqx.filter_jit
  def train_step(model, opt_state, batch):
    params, static = eqx.partition(model, eqx.is_array)
    out = grad_fn(opt_state, params, static, batch)
    updates, opt_state = optim.update(out.grad, opt_state, params,
                                      weighting_state=out.state)
    log = sa.diagnostics(opt_state, rule, flat=True)  # {"weight/smooth": ...}
    return eqx.apply_updates(model, updates), opt_state, out.losses, log

``loss_fn(params, static, batch)`` rebuilds the model with
``eqx.combine(params, static)`` and returns the named losses; the
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

import os
import sys
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

import softadapt_jax as sa

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # also when loaded by file path, as the tests do
  sys.path.insert(0, _HERE)
import _toy_task as toy  # noqa: E402  (next to this file)

COMPONENTS = toy.COMPONENTS


def loss_components(
    model: eqx.nn.MLP, batch: dict[str, jax.Array]
) -> dict[str, jax.Array]:
  """The mean squared error of each output, named: ``{"smooth", "scaled"}``."""
  pred = jax.vmap(model)(batch["x"])
  return toy.named(jnp.mean((pred - batch["y"]) ** 2, axis=0))


def loss_fn(params, static, batch):
  """The function the rule weights, differentiated with respect to ``params``."""
  return loss_components(eqx.combine(params, static), batch)


def make_train_step(rule: sa.LossWeighting, optim):
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)

  def train_step(model, opt_state, batch):
    params, static = eqx.partition(model, eqx.is_array)
    out = grad_fn(opt_state, params, static, batch)
    updates, opt_state = optim.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    model = eqx.apply_updates(model, updates)
    log = sa.diagnostics(opt_state, rule, flat=True)
    return model, opt_state, out.losses, log

  return train_step


def make_train_chunk(train_step):
  """``len(batches)`` steps as one ``lax.scan`` in one ``eqx.filter_jit``."""

  @eqx.filter_jit
  def train_chunk(model, opt_state, batches):
    params, static = eqx.partition(model, eqx.is_array)

    def body(carry, batch):
      params, opt_state = carry
      model, opt_state, losses, log = train_step(
          eqx.combine(params, static), opt_state, batch
      )
      return (eqx.filter(model, eqx.is_array), opt_state), (losses, log)

    (params, opt_state), history = jax.lax.scan(
        body, (params, opt_state), batches
    )
    return eqx.combine(params, static), opt_state, history

  return train_chunk


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains the model and prints the losses and weights.

  Args:
    argv: command-line arguments (``None``: ``sys.argv[1:]``).

  Returns:
    ``{"config", "losses", "weights", "initial_losses", "final_losses",
    "softadapt_count", "train_seconds", "model"}``: the per-step loss
    components and weights (``[steps, K]`` arrays, columns in COMPONENTS
    order), the full-dataset losses before and after training, the rule
    state's count at the end, the training time (compilation included) and
    the trained model.
  """
  args = toy.parse_args((__doc__ or "").splitlines()[0], argv, batchnorm=False)
  data_key, batch_key, model_key = jax.random.split(jax.random.key(args.seed), 3)
  data = toy.make_dataset(data_key, args.dataset_size)

  model = eqx.nn.MLP(
      in_size=2,
      out_size=len(COMPONENTS),
      width_size=args.hidden,
      depth=2,
      activation=jnp.tanh,
      key=model_key,
  )
  rule = sa.softadapt(COMPONENTS, beta=args.beta, variant=args.variant)
  optim = optax.chain(sa.track_weights(rule), optax.adam(args.lr))
  opt_state = optim.init(eqx.filter(model, eqx.is_array))
  train_step = make_train_step(rule, optim)
  jit_step = eqx.filter_jit(train_step)
  train_chunk = make_train_chunk(train_step)
  evaluate = eqx.filter_jit(loss_components)

  config = {
      "model": f"eqx.nn.MLP 2 -> {args.hidden} -> {args.hidden} -> 2 (tanh)",
      "losses": ", ".join(COMPONENTS) + " (mean squared error)",
      "optimizer": f"chain(track_weights(rule), adam({args.lr}))",
      "softadapt": f"variant={args.variant!r}, beta={args.beta}",
      "loop": f"{args.loop}, chunks of {args.chunk} steps",
      "steps": args.steps,
      "backend": jax.default_backend(),
  }
  toy.print_config(config)

  initial = toy.columns(evaluate(model, data))

  def run_chunk(state, batches):
    model, opt_state = state
    if args.loop == "scan":
      model, opt_state, history = train_chunk(model, opt_state, batches)
      return (model, opt_state), history

    def step(state, batch):
      model, opt_state, losses, log = jit_step(state[0], state[1], batch)
      return (model, opt_state), (losses, log)

    return toy.run_steps(step, state, batches)

  (model, opt_state), losses, weights, elapsed = toy.train(
      run_chunk, (model, opt_state), data, batch_key, args, desc="Equinox"
  )
  final = toy.columns(evaluate(model, data))

  toy.print_summary(elapsed, initial, final, weights)
  return {
      "config": config,
      "losses": losses,
      "weights": weights,
      "initial_losses": initial.tolist(),
      "final_losses": final.tolist(),
      "softadapt_count": int(sa.find_weighting_state(opt_state, rule).count),
      "train_seconds": elapsed,
      "model": model,
  }


if __name__ == "__main__":
  main()
