"""Test configuration: JAX and hypothesis are configured here, once."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# jaxlib 0.10.2 can deadlock on a 2-core CPU when two vmapped (batched) LAPACK calls, e.g. a
# Cholesky and a triangular solve, run concurrently: each waits on the same two-thread pool
# (jax::ParallelBatchMap). Disabling XLA's concurrency-optimized scheduler made a small
# reproducer pass but did not remove every hang, so tests that sample LAPACK-using estimators
# over many keys use lax.map instead of vmap (tests/_stats.py: map_keys).
_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Statistical tests compare against float64 truths; run JAX in double precision.
jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "default",
    derandomize=True,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs and trace caches after each test module.

    One pytest process runs the whole suite; without this, every module's compiled programs stay
    resident (7.7 GB of RSS by the end of the suite, 2026-12-08), and a rare segfault late in the
    run (CI on bb04f9a, in test_xtrace after 1375 tests) had that much live state behind it. On five
    JAX-heavy modules: peak RSS 4.6 -> 3.1 GB for 2.5 % more time (the programs they share recompile)."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def key():
    return jax.random.key(0)
