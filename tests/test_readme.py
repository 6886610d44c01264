"""The README's code, run as written: a NaN batch does not end the run it teaches."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import chex
import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _use_block() -> str:
  """The first ``python`` code block of the README's "Use" section."""
  text = README.read_text()
  use = text[text.index("## Use") :]
  match = re.search(r"```python\n(.*?)```", use, re.S)
  assert match, "no python block in the README's Use section"
  return match.group(1)


def test_readme_use_code_survives_a_nan_batch():
  x = jnp.linspace(0.0, 1.0, 32)

  def model(params, t):
    return params["a"] * jnp.sin(params["w"] * t) + params["b"]

  def residual_loss(params, batch):
    target = jnp.sin(jnp.pi * x) * batch["scale"]
    return jnp.mean((model(params, x) - target) ** 2)

  def boundary_loss(params, batch):
    del batch
    ends = jnp.array([0.0, 1.0])
    return jnp.mean(model(params, ends) ** 2)

  namespace: dict[str, Any] = {
      "residual_loss": residual_loss, "boundary_loss": boundary_loss
  }
  exec(compile(_use_block(), str(README), "exec"), namespace)
  step, tx = namespace["step"], namespace["tx"]
  rule, sa = namespace["rule"], namespace["sa"]

  params = {"a": jnp.float32(0.1), "w": jnp.float32(2.0), "b": jnp.float32(0.3)}
  opt_state = tx.init(params)
  total = lambda p: float(
      residual_loss(p, {"scale": 1.0}) + boundary_loss(p, {"scale": 1.0})
  )
  start = total(params)
  scales = [1.0] * 5 + [np.nan, np.inf] + [1.0] * 600
  after_nan, log = None, {}
  for i, scale in enumerate(scales):
    params, opt_state, log = step(params, opt_state, {"scale": jnp.float32(scale)})
    chex.assert_tree_all_finite(params)
    if i == 6:
      after_nan = total(params)
  assert after_nan is not None
  assert after_nan < 1.01 * start
  state = sa.find_weighting_state(opt_state, rule)
  assert int(state.num_skipped) == 2
  assert int(log["num_skipped"]) == 2
  assert int(state.count) == len(scales) - 2
  assert {"weight/residual", "weight/boundary", "count"} <= set(log)
  assert total(params) < 0.3 * after_nan  # training went on
