"""The shared two-output regression task of the framework examples.

``nnx_train.py``, ``linen_train.py``, ``equinox_train.py`` and
``checkpoint_resume.py`` fit the same two targets of very different scale from
``x`` in ``[-1, 1]^2``, with one named loss component per target
(``{"smooth": ..., "scaled": ...}``): the data, the minibatches, the common
command-line options, the chunked training loop with its progress bar, and the
printed summary live here; the model, the rule, the train step and everything
framework-specific stay in each example. The examples run as
``python examples/<name>.py`` and import this module as ``_toy_task``.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

COMPONENTS = ("smooth", "scaled")

# run_chunk(state, batches) -> (state, (losses, log)): the named losses of each
# step ({"smooth": [n], "scaled": [n]}) and the flat diagnostics of the rule
# (sa.diagnostics(..., flat=True): {"weight/smooth": [n], ...}).
RunChunk = Callable[[Any, dict[str, jax.Array]], tuple[Any, Any]]


def named(per_output: jax.Array) -> dict[str, jax.Array]:
  """The ``[K]`` per-output losses as named losses, ``{"smooth", "scaled"}``."""
  return {name: per_output[k] for k, name in enumerate(COMPONENTS)}


def columns(tree: Any, prefix: str = "") -> np.ndarray:
  """``[..., K]`` from named entries ``tree[prefix + name]``, in COMPONENTS order.

  ``columns(losses)`` stacks named losses; ``columns(log, "weight/")`` the
  weights of flat diagnostics.
  """
  return np.stack([np.asarray(tree[prefix + n]) for n in COMPONENTS], axis=-1)


def make_dataset(key: jax.Array, size: int) -> dict[str, jax.Array]:
  """``x`` uniform in ``[-1, 1]^2``; targets of scale 1 and 10."""
  x = jax.random.uniform(key, (size, 2), minval=-1.0, maxval=1.0)
  smooth = jnp.sin(jnp.pi * x[:, 0]) * jnp.cos(jnp.pi * x[:, 1])
  scaled = 10.0 * (x[:, 0] ** 2 - x[:, 1] ** 2)
  return {"x": x, "y": jnp.stack([smooth, scaled], axis=1)}


def batch_at(
    data: dict[str, jax.Array], key: jax.Array, step: jax.Array, batch_size: int
) -> dict[str, jax.Array]:
  """The minibatch of step ``step``: indices drawn with ``fold_in(key, step)``."""
  idx = jax.random.randint(
      jax.random.fold_in(key, step), (batch_size,), 0, data["x"].shape[0]
  )
  return jax.tree.map(lambda a: a[idx], data)


@functools.partial(jax.jit, static_argnames=("length", "batch_size"))
def sample_batches(
    data: dict[str, jax.Array],
    key: jax.Array,
    start: jax.Array,
    length: int,
    batch_size: int,
) -> dict[str, jax.Array]:
  """``[length, batch_size, ...]`` minibatches; step ``t`` uses ``fold_in(key, t)``."""
  one = lambda step: batch_at(data, key, step, batch_size)
  return jax.vmap(one)(start + jnp.arange(length))


def make_parser(
    description: str, *, steps: int = 4000, chunk: int = 250, hidden: int = 64
) -> argparse.ArgumentParser:
  """A parser with the options every example takes (the defaults vary)."""
  parser = argparse.ArgumentParser(
      description=description,
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument("--steps", type=int, default=steps, help="training steps")
  parser.add_argument("--chunk", type=int, default=chunk, help="steps per chunk")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--hidden", type=int, default=hidden)
  parser.add_argument("--lr", type=float, default=3e-3, help="Adam step size")
  parser.add_argument("--beta", type=float, default=0.1, help="SoftAdapt beta")
  parser.add_argument(
      "--variant",
      default="loss_weighted",
      choices=("original", "normalized", "loss_weighted"),
  )
  parser.add_argument("--seed", type=int, default=0)
  return parser


def parse_args(
    description: str, argv: Sequence[str] | None, *, batchnorm: bool
) -> argparse.Namespace:
  """The options of the framework examples (``--batchnorm`` if it has one)."""
  parser = make_parser(description)
  parser.add_argument("--loop", choices=("scan", "jit"), default="scan")
  parser.add_argument("--dataset-size", type=int, default=1024)
  if batchnorm:
    parser.add_argument("--batchnorm", action="store_true", help="add BatchNorm")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.chunk < 1:
    parser.error("--steps and --chunk must be >= 1")
  return args


def run_steps(step: Callable[[Any, Any], tuple[Any, Any]], state, batches):
  """``run_chunk`` for ``--loop jit``: one ``step(state, batch)`` call per step.

  ``step`` returns ``(state, (losses, log))``; the per-step outputs are
  stacked leaf by leaf, as ``lax.scan`` stacks them.
  """
  out = []
  for i in range(jax.tree.leaves(batches)[0].shape[0]):
    state, step_out = step(state, jax.tree.map(lambda a, i=i: a[i], batches))
    out.append(step_out)
  return state, jax.tree.map(lambda *xs: jnp.stack(xs), *out)


def train(
    run_chunk: RunChunk,
    state: Any,
    data: dict[str, jax.Array],
    batch_key: jax.Array,
    args: argparse.Namespace,
    *,
    desc: str,
) -> tuple[Any, np.ndarray, np.ndarray, float]:
  """``args.steps`` steps in chunks of ``args.chunk``, with a progress bar.

  Returns:
    ``(state, losses, weights, seconds)``: the final state, the ``[steps, K]``
    loss components and weights, and the time taken (compilation included).
  """
  losses, weights = [], []
  start = time.perf_counter()
  with tqdm.tqdm(total=args.steps, desc=desc, unit="step", leave=False) as bar:
    for first in range(0, args.steps, args.chunk):
      length = min(args.chunk, args.steps - first)
      batches = sample_batches(
          data, batch_key, jnp.asarray(first), length, args.batch_size
      )
      state, (chunk_losses, log) = run_chunk(state, batches)
      losses.append(columns(chunk_losses))  # waits for the chunk
      weights.append(columns(log, "weight/"))
      bar.update(length)
      bar.set_postfix_str(
          " ".join(
              f"{n}={v:.2e}"
              for n, v in zip(COMPONENTS, losses[-1][-1], strict=True)
          )
      )
  elapsed = time.perf_counter() - start
  return state, np.concatenate(losses), np.concatenate(weights), elapsed


def print_config(config: dict[str, Any]) -> None:
  print("Config:")
  for key, value in config.items():
    print(f"  {key:10s} {value}")


def print_summary(
    elapsed: float, initial: np.ndarray, final: np.ndarray, weights: np.ndarray
) -> None:
  """The losses before and after training, and the weights at six steps."""
  steps = len(weights)
  print(f"\nTrained {steps} steps in {elapsed:.1f} s (compilation included).")
  print(f"  {'':14s} " + " ".join(f"{n:>10s}" for n in COMPONENTS))
  print(f"  {'initial loss':14s} " + " ".join(f"{v:10.3e}" for v in initial))
  print(f"  {'final loss':14s} " + " ".join(f"{v:10.3e}" for v in final))
  print("\nSoftAdapt weights during training:")
  for t in np.unique(np.linspace(0, steps - 1, 6).round().astype(int)):
    print(f"  step {t:6d}  " + " ".join(f"{w:.4f}" for w in weights[t]))
