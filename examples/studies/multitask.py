"""Multi-task benchmark: every rule against equal weights and a grid of fixed weights.

Problems (``examples/studies/_multitask_problems.py``, where every detail and
its source is written out):

- **digits**: scikit-learn's bundled digits, a shared ReLU trunk and three
  heads of very different loss scales: 10-class cross-entropy (2.3 at the
  start), reconstruction of the 64 pixels (MSE 0.2) and an auxiliary
  regression of the digit's total ink (squared error 400); a fixed 1437/360
  split; Adam, cosine-decayed from 1e-3 over 20,000 steps of batches of 128
  (1,818 epochs); test accuracy, reconstruction MSE and ink MSE after every
  tenth of training; 10 seeds. Equal weights converge: in a probe of seeds
  0-2 their test accuracy after 20,000 steps is 0.964, 0.972 and 0.969,
  within one test image of its value at 8,000 steps (the classification
  head trained alone reaches 0.975-0.978 on the same seeds: there is room
  for a weighting to help); the reconstruction goes on improving slowly
  (seed 0: MSE 0.011 halfway, 0.009 at the end; seeds 0-2 end at
  0.006-0.009; the trivial predictor's is 0.074), hence the long budget.
- **toy**: the two-objective toy of CAGrad (Liu et al. 2021), scaled as in
  Nash-MTL (Navon et al. 2022) and FAMO (Liu et al. 2023): ``f1`` times 0.1,
  the five starting points of Nash-MTL and FAMO, Adam 1e-3, 50,000 full
  gradient steps (FAMO's count). For each start: does the method reach the
  Pareto front (known in closed form up to a 1D root), and where.

Methods: equal weights (the plain sum); a small grid of fixed weights (the
oracle a user would tune); SoftAdapt (slopes, normalised slopes,
loss-weighted, log-losses), ratio SoftAdapt, DWA (per epoch), ReLoBRaLo (two
conventions), random loss weighting; every learning-rate-annealing
convention of ``sa.grad_balance``; GradNorm (LibMTL and PhysicsNeMo); FAMO
(exact and one-pass); uncertainty weighting (LibMTL and PhysicsNeMo); and
every Gramian aggregator the installed package has (``hasattr``). All go
through the one route (``sa.weighted_value_and_grad(loss_fn, rule)`` and
``optax.chain(sa.track_weights(rule), adam)``); FAMO's exact form observes
the losses after each step (``sa.observe_after_step``). The gradient rules
look at the shared trunk on the digits (``wrt=``), GradNorm at its last
layer's weight matrix ("the last shared layer"); on the toy every parameter
is shared. The rules that draw random numbers get the run's seed. Every run
of one seed sees the same initialisation and the same batches whatever the
method (paired seeds). On the toy the only randomness is in the rules: the
deterministic ones run seed 0 only (every seed would repeat it), the others
10 seeds.

Failure, defined before any run:

- **digits**: a run fails when a test metric is not finite, the accuracy is
  below 0.5 (chance is 0.1), or the reconstruction or ink MSE is no better
  than its trivial predictor's (the train mean image, the train mean ink): a
  collapsed task.
- **toy**: a start fails when its final point does not reach the Pareto
  front (Pareto gap above 0.01, see ``_multitask_problems``) or is not
  finite.

Resumable: one result file per (problem, method, seed) under
``examples/studies/results/multitask/<problem>/<method>/seed<k>.json``; a
run whose file exists is skipped. ``--report`` regenerates the tables and
figures from the files.

Run (from the repository root)::

  PYTHONPATH=. nice -n 10 python -m examples.studies.multitask   # the grid
  PYTHONPATH=. python -m examples.studies.multitask --problem toy \\
      --methods equal mgda --seeds 0
  PYTHONPATH=. python -m examples.studies.multitask --report
  PYTHONPATH=. python -m examples.studies.multitask --quick   # smoke, seconds
"""

from __future__ import annotations

import argparse
import functools
import inspect
import math
import pathlib
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

import softadapt_jax as sa
from examples.studies import _common as C
from examples.studies import _multitask_problems as P

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "multitask"


class Spec(NamedTuple):
  """What a method's rule is built from, for one problem and seed."""

  names: list[str]
  seed: int
  shared: Callable[[str, Any], bool] | None  # the shared parameters
  last_shared: Callable[[str, Any], bool] | None  # the last shared layer
  steps_per_epoch: int


def _rule(name: str, spec: Spec, **kwargs: Any) -> sa.LossWeighting:
  """``sa.<name>(names, **kwargs)`` with the settings it takes.

  ``seed`` and ``wrt`` (the shared parameters unless given) go to the rules
  that have them, so an aggregator that lands later needs no edit here.
  """
  fn = getattr(sa, name)
  kwargs = {"seed": spec.seed, "wrt": spec.shared, **kwargs}
  accepted = inspect.signature(fn).parameters
  return fn(spec.names, **{k: v for k, v in kwargs.items() if k in accepted})


Method = Callable[[Spec], sa.LossWeighting]
METHODS: dict[str, Method] = {
    "equal": lambda s: sa.equal_weights(s.names),
    "softadapt_original": lambda s: sa.softadapt(
        s.names, beta=0.1, scale_by_num_losses=True
    ),
    "softadapt_normalized": lambda s: sa.softadapt(
        s.names, beta=0.1, variant="normalized", normalization="l1",
        scale_by_num_losses=True,
    ),
    "softadapt_loss_weighted": lambda s: sa.softadapt(
        s.names, beta=0.1, variant="loss_weighted", scale_by_num_losses=True
    ),
    "softadapt_log": lambda s: sa.softadapt(
        s.names, beta=1.0, log_losses=True, scale_by_num_losses=True
    ),
    # PhysicsNeMo's T = 1 (the default until the converged PINN runs) and
    # NeuralPDE.jl's T = 10 (the default since).
    "ratio_softadapt": lambda s: sa.ratio_softadapt(
        s.names, **sa.RATIO_SOFTADAPT_CONVENTIONS["physicsnemo"]
    ),
    "ratio_softadapt_neuralpde": lambda s: sa.ratio_softadapt(
        s.names, **sa.RATIO_SOFTADAPT_CONVENTIONS["neuralpde"]
    ),
    "dwa": lambda s: sa.dwa(
        s.names, steps_per_epoch=s.steps_per_epoch if s.steps_per_epoch > 1 else None
    ),
    "relobralo": lambda s: _rule("relobralo", s),
    "relobralo_t1": lambda s: _rule(
        "relobralo", s, **sa.RELOBRALO_CONVENTIONS["author_cli"]
    ),
    "rlw": lambda s: _rule("random_weighting", s, scale_by_num_losses=True),
    **{
        f"lra_{name}": (lambda conv: lambda s: _rule(
            "grad_balance", s, **sa.GRAD_BALANCE_CONVENTIONS[conv]
        ))(name)
        for name in sa.GRAD_BALANCE_CONVENTIONS
    },
    "lra_jaxpi_100": lambda s: _rule(
        "grad_balance", s,
        **dict(sa.GRAD_BALANCE_CONVENTIONS["jaxpi"], update_every=100),
    ),
    "gradnorm_libmtl": lambda s: _rule(
        "gradnorm", s, **sa.GRADNORM_CONVENTIONS["libmtl"], wrt=s.last_shared
    ),
    "gradnorm_physicsnemo": lambda s: _rule(
        "gradnorm", s, **sa.GRADNORM_CONVENTIONS["physicsnemo"], wrt=s.last_shared
    ),
    "famo": lambda s: sa.famo(s.names, **sa.FAMO_CONVENTIONS["famo"]),
    "famo_one_pass": lambda s: sa.famo(
        s.names, form="one_pass", **sa.FAMO_CONVENTIONS["famo"]
    ),
    # This package's default (uniform_mix 0.01) and a smaller mix.
    "famo_default": lambda s: sa.famo(s.names),
    "famo_one_pass_default": lambda s: sa.famo(s.names, form="one_pass"),
    "famo_mix1e-3": lambda s: sa.famo(s.names, uniform_mix=1e-3),
    "famo_one_pass_mix1e-3": lambda s: sa.famo(
        s.names, form="one_pass", uniform_mix=1e-3
    ),
    "uw_libmtl": lambda s: sa.uncertainty_weighting(
        s.names, **sa.UNCERTAINTY_CONVENTIONS["libmtl"]
    ),
    "uw_physicsnemo": lambda s: sa.uncertainty_weighting(
        s.names, **sa.UNCERTAINTY_CONVENTIONS["physicsnemo"]
    ),
}
# (MGDA, IMTL-G and Aligned-MTL below: as published and at their defaults.)
_AGGREGATORS = {
    "config": "conflict_free", "pcgrad": "pcgrad", "upgrad": "upgrad",
    "dualproj": "dualproj", "cagrad": "cagrad", "nash_mtl": "nash_mtl",
}
for _method, _name in _AGGREGATORS.items():
  if hasattr(sa, _name):  # the aggregators, where they have landed
    METHODS[_method] = (lambda n: lambda s: _rule(n, s))(_name)
# MGDA, IMTL-G and Aligned-MTL as published (no equal weights mixed in), and
# at this package's defaults (uniform_mix: MGDA 0.01, IMTL-G and Aligned-MTL
# 0.1; as published they collapsed a PINN).
for _name in ("mgda", "imtl_g", "aligned_mtl"):
  METHODS[_name] = (lambda n: lambda s: _rule(n, s, uniform_mix=0.0))(_name)
  METHODS[f"{_name}_default"] = (lambda n: lambda s: _rule(n, s))(_name)
METHODS["imtl_g_mix0.01"] = lambda s: _rule("imtl_g", s, uniform_mix=0.01)
METHODS["aligned_mtl_mix0.01"] = lambda s: _rule("aligned_mtl", s, uniform_mix=0.01)


class Problem(NamedTuple):
  steps: int
  seeds: int
  chunk: int
  fixed: dict[str, dict[str, float]]  # the grid of fixed weights
  extra: dict[str, Method]  # methods of this problem only


PROBLEMS: dict[str, Problem] = {
    "digits": Problem(
        steps=20_000, seeds=10, chunk=2_000,
        fixed={
            f"fixed_r{r:g}_i{i:g}": {"class": 1.0, "recon": r, "ink": i}
            for r in (1.0, 10.0, 100.0) for i in (1.0, 0.1, 0.01)
            if (r, i) != (1.0, 1.0)
        },
        extra={},
    ),
    "toy": Problem(
        steps=50_000, seeds=10, chunk=5_000,
        fixed={f"fixed_f1x{w:g}": {"f1": w, "f2": 1.0} for w in (3.0, 10.0, 30.0)},
        # FAMO's own toy run: no weight decay on its logits (run.sh, gamma=0).
        extra={"famo_gamma0": lambda s: sa.famo(
            s.names, learning_rate=0.025, weight_decay=0.0, uniform_mix=0.0
        )},
    ),
}
QUICK = {"digits": ["equal", "famo"], "toy": ["pcgrad"]}


def methods(problem: str) -> dict[str, Method]:
  """Every method of a problem: equal, its fixed grid, the rules, its extras."""
  prob = PROBLEMS[problem]
  fixed: dict[str, Method] = {
      name: (lambda w: lambda s: sa.fixed_weights(w))(w)
      for name, w in prob.fixed.items()
  }
  out = {"equal": METHODS["equal"], **fixed}
  out.update({k: v for k, v in METHODS.items() if k != "equal"})
  out.update(prob.extra)
  return out


def spec(problem: str, seed: int) -> Spec:
  if problem == "digits":
    return Spec(
        names=list(P.DIGITS_NAMES), seed=seed,
        shared=lambda path, leaf: path.startswith(P.SHARED),
        last_shared=lambda path, leaf: path == P.LAST_SHARED,
        steps_per_epoch=P.digits_steps_per_epoch(_digits_data()),
    )
  return Spec(names=list(P.TOY_NAMES), seed=seed, shared=None, last_shared=None,
              steps_per_epoch=1)


@functools.cache
def _digits_data() -> P.Digits:
  return P.digits()


def is_stochastic(problem: str, method: str) -> bool:
  """Whether the rule's state depends on the seed (it draws random numbers)."""
  a = methods(problem)[method](spec(problem, 0)).init()
  b = methods(problem)[method](spec(problem, 1)).init()
  return not all(
      np.array_equal(np.asarray(x), np.asarray(y))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def seeds_to_run(problem: str, method: str, seeds: list[int]) -> list[int]:
  """The toy's deterministic rules run seed 0 only (every seed repeats it)."""
  if problem == "toy" and not is_stochastic(problem, method):
    return [s for s in seeds if s == 0]
  return seeds


def result_path(problem: str, method: str, seed: int) -> pathlib.Path:
  return RESULTS / problem / method / f"seed{seed}.json"


def run_one(problem: str, method: str, seed: int, *, steps: int, chunk: int,
            out: pathlib.Path | None) -> dict[str, Any]:
  rule = methods(problem)[method](spec(problem, seed))
  t0, cpu0 = time.perf_counter(), time.process_time()
  if problem == "digits":
    result = P.train_digits(_digits_data(), rule, seed, steps, chunk=chunk,
                            log_every=max(chunk // 10, 1))
  else:
    result = P.train_toy(rule, steps, chunk=chunk, record_every=max(chunk // 10, 1))
  return C.save_result(
      out, result, problem=problem, method=method, seed=seed, steps=steps,
      wall_seconds=time.perf_counter() - t0,
      cpu_seconds=time.process_time() - cpu0,
  )


def load(problem: str) -> dict[str, dict[int, dict[str, Any]]]:
  return C.load_results(RESULTS / problem)


# ---------------------------------------------------------------------------
# Reporting.
# ---------------------------------------------------------------------------


def _fmt(x: float, fmt: str = ".3g") -> str:
  return "nan" if not math.isfinite(x) else f"{x:{fmt}}"


def _range(vals: list[float], fmt: str = ".3g") -> str:
  return (f"{_fmt(statistics.median(vals), fmt)} [{_fmt(min(vals), fmt)}, "
          f"{_fmt(max(vals), fmt)}]")


def _at(run: dict[str, Any], step: int) -> dict[str, float]:
  """The test metrics after ``step`` steps (nan where not recorded)."""
  m = run["metrics"]
  out = m.get(str(step), m.get(step))  # keys are strings once on disk
  return out or {"accuracy": math.nan, "recon_mse": math.nan, "ink_mse": math.nan}


# The three digits tasks as "lower is better": the test error (floored at one
# test image), the reconstruction MSE, the ink MSE.
TEST_SIZE = 360


def _errors(metrics: dict[str, float]) -> list[float]:
  return [max(1.0 - metrics["accuracy"], 1.0 / TEST_SIZE),
          metrics["recon_mse"], metrics["ink_mse"]]


def ratio(a: dict[str, float], b: dict[str, float]) -> float:
  """The combined score of ``a`` against ``b``: the geometric mean over the
  three tasks of the ratio of their errors (< 1: ``a`` is better)."""
  ea, eb = _errors(a), _errors(b)
  if not all(math.isfinite(x) and x > 0 for x in ea + eb):
    return math.inf
  return math.exp(sum(math.log(x / y) for x, y in zip(ea, eb, strict=True)) / 3)


def report_digits(runs: dict[str, dict[int, dict[str, Any]]],
                  steps: int | None = None) -> str:
  """The digits tables (markdown) from the runs ``{method: {seed: result}}``."""
  if not runs:
    return "## digits\n\nNo results yet.\n"
  steps = steps or PROBLEMS["digits"].steps
  marks = [steps // 5, steps // 2, steps]
  trivial = _digits_data().trivial
  base = runs.get("equal", {})

  def final(m: str, s: int) -> dict[str, float]:
    return _at(runs[m][s], steps)

  def med_ratio(m: str, ref: dict[int, dict[str, Any]], ref_name: str) -> float:
    vals = [ratio(final(m, s), final(ref_name, s)) for s in runs[m] if s in ref]
    return statistics.median(vals) if vals else math.nan

  fixed = [m for m in runs if m.startswith("fixed_")]
  best_fixed = min(fixed, key=lambda m: med_ratio(m, base, "equal"), default=None)
  order = sorted(runs, key=lambda m: (
      med_ratio(m, base, "equal") if base else
      -statistics.median(final(m, s)["accuracy"] for s in runs[m])))
  lines = [
      "## digits: three heads on one trunk\n",
      f"Test metrics after {steps:,} steps, median [min, max] over seeds. "
      "Failed: a metric not finite, accuracy < 0.5, or a reconstruction or ink "
      "MSE no better than the trivial predictor's "
      f"({trivial['recon_mse']:.3g} and {trivial['ink_mse']:.3g}). Score vs "
      "equal: the geometric mean over the three tasks of the ratio of the "
      "method's error (1 - accuracy, floored at one test image; reconstruction "
      "MSE; ink MSE) to equal weights' on the same seed, median over seeds "
      "(< 1: better). Wins: seeds with a score < 1 against equal weights, and "
      f"against the best fixed weight ({best_fixed}, the fixed weight with the "
      "lowest median score); per task: seeds on which the method beats equal "
      "weights on accuracy / reconstruction / ink.\n",
      "| method | seeds | failed | accuracy | recon MSE | ink MSE | score vs equal "
      "| wins vs equal | per task | wins vs best fixed | ms / step |",
      "|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|",
  ]
  summary: dict[str, list[str]] = {"helps": [], "beats_fixed": [], "no_help": []}
  for m in order:
    seeds = sorted(runs[m])
    finals = [final(m, s) for s in seeds]
    failed = sum(P.digits_failed(f, trivial) for f in finals)
    common = [s for s in seeds if s in base]
    wins = sum(ratio(final(m, s), final("equal", s)) < 1 for s in common)
    per_task = "-"
    if common:
      per_task = "/".join(
          str(sum(_errors(final(m, s))[k] < _errors(final("equal", s))[k]
                  for s in common))
          for k in range(3)
      )
    wins_fixed = "-"
    if best_fixed is not None:
      common_f = [s for s in seeds if s in runs[best_fixed]]
      n_f = sum(ratio(final(m, s), final(best_fixed, s)) < 1 for s in common_f)
      wins_fixed = f"{n_f}/{len(common_f)}"
      if m != best_fixed and common_f and 2 * n_f > len(common_f):
        summary["beats_fixed"].append(m)
    if m != "equal" and common:
      (summary["helps"] if 2 * wins > len(common) else summary["no_help"]).append(m)
    ms = statistics.median(runs[m][s]["seconds_per_step"] for s in seeds) * 1e3
    lines.append(
        f"| {m} | {len(seeds)} | {failed} | "
        f"{_range([f['accuracy'] for f in finals], '.4f')} | "
        f"{_range([f['recon_mse'] for f in finals])} | "
        f"{_range([f['ink_mse'] for f in finals])} | "
        f"{_fmt(med_ratio(m, base, 'equal'))} | {wins}/{len(common)} | {per_task} | "
        f"{wins_fixed} | {ms:.2f} |"
    )
  lines += [
      "\nDuring training (medians over seeds) at 20 %, 50 % and 100 % of the "
      "steps:\n",
      "| method | accuracy | recon MSE | ink MSE |",
      "|---|---|---|---|",
  ]
  for m in order:
    cells = []
    for key, fmt in (("accuracy", ".4f"), ("recon_mse", ".3g"), ("ink_mse", ".3g")):
      cells.append(" / ".join(
          _fmt(statistics.median(_at(runs[m][s], mark)[key] for s in runs[m]), fmt)
          for mark in marks
      ))
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines.append(
      "\nBetter than equal weights on most seeds (score < 1): "
      + (", ".join(summary["helps"]) or "none")
      + ".\nBetter than the best fixed weight on most seeds: "
      + (", ".join(summary["beats_fixed"]) or "none")
      + ".\nNo better than equal weights (a score >= 1 on half the seeds or "
      "more): " + (", ".join(summary["no_help"]) or "none") + "."
  )
  return "\n".join(lines) + "\n"


def _toy_gap(run: dict[str, Any], step: int) -> list[float]:
  """The Pareto gaps of the five starts after ``step`` steps (nan: not recorded)."""
  g = run["gap"]
  out = g.get(str(step), g.get(step))  # keys are strings once on disk
  return out or [math.nan] * len(P.TOY_STARTS)


def _toy_pairs(runs, m: str, ref: str, steps: int) -> list[tuple[float, float]]:
  """(final gap of ``m``, of ``ref``) on each (seed, start); a deterministic
  reference's seed 0 stands for every seed."""
  out = []
  for s, run in runs[m].items():
    other = runs[ref].get(s, runs[ref].get(0))
    if other is not None:
      out += list(zip(_toy_gap(run, steps), _toy_gap(other, steps), strict=True))
  return out


def report_toy(runs: dict[str, dict[int, dict[str, Any]]],
               steps: int | None = None) -> str:
  """The toy tables (markdown) from the runs ``{method: {seed: result}}``."""
  if not runs:
    return "## toy\n\nNo results yet.\n"
  steps = steps or PROBLEMS["toy"].steps
  marks = [steps // 5, steps // 2, steps]
  tol = P.TOY_TOLERANCE

  def reached(m: str) -> int:
    return sum(sum(r["on_front"]) for r in runs[m].values())

  def runs_of(m: str) -> int:
    return sum(len(r["on_front"]) for r in runs[m].values())

  def med_gap(m: str) -> float:
    return statistics.median(g for r in runs[m].values() for g in _toy_gap(r, steps))

  fixed = [m for m in runs if m.startswith("fixed_")]
  best_fixed = min(fixed, key=lambda m: (-reached(m) / runs_of(m), med_gap(m)),
                   default=None)
  order = sorted(runs, key=lambda m: (-reached(m) / runs_of(m), med_gap(m)))
  lines = [
      "## toy: the two-objective problem of CAGrad, Nash-MTL and FAMO\n",
      f"Five starts, {steps:,} Adam steps. A start reaches the Pareto front "
      f"when its final Pareto gap is <= {tol} (failed otherwise); where: the "
      "final x1 of the starts that reached it (-7: the minimum of f2, +7: the "
      "minimum of f1, both on the front). Wins / losses: starts (and seeds) on "
      "which the method reaches the front and the reference does not / the "
      f"reverse, against equal weights and the best fixed weight ({best_fixed}). "
      "Deterministic rules ran seed 0 only.\n",
      "| method | seeds | reached | failed | gap at 20 % / 50 % (median) | final gap "
      "| where (x1) | vs equal | vs best fixed | us / step |",
      "|---|---:|---:|---:|---|---|---|---:|---:|---:|",
  ]
  summary: dict[str, list[str]] = {"more": [], "fewer": []}
  for m in order:
    seeds = sorted(runs[m])
    gaps = [g for s in seeds for g in _toy_gap(runs[m][s], steps)]
    xs = [x[0] for s in seeds for x, ok in zip(runs[m][s]["final_x"],
                                                runs[m][s]["on_front"], strict=True)
          if ok]
    at = " / ".join(
        _fmt(statistics.median(g for s in seeds for g in _toy_gap(runs[m][s], mark)))
        for mark in marks[:2]
    )
    cells = []
    for ref in ("equal", best_fixed):
      if ref is None or ref not in runs:
        cells.append("-")
        continue
      pairs = _toy_pairs(runs, m, ref, steps)
      win = sum(a <= tol < b for a, b in pairs)
      loss = sum(b <= tol < a for a, b in pairs)
      cells.append(f"{win}/{loss}")
      if ref == "equal" and m != "equal":
        if win > loss:
          summary["more"].append(m)
        elif loss > win:
          summary["fewer"].append(m)
    us = statistics.median(r["seconds_per_step"] for r in runs[m].values()) * 1e6
    lines.append(
        f"| {m} | {len(seeds)} | {reached(m)}/{runs_of(m)} | "
        f"{runs_of(m) - reached(m)} | {at} | {_range(gaps)} | "
        f"{_range(xs, '.2f') if xs else '-'} | {cells[0]} | {cells[1]} | {us:.1f} |"
    )
  lines += [
      "\nFinal (f1, f2) of each start (seed 0; f1 scaled by 0.1 as in the "
      "papers' plots; * = not on the front):\n",
      "| method | " + " | ".join(f"({a:g}, {b:g})" for a, b in P.TOY_STARTS) + " |",
      "|---|" + "---|" * len(P.TOY_STARTS),
  ]
  for m in order:
    run = runs[m].get(0) or runs[m][min(runs[m])]
    cells = [f"({f[0]:.2f}, {f[1]:.2f}){'' if ok else '*'}"
             for f, ok in zip(run["final_f"], run["on_front"], strict=True)]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines.append(
      "\nReach the front from more starts than equal weights: "
      + (", ".join(summary["more"]) or "none")
      + ".\nFrom fewer: " + (", ".join(summary["fewer"]) or "none") + "."
  )
  return "\n".join(lines) + "\n"


def figures(digits_runs, toy_runs, folder: pathlib.Path,
            digits_steps: int | None = None) -> list[str]:
  """The figures (PNG) from the result files; returns their file names."""
  plt = C.pyplot()
  names = []
  if digits_runs and "equal" in digits_runs:
    base = digits_runs["equal"]
    steps = digits_steps or PROBLEMS["digits"].steps

    def score(m: str) -> float:
      vals = [ratio(_at(digits_runs[m][s], steps), _at(base[s], steps))
              for s in digits_runs[m] if s in base]
      return statistics.median(vals) if vals else math.inf

    fixed = [m for m in digits_runs if m.startswith("fixed_")]
    best = [m for m in sorted(digits_runs, key=score)
            if m != "equal" and not m.startswith("fixed_")][:4]
    shown = ["equal"] + ([min(fixed, key=score)] if fixed else []) + best
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    for m in shown:
      seeds = sorted(digits_runs[m])
      marks = sorted(int(k) for k in digits_runs[m][seeds[0]]["metrics"])
      for ax, key in zip(axes, ("accuracy", "recon_mse", "ink_mse"), strict=True):
        vals = [statistics.median(
            (1 - _at(digits_runs[m][s], k)[key]) if key == "accuracy"
            else _at(digits_runs[m][s], k)[key] for s in seeds) for k in marks]
        ax.plot(marks, vals, marker="o", ms=3, label=m)
    for ax, title in zip(axes, ("test error (1 - accuracy)", "reconstruction MSE",
                                "ink MSE"), strict=True):
      ax.set_yscale("log")
      ax.set_xlabel("step")
      ax.set_title(title + ", median over seeds")
    axes[0].legend(fontsize=8)
    fig.savefig(folder / "digits_curves.png", dpi=110)
    plt.close(fig)
    names.append("digits_curves.png")

    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3),
                             layout="constrained", squeeze=False)
    for ax, m in zip(axes[0], shown, strict=True):
      run = digits_runs[m][min(digits_runs[m])]
      w = np.asarray(run["log"]["weights"])
      for k, n in enumerate(P.DIGITS_NAMES):
        ax.plot(run["log"]["step"], w[:, k], label=n)
      ax.set_yscale("log")
      ax.set_title(m, fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.savefig(folder / "digits_weights.png", dpi=110)
    plt.close(fig)
    names.append("digits_weights.png")

  if toy_runs:
    f_front = P.toy_objectives(P.pareto_set(), np)
    shown = sorted(toy_runs)
    cols = 6
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows),
                             layout="constrained", squeeze=False)
    for ax in axes.ravel()[len(shown):]:
      ax.axis("off")
    for ax, m in zip(axes.ravel(), shown, strict=False):
      run = toy_runs[m].get(0) or toy_runs[m][min(toy_runs[m])]
      ax.plot(f_front[:, 0], f_front[:, 1], color="0.6", lw=4, zorder=0)
      for traj in run["trajectory"]:
        f = P.toy_objectives(np.asarray(traj), np)
        ax.plot(f[:, 0], f[:, 1], lw=1)
        ax.plot(f[0, 0], f[0, 1], "ko", ms=4)
        ax.plot(f[-1, 0], f[-1, 1], "r*", ms=6)
      ax.set_title(f"{m} ({sum(run['on_front'])}/5)", fontsize=9)
      ax.set_xlim(-2.2, 1.2)
      ax.set_ylim(-21, 12)
    fig.suptitle("toy: (f1, f2) from the five starts (seed 0; grey: the Pareto "
                 "front; *: the final point; in brackets: starts on the front)")
    fig.savefig(folder / "toy_trajectories.png", dpi=90)
    plt.close(fig)
    names.append("toy_trajectories.png")
  return names


def report() -> str:
  digits_runs, toy_runs = load("digits"), load("toy")
  text = report_digits(digits_runs) + "\n" + report_toy(toy_runs)
  RESULTS.mkdir(parents=True, exist_ok=True)
  pngs = figures(digits_runs, toy_runs, RESULTS)
  text += "\n" + "\n".join(f"![{p}]({p})" for p in pngs) + "\n"
  text += f"\n{C.environment()}.\n"
  (RESULTS / "README.md").write_text("# Multi-task benchmark\n\n" + text)
  return text


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


def quick(problems: list[str], chosen: list[str] | None) -> dict[str, Any]:
  """A smoke run: a few hundred steps, seed 0, the ``QUICK`` methods; nothing
  written."""
  out: dict[str, Any] = {}
  for problem in problems:
    for method in chosen or QUICK[problem]:
      if problem == "digits":
        res = run_one(problem, method, 0, steps=200, chunk=20, out=None)
        summary = {k: round(v, 4) for k, v in _at(res, 200).items()}
      else:
        res = run_one(problem, method, 0, steps=1_000, chunk=100, out=None)
        summary = {"gap": [round(g, 3) for g in _toy_gap(res, 1_000)],
                   "final_x": np.round(res["final_x"], 2).tolist()}
      print(f"{problem} {method}: {summary} "
            f"({res['seconds_per_step'] * 1e3:.3f} ms/step)", flush=True)
      out.setdefault(problem, {})[method] = res
  return out


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
  parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
  parser.add_argument("--problem", default="all", choices=["all", *PROBLEMS])
  parser.add_argument("--methods", nargs="+", default=["all"])
  parser.add_argument("--seeds", type=int, nargs="+", default=None)
  parser.add_argument("--quick", action="store_true",
                      help="a smoke run: a few hundred steps, nothing written")
  parser.add_argument("--report", action="store_true")
  args = parser.parse_args(argv)
  if args.report:
    print(report())
    return None
  problems = list(PROBLEMS) if args.problem == "all" else [args.problem]
  if args.quick:
    return quick(problems, None if args.methods == ["all"] else args.methods)
  for problem in ("toy", "digits"):  # the cheap one first
    if problem not in problems:
      continue
    prob = PROBLEMS[problem]
    names = list(methods(problem)) if args.methods == ["all"] else args.methods
    seeds = args.seeds if args.seeds is not None else list(range(prob.seeds))
    for seed in seeds:  # every method of a seed before the next seed
      for method in names:
        if seed not in seeds_to_run(problem, method, [seed]):
          continue
        path = result_path(problem, method, seed)
        if path.exists():
          continue
        res = run_one(problem, method, seed, steps=prob.steps, chunk=prob.chunk,
                      out=path)
        if problem == "digits":
          line = f"final {_at(res, prob.steps)}"
        else:
          line = f"on the front {sum(res['on_front'])}/5"
        print(f"{problem} {method} seed {seed}: {line} "
              f"({res['wall_seconds']:.0f} s)", flush=True)
  return None


if __name__ == "__main__":
  main()
