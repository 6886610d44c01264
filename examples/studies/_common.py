"""Shared pieces of the studies: the rows of the loss-history family, statistics,
markdown tables and figures.

Every weighting method of a study is a rule of ``softadapt_jax``
(``sa.equal_weights``, ``sa.fixed_weights``, ``sa.softadapt``, the family rules,
``sa.per_epoch`` of any of them), trained by the library's one route: the
direction from ``sa.weighted_value_and_grad`` (one ``jax.vjp`` of the losses
with the weights as cotangent, ``h = sum_k w_k grad f_k``) and the rule's state
in ``opt_state`` (``optax.chain(sa.track_weights(rule), opt)``). A study that
sweeps a hyperparameter builds its rule from the traced value inside a
vmapped training function (``sa.fixed_weights(w)`` over a grid of ``w``,
``sa.softadapt(K, beta=b)`` over a grid of ``b``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

import softadapt_jax as sa

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# ---------------------------------------------------------------------------
# The loss-history family, one row per rule.
# ---------------------------------------------------------------------------


def family_rules(
    num_losses: int, steps_per_epoch: int = 1
) -> dict[str, sa.LossWeighting]:
  """One row per rule of the loss-history family, at its defaults.

  Every rule's weights sum to 1 (``scale_by_num_losses=False`` where a rule
  scales to ``K`` by default: the same rule with a ``K`` times smaller step
  size), as do equal weights ``1/K`` and SoftAdapt's, so that the convention
  never decides a comparison. Ratio SoftAdapt runs in the PhysicsNeMo-Sym
  convention (``T = 1``, ``eps = 1e-8``, ``lookback = "previous"``; its
  default when these studies ran). DWA is fed epoch means with
  ``steps_per_epoch > 1``.
  """
  k = num_losses
  dwa = sa.dwa(k, scale_by_num_losses=False)
  return {
      "log-slope SoftAdapt (defaults)": sa.softadapt(k, log_losses=True),
      "ratio SoftAdapt (PhysicsNeMo, T = 1)": sa.ratio_softadapt(
          k, temperature=1.0, scale_by_num_losses=False
      ),
      "DWA (defaults)": (
          sa.per_epoch(dwa, steps_per_epoch) if steps_per_epoch > 1 else dwa
      ),
      "ReLoBRaLo (defaults)": sa.relobralo(k, scale_by_num_losses=False),
      "RLW (defaults)": sa.random_weighting(k),
  }


# ---------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
  """``fn(*args)`` and the seconds it took (results blocked on)."""
  start = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - start


# ---------------------------------------------------------------------------
# Statistics and tables.
# ---------------------------------------------------------------------------


def mean_std(x: Any, fmt: str = ".3g") -> str:
  """``"mean ± std"`` over the finite entries (``n/N finite`` if some are not)."""
  x = np.asarray(x, np.float64).ravel()
  ok = np.isfinite(x)
  if not ok.any():
    return "diverged"
  text = f"{np.mean(x[ok]):{fmt}} ± {np.std(x[ok]):{fmt}}"
  if not ok.all():
    text += f" ({ok.sum()}/{x.size} finite)"
  return text


def geo_range(x: Any, fmt: str = ".2e", floor: float = 1e-8) -> str:
  """Geometric mean and ``[min, max]`` of nonnegative values (errors, distances).

  Values below ``floor`` count as ``floor`` (an exact 0 in float32); non-finite
  values are reported as diverged and left out of the statistics.
  """
  x = np.asarray(x, np.float64).ravel()
  ok = np.isfinite(x)
  if not ok.any():
    return "diverged"
  v = np.maximum(x[ok], floor)
  g = math.exp(np.mean(np.log(v)))
  text = f"{g:{fmt}} [{v.min():{fmt}}, {v.max():{fmt}}]"
  if not ok.all():
    text += f" ({x.size - ok.sum()}/{x.size} diverged)"
  return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = [
      "| " + " | ".join(header) + " |",
      "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_markdown(path: str, title: str, sections: Sequence[str]) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(f"# {title}\n\n" + "\n\n".join(s.strip() for s in sections) + "\n")


def pyplot():
  """``matplotlib.pyplot`` on the Agg backend (imported lazily)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def parse_common(
    description: str,
    argv: Sequence[str] | None,
    add: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
  """``--smoke``, ``--out``, ``--seeds`` plus the study's own arguments."""
  parser = argparse.ArgumentParser(
      description=description,
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  parser.add_argument(
      "--smoke", action="store_true", help="a few steps and a tiny grid (tests)"
  )
  parser.add_argument("--out", default=RESULTS_DIR, help="folder of the results")
  parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
  parser.add_argument("--no-plot", action="store_true", help="skip the figures")
  if add is not None:
    add(parser)
  return parser.parse_args(argv)


def environment() -> str:
  """A line naming the versions and the backend, for the tables' footers."""
  return (
      f"jax {jax.__version__}, optax {optax.__version__}, softadapt_jax "
      f"{sa.__version__}, backend {jax.default_backend()}"
  )


def save_result(out: pathlib.Path | None, result: dict[str, Any],
                **meta: Any) -> dict[str, Any]:
  """``result`` with ``meta``, the machine and the versions, written to ``out``.

  The file is written whole or not at all (a temporary file, then a rename),
  so a resumable grid never reads a half-written run.
  """
  import softadapt_jax

  result.update(
      meta,
      machine=f"{platform.machine()} {os.cpu_count()} cpus",
      versions={"jax": jax.__version__, "softadapt_jax": softadapt_jax.__version__},
  )
  if out is not None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
  return result


def load_results(folder: pathlib.Path) -> dict[str, dict[int, dict[str, Any]]]:
  """``{method: {seed: result}}`` from ``folder/<method>/seed<k>.json``."""
  out: dict[str, dict[int, dict[str, Any]]] = {}
  for path in sorted(folder.glob("*/seed*.json")):
    data = json.loads(path.read_text())
    out.setdefault(data["method"], {})[data["seed"]] = data
  return out
