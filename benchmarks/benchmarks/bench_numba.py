"""asv suite: Hutchinson on the numba backend against the plain SciPy path.

Symmetric CSR matrices with about 20 nonzeros per row (random pattern) and 64
Rademacher probes, as in ``benchmarks/numba_vs_scipy.py`` (which prints the
ratios of one run). ``setup`` builds the matrix and runs every path once, so no
numba compilation is timed.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

import sketchtrace as st

# the matrix generator lives with the side-by-side script (benchmarks/numba_vs_scipy.py)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numba_vs_scipy import symmetric_csr as _symmetric_csr  # noqa: E402


def _scipy_path(C, k, rng):
    V = 2.0 * rng.integers(0, 2, size=(C.shape[0], k), dtype=np.int8) - 1.0
    return np.einsum("ij,ij->j", V, C @ V).mean()


class NumbaHutchinson:
    params = ([100_000, 400_000], [64])
    param_names = ["n", "probes"]
    timeout = 300

    def setup(self, n, probes):
        self.C = _symmetric_csr(n)
        self.op = st.as_operator(self.C)
        self.truth = float(self.C.diagonal().sum())
        st.hutchinson(np.random.default_rng(0), self.op, num_matvecs=probes)  # compile (or load the cache)
        st.hutchinson(np.random.default_rng(0), self.op, num_matvecs=probes, sampler="gaussian")
        _scipy_path(self.C, probes, np.random.default_rng(0))

    def time_numba_rademacher(self, n, probes):
        st.hutchinson(np.random.default_rng(1), self.op, num_matvecs=probes)

    def time_numba_gaussian(self, n, probes):
        st.hutchinson(np.random.default_rng(1), self.op, num_matvecs=probes, sampler="gaussian")

    def time_scipy_path(self, n, probes):
        _scipy_path(self.C, probes, np.random.default_rng(1))

    def peakmem_numba_rademacher(self, n, probes):
        st.hutchinson(np.random.default_rng(1), self.op, num_matvecs=probes)

    def peakmem_scipy_path(self, n, probes):
        _scipy_path(self.C, probes, np.random.default_rng(1))

    def track_error_in_standard_errors(self, n, probes):
        # |estimate - trace| / reported sem: about 0.8 on average for honest error bars
        est = st.hutchinson(np.random.default_rng(7), self.op, num_matvecs=probes)
        return abs(float(est.value) - self.truth) / float(est.sem)

    track_error_in_standard_errors.unit = "standard errors"


class NumbaMatrixFree:
    """A numba-compiled stencil matvec called over the probes in parallel."""

    params = ([100_000], [16, 64])
    param_names = ["n", "probes"]
    timeout = 300

    def setup(self, n, probes):
        import numba

        @numba.njit
        def stencil(v):
            out = np.empty_like(v)
            m = v.shape[0]
            for i in range(m):
                s = (2.0 + np.sin(i)) * v[i]
                if i > 0:
                    s -= v[i - 1]
                if i + 1 < m:
                    s -= v[i + 1]
                out[i] = s
            return out

        self.op = st.FunctionOperator(stencil, n, np.float64)
        st.hutchinson(np.random.default_rng(0), self.op, num_matvecs=probes)

    def time_numba_function(self, n, probes):
        st.hutchinson(np.random.default_rng(1), self.op, num_matvecs=probes)
