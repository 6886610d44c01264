"""What to log: any rule's weights and signals, found inside any ``opt_state``."""

from __future__ import annotations

from typing import Any

from softadapt_jax import _protocol
from softadapt_jax._routes import find_weighting_state


def diagnostics(
    tree: Any, rule: _protocol.LossWeighting, *, flat: bool = False
) -> dict[str, Any]:
  """The weights and the rule's own signals, from its state in ``tree``.

  Pure JAX (no host callback): return it from the body of a ``lax.scan`` and
  every step's diagnostics come out stacked. Every rule logs ``"weight"`` (the
  weights of the last step: those applied, since the state is the one the
  step recorded), ``"count"`` and ``"num_skipped"``; each adds its own
  signals, named in its docstring (SoftAdapt: ``"loss"``, the newest recorded
  losses, and ``"slope"``, the slopes of the loss history, of ``log L`` with
  ``log_losses``, 0 during warm-up).

  Args:
    tree: the rule's state, or any pytree holding it (an ``opt_state``).
    rule: the rule.
    flat: ``{"weight/residual": ..., "count": ...}``, one scalar per entry,
      for a metric writer; by default the per-component entries come in the
      structure of the losses (a ``[K]`` vector, or a dict of named scalars).

  Returns:
    A dict of arrays.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import softadapt_jax as sa
    >>> rule = sa.softadapt(["residual", "boundary"], beta=1.0)
    >>> def body(state, losses):
    ...   _, state = rule.update(state, losses)
    ...   return state, sa.diagnostics(state, rule, flat=True)
    >>> losses = {"residual": jnp.array([4.0, 3.0, 1.0]),
    ...           "boundary": jnp.array([1.0, 1.5, 1.5])}
    >>> _, log = jax.lax.scan(body, rule.init(), losses)
    >>> log["slope/residual"].tolist(), log["weight/boundary"].tolist()
    ([0.0, -1.0, -2.0], [0.5, 0.8175744414329529, 0.8807970285415649])
  """
  return rule.diagnostics(find_weighting_state(tree, rule), flat=flat)
