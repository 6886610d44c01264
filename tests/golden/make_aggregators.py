"""Write tests/golden/aggregators.json: torchjd and conflictfree on fixed Jacobians.

Run from the repository root, in a separate environment that has the peers
(they are not test dependencies of this project):

    python3 -m venv /work/venvs/torch
    /work/venvs/torch/bin/pip install torch==2.13.0 "torchjd[full]" conflictfree \
      numpy scipy
    /work/venvs/torch/bin/python tests/golden/make_aggregators.py

(``torchjd[full]`` brings quadprog/qpsolvers for UPGrad and DualProj and
cvxpy/clarabel/ecos for CAGrad and Nash-MTL.)

Every float is written by ``json`` with ``float.__repr__``, which reads back
to the same float64 bit for bit; NaN and infinities use the ``NaN`` /
``Infinity`` tokens that Python's ``json`` reads. The Gramian each peer saw
(torch's ``J @ J.T``) is stored with the Jacobian so that a test can feed the
same bits to a Gramian-only rule.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import sys
from pathlib import Path

import numpy as np

# The peers are imported in main(): the default test suite (pytest
# --doctest-modules) imports this file without torch installed.
torch = cf = A = compute_gramian = None

OUT = Path(__file__).with_name("aggregators.json")
SEED = 20260611


def make_cases() -> list[dict]:
  rng = np.random.default_rng(SEED)
  cases = []
  for K in (2, 3, 5, 8, 16):
    for n in (5, 40):
      scales = 10.0 ** rng.uniform(-1.0, 1.0, size=(K, 1))
      J = rng.standard_normal((K, n)) * scales
      kind = "random" if n >= K else "random, K > n (rank n < K)"
      cases.append({"name": f"random_K{K}_n{n}", "kind": kind, "J": J})
  # rank 3 with K = 5 < n: rows 3 and 4 are combinations of rows 0..2
  base = rng.standard_normal((3, 40))
  mix = rng.standard_normal((2, 3))
  cases.append(
    {
      "name": "rank_deficient_K5_n40",
      "kind": "rank 3 of 5 (two dependent rows)",
      "J": np.vstack([base, mix @ base]),
    }
  )
  # all pairwise inner products positive
  common = rng.standard_normal(40)
  J = common + 0.4 * rng.standard_normal((3, 40))
  J *= np.array([[0.5], [1.0], [3.0]])
  assert (J @ J.T).min() > 0
  cases.append({"name": "all_agree_K3_n40", "kind": "every pair agrees", "J": J})
  # two strongly conflicting pairs
  v, u = rng.standard_normal((2, 40))
  noise = 0.15 * rng.standard_normal((4, 40))
  J = np.vstack([v, -1.5 * v, u, -0.8 * u]) + noise
  cases.append(
    {"name": "strong_conflict_K4_n40", "kind": "cos ~ -0.99 within two pairs", "J": J}
  )
  g = rng.standard_normal(5)
  cases.append(
    {
      "name": "parallel_K2_n5",
      "kind": "g2 = 2 g1 exactly",
      "J": np.vstack([g, 2.0 * g]),
    }
  )
  cases.append(
    {
      "name": "antiparallel_K2_n5",
      "kind": "g2 = -0.5 g1 exactly",
      "J": np.vstack([g, -0.5 * g]),
    }
  )
  J = rng.standard_normal((3, 5))
  J[1] = 0.0
  cases.append({"name": "zero_row_K3_n5", "kind": "g2 = 0", "J": J})
  J = rng.standard_normal((3, 5))
  J *= np.sqrt(1e-5) / np.linalg.norm(J)
  cases.append(
    {"name": "tiny_K3_n5", "kind": "||J||_F^2 = 1e-5 < norm_eps 1e-4", "J": J}
  )
  return cases


def vec(t) -> list:
  return np.asarray(
    t.detach().cpu().numpy() if torch.is_tensor(t) else t, np.float64
  ).tolist()


def run(fn) -> dict:
  try:
    return fn()
  except Exception as exc:  # record what the peer does, errors included
    return {"error": f"{type(exc).__name__}: {exc}"}


def torchjd_results(Jt: torch.Tensor, Gt: torch.Tensor, case_seed: int) -> dict:
  K = Jt.shape[0]
  out: dict[str, dict] = {}

  def gramian_rule(agg):
    def go():
      w = agg.gramian_weighting(Gt)
      d = agg(Jt)
      return {"weights": vec(w), "direction": vec(d)}

    return go

  out["torchjd.MGDA"] = run(gramian_rule(A.MGDA()))
  out["torchjd.IMTLG"] = run(gramian_rule(A.IMTLG()))
  for mode in ("min", "median", "rmse"):
    out[f"torchjd.AlignedMTL[{mode}]"] = run(
      gramian_rule(A.AlignedMTL(scale_mode=mode))
    )
  out["torchjd.UPGrad"] = run(gramian_rule(A.UPGrad()))
  out["torchjd.DualProj"] = run(gramian_rule(A.DualProj()))
  out["torchjd.CAGrad[c=0.5]"] = run(gramian_rule(A.CAGrad(c=0.5)))

  def pcgrad():
    torch.manual_seed(case_seed)
    perms = [torch.randperm(K).tolist() for _ in range(K)]
    agg = A.PCGrad()
    torch.manual_seed(case_seed)
    w = agg.gramian_weighting(Gt)
    torch.manual_seed(case_seed)
    d = agg(Jt)
    return {
      "weights": vec(w),
      "direction": vec(d),
      "permutations": perms,
      "torch_seed": case_seed,
    }

  out["torchjd.PCGrad"] = run(pcgrad)

  def config():
    return {"direction": vec(A.ConFIG()(Jt))}

  out["torchjd.ConFIG"] = run(config)

  for max_norm in (1.0, 0.0):

    def nash(max_norm=max_norm):
      w = A.NashMTL(n_tasks=K, max_norm=max_norm).weighting(Jt)
      d = A.NashMTL(n_tasks=K, max_norm=max_norm)(Jt)
      return {"weights": vec(w), "direction": vec(d)}

    out[f"torchjd.NashMTL[max_norm={max_norm:g}]"] = run(nash)
  return out


def conflictfree_results(Jt: torch.Tensor) -> dict:
  out: dict[str, dict] = {}
  out["conflictfree.ConFIGOperator"] = run(
    lambda: {"direction": vec(cf.ConFIGOperator().calculate_gradient(Jt))}
  )
  out["conflictfree.ConFIG_update[lstsq]"] = run(
    lambda: {"direction": vec(cf.ConFIG_update(Jt, use_least_square=True))}
  )
  out["conflictfree.ConFIG_update[pinv]"] = run(
    lambda: {"direction": vec(cf.ConFIG_update(Jt, use_least_square=False))}
  )
  out["conflictfree.PCGradOperator"] = run(
    lambda: {"direction": vec(cf.PCGradOperator().calculate_gradient(Jt))}
  )
  out["conflictfree.IMTLGOperator"] = run(
    lambda: {"direction": vec(cf.IMTLGOperator().calculate_gradient(Jt))}
  )
  return out


def nash_sequence() -> dict:
  """Three calls of one torchjd NashMTL (warm start from the previous alpha)."""
  rng = np.random.default_rng(SEED + 1)
  Js = [
    rng.standard_normal((3, 40)) * np.array([[0.3], [1.0], [4.0]]) for _ in range(3)
  ]
  agg = A.NashMTL(n_tasks=3, max_norm=0.0)
  steps = []
  for J in Js:
    Jt = torch.tensor(J)
    w = agg.weighting(Jt)
    steps.append(
      {"J": J.tolist(), "gramian": vec(compute_gramian(Jt)), "weights": vec(w)}
    )
  return {"method": "torchjd.NashMTL[max_norm=0]", "steps": steps}


def _import_peers() -> None:
  global torch, cf, A, compute_gramian
  import torch as _torch
  from conflictfree import grad_operator as _cf
  from torchjd import aggregation as _agg
  from torchjd._linalg import compute_gramian as _cg

  _torch.set_num_threads(1)
  _torch.set_default_dtype(_torch.float64)
  torch, cf, A, compute_gramian = _torch, _cf, _agg, _cg


def main() -> None:
  _import_peers()
  cases_out = []
  for idx, case in enumerate(make_cases()):
    J = np.asarray(case["J"], np.float64)
    Jt = torch.tensor(J)
    Gt = compute_gramian(Jt)
    results = {}
    results.update(torchjd_results(Jt, Gt, case_seed=SEED + 100 + idx))
    results.update(conflictfree_results(Jt))
    cases_out.append(
      {
        "name": case["name"],
        "kind": case["kind"],
        "K": J.shape[0],
        "n": J.shape[1],
        "J": J.tolist(),
        "gramian": vec(Gt),
        "results": results,
      }
    )
    print(f"{case['name']}: done", file=sys.stderr)
  meta = {
    "generator": "tests/golden/make_aggregators.py",
    "seed": SEED,
    "versions": {
      p: md.version(p)
      for p in (
        "torch",
        "torchjd",
        "conflictfree",
        "numpy",
        "scipy",
        "qpsolvers",
        "quadprog",
        "cvxpy",
        "clarabel",
        "ecos",
      )
    },
    "python": platform.python_version(),
    "dtype": "float64 (torch default dtype set to float64; torch.set_num_threads(1))",
    "floats": "JSON numbers written with float.__repr__ (exact float64 round "
    "trip); NaN as NaN",
    "settings": {
      "torchjd.MGDA": "MGDA() (epsilon 1e-3, max_iters 100)",
      "torchjd.UPGrad/DualProj": "default QuadprogProjector(norm_eps=1e-4, "
      "reg_eps=1e-4)",
      "torchjd.CAGrad[c=0.5]": "CAGrad(c=0.5) (norm_eps 1e-4, CLARABEL)",
      "torchjd.NashMTL[max_norm=m]": "a FRESH NashMTL(n_tasks=K, max_norm=m) per call "
      "(optim_niter 20, ECOS); weights from .weighting(J)",
      "torchjd.PCGrad": "torch.manual_seed(torch_seed) before the call; 'permutations' "
      "are the K torch.randperm(K) draws it makes, in order",
      "weights": "torchjd weights are gramian_weighting(gramian) with the stored "
      "gramian; directions are the aggregator applied to J",
      "conflictfree.ConFIGOperator": "default operator: K = 2 uses "
      "ConFIG_update_double",
    },
  }
  data = {"meta": meta, "cases": cases_out, "nash_sequence": nash_sequence()}
  OUT.write_text(json.dumps(data, separators=(",", ":")) + "\n")
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
  main()
