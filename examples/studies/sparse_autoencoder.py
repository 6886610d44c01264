"""Study 2: a sparse autoencoder on the digits, a grid of fixed lambdas vs SoftAdapt.

The autoencoder ``64 -> 32 (ReLU codes) -> 64`` is trained full-batch with Adam on
``[reconstruction, sparsity]``: the mean squared reconstruction error and the
mean absolute code (an L1 penalty). Fixed weighting is ``recon + lambda * L1``
for a grid of lambdas (the grid search SoftAdapt claims to make unnecessary);
SoftAdapt sets the two weights (summing to 1) from the loss history. Reported on
the held-out 20 % of the digits: the reconstruction MSE, the fraction of code
entries that are exactly zero, and the accuracy of a logistic-regression
classifier (scikit-learn, on standardised codes, fitted on the training codes).

Every method is a rule trained by the library's one route
(``sa.weighted_value_and_grad`` and ``sa.track_weights``): the fixed rows are
``sa.fixed_weights([1, lambda])``, the others ``sa.softadapt(2, beta=...)``.
Each method is one jitted ``lax.scan`` vmapped over the seeds and its grid
(lambdas, or betas), the rule built from the traced grid value.

Run (from the repository root)::

  PYTHONPATH=. python -m examples.studies.sparse_autoencoder          # ~2 min
  PYTHONPATH=. python -m examples.studies.sparse_autoencoder --smoke  # seconds
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import softadapt_jax as sa
from examples.studies import _common as C
from examples.studies import _digits as D

COMPONENTS = ("reconstruction (MSE)", "sparsity (mean |code|)")
CODE = 32
LAMBDAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0)
VARIANTS = ("original", "normalized", "loss_weighted")
BETAS = (0.1, 10.0, 1000.0)
# SoftAdapt on top of the best fixed lambda of the grid: components
# [recon, LAMBDA0 * L1].
LAMBDA0 = 0.01


def encode(params: Any, x: jax.Array) -> jax.Array:
  return jax.nn.relu(x @ params[0]["w"] + params[0]["b"])


def decode(params: Any, h: jax.Array) -> jax.Array:
  return jax.nn.sigmoid(h @ params[1]["w"] + params[1]["b"])


def loss_components(params: Any, x: jax.Array, scale: float = 1.0) -> jax.Array:
  """``[recon MSE, scale * mean |code|]``."""
  h = encode(params, x)
  recon = jnp.mean((decode(params, h) - x) ** 2)
  return jnp.stack([recon, scale * jnp.mean(jnp.abs(h))])


def train_many(
    make_rule: Callable[[jax.Array], sa.LossWeighting],
    hypers: jax.Array,
    seeds: jax.Array,
    x: jax.Array,
    steps: int,
    lr: float,
    every: int,
    scale: float = 1.0,
):
  """Trains every (hyper, seed) pair; returns params, losses and weights logs.

  ``make_rule(hyper)`` builds the rule from one (traced) value of ``hypers``.
  """
  loss_fn = lambda p, x: loss_components(p, x, scale)

  def single(hyper, seed):
    params = D.init_mlp(jax.random.key(seed), [64, CODE, 64])
    rule = make_rule(hyper)
    tx = optax.chain(sa.track_weights(rule), optax.adam(lr))
    grad_fn = sa.weighted_value_and_grad(loss_fn, rule)

    def step(carry, _):
      params, opt_state = carry
      out = grad_fn(opt_state, params, x)  # one forward + one backward pass
      updates, opt_state = tx.update(
          out.grad, opt_state, params, weighting_state=out.state
      )
      params = optax.apply_updates(params, updates)
      return (params, opt_state), (out.losses, out.weights)

    def outer(carry, _):
      carry, (losses, w) = jax.lax.scan(step, carry, None, length=every)
      return carry, (losses[-1], w[-1])

    carry = (params, tx.init(params))
    carry, logs = jax.lax.scan(outer, carry, None, length=steps // every)
    return carry[0], logs

  fn = jax.jit(jax.vmap(jax.vmap(single, (None, 0)), (0, None)))
  return jax.block_until_ready(fn(hypers, seeds))


def evaluate(
    params: Any, data: dict[str, np.ndarray], max_iter: int
) -> dict[str, float]:
  x_tr, x_te = jnp.asarray(data["x_train"]), jnp.asarray(data["x_test"])
  h_tr, h_te = encode(params, x_tr), encode(params, x_te)
  recon = float(jnp.mean((decode(params, h_te) - x_te) ** 2))
  zero = float(jnp.mean(h_te == 0.0))
  dead = float(jnp.mean(jnp.all(h_tr == 0.0, axis=0)))
  acc = D.logistic_accuracy(
      np.asarray(h_tr), data["y_train"], np.asarray(h_te), data["y_test"], max_iter
  )
  return {"recon": recon, "zero_fraction": zero, "dead_units": dead, "accuracy": acc}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the study; returns ``{row name: {metric: [per seed]}}``."""

  def add(parser):
    parser.add_argument("--steps", type=int, default=3000, help="full-batch steps")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam step size")

  args = C.parse_common((__doc__ or "").splitlines()[0], argv, add)
  lambdas, variants, betas, max_iter = LAMBDAS, VARIANTS, BETAS, 500
  if args.smoke:
    args.steps = min(args.steps, 40)
    lambdas, variants, betas, max_iter = (0.0, 0.1), ("original",), (10.0,), 50
  every = max(1, args.steps // 100)
  args.steps -= args.steps % every
  data = D.load()
  x = jnp.asarray(data["x_train"])
  seeds = jnp.arange(args.seeds)
  wall = time.perf_counter()

  runs: dict[str, tuple[Any, Any]] = {}  # name -> (params, (losses, weights))

  def unpack(name, out, i):
    params, logs = out
    runs[name] = jax.tree.map(lambda a: a[i], (params, logs))

  out = train_many(
      lambda lam: sa.fixed_weights(jnp.stack([1.0, lam])), jnp.asarray(lambdas),
      seeds, x, args.steps, args.lr, every,
  )
  for i, lam in enumerate(lambdas):
    unpack(f"fixed lambda {lam:g}", out, i)
  for variant in variants:
    out = train_many(
        lambda b, v=variant: sa.softadapt(2, beta=b, variant=v),
        jnp.asarray(betas), seeds, x, args.steps, args.lr, every,
    )
    for i, beta in enumerate(betas):
      unpack(f"SoftAdapt {variant}, beta {beta:g}", out, i)
  for variant in variants if args.smoke else ("original", "loss_weighted"):
    out = train_many(
        lambda b, v=variant: sa.softadapt(2, beta=b, variant=v),
        jnp.asarray(betas), seeds, x, args.steps, args.lr, every, scale=LAMBDA0,
    )
    for i, beta in enumerate(betas):
      unpack(f"SoftAdapt {variant}, beta {beta:g}, on [recon, {LAMBDA0:g} L1]",
             out, i)
  train_seconds = time.perf_counter() - wall

  metrics: dict[str, dict[str, list[float]]] = {}
  for name, (params, _) in runs.items():
    per_seed = [
        evaluate(jax.tree.map(lambda a, s=s: a[s], params), data, max_iter)
        for s in range(args.seeds)
    ]
    metrics[name] = {k: [m[k] for m in per_seed] for k in per_seed[0]}
  raw_acc = D.logistic_accuracy(
      data["x_train"], data["y_train"], data["x_test"], data["y_test"], max_iter
  )

  fixed_names = [n for n in metrics if n.startswith("fixed")]
  sa_names = [n for n in metrics if n.startswith("SoftAdapt")]
  mean = lambda n, k: float(np.mean(metrics[n][k]))
  best_fixed = max(fixed_names, key=lambda n: mean(n, "accuracy"))
  best_sa = max(sa_names, key=lambda n: mean(n, "accuracy"))
  rows = []
  for name in metrics:
    m = metrics[name]
    final_w = np.asarray(runs[name][1][1])[:, -1]
    final_w = final_w[:, 1] / final_w[:, 0]
    if "on [recon" in name:
      final_w = LAMBDA0 * final_w
    rows.append([
        name + (" **(best fixed)**" if name == best_fixed else "")
        + (" **(best SoftAdapt)**" if name == best_sa else ""),
        C.mean_std(m["recon"], ".4f"),
        C.mean_std(m["zero_fraction"], ".2f"),
        C.mean_std(m["dead_units"], ".2f"),
        C.mean_std(m["accuracy"], ".3f"),
        C.mean_std(final_w, ".3g"),
    ])
  acc_gap = mean(best_sa, "accuracy") - mean(best_fixed, "accuracy")
  recon_gap = mean(best_sa, "recon") / mean(best_fixed, "recon")
  helps = acc_gap > np.std(metrics[best_fixed]["accuracy"]) + np.std(
      metrics[best_sa]["accuracy"]
  )
  verdict = (
      f"Best SoftAdapt ({best_sa}) vs best fixed lambda by accuracy "
      f"({best_fixed}): accuracy {mean(best_sa, 'accuracy'):.3f} vs "
      f"{mean(best_fixed, 'accuracy'):.3f} ({acc_gap:+.3f}), reconstruction "
      f"MSE ratio {recon_gap:.2f}. "
      + ("**SoftAdapt helps** (the gap exceeds the seeds' spread)." if helps else
         "**SoftAdapt does not beat the best fixed lambda** (the gap is within "
         "the seeds' spread or negative).")
  )
  sections = [
      f"`PYTHONPATH=. python -m examples.studies.sparse_autoencoder"
      f"{' --smoke' if args.smoke else ''}`: autoencoder 64 -> {CODE} (ReLU) -> 64 "
      f"(sigmoid), full-batch Adam (lr {args.lr:g}) for {args.steps} steps on "
      f"{len(x)} training digits; seeds 0-{args.seeds - 1} (mean ± std). Metrics "
      f"on the {len(data['x_test'])} test digits. Logistic regression on the raw "
      f"pixels: accuracy {raw_acc:.3f}. Fixed rows minimise recon + lambda * L1; "
      "SoftAdapt rows minimise w_recon * recon + w_L1 * L1 with w summing to 1; "
      "the last column is the effective lambda w_L1 / w_recon at the end (with "
      "Adam the scale of the weights hardly matters, so equal weights (0.5, "
      "0.5) are the lambda = 1 row). Rows 'on [recon, "
      f"{LAMBDA0:g} L1]' run SoftAdapt on the components [recon, {LAMBDA0:g} * L1], "
      f"i.e. on top of the best lambda of the grid ({LAMBDA0:g}, picked from "
      "a first run of this grid): whether SoftAdapt adds anything once the "
      "grid search has been done.",
      C.markdown_table(
          ["method", "test recon MSE", "zero codes", "dead units",
           "logreg accuracy", "final w_L1 / w_recon"],
          rows,
      ),
      verdict,
      f"Training {train_seconds:.0f} s, total {time.perf_counter() - wall:.0f} s "
      f"on {C.environment()}.",
  ]
  name = "sparse_autoencoder" + ("_smoke" if args.smoke else "")
  C.write_markdown(
      os.path.join(args.out, f"{name}.md"),
      "Study 2: sparse autoencoder on the digits, fixed lambda vs SoftAdapt",
      sections,
  )
  if not args.no_plot:
    plot(os.path.join(args.out, f"{name}.png"), runs, metrics, best_fixed,
         best_sa, every)
  print("\n\n".join(sections))
  return {"metrics": metrics, "best_fixed": best_fixed, "best_softadapt": best_sa,
          "raw_pixel_accuracy": raw_acc, "seconds": time.perf_counter() - wall}


def plot(path, runs, metrics, best_fixed, best_sa, every) -> None:
  """The trade-off (recon vs accuracy), the losses and SoftAdapt's weights."""
  plt = C.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), layout="constrained")
  ax = axes[0]
  for name, m in metrics.items():
    fixed = name.startswith("fixed")
    ax.errorbar(np.mean(m["recon"]), np.mean(m["accuracy"]),
                xerr=np.std(m["recon"]), yerr=np.std(m["accuracy"]),
                fmt="s" if fixed else "o", color="C1" if fixed else "C0",
                ms=4, alpha=0.8)
    ax.annotate(name.replace("SoftAdapt ", "").replace("fixed ", ""),
                (np.mean(m["recon"]), np.mean(m["accuracy"])), fontsize=6)
  ax.set(xscale="log", xlabel="test reconstruction MSE",
         ylabel="logistic-regression accuracy",
         title="trade-off (squares: fixed lambda, dots: SoftAdapt)")
  standalone = [n for n in metrics
                if n.startswith("SoftAdapt") and "on [recon" not in n]
  best_alone = max(standalone, key=lambda n: np.mean(metrics[n]["accuracy"]))
  shown = dict.fromkeys((best_fixed, best_alone, best_sa))
  for i, name in enumerate(shown):
    losses, weights = (np.asarray(a)[0] for a in runs[name][1])
    scale = LAMBDA0 if "on [recon" in name else 1.0
    t = every * np.arange(1, len(losses) + 1)
    axes[1].semilogy(t, losses[:, 0], color=f"C{i}", label=f"{name}: recon")
    axes[1].semilogy(t, losses[:, 1] / scale, color=f"C{i}", ls=":",
                     label=f"{name}: mean |code|")
    axes[2].semilogy(t, scale * weights[:, 1] / weights[:, 0], color=f"C{i}",
                     label=name)
  axes[1].set(xlabel="step", title="losses, seed 0")
  axes[2].set(xlabel="step", ylabel="lambda_eff = w_L1 / w_recon",
              title="effective L1 weight, seed 0")
  for ax in axes[1:]:
    ax.legend(fontsize=6)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)


if __name__ == "__main__":
  main()
