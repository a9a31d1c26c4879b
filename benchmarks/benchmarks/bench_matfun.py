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
