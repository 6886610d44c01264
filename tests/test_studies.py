"""Smoke runs of the studies (examples/studies) and checks of their pieces.

The full studies are not run here: each test runs a study with its ``--smoke``
settings (a few steps, a tiny grid) and checks its numbers and files, so the
studies never rot. The problem definitions are checked against their exact
solutions.
"""

import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import softadapt_jax as sa

# examples/ is a namespace package at the repository root (`python -m pytest`
# puts the root on sys.path; a bare `pytest` may not).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from examples.studies import _common as C


def _read(path):
  text = path.read_text()
  assert text.startswith("# Study")
  assert "| method |" in text
  return text


# ---------------------------------------------------------------------------
# Shared pieces.
# ---------------------------------------------------------------------------


def _run_rule(rule, losses_seq, key=0):
  """The weights of each step of ``rule`` alone, in a Python loop."""
  state = rule.init(key=jax.random.key(key))
  out = []
  for losses in losses_seq:
    w, state = rule.update(state, jnp.asarray(losses, jnp.float32))
    out.append(np.asarray(w))
  return np.stack(out)


@pytest.mark.parametrize("steps_per_epoch", [2, 3])
def test_per_epoch_feeds_epoch_means_and_holds_weights(steps_per_epoch):
  # The VAE study's per-epoch SoftAdapt: sa.per_epoch of the rule.
  rng = np.random.default_rng(steps_per_epoch)
  losses = rng.uniform(0.5, 2.0, size=(4 * steps_per_epoch, 2))
  inner = sa.softadapt(2, beta=3.0)
  wrapped = sa.per_epoch(inner, steps_per_epoch)
  got = _run_rule(wrapped, losses)
  means = losses.reshape(4, steps_per_epoch, 2).mean(axis=1)
  per_epoch = _run_rule(inner, means)
  # Epoch e (e >= 1) uses the weights the inner rule gave for epoch e - 1's
  # mean; the first epoch uses 1/K.
  expected = np.concatenate([np.full((1, 2), 0.5), per_epoch[:-1]])
  np.testing.assert_allclose(
      got, np.repeat(expected, steps_per_epoch, axis=0), rtol=1e-6
  )
  assert not np.allclose(per_epoch[-1], 0.5)  # the check can fail


def test_study_step_direction_is_the_weighted_gradient():
  """The studies' step (the library's route) with fixed weights."""

  def loss_fn(p, batch):
    return jnp.stack([jnp.sum((p - batch) ** 2), jnp.sum(jnp.sin(p))])

  rule = sa.fixed_weights([0.25, 0.75])
  tx = optax.chain(sa.track_weights(rule), optax.sgd(1.0))
  grad_fn = sa.weighted_value_and_grad(loss_fn, rule)
  p = jnp.array([0.3, -1.2])
  batch = jnp.array([1.0, 2.0])
  out = grad_fn(tx.init(p), p, batch)
  updates, _ = tx.update(out.grad, tx.init(p), p, weighting_state=out.state)
  new_p = optax.apply_updates(p, updates)
  grads = jax.jacrev(loss_fn)(p, batch)
  np.testing.assert_allclose(np.asarray(new_p), p - (0.25 * grads[0] + 0.75 * grads[1]),
                             rtol=1e-6)
  np.testing.assert_allclose(out.losses, loss_fn(p, batch))
  np.testing.assert_allclose(out.weights, [0.25, 0.75])


def test_family_rows_weights_sum_to_one():
  """Every row's weights sum to 1, equal weights' too (the studies' convention)."""
  from examples.studies import pinns

  rng = np.random.default_rng(1)
  losses = rng.uniform(0.1, 3.0, size=(8, 3)).astype(np.float32)
  rules = pinns.methods_for(3)
  assert list(C.family_rules(3)) == list(rules)[-5:]
  for name, rule in rules.items():
    weights = _run_rule(rule, losses)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(_run_rule(rules["equal weights"], losses), 1 / 3)


@pytest.mark.slow  # a piece of the short-budget PINN study; -m slow runs it
def test_switch_rule_equals_each_rule_alone():
  from examples.studies import pinns

  rules = [sa.equal_weights(2, scale_by_num_losses=False),
           sa.softadapt(2, beta=2.0), sa.softadapt(2, beta=0.5,
                                                   variant="loss_weighted")]
  rules += list(C.family_rules(2).values())
  rng = np.random.default_rng(0)
  losses = jnp.asarray(rng.uniform(0.1, 3.0, size=(6, 2)).astype(np.float32))

  def run_switch(index):
    rule = pinns.switch_rule(rules, index, jax.random.key(0))

    def body(state, row):
      w, state = rule.update(state, row)
      return state, w

    return jax.lax.scan(body, rule.init(), losses)[1]

  # A batched index (every branch runs, as in the study's grid) and a
  # single one (only the selected branch runs, as in its timing).
  batched = jax.jit(jax.vmap(run_switch))(jnp.arange(len(rules)))
  for i, rule in enumerate(rules):
    alone = _run_rule(rule, losses)
    np.testing.assert_allclose(batched[i], alone, rtol=1e-6, err_msg=str(rule))
    single = jax.jit(run_switch)(jnp.int32(i))
    np.testing.assert_allclose(single, alone, rtol=1e-6, err_msg=str(rule))


def test_statistics_formatting():
  assert C.mean_std([1.0, 3.0], ".2f") == "2.00 ± 1.00"
  assert C.mean_std([1.0, float("nan")], ".1f") == "1.0 ± 0.0 (1/2 finite)"
  assert C.geo_range([1e-2, 1e-4], ".0e") == "1e-03 [1e-04, 1e-02]"
  assert "(1/3 diverged)" in C.geo_range([1.0, 2.0, float("inf")])
  assert C.geo_range([float("nan")]) == "diverged"


# ---------------------------------------------------------------------------
# The problems against their exact solutions.
# ---------------------------------------------------------------------------


def test_benchmark_functions_vanish_at_their_minima():
  from examples.studies import rosenbrock_beale as rb

  for problem in rb.PROBLEMS:
    at_min = problem.loss(jnp.array(problem.minimum))
    assert at_min.shape == (len(problem.components),)
    np.testing.assert_allclose(at_min, 0.0, atol=1e-10)
    assert jnp.all(problem.loss(jnp.array(problem.minimum) + 0.1) > 0)


def test_helmholtz_source_is_minus_the_operator_of_the_exact_solution():
  from examples.studies import pinns

  def operator(x, y):
    u = pinns.helmholtz_exact
    u_xx = jax.grad(jax.grad(u, 0), 0)(x, y)
    u_yy = jax.grad(jax.grad(u, 1), 1)(x, y)
    return u_xx + u_yy + pinns.K_HELM**2 * u(x, y)

  xy = jax.random.uniform(jax.random.key(0), (50, 2), minval=-1.0, maxval=1.0)
  lhs = jax.vmap(operator)(xy[:, 0], xy[:, 1])
  rhs = pinns.helmholtz_source(xy[:, 0], xy[:, 1])
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4, atol=1e-3)
  assert float(jnp.max(jnp.abs(rhs))) > 100.0  # a nontrivial forcing


def test_burgers_reference_satisfies_the_pde():
  from examples.studies import pinns

  x = np.linspace(-1.0, 1.0, 201)
  t = np.array([0.0, 0.2, 0.2 + 1e-3, 0.2 - 1e-3])
  u = pinns.burgers_reference(x, t)
  np.testing.assert_allclose(u[0], -np.sin(np.pi * x), atol=1e-12)
  np.testing.assert_allclose(u[1, [0, -1]], 0.0, atol=1e-8)  # boundary
  np.testing.assert_allclose(u[1], -u[1, ::-1], atol=1e-8)  # odd in x
  # Finite differences away from the steepening front at x = 0.
  dx = x[1] - x[0]
  u_t = (u[2] - u[3]) / 2e-3
  u_x = np.gradient(u[1], dx)
  u_xx = np.gradient(u_x, dx)
  residual = u_t + u[1] * u_x - pinns.NU * u_xx
  smooth = (np.abs(x) > 0.2) & (np.abs(x) < 0.95)
  assert np.max(np.abs(residual[smooth])) < 2e-3
  assert np.max(np.abs(u_t[smooth])) > 0.1  # the residual is a real cancellation


# ---------------------------------------------------------------------------
# Smoke runs.
# ---------------------------------------------------------------------------


@pytest.mark.slow  # the short-budget studies; -m slow runs them
def test_rosenbrock_beale_smoke(tmp_path):
  from examples.studies import rosenbrock_beale as rb

  metrics = rb.main(["--smoke", "--out", str(tmp_path), "--starts", "3"])
  text = _read(tmp_path / "rosenbrock_beale_smoke.md")
  assert (tmp_path / "rosenbrock_beale_smoke.png").read_bytes()[:4] == b"\x89PNG"
  for problem in ("Rosenbrock", "Beale"):
    assert f"## {problem}, adam" in text
    for opt in ("adam", "sgd"):
      cell = metrics[problem][opt]
      eq = cell["equal weights"]
      assert len(eq["final_distance"]) == 3
      assert 0 <= eq["reached"] <= 3
      assert cell["best"] in cell
  # Adam moves every start towards the minimum of the Beale function.
  start = np.asarray(rb.starting_points(rb.PROBLEMS[1], 3))
  initial = np.linalg.norm(start - np.array(rb.PROBLEMS[1].minimum), axis=1)
  final = np.asarray(metrics["Beale"]["adam"]["equal weights"]["final_distance"])
  assert np.all(final < initial)


@pytest.mark.slow  # the short-budget studies; -m slow runs them
def test_sparse_autoencoder_smoke(tmp_path):
  pytest.importorskip("sklearn")
  from examples.studies import sparse_autoencoder as sae

  out = sae.main(["--smoke", "--seeds", "2", "--steps", "30", "--out",
                  str(tmp_path), "--no-plot"])
  _read(tmp_path / "sparse_autoencoder_smoke.md")
  metrics = out["metrics"]
  assert "fixed lambda 0" in metrics
  assert out["best_softadapt"] in metrics
  for m in metrics.values():
    assert all(0.0 <= a <= 1.0 for a in m["accuracy"])
    assert all(math.isfinite(r) and r > 0 for r in m["recon"])
    assert len(m["accuracy"]) == 2
  # A larger L1 weight gives sparser codes.
  assert np.mean(metrics["fixed lambda 0.1"]["zero_fraction"]) > np.mean(
      metrics["fixed lambda 0"]["zero_fraction"]
  )
  assert out["raw_pixel_accuracy"] > 0.9


@pytest.mark.slow  # the short-budget studies; -m slow runs them
def test_vae_smoke(tmp_path):
  pytest.importorskip("sklearn")
  pytest.importorskip("dm_pix")
  from examples.studies import vae

  out = vae.main(["--smoke", "--seeds", "1", "--epochs", "2", "--out",
                  str(tmp_path), "--no-plot"])
  _read(tmp_path / "vae_smoke.md")
  metrics = out["metrics"]
  assert len(metrics) == 2  # fixed b = 1, SoftAdapt per epoch
  for m in metrics.values():
    assert -1.0 <= m["ssim"][0] <= 1.0
    assert 0.0 < m["psnr"][0] < 60.0
    assert m["kl"][0] >= 0.0
    assert m["epoch_ms"][0] > 0.0
  # PSNR is 10 log10(1 / MSE) per image: the mean over images is at least the
  # PSNR of the mean MSE (Jensen), and close to it.
  m = metrics["fixed KL weight b 1"]
  psnr_of_mean = -10.0 * math.log10(m["mse"][0])
  assert m["psnr"][0] >= psnr_of_mean - 1e-3


@pytest.mark.slow  # the short-budget studies; -m slow runs them
def test_pinns_smoke(tmp_path):
  from examples.studies import pinns

  metrics = pinns.main(["--smoke", "--problems", "poisson", "--seeds", "2",
                        "--out", str(tmp_path), "--no-plot"])
  text = _read(tmp_path / "pinns_smoke.md")
  assert "## Poisson 1D" in text
  cells = [c for c in metrics["Poisson 1D"] if not c.startswith("_")]
  assert cells == [", ".join(c) for c in pinns.CELLS]
  for cell in cells:
    rows = metrics["Poisson 1D"][cell]
    assert "equal weights" in rows
    for row in rows.values():
      assert len(row["rel_l2"]) == 2
      assert all(e > 0 for e in row["rel_l2"])


# ---------------------------------------------------------------------------
# The multi-task study (examples/studies/multitask.py).
# ---------------------------------------------------------------------------


def test_multitask_toy_objectives_and_pareto_front():
  from examples.studies import _multitask_problems as P

  # x2 > 0: the log terms only; x2 < 0: the quadratics only; x2 = 0: zero.
  c = math.tanh(2.5)
  expected = [0.1 * (math.log(math.tanh(5.0)) + 6) * c,
              (math.log(7 - math.tanh(5.0)) + 6) * c]
  np.testing.assert_allclose(P.toy_objectives(jnp.array([-7.0, 5.0])), expected,
                             rtol=1e-5)
  t = math.tanh(4.0)
  np.testing.assert_allclose(P.toy_objectives(jnp.array([0.0, -8.0])),
                             [0.1 * -15.1 * t, -15.1 * t], rtol=1e-5)
  np.testing.assert_allclose(P.toy_objectives(jnp.zeros(2)), 0.0, atol=1e-7)
  np.testing.assert_allclose(P.toy_objectives(np.array([3.0, -2.0]), np),
                             P.toy_objectives(jnp.array([3.0, -2.0])), rtol=1e-5)
  # The front: Pareto stationary, gap 0, the papers' y = -8.3552 at x1 = 0.
  front = P.pareto_set()
  assert abs(front[len(front) // 2, 1] + 8.3552) < 1e-3
  np.testing.assert_allclose(P.pareto_gap(front[::100]), 0.0, atol=1e-6)
  assert np.all(P.pareto_stationarity(front[::100]) < 1e-4)
  assert np.all(P.pareto_distance(front[::100]) < 1e-9)
  # (0, 0) has f = (0, 0): the front's midpoint, unscaled f = -15.09 * (1, 1),
  # improves both objectives by 15.09; a point beyond the front's end is off it.
  np.testing.assert_allclose(P.pareto_gap([[0.0, 0.0]]), 15.1 * math.tanh(8.3551 / 2),
                             rtol=1e-4)
  assert P.pareto_gap([[8.0, front[-1, 1]]])[0] > P.TOY_TOLERANCE
  assert P.pareto_gap([[np.nan, 0.0]])[0] == np.inf
  # No point of a dense grid dominates a point of the front, and every grid
  # point is dominated by the front to within 1e-3: the curve is the Pareto set.
  g1, g2 = np.meshgrid(np.linspace(-10, 10, 201), np.linspace(-12, 10, 221))
  grid = np.stack([g1.ravel(), g2.ravel()], axis=1)
  f_grid = P.toy_objectives(grid, np)
  f_grid = f_grid[np.argsort(f_grid[:, 0])]  # its non-dominated points:
  f_grid = f_grid[f_grid[:, 1] <= np.minimum.accumulate(f_grid[:, 1])]
  f_front = P.toy_objectives(front[::4], np)
  assert not np.any(np.all(f_grid[:, None] < f_front[None] - 1e-6, axis=2))
  eps = np.max(np.min(np.max(f_front[None] - f_grid[:, None], axis=2), axis=1))
  assert eps < 1e-3


def test_multitask_every_method_builds_a_rule():
  from examples.studies import multitask as mt

  for problem in mt.PROBLEMS:
    spec = mt.spec(problem, 3) if problem == "toy" else None
    names = mt.methods(problem)
    assert next(iter(names)) == "equal"
    assert sum(n.startswith("fixed_") for n in names) == len(mt.PROBLEMS[problem].fixed)
    if spec is not None:
      for name, factory in names.items():
        rule = factory(spec)
        assert rule.names == ("f1", "f2"), name
  assert mt.is_stochastic("toy", "rlw")
  assert not mt.is_stochastic("toy", "equal")
  assert mt.seeds_to_run("toy", "equal", [0, 1, 2]) == [0]
  assert mt.seeds_to_run("toy", "rlw", [0, 1, 2]) == [0, 1, 2]


def test_multitask_quick(tmp_path):
  pytest.importorskip("sklearn")
  from examples.studies import _multitask_problems as P
  from examples.studies import multitask as mt

  before = sorted(mt.RESULTS.rglob("*")) if mt.RESULTS.exists() else []
  out = mt.main(["--quick"])
  assert out is not None
  after = sorted(mt.RESULTS.rglob("*")) if mt.RESULTS.exists() else []
  assert before == after  # nothing written
  digits = out["digits"]
  assert list(digits) == mt.QUICK["digits"]
  for res in digits.values():
    m = res["metrics"][200]
    assert 0.0 <= m["accuracy"] <= 1.0
    assert all(math.isfinite(v) and v >= 0 for v in m.values())
    assert np.asarray(res["log"]["weights"]).shape == (len(res["log"]["step"]), 3)
    assert res["seconds_per_step"] > 0
  np.testing.assert_allclose(digits["equal"]["log"]["weights"], 1.0)
  famo = np.asarray(digits["famo"]["log"]["weights"])  # exact form: it learns
  np.testing.assert_allclose(famo.sum(axis=1), 1.0, rtol=1e-5)
  assert not np.allclose(famo[-1], 1 / 3)
  for res in out["toy"].values():
    traj = np.asarray(res["trajectory"])
    assert traj.shape == (5, 101, 2)
    np.testing.assert_allclose(traj[:, 0], P.TOY_STARTS)
    np.testing.assert_allclose(traj[:, -1], res["final_x"])
    assert all(g >= 0 for g in res["gap"][1000])
  # The tables and figures from these runs.
  text = mt.report_digits({k: {0: v} for k, v in digits.items()}, steps=200)
  assert "| famo | 1 | " in text
  assert "wins vs equal" in text
  text = mt.report_toy({k: {0: v} for k, v in out["toy"].items()}, steps=1000)
  assert "| pcgrad | 1 | " in text
  names = mt.figures({k: {0: v} for k, v in digits.items()},
                     {k: {0: v} for k, v in out["toy"].items()}, tmp_path,
                     digits_steps=200)
  for name in names:
    assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------
# The converged PINN study (examples/studies/converged.py).
# ---------------------------------------------------------------------------


def test_converged_quick_runs_every_asked_method_and_writes_nothing():
  from examples.studies import converged as cv

  before = sorted(cv.RESULTS.rglob("*"))
  out = cv.main(["--quick", "--problem", "poisson_pi_c1",
                 "--methods", "equal", "lra_wang2021", "--seeds", "0"])
  assert sorted(cv.RESULTS.rglob("*")) == before  # nothing written
  assert out is not None
  assert sorted(out) == ["equal", "lra_wang2021"]
  for res in (out["equal"][0], out["lra_wang2021"][0]):
    errors = res["errors"]
    assert sorted(errors) == [100, 200]
    assert all(math.isfinite(e) and e > 0 for e in errors.values())
    assert res["seconds_per_step"] > 0
  np.testing.assert_allclose(out["equal"][0]["log"]["weights"], 1.0)
  # Paired seeds: the same initialisation, so the first logged losses agree.
  np.testing.assert_allclose(out["equal"][0]["log"]["losses"][0],
                             out["lra_wang2021"][0]["log"]["losses"][0], rtol=1e-5)
  with pytest.raises(SystemExit):
    cv.main(["--quick", "--methods", "no_such_rule"])


def test_converged_report_counts_failures_stalls_and_paired_wins(tmp_path, monkeypatch):
  from examples.studies import converged as cv

  monkeypatch.setattr(cv, "RESULTS", tmp_path)
  finals = {  # method -> final error per seed (Helmholtz marks: 8k, 20k, 40k)
      "equal": [0.2, 0.3, 0.1],
      "fixed_bc10": [0.05, 0.5, 0.05],
      "stalls": [0.95, 0.9999, 0.01],
      "fails": [float("nan"), 3.0, 0.02],
  }
  for method, vals in finals.items():
    for seed, v in enumerate(vals):
      result = {"errors": {8000: 1.0, 20000: 0.5, 40000: v}, "log": {},
                "seconds_per_step": 0.001}
      C.save_result(cv.result_path("helmholtz", method, seed), result,
                    problem="helmholtz", method=method, seed=seed, steps=40000)
  rows = {line.split(" | ")[0][2:]: line.split(" | ")
          for line in cv.report("helmholtz").splitlines()
          if line.startswith("| ") and not line.startswith("| method")}
  # columns: method, seeds, failed, stalled, failed where equal passed, 20 %,
  # 50 %, final, vs equal, vs fixed
  assert rows["fails"][1:5] == ["3", "2", "0", "2"]  # nan and 3.0: equal passed both
  assert rows["stalls"][1:5] == ["3", "0", "2", "0"]
  assert rows["stalls"][7:10] == ["0.95 [0.01, 1]", "1/3", "1/3"]
  assert rows["fixed_bc10"][8] == "2/3"  # 0.05 < 0.2, 0.5 > 0.3, 0.05 < 0.1
  assert rows["equal"][8] == "0/3"
  # A failure on a seed that equal weights failed too is not the rule's own.
  for method, vals in {"equal": [2.0, 0.1], "both": [3.0, 5.0]}.items():
    for seed, v in enumerate(vals):
      result = {"errors": {8000: 1.0, 20000: 0.5, 40000: v}, "log": {},
                "seconds_per_step": 0.001}
      C.save_result(cv.result_path("poisson_pi_c8", method, seed), result,
                    problem="poisson_pi_c8", method=method, seed=seed, steps=40000)
  both = next(line.split(" | ") for line in cv.report("poisson_pi_c8").splitlines()
              if line.startswith("| both "))
  assert both[1:5] == ["2", "2", "0", "1"]
