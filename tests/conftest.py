"""Test configuration.

- The oracle (the ``softadapt`` package) runs on the JAX backend of Keras.
- The test workers of one run share a persistent compilation cache in a fresh
  temporary directory (``pytest -n 2`` runs the same programs in both
  workers, and many tests build the same programs again): about a tenth of
  the suite's time, measured. ``SOFTADAPT_JAX_TEST_CACHE=0`` turns it off.
- XLA compiles without its expensive LLVM passes
  (``jax_disable_most_optimizations``; HLO passes and fusion still run): the
  suite compiles thousands of small programs and runs each a few times, so
  compiling is most of its time. Measured on a fresh clone (``bash
  .ci/run``, 2 cores): 296 s before, 244 s after. The variable is exported,
  so the subprocess tests compile the same way. A test whose tolerance is
  set by the optimised program's rounding (vmap against a loop) carries
  ``@pytest.mark.full_optimization``, and so does every test that shares its
  cached runs (tests/test_sweeps.py). The ``slow`` tier compiles fully, as
  before: its cases are the solver-heavy ones, where running can outweigh
  compiling. ``SOFTADAPT_JAX_TEST_FULL_OPT=1`` compiles everything fully,
  as users do.
- Every compiled program JAX keeps alive holds about 13 memory mappings: a
  process that keeps a few thousand reaches the kernel's limit
  (``vm.max_map_count``, 65,530 here) and XLA crashes with a segmentation
  fault in its next compile (measured: ``pytest -m slow
  tests/test_contract.py`` in one process, 65,417 mappings at the crash).
  After a test that leaves more than ``_MAX_MAPPINGS``, JAX's caches are
  cleared.
"""

import os
import pathlib
import tempfile

import jax
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")

if os.environ.get("SOFTADAPT_JAX_TEST_CACHE", "1") != "0":
  # One directory per run: the xdist run id is shared by the workers; a
  # plain (single-process) run gets its own.
  _run = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"pid{os.getpid()}")
  _dir = pathlib.Path(tempfile.gettempdir()) / f"softadapt_jax_tests_{_run}"
  jax.config.update("jax_compilation_cache_dir", str(_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

_FAST_COMPILE = os.environ.get("SOFTADAPT_JAX_TEST_FULL_OPT", "0") != "1"


def _compile_fully(full: bool) -> None:
  """Switch the mode (here and, through the variable, in subprocesses); the
  in-memory caches do not key on it, so clear them."""
  if jax.config.values["jax_disable_most_optimizations"] == full:
    jax.clear_caches()
    jax.config.update("jax_disable_most_optimizations", not full)
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "0" if full else "1"


if _FAST_COMPILE:
  _compile_fully(False)


@pytest.fixture(autouse=True)
def _optimization(request) -> None:
  """Compile fully inside tests marked ``full_optimization`` or ``slow``."""
  if _FAST_COMPILE:
    node = request.node
    _compile_fully(
        node.get_closest_marker("full_optimization") is not None
        or node.get_closest_marker("slow") is not None
    )


_MAX_MAPPINGS = 30_000
_MAPS = pathlib.Path("/proc/self/maps")


@pytest.fixture(autouse=True)
def _bounded_mappings():
  """Clear JAX's caches when the compiled programs near the mapping limit."""
  yield
  if _MAPS.exists() and _MAPS.read_bytes().count(b"\n") > _MAX_MAPPINGS:
    jax.clear_caches()


# The longest single tests (a subprocess each, 10-20 s) go first, so that
# under ``-n 2`` neither worker finishes the run alone with one of them.
_FIRST = (
    "tests/test_typecheck.py::",
    "tests/test_distributed.py::",
    "tests/test_checkpoint.py::test_resume_in_fresh_process",
)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: not item.nodeid.startswith(_FIRST))
