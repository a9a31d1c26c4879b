"""asv suite: log-determinants by stochastic Lanczos quadrature, ours against matfree's.

The problems and contenders of ``benchmarks/matfun.py`` (which prints errors and
ratios side by side in one run): dense SPD matrices ``Q diag(lam) Q^T`` with flat,
polynomially and exponentially decaying spectra (n = 1000; 10 probes x 20 Lanczos
steps), and the numba backend against a SciPy Lanczos loop on a sparse SPD matrix.
``setup`` compiles every jitted contender (and the numba kernels) once, so ``time_*``
measures steady-state calls; ``track_*`` reports the relative error of one
fixed-key call (a jump means an accuracy regression).
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

import sketchtrace as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from matfun import contenders, dense_spd, scipy_lanczos_logdet, sparse_spd, spectra

jax.config.update("jax_enable_x64", True)

N, PROBES, STEPS = 1000, 10, 20
CONTENDERS = [
    "sketchtrace slq",
    "sketchtrace slq (reorth)",
    "sketchtrace deflated",
    "matfree slq",
    "matfree slq (reorth)",
]


class LogdetSLQ:
    params = (["flat", "polynomial", "exponential"], CONTENDERS)
    param_names = ["spectrum", "contender"]
    timeout = 300

    def setup(self, spectrum, contender):
        lam = spectra(N)[spectrum]
        A = dense_spd(lam)
        self.truth = float(np.sum(np.log(lam)))
        self.fn = contenders(st.as_operator(A), lambda v: A @ v, N, PROBES, STEPS)[contender]
        self.key = jax.random.key(0)
        jax.block_until_ready(self.fn(self.key))

    def time_logdet(self, spectrum, contender):
        jax.block_until_ready(self.fn(self.key))

    def track_relative_error(self, spectrum, contender):
        return abs(float(self.fn(self.key)) - self.truth) / abs(self.truth)


class NumbaLanczos:
    params = ([100_000, 400_000], ["numba st.logdet", "scipy block Lanczos loop"])
    param_names = ["n", "contender"]
    timeout = 600

    def setup(self, n, contender):
        self.C = sparse_spd(n)
        self.op = st.as_operator(self.C)
        self.run(n, contender)  # numba compilation / cache load

    def run(self, n, contender):
        if contender == "numba st.logdet":
            return st.logdet(
                np.random.default_rng(1), self.op, num_matvecs=PROBES * STEPS, lanczos_steps=STEPS, allow_exact=False
            ).value
        return scipy_lanczos_logdet(self.C, PROBES, STEPS, np.random.default_rng(1))

    def time_logdet(self, n, contender):
        self.run(n, contender)


class NumbaLanczosKernel:
    """The numba Lanczos alone: the fused CSR recurrence ``st.logdet`` runs against the previous path
    (the backend's block product, then separate dot, update and scaling kernels)."""

    params = (["fused", "previous"],)
    param_names = ["kernel"]
    timeout = 600

    def setup(self, kernel):
        from sketchtrace.backends._numba import NumbaBackend
        from sketchtrace.backends._numba_lanczos import lanczos_csr, lanczos_numba

        C = sparse_spd(400_000)
        prepared = NumbaBackend.prepare(st.as_operator(C))
        Z = NumbaBackend.probes(np.random.default_rng(1), PROBES, C.shape[0], np.float64)
        self.fns = {
            "fused": lambda: lanczos_csr(C.indptr, C.indices, C.data, Z, STEPS),
            "previous": lambda: lanczos_numba(lambda V: NumbaBackend.matmat(prepared, V), Z, STEPS),
        }
        self.fns[kernel]()  # compilation / cache load

    def time_lanczos(self, kernel):
        self.fns[kernel]()


class NumbaBlockProduct:
    """The block product behind the numba Lanczos: plain row loop against column tiles (same bits)."""

    params = (["plain", "tiled"],)
    param_names = ["kernel"]
    timeout = 300

    def setup(self, kernel):
        from sketchtrace.backends import _numba_kernels as K

        C = sparse_spd(400_000)
        self.K, self.C = K, C
        self.VT = np.random.default_rng(0).standard_normal((C.shape[0], PROBES))
        self.out = np.empty_like(self.VT)
        self.starts = K.row_chunks(C.shape[0], None)[0]
        self.splits = K.tile_splits(C.indptr, C.indices, C.shape[1], K.tile_width(self.VT), self.starts)
        self.time_product(kernel)

    def time_product(self, kernel):
        K, C = self.K, self.C
        if kernel == "tiled":
            K.csr_matmat_tiled(self.splits, C.indices, C.data, self.VT, self.starts, self.out)
        else:
            K._csr_matmat_par(C.indptr, C.indices, C.data, self.VT, self.starts, self.out)


class EagerCalls:
    """Eager ``st.hutchinson`` / ``st.xtrace`` (one cached program each) against the same call in jax.jit."""

    params = (["hutchinson", "xtrace"], ["eager", "jit"])
    param_names = ["estimator", "mode"]

    def setup(self, estimator, mode):
        est = getattr(st, estimator)
        A = jax.random.normal(jax.random.key(1), (N, N))
        self.A, self.key = A @ A.T / N, jax.random.key(0)
        if mode == "jit":
            f = jax.jit(lambda k, a: est(k, a, num_matvecs=40).value)
        else:
            f = lambda k, a: est(k, a, num_matvecs=40).value  # noqa: E731
        self.fn = f
        jax.block_until_ready(f(self.key, self.A))

    def time_call(self, estimator, mode):
        jax.block_until_ready(self.fn(self.key, self.A))
