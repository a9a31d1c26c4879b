"""asv suite: one predictor-corrector update along a sequence of operators.

A slowly drifting PSD sequence ``A_t = A_0 + t * eps * E`` (dense, n = 1000). ``setup``
builds ``A_0, A_1``, runs ``pc.init`` and compiles the update (JAX, jit) or warms the
numba kernels. ``track_relative_error`` runs 20 updates along the sequence and reports
``|T_20 - tr(A_20)| / tr(A_20)``.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import sketchtrace as st  # noqa: E402

jax.config.update("jax_enable_x64", True)


def _sequence(n, seed=0):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, n)) * (np.arange(1, n + 1) ** -0.75)
    A0 = G @ G.T / n
    E = rng.standard_normal((n, n)) / n
    E = (E + E.T) / 2
    return lambda t: A0 + 1e-2 * t * E


class PredictorCorrector:
    params = (["jax", "numba"], [1, 4])
    param_names = ["backend", "num_probes"]
    timeout = 300
    n = 1000

    def setup(self, backend, num_probes):
        self.A = _sequence(self.n)
        self.pc = st.predictor_corrector(num_probes=num_probes, gamma=0.1, init_matvecs=32)
        if backend == "jax":
            self.key = jax.random.key
            self.mat = jnp.asarray
            pc = self.pc
            self.update = jax.jit(lambda k, s, a, b: pc.update(k, s, st.as_operator(a), st.as_operator(b)))
        else:
            self.key = np.random.default_rng
            self.mat = np.asarray
            self.update = lambda k, s, a, b: self.pc.update(k, s, a, b)
        self.A0, self.A1 = self.mat(self.A(0)), self.mat(self.A(1))
        self.state = self.pc.init(self.key(0), self.A0)
        jax.block_until_ready(self.update(self.key(1), self.state, self.A0, self.A1))

    def time_update(self, backend, num_probes):
        jax.block_until_ready(self.update(self.key(2), self.state, self.A0, self.A1))

    def peakmem_update(self, backend, num_probes):
        jax.block_until_ready(self.update(self.key(2), self.state, self.A0, self.A1))

    def track_relative_error(self, backend, num_probes):
        state, prev = self.state, self.A0
        for t in range(1, 21):
            nxt = self.mat(self.A(t))
            est, state = self.update(self.key(100 + t), state, prev, nxt)
            prev = nxt
        truth = float(np.trace(self.A(20)))
        return abs(float(est.value) - truth) / truth

    track_relative_error.unit = "relative error"
