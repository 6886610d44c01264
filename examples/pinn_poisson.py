"""SoftAdapt on a 1D Poisson PINN, against equal weights.

Solves ``-u''(x) = f(x)`` on ``[0, 1]`` with Dirichlet boundary conditions and
the exact solution ``u(x) = sin(6 pi x) + 1 + 2 x``. The loss has two named
components, ``{"residual": ..., "boundary": ...}``: the mean squared PDE
residual starts near ``6e4`` (``f`` has amplitude ``(6 pi)^2``), the boundary
error near ``5``. The linear part ``1 + 2 x`` lies in the kernel of
``d^2/dx^2``: only the boundary term can fix it, and with equal weights its
gradient is drowned by the residual's.

Two runs share the initial parameters, the collocation points, the
optimizer (``optax.adam`` with a cosine decay of the step size) and the code:
each is a rule, trained by the one-backward-pass route::

    rule = sa.softadapt(["residual", "boundary"], beta=0.3, order=1)
    tx = optax.chain(sa.track_weights(rule), optax.adam(lr))
    grad_fn = sa.weighted_value_and_grad(loss_components, rule)
    out = grad_fn(opt_state, params, batch)      # out.losses: a dict
    updates, opt_state = tx.update(out.grad, opt_state, params,
                                   weighting_state=out.state)
    log = sa.diagnostics(opt_state, rule, flat=True)  # {"weight/residual": ...}

- SoftAdapt: ``sa.softadapt(COMPONENTS, ...)``;
- equal weights: ``sa.equal_weights(COMPONENTS, scale_by_num_losses=False)``,
  the gradient of the mean of the components (weights ``1/2`` each).

Each training loop is one ``jax.jit``-compiled ``lax.scan`` per chunk of steps
that returns the per-step losses and weights as arrays; between chunks the
progress bar advances and the error against the exact solution is measured.

Settings: ``variant="original"``, ``beta=0.3``, ``order=1``, from a sweep over
seeds 0-7 at the defaults (10000 steps; geometric mean of the final relative
L2 error, and in how many seeds it got below ``1e-2``):

=============================== =========== ==========
run                             rel. L2     < 1e-2
=============================== =========== ==========
equal weights                   0.20        0 of 8
original, beta 0.3              0.0034      8 of 8
original, beta 0.1              0.0026      7 of 8
original, beta 1                0.28        0 of 8
original, beta 0.3, order 2     0.12        0 of 8
loss_weighted, beta 0.1 / 1     0.051/0.064 0 of 8
normalized, beta 0.1            0.26        0 of 8
=============================== =========== ==========

What SoftAdapt does here: while the residual falls by orders of magnitude its
slope is large and negative, so nearly all the weight goes to the boundary,
which is fitted first; once the slopes flatten the weights return to about 1/2
each, the objective of equal weights. The gain is speed: with a constant step
size (``--schedule constant``) equal weights catch up by 10000 steps (median
error about ``4e-3`` for both), but SoftAdapt gets below ``1e-2`` in all 8
seeds (median step 6000) and equal weights in 6 (median step 8500).
``loss_weighted``, which the authors recommend, multiplies the weights by the
mean loss and so favours the large residual term on this problem. The slopes
are not normalised, so ``beta`` has to suit the scale of the losses.

Run::

  python examples/pinn_poisson.py                 # ~10 s on a 2-core CPU
  python examples/pinn_poisson.py --variant loss_weighted --beta 0.1

It prints the configuration, the final loss components and relative L2 error
of both runs and the SoftAdapt weights during training, and saves a figure to
``examples/out/pinn_poisson.png``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import softadapt_jax as sa

COMPONENTS = ("residual", "boundary")
HIDDEN = (32, 32, 32)
NUM_INTERIOR = 128
_FREQ = 6.0 * math.pi
_DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "out", "pinn_poisson.png")

# ---------------------------------------------------------------------------
# The problem: -u'' = f on [0, 1], u = g on {0, 1}.
# ---------------------------------------------------------------------------


def exact_solution(x: jax.Array) -> jax.Array:
  return jnp.sin(_FREQ * x) + 1.0 + 2.0 * x


def source(x: jax.Array) -> jax.Array:
  """``f = -u''`` of :func:`exact_solution`."""
  return _FREQ**2 * jnp.sin(_FREQ * x)


def make_batch(num_interior: int = NUM_INTERIOR) -> dict[str, jax.Array]:
  """A fixed uniform grid of interior points and the two boundary points."""
  x = jnp.linspace(0.0, 1.0, num_interior + 2)[1:-1]
  xb = jnp.array([0.0, 1.0])
  return {
      "x_interior": x,
      "f_interior": source(x),
      "x_boundary": xb,
      "g_boundary": exact_solution(xb),
  }


# ---------------------------------------------------------------------------
# A tanh MLP from scalar x to scalar u, in plain JAX.
# ---------------------------------------------------------------------------


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
  """Glorot-normal weights, zero biases."""
  params = []
  keys = jax.random.split(key, len(sizes) - 1)
  for k, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
    std = math.sqrt(2.0 / (fan_in + fan_out))
    params.append({
        "w": std * jax.random.normal(k, (fan_in, fan_out)),
        "b": jnp.zeros((fan_out,)),
    })
  return params


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  """``u(x)`` for a scalar ``x``; the input is mapped to ``[-1, 1]``."""
  h = jnp.reshape(2.0 * x - 1.0, (1,))
  for layer in params[:-1]:
    h = jnp.tanh(h @ layer["w"] + layer["b"])
  return (h @ params[-1]["w"] + params[-1]["b"])[0]


def loss_components(
    params: Any, batch: dict[str, jax.Array]
) -> dict[str, jax.Array]:
  """``{"residual", "boundary"}``: mean squared PDE residual and boundary error."""
  u = functools.partial(mlp, params)
  u_xx = jax.vmap(jax.grad(jax.grad(u)))(batch["x_interior"])
  residual = jnp.mean((u_xx + batch["f_interior"]) ** 2)
  u_b = jax.vmap(u)(batch["x_boundary"])
  boundary = jnp.mean((u_b - batch["g_boundary"]) ** 2)
  return {"residual": residual, "boundary": boundary}


def predict(params: Any, x: jax.Array) -> jax.Array:
  return jax.vmap(functools.partial(mlp, params))(x)


def relative_l2_error(params: Any, num_points: int = 1001) -> jax.Array:
  """``||u - u_exact|| / ||u_exact||`` on a uniform grid of ``[0, 1]``."""
  x = jnp.linspace(0.0, 1.0, num_points)
  exact = exact_solution(x)
  return jnp.linalg.norm(predict(params, x) - exact) / jnp.linalg.norm(exact)


@jax.jit
def evaluate(params: Any, batch: dict[str, jax.Array]) -> tuple[Any, jax.Array]:
  """``(named loss components, relative L2 error)``, compiled once per shape."""
  return loss_components(params, batch), relative_l2_error(params)


# ---------------------------------------------------------------------------
# Training: one compiled scan per chunk of steps.
# ---------------------------------------------------------------------------

Step = Callable[[Any, None], tuple[Any, tuple[Any, dict[str, jax.Array]]]]


def weighted_step(
    rule: sa.LossWeighting,
    tx: optax.GradientTransformationExtraArgs,
    batch: dict[str, jax.Array],
) -> Step:
  """One step of any rule; its state lives in ``opt_state``.

  Returns the named losses of the step and ``sa.diagnostics(..., flat=True)``
  (``{"weight/residual": ..., "weight/boundary": ..., "count": ...}``): the
  weights the step applied, ready for any metric writer.
  """
  grad_fn = sa.weighted_value_and_grad(loss_components, rule)

  def step(carry, _):
    params, opt_state = carry
    out = grad_fn(opt_state, params, batch)  # one forward + one backward pass
    updates, opt_state = tx.update(
        out.grad, opt_state, params, weighting_state=out.state
    )
    params = optax.apply_updates(params, updates)
    return (params, opt_state), (out.losses, sa.diagnostics(opt_state, rule, flat=True))

  return step


class Run(NamedTuple):
  """A finished training run.

  Attributes:
    params: the final parameters.
    losses: ``[steps, K]`` the loss components at each step, before its update
      (columns in the order of ``COMPONENTS``).
    weights: ``[steps, K]`` the weights each step applied.
    checkpoints: ``[chunks]`` the step count at the end of each chunk.
    errors: ``[chunks]`` the relative L2 error at those steps.
  """

  params: Any
  losses: np.ndarray
  weights: np.ndarray
  checkpoints: np.ndarray
  errors: np.ndarray


def train(
    step: Step,
    carry: Any,
    batch: dict[str, jax.Array],
    num_steps: int,
    chunk: int,
    desc: str,
) -> Run:
  """Runs ``num_steps`` steps of ``step`` (carry: ``(params, opt_state)``).

  Each chunk of ``chunk`` steps is one compiled ``lax.scan``; between chunks
  the progress bar advances and the relative L2 error is measured.
  """

  @functools.partial(jax.jit, static_argnames="length")
  def run_chunk(carry, length):
    return jax.lax.scan(step, carry, None, length=length)

  lengths = [chunk] * (num_steps // chunk)
  if num_steps % chunk:
    lengths.append(num_steps % chunk)
  losses, weights, errors = [], [], []
  with tqdm.tqdm(total=num_steps, desc=desc, unit="step", leave=False) as bar:
    for length in lengths:
      carry, (chunk_losses, log) = run_chunk(carry, length)
      # Named losses and flat diagnostics, stacked by the scan: [length] each.
      losses.append(np.stack([chunk_losses[n] for n in COMPONENTS], axis=1))
      weights.append(np.stack([log[f"weight/{n}"] for n in COMPONENTS], axis=1))
      errors.append(float(evaluate(carry[0], batch)[1]))
      bar.update(length)
      bar.set_postfix_str(
          f"residual={losses[-1][-1, 0]:.2e} boundary={losses[-1][-1, 1]:.2e} "
          f"rel. L2={errors[-1]:.2e}"
      )
  return Run(
      params=carry[0],
      losses=np.concatenate(losses),
      weights=np.concatenate(weights),
      checkpoints=np.cumsum(lengths),
      errors=np.array(errors),
  )


def first_step_below(run: Run, threshold: float) -> int | None:
  """The first checkpoint at which the error is below ``threshold``, if any."""
  below = np.flatnonzero(run.errors < threshold)
  return int(run.checkpoints[below[0]]) if below.size else None


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=(__doc__ or "").splitlines()[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--steps", type=int, default=10_000, help="training steps")
  parser.add_argument("--seed", type=int, default=0, help="initialisation seed")
  parser.add_argument("--out", default=_DEFAULT_OUT, help="figure path (PNG)")
  parser.add_argument("--no-plot", action="store_true", help="skip the figure")
  parser.add_argument(
      "--lr", type=float, default=1e-3, help="Adam step size (peak)"
  )
  parser.add_argument(
      "--schedule",
      default="cosine",
      choices=("cosine", "constant"),
      help="step size schedule: cosine decay to lr/100, or constant",
  )
  parser.add_argument(
      "--variant",
      default="original",
      choices=("original", "normalized", "loss_weighted"),
      help="SoftAdapt variant",
  )
  parser.add_argument("--beta", type=float, default=0.3, help="SoftAdapt beta")
  parser.add_argument("--order", type=int, default=1, help="slope order")
  parser.add_argument(
      "--chunk", type=int, default=250, help="steps per compiled chunk"
  )
  args = parser.parse_args(argv)
  if args.steps < 2:
    parser.error("--steps must be >= 2")
  if args.chunk < 1:
    parser.error("--chunk must be >= 1")
  return args


def _summary(run: Run, batch: Any) -> dict[str, Any]:
  losses, error = evaluate(run.params, batch)
  return {
      "initial_losses": run.losses[0].tolist(),
      "final_losses": [float(losses[n]) for n in COMPONENTS],
      "rel_l2": float(error),
      "first_step_below_1e-2": first_step_below(run, 1e-2),
      "final_weights": run.weights[-1].tolist(),
  }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Trains both runs and prints the comparison.

  Args:
    argv: command-line arguments (``None``: ``sys.argv[1:]``).

  Returns:
    ``{"config", "softadapt", "equal", "runs", "train_seconds"}``: for each
    run the initial and final loss components, the final relative L2 error,
    the first checkpoint with an error below ``1e-2`` (or ``None``) and the
    final weights; ``runs`` holds the two :class:`Run` records (per-step
    losses and weights, errors at the checkpoints).
  """
  args = parse_args(argv)
  batch = make_batch()
  params0 = init_mlp(jax.random.key(args.seed), [1, *HIDDEN, 1])
  config = {
      "problem": "-u'' = f on [0, 1], u = sin(6 pi x) + 1 + 2 x, Dirichlet",
      "losses": ", ".join(COMPONENTS) + " (mean squared)",
      "mlp": f"1 -> {' -> '.join(map(str, HIDDEN))} (tanh) -> 1",
      "collocation": f"{NUM_INTERIOR} interior (uniform grid) + 2 boundary",
      "optimizer": f"optax.adam, lr {args.lr}, {args.schedule}"
      + (" decay to lr/100" if args.schedule == "cosine" else ""),
      "steps": args.steps,
      "seed": args.seed,
      "softadapt": f"variant={args.variant!r}, beta={args.beta}, "
      f"order={args.order}",
      "backend": jax.default_backend(),
  }
  print("Config:")
  for key, value in config.items():
    print(f"  {key:12s} {value}")

  if args.schedule == "cosine":
    lr = optax.cosine_decay_schedule(args.lr, args.steps, alpha=0.01)
  else:
    lr = args.lr

  rules = {
      # (a) SoftAdapt: every setting given once, to the rule.
      "softadapt": sa.softadapt(
          COMPONENTS, beta=args.beta, variant=args.variant, order=args.order
      ),
      # (b) Equal weights: the mean of the components (1/2 each), same route.
      "equal": sa.equal_weights(COMPONENTS, scale_by_num_losses=False),
  }
  start = time.perf_counter()
  runs = {}
  for name, rule in rules.items():
    # Same initial parameters, same optimizer; the rule's state in opt_state.
    tx = optax.chain(sa.track_weights(rule), optax.adam(lr))
    runs[name] = train(
        weighted_step(rule, tx, batch),
        (params0, tx.init(params0)),
        batch,
        args.steps,
        args.chunk,
        "SoftAdapt" if name == "softadapt" else name,
    )
  run_sa, run_eq = runs["softadapt"], runs["equal"]
  elapsed = time.perf_counter() - start

  metrics = {
      "config": config,
      "softadapt": _summary(run_sa, batch),
      "equal": _summary(run_eq, batch),
      "runs": runs,
      "train_seconds": elapsed,
  }
  print(f"\nTrained both runs in {elapsed:.1f} s (compilation included).")
  print(f"\nAfter {args.steps} steps:")
  print(
      f"  {'run':10s} {'residual':>10s} {'boundary':>10s} {'rel. L2':>10s} "
      f"{'rel. L2 < 1e-2 from step':>25s}"
  )
  for name in ("softadapt", "equal"):
    m = metrics[name]
    (res, bnd), first = m["final_losses"], m["first_step_below_1e-2"]
    first = "not reached" if first is None else str(first)
    print(f"  {name:10s} {res:10.3e} {bnd:10.3e} {m['rel_l2']:10.3e} {first:>25s}")

  print("\nRelative L2 error during training:")
  print(f"  {'step':>6s} {'softadapt':>10s} {'equal':>10s}")
  num_chunks = len(run_sa.checkpoints)
  for i in np.unique(np.linspace(0, num_chunks - 1, 8).round().astype(int)):
    print(
        f"  {run_sa.checkpoints[i]:6d} {run_sa.errors[i]:10.3e} "
        f"{run_eq.errors[i]:10.3e}"
    )

  print("\nSoftAdapt weights during training (with the losses they saw):")
  print(
      f"  {'step':>6s} {'w_res':>7s} {'w_bnd':>7s} {'residual':>10s} "
      f"{'boundary':>10s}"
  )
  for t in np.unique(np.linspace(0, args.steps - 1, 8).round().astype(int)):
    (w_res, w_bnd), (l_res, l_bnd) = run_sa.weights[t], run_sa.losses[t]
    print(f"  {t:6d} {w_res:7.4f} {w_bnd:7.4f} {l_res:10.3e} {l_bnd:10.3e}")

  if not args.no_plot:
    plot(args.out, run_sa, run_eq, title=config["softadapt"])
    print(f"\nSaved {args.out}")
  return metrics


def _moving_average(x: np.ndarray, window: int) -> np.ndarray:
  return np.convolve(x, np.ones(window) / window, mode="valid")


def plot(path: str, run_sa: Run, run_eq: Run, title: str = "") -> None:
  """Losses, SoftAdapt weights, errors, and both solutions against exact."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 2, figsize=(12, 8), layout="constrained")
  fig.suptitle(f"1D Poisson PINN: SoftAdapt ({title}) vs equal weights")
  runs = ((run_sa, "SoftAdapt", "C0"), (run_eq, "equal", "C1"))
  steps = np.arange(len(run_sa.losses))

  ax = axes[0, 0]
  for k, (name, style) in enumerate(zip(COMPONENTS, ("-", ":"), strict=True)):
    for run, label, color in runs:
      ax.semilogy(
          steps, run.losses[:, k], color=color, ls=style, lw=0.9,
          label=f"{label}, {name}",
      )
  ax.set(xlabel="step", ylabel="loss", title="Loss components")
  ax.legend(fontsize=8)

  ax = axes[0, 1]
  window = max(1, min(len(steps) // 100, len(steps)))
  for k, name in enumerate(COMPONENTS):
    color = f"C{k + 2}"
    ax.plot(steps, run_sa.weights[:, k], color=color, lw=0.5, alpha=0.3)
    ax.plot(
        steps[window - 1:], _moving_average(run_sa.weights[:, k], window),
        color=color, lw=1.5, label=f"{name} (mean over {window} steps)",
    )
  ax.axhline(1.0 / len(COMPONENTS), color="0.4", ls=":", lw=1, label="equal")
  ax.set(xlabel="step", ylabel="weight", title="SoftAdapt weights")
  ax.set_ylim(-0.02, 1.02)
  ax.legend(fontsize=8)

  ax = axes[1, 0]
  for run, label, color in runs:
    ax.semilogy(run.checkpoints, run.errors, "o-", color=color, ms=3, label=label)
  ax.set(xlabel="step", ylabel="relative L2 error", title="Error vs exact")
  ax.legend(fontsize=8)

  ax = axes[1, 1]
  x = jnp.linspace(0.0, 1.0, 501)
  ax.plot(x, exact_solution(x), "k", lw=4, alpha=0.25, label="exact")
  for run, label, color in runs:
    ax.plot(
        x, jax.jit(predict)(run.params, x), color=color, lw=1.2,
        label=f"{label} (rel. L2 {run.errors[-1]:.1e})",
    )
  ax.set(xlabel="x", ylabel="u", title=f"Solutions after {len(steps)} steps")
  ax.legend(fontsize=8)

  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
