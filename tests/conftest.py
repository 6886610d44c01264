"""Test configuration.

- The oracle (the ``softadapt`` package) runs on the JAX backend of Keras.
- The test workers of one run share a persistent compilation cache in a fresh
  temporary directory (``pytest -n 2`` runs the same programs in both
  workers, and many tests build the same programs again): about a tenth of
  the suite's time, measured. ``SOFTADAPT_JAX_TEST_CACHE=0`` turns it off.
"""

import os
import pathlib
import tempfile

import jax

os.environ.setdefault("KERAS_BACKEND", "jax")

if os.environ.get("SOFTADAPT_JAX_TEST_CACHE", "1") != "0":
  # One directory per run: the xdist run id is shared by the workers; a
  # plain (single-process) run gets its own.
  _run = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"pid{os.getpid()}")
  _dir = pathlib.Path(tempfile.gettempdir()) / f"softadapt_jax_tests_{_run}"
  jax.config.update("jax_compilation_cache_dir", str(_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
