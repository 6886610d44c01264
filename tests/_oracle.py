"""The reference package as a test oracle, with stored values as a fallback.

The oracle is PyPI ``softadapt`` 0.2.0 (Keras 3, GPL-3.0) on the JAX backend of
Keras: a test-only dependency. When it is not installed, the golden values
below (produced by it, float32, ``beta=0.1``, its ``epsilon=1e-7``) stand in.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

HAVE_ORACLE = importlib.util.find_spec("softadapt") is not None
ORACLE_EPSILON = 1e-7  # keras.backend.epsilon()

# The reference README's loss histories (columns are components).
LOSS_A = [1, 2, 3, 4, 5]
LOSS_B = [150, 100, 50, 10, 0.1]
LOSS_C = [1500, 1000, 500, 100, 1]
LOSS_D = [10, 20, 30, 40, 50]
EXAMPLE_1 = np.array([LOSS_A, LOSS_B, LOSS_C], np.float32).T
EXAMPLE_2 = np.array([LOSS_A, LOSS_B, LOSS_C, LOSS_D], np.float32).T

# (example, variant, order) -> reference weights.
GOLDEN = {
    ("ex1", "original", None): [
        0.9934332370758057, 0.006566627416759729, 3.8908036008597355e-22],
    ("ex1", "original", 1): [
        0.7483562231063843, 0.2516096830368042, 3.397532054805197e-05],
    ("ex1", "original", 2): [
        0.9963339567184448, 0.0036659317556768656, 1.1144577218246479e-24],
    ("ex1", "normalized", None): [
        0.3220723271369934, 0.3250792622566223, 0.35284847021102905],
    ("ex1", "normalized", 1): [
        0.3218267261981964, 0.3250942826271057, 0.3530789613723755],
    ("ex1", "normalized", 2): [
        0.3220788240432739, 0.3250788152217865, 0.3528423011302948],
    ("ex1", "loss_weighted", None): [
        0.879777193069458, 0.12022281438112259, 7.123342100713118e-20],
    ("ex1", "loss_weighted", 1): [
        0.1256265491247177, 0.8731943368911743, 0.0011790904682129622],
    ("ex1", "loss_weighted", 2): [
        0.9293111562728882, 0.0706888735294342, 2.148969944485919e-22],
    ("ex2", "original", None): [
        0.28849926590919495, 0.0019069898407906294, 1.1299163978955399e-22,
        0.7095937132835388],
    ("ex2", "original", 3): [
        0.28844794631004333, 0.002084470121189952, 2.755591611261883e-22,
        0.7094674706459045],
    ("ex2", "normalized", None): [
        0.2435898780822754, 0.24590717256069183, 0.26732632517814636,
        0.24317666888237],
    ("ex2", "normalized", 3): [
        0.24358877539634705, 0.24590782821178436, 0.26733559370040894,
        0.24316778779029846],
    ("ex2", "loss_weighted", None): [
        0.03886108472943306, 0.005310423206537962, 3.1464950856978077e-21,
        0.9558285474777222],
    ("ex2", "loss_weighted", 3): [
        0.0388418473303318, 0.0058028134517371655, 7.67110336416772e-21,
        0.9553553462028503],
}
EXAMPLES = {"ex1": EXAMPLE_1, "ex2": EXAMPLE_2}

_CLASS_NAMES = {
    "original": "SoftAdapt",
    "normalized": "NormalizedSoftAdapt",
    "loss_weighted": "LossWeightedSoftAdapt",
}


def oracle_weights(
    history: np.ndarray,
    variant: str,
    *,
    beta: float = 0.1,
    order: int | None = None,
    epsilon: float = ORACLE_EPSILON,
) -> np.ndarray:
  """The reference's ``get_component_weights`` on a ``[n, K]`` history."""
  import softadapt

  obj = getattr(softadapt, _CLASS_NAMES[variant])(
      beta=beta, accuracy_order=order
  )
  obj.epsilon = epsilon
  columns = [np.asarray(history[:, k]) for k in range(history.shape[1])]
  return np.asarray(obj.get_component_weights(*columns, verbose=False))
