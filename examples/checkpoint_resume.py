"""Checkpoint and resume with Orbax: the resumed run equals the uninterrupted one.

The rule's state (SoftAdapt's loss history, held weights, counters) lives in
``opt_state`` (``sa.track_weights(rule)`` in the chain), so checkpointing the
parameters and the optimizer state with Orbax checkpoints it too::

  rule = sa.softadapt(["smooth", "scaled"], beta=beta, variant=variant)
  tx = optax.chain(sa.track_weights(rule),
                   optax.apply_if_finite(optax.adam(lr), max_consecutive_errors=5))
  state = {"params": params, "opt_state": tx.init(params), "step": 0}

  mngr = ocp.CheckpointManager(ckpt_dir)
  mngr.save(step, args=ocp.args.StandardSave(state))           # while training
  ...
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh_state)
  state = mngr.restore(mngr.latest_step(),                      # new process
                       args=ocp.args.StandardRestore(abstract))

Restoring into the structure of a freshly initialised state gives back the
optimizer state's named tuples (``SoftAdaptState`` included) with the same
dtypes. Minibatches are a function of the step number (``fold_in(key,
step)``), so a resumed run sees the same data as an uninterrupted one.

A non-finite loss vector must not break this: ``--nan-at`` (by default the
step right before the interruption) puts NaN targets into that step's batch.
The rule skips the loss vector (it does not enter the history;
``num_skipped`` counts it, the held weights are used) and
``sa.weighted_value_and_grad`` returns a zero direction for that step, so the
NaN never reaches the optimizer; ``optax.apply_if_finite`` stays in the chain
for non-finite gradients of finite losses. Both counters are part of the
checkpoint.

``--mode demo`` (default) runs the whole story and checks it:

1. an uninterrupted run of ``--steps`` steps;
2. a run that saves every ``--save-every`` steps and stops after step
   ``--stop-at`` (saving there, as a preempted job would);
3. ``--mode train`` in a fresh Python process, which restores the latest
   checkpoint and runs to ``--steps``;

then compares the resumed steps (losses, weights, final parameters and the
whole optimizer state) with the uninterrupted run bit for bit.
``--mode train`` alone is a training script that resumes from the latest
checkpoint in ``--ckpt-dir`` if there is one.

Run::

  python examples/checkpoint_resume.py          # ~10 s on a 2-core CPU
  python examples/checkpoint_resume.py --mode train --ckpt-dir /tmp/ckpt --stop-at 300
  python examples/checkpoint_resume.py --mode train --ckpt-dir /tmp/ckpt
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

import softadapt_jax as sa

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # also when loaded by file path, as the tests do
  sys.path.insert(0, _HERE)
import _toy_task as toy  # noqa: E402  (next to this file)

COMPONENTS = toy.COMPONENTS
DATASET_SIZE = 512
# Settings that must match between the run that wrote a checkpoint and the
# one that resumes from it (stored next to the state, checked on restore).
_CONFIG_KEYS = ("seed", "hidden", "batch_size", "lr", "beta", "variant", "nan_at")
# What the resuming process of the demo gets from this one: also the chunk
# boundaries, so that both run the same compiled programs on the same steps.
_RESUME_KEYS = (*_CONFIG_KEYS, "steps", "chunk", "save_every")


# ---------------------------------------------------------------------------
# Problem, model, optimizer: plain JAX and Optax.
# ---------------------------------------------------------------------------


def init_mlp(key: jax.Array, sizes: Sequence[int]) -> list[dict[str, jax.Array]]:
  keys = jax.random.split(key, len(sizes) - 1)
  return [
      {
          "w": jax.random.normal(k, (m, n)) * math.sqrt(1.0 / m),
          "b": jnp.zeros((n,)),
      }
      for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)
  ]


def mlp(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def loss_components(params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The mean squared error of each output, named: ``{"smooth", "scaled"}``."""
  return toy.named(jnp.mean((mlp(params, batch["x"]) - batch["y"]) ** 2, axis=0))


class Setup(NamedTuple):
  rule: sa.LossWeighting
  tx: optax.GradientTransformationExtraArgs
  run_chunk: Any  # run_chunk(state, length) -> (state, (losses, log))
  init: Any  # init() -> a fresh state at step 0


def make_setup(args: argparse.Namespace) -> Setup:
  data_key, batch_key, model_key = jax.random.split(jax.random.key(args.seed), 3)
  data = toy.make_dataset(data_key, DATASET_SIZE)
  rule = sa.softadapt(COMPONENTS, beta=args.beta, variant=args.variant)
  tx = optax.chain(
      sa.track_weights(rule),
      optax.apply_if_finite(optax.adam(args.lr), max_consecutive_errors=5),
  )
  grad_fn = sa.weighted_value_and_grad(loss_components, rule)

  def train_step(state, _):
    step = state["step"]
    batch = toy.batch_at(data, batch_key, step, args.batch_size)
    # A data glitch at step nan_at: NaN targets, so NaN losses and gradients.
    batch["y"] = jnp.where(step == args.nan_at, jnp.nan, batch["y"])
    out = grad_fn(state["opt_state"], state["params"], batch)
    updates, opt_state = tx.update(
        out.grad, state["opt_state"], state["params"], weighting_state=out.state
    )
    new_state = {
        "params": optax.apply_updates(state["params"], updates),
        "opt_state": opt_state,
        "step": step + 1,
    }
    return new_state, (out.losses, sa.diagnostics(opt_state, rule, flat=True))

  @functools.partial(jax.jit, static_argnames="length")
  def run_chunk(state, length):
    return jax.lax.scan(train_step, state, None, length=length)

  def init():
    params = init_mlp(model_key, [2, args.hidden, args.hidden, len(COMPONENTS)])
    return {
        "params": params,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
    }

  return Setup(rule, tx, run_chunk, init)


# ---------------------------------------------------------------------------
# Training with checkpoints.
# ---------------------------------------------------------------------------


class Trajectory(NamedTuple):
  """Steps ``start .. start + len(losses) - 1`` of a run.

  Attributes:
    start: the first step run here (0, or the restored checkpoint's step).
    losses: ``[n, K]`` the loss components of each step (COMPONENTS order).
    weights: ``[n, K]`` the SoftAdapt weights each step applied.
    state: the final ``{"params", "opt_state", "step"}``.
    restored: the state restored from the checkpoint (``None`` if none).
  """

  start: int
  losses: np.ndarray
  weights: np.ndarray
  state: Any
  restored: Any = None


def chunk_boundaries(args: argparse.Namespace) -> list[int]:
  """Where compiled chunks end: every ``chunk`` steps, every checkpoint, the stop.

  The same for an interrupted and an uninterrupted run, so both execute the
  same compiled programs on the same steps.
  """
  ends = set(range(args.chunk, args.steps, args.chunk))
  ends |= set(range(args.save_every, args.steps, args.save_every))
  ends |= {args.stop_at, args.steps}
  return sorted(ends)


def _config(args: argparse.Namespace) -> dict[str, Any]:
  return {key: getattr(args, key) for key in _CONFIG_KEYS}


def train(
    args: argparse.Namespace,
    setup: Setup,
    ckpt_dir: str | None,
    stop: int,
    desc: str,
) -> Trajectory:
  """Runs to step ``stop``, resuming from ``ckpt_dir`` if it has a checkpoint.

  With ``ckpt_dir`` a checkpoint is saved every ``save_every`` steps and at
  ``stop``; without, nothing is saved or restored.
  """
  state, restored = setup.init(), None
  mngr = None
  if ckpt_dir is not None:
    mngr = ocp.CheckpointManager(
        os.path.abspath(ckpt_dir),
        options=ocp.CheckpointManagerOptions(max_to_keep=3),
    )
    latest = mngr.latest_step()
    if latest is not None:
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      ckpt = mngr.restore(
          latest,
          args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              config=ocp.args.JsonRestore(),
          ),
      )
      if ckpt["config"] != _config(args):
        raise ValueError(
            f"the checkpoint in {ckpt_dir} was written with other settings: "
            f"{ckpt['config']} != {_config(args)}"
        )
      state = restored = ckpt["state"]
  start = int(state["step"])
  losses, weights = [], []
  with tqdm.tqdm(
      total=stop, initial=start, desc=desc, unit="step", leave=False
  ) as bar:
    for end in chunk_boundaries(args):
      if end <= start or end > stop:
        continue
      first = int(state["step"])
      state, (chunk_losses, log) = setup.run_chunk(state, end - first)
      losses.append(toy.columns(chunk_losses))  # waits for the chunk
      weights.append(toy.columns(log, "weight/"))
      if mngr is not None and (end % args.save_every == 0 or end == stop):
        mngr.save(
            end,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                config=ocp.args.JsonSave(_config(args)),
            ),
        )
      bar.update(end - first)
  if mngr is not None:
    mngr.wait_until_finished()
    mngr.close()
  num_losses = len(COMPONENTS)
  return Trajectory(
      start=start,
      losses=np.concatenate(losses) if losses else np.zeros((0, num_losses)),
      weights=np.concatenate(weights) if weights else np.zeros((0, num_losses)),
      state=jax.device_get(state),
      restored=jax.device_get(restored),
  )


def save_trajectory(path: str, traj: Trajectory) -> None:
  """An ``.npz`` of the trajectory; the pytrees as their flattened leaves."""
  arrays = {"start": traj.start, "losses": traj.losses, "weights": traj.weights}
  for name in ("state", "restored"):
    tree = getattr(traj, name)
    if tree is not None:
      for i, leaf in enumerate(jax.tree.leaves(tree)):
        arrays[f"{name}/{i}"] = np.asarray(leaf)
  np.savez(path, **arrays)


def load_trajectory(path: str, like: Any) -> Trajectory:
  """Reads :func:`save_trajectory`'s file; ``like`` gives the pytree structure."""
  with np.load(path) as f:
    treedef = jax.tree.structure(like)

    def tree(name):
      if f"{name}/0" not in f:
        return None
      return treedef.unflatten([f[f"{name}/{i}"] for i in range(treedef.num_leaves)])

    return Trajectory(
        start=int(f["start"]),
        losses=f["losses"],
        weights=f["weights"],
        state=tree("state"),
        restored=tree("restored"),
    )


def resume_in_new_process(args: argparse.Namespace, ckpt_dir: str, out: str) -> None:
  """Runs ``--mode train`` of this script in a fresh Python process."""
  argv = [sys.executable, os.path.abspath(__file__), "--mode", "train"]
  for key in _RESUME_KEYS:
    argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
  argv += ["--stop-at", str(args.steps), "--ckpt-dir", ckpt_dir, "--dump", out]
  env = dict(os.environ)
  # The same platform as this process, and the same package.
  if jax.default_backend() == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(sa.__file__)))
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (package_root, env.get("PYTHONPATH")) if p
  )
  subprocess.run(argv, env=env, check=True)


def differences(a: Any, b: Any) -> list[str]:
  """Paths of the leaves of ``a`` and ``b`` that are not bitwise equal."""
  diff = []
  leaves_b = jax.tree.leaves(b)
  for (path, x), y in zip(jax.tree.leaves_with_path(a), leaves_b, strict=True):
    try:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True)
    except AssertionError:
      diff.append(jax.tree_util.keystr(path))
  return diff


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = toy.make_parser(
      (__doc__ or "").splitlines()[0], steps=600, chunk=50, hidden=32
  )
  parser.add_argument("--mode", choices=("demo", "train"), default="demo")
  parser.add_argument(
      "--stop-at", type=int, default=None,
      help="stop (and save) after this step; default: half of --steps",
  )
  parser.add_argument(
      "--nan-at", type=int, default=None,
      help="step with NaN targets; default: demo --stop-at - 1, train -1 (none)",
  )
  parser.add_argument("--save-every", type=int, default=100)
  parser.add_argument(
      "--ckpt-dir", default=None,
      help="checkpoint directory (demo: a new temporary one if not given)",
  )
  parser.add_argument("--dump", default=None, help="write the trajectory (.npz)")
  args = parser.parse_args(argv)
  if args.stop_at is None:
    args.stop_at = args.steps if args.mode == "train" else args.steps // 2
  if args.nan_at is None:
    args.nan_at = args.stop_at - 1 if args.mode == "demo" else -1
  if min(args.steps, args.chunk, args.save_every) < 1:
    parser.error("--steps, --chunk and --save-every must be >= 1")
  if not 1 <= args.stop_at <= args.steps:
    parser.error("--stop-at must be in [1, --steps]")
  if args.mode == "demo" and args.stop_at == args.steps:
    parser.error("demo: --stop-at must be < --steps")
  if args.mode == "train" and args.ckpt_dir is None:
    parser.error("--mode train needs --ckpt-dir")
  return args


def _print_steps(traj: Trajectory, steps: Sequence[int]) -> None:
  print(f"  {'step':>6s} " + " ".join(f"{n:>10s}" for n in COMPONENTS) + "  weights")
  for t in steps:
    i = t - traj.start
    losses = " ".join(f"{v:10.3e}" for v in traj.losses[i])
    weights = " ".join(f"{w:.4f}" for w in traj.weights[i])
    print(f"  {t:6d} {losses}  {weights}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the demo (or one training run) and prints what happened.

  Args:
    argv: command-line arguments (``None``: ``sys.argv[1:]``).

  Returns:
    ``--mode train``: ``{"config", "trajectory"}``. ``--mode demo``:
    ``{"config", "uninterrupted", "interrupted", "resumed", "differences",
    "bitwise_equal", "seconds"}``: the three :class:`Trajectory` records (the
    resumed one came back from the other process, with the state it
    restored), the paths of the leaves of the resumed run's losses, weights
    and final state that differ from the uninterrupted run, and whether none
    does.
  """
  args = parse_args(argv)
  setup = make_setup(args)
  config = {
      "model": f"MLP 2 -> {args.hidden} -> {args.hidden} -> 2 (tanh), plain JAX",
      "optimizer": f"chain(track_weights(rule), apply_if_finite(adam({args.lr})))",
      "softadapt": f"variant={args.variant!r}, beta={args.beta}",
      "steps": args.steps,
      "interrupt": f"after step {args.stop_at}, checkpoints every "
      f"{args.save_every} steps",
      "nan_at": args.nan_at,
      "backend": jax.default_backend(),
  }

  if args.mode == "train":
    traj = train(args, setup, args.ckpt_dir, args.stop_at, "train")
    sa_state = sa.find_weighting_state(traj.state["opt_state"], setup.rule)
    print(
        f"{'resumed at' if traj.restored is not None else 'started at'} step "
        f"{traj.start}, stopped at step {int(traj.state['step'])}; SoftAdapt "
        f"count={int(sa_state.count)}, num_skipped={int(sa_state.num_skipped)}, "
        f"weights={[round(float(w), 4) for w in sa_state.weights]}"
    )
    if args.dump:
      save_trajectory(args.dump, traj)
    return {"config": config, "trajectory": traj}

  toy.print_config(config)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    ckpt_dir = args.ckpt_dir or os.path.join(tmp, "ckpt")
    if os.path.exists(ckpt_dir) and os.listdir(ckpt_dir):
      raise ValueError(f"demo: {ckpt_dir} must be empty or not exist")
    full = train(args, setup, None, args.steps, "uninterrupted")
    first = train(args, setup, ckpt_dir, args.stop_at, "until interrupted")
    dump = os.path.join(tmp, "resumed.npz")
    resume_in_new_process(args, ckpt_dir, dump)
    resumed = load_trajectory(dump, full.state)
  elapsed = time.perf_counter() - start

  s = args.stop_at
  diff = differences(
      (resumed.losses, resumed.weights, resumed.state),
      (full.losses[s:], full.weights[s:], full.state),
  )
  diff += differences(first.state, resumed.restored)
  restored = sa.find_weighting_state(resumed.restored["opt_state"], setup.rule)
  print(f"\nUninterrupted run, interrupted run and resume in {elapsed:.1f} s.")
  print("Around the NaN step and the interruption (uninterrupted run):")
  near = [t for t in range(args.nan_at - 1, s + 2) if 0 <= t < args.steps]
  _print_steps(full, near)
  print(
      f"Restored at step {resumed.start} in a new process: SoftAdapt "
      f"count={int(restored.count)}, num_skipped={int(restored.num_skipped)}."
  )
  print("The same steps after the resume:")
  _print_steps(resumed, [t for t in near if t >= s])
  verdict = "yes" if not diff else f"NO, differences in {diff}"
  print(
      f"Resumed == uninterrupted, bit for bit (losses, weights, params, "
      f"opt_state incl. SoftAdapt): {verdict}"
  )
  return {
      "config": config,
      "uninterrupted": full,
      "interrupted": first,
      "resumed": resumed,
      "differences": diff,
      "bitwise_equal": not diff,
      "seconds": elapsed,
  }


if __name__ == "__main__":
  metrics = main()
  sys.exit(0 if metrics.get("bitwise_equal", True) else 1)
