"""Parity with a peer's own code where it installs here: jinns' soft_adapt.

The other peers do not install here: ``nvidia-physicsnemo-sym`` fails to
build its wheel from PyPI, NeuralPDE.jl needs Julia, and PyPI's ``jno`` is an
unrelated package. Their conventions are checked against values derived by
hand from their formulas in ``test_family_formulas.py``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import softadapt_jax as sa

jinns_updates = pytest.importorskip("jinns.loss._loss_weight_updates")


def test_ratio_softadapt_matches_jinns_soft_adapt():
  rng = np.random.default_rng(0)
  # jinns orders the terms as jax.tree.leaves of a dict: by sorted key.
  steps, names = 20, ("boundary_loss", "dyn_loss", "initial_condition")
  losses = np.exp(rng.normal(size=(steps, len(names)))).astype(np.float32)
  rule = sa.ratio_softadapt(len(names), **sa.RATIO_SOFTADAPT_CONVENTIONS["jinns"])
  state = rule.init()
  stored = {n: jnp.asarray(losses[:, i]) for i, n in enumerate(names)}
  initial = {n: jnp.asarray(1.0) for n in names}
  for t in range(steps):
    ours, state = rule.update(state, jnp.asarray(losses[t]))
    terms = {n: jnp.asarray(losses[t, i]) for i, n in enumerate(names)}
    theirs = jinns_updates.soft_adapt(initial, t, terms, stored)
    if t == 0:  # jinns keeps its initial weights (ours: 1/K, the same ratios)
      np.testing.assert_allclose(ours, np.asarray(theirs) / len(names))
    else:
      np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
