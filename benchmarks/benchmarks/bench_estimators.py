"""asv suite: estimators x backends x operator kinds at a fixed budget.

``setup`` builds the operator, computes its exact trace and calls the estimator once
(JAX: ``jax.jit`` compilation; numba: kernel compilation or cache load), so the
``time_*`` benchmarks measure steady-state calls (peak memory is tracked by
``ChunkedProbes``, ``bench_ntk`` and ``bench_numba``: one process per benchmark and
parameter set is costly here, so this 40-combination grid has no ``peakmem_*``). ``track_*``
reports the relative error ``|estimate - trace| / |trace|`` of one fixed-seed call at
the budget (regressions in accuracy show up as jumps).

Operator kinds (all float64, PSD unless said otherwise so that every estimator applies):

- ``dense``: ``G G^T / n`` with a decaying spectrum, n = 1000.
- ``sparse``: a diagonally dominant symmetric CSR matrix, n = 20000 (numba: the CSR
  kernels; JAX: a BCOO matrix passed to the jitted function, matvec via
  ``FunctionOperator``).
- ``jvp`` / ``vjp``: the Jacobian of a 2-layer MLP R^256 -> R^256 at a point
  (``JacobianOperator(mode="fwd" | "bwd")``), not symmetric: no XNysTrace.
- ``gram``: ``gram(J, side="input")`` = ``J^T J`` of that Jacobian (PSD).

The numba backend runs on NumPy / SciPy operators only; the other combinations raise
``NotImplementedError`` in ``setup`` (asv's way to skip a parameter combination).
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import sketchtrace as st  # noqa: E402

jax.config.update("jax_enable_x64", True)

ESTIMATORS = {"hutchinson": st.hutchinson, "hutchpp": st.hutchpp, "xtrace": st.xtrace, "xnystrace": st.xnystrace}
PSD_KINDS = ("dense", "sparse", "gram")
NUMPY_KINDS = ("dense", "sparse")


def dense_psd(n, seed=0):
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, n)) * (np.arange(1, n + 1) ** -0.75)
    return G @ G.T / n


def sparse_psd(n, per_row=5, seed=0):
    rng = np.random.default_rng(seed)
    R = sp.coo_matrix(
        (rng.standard_normal(per_row * n), (np.repeat(np.arange(n), per_row), rng.integers(0, n, per_row * n))),
        shape=(n, n),
    )
    S = (R + R.T).tocsr()
    S = S + sp.diags(np.asarray(abs(S).sum(axis=1)).ravel() + 1.0)  # diagonally dominant -> PSD
    S = S.tocsr()
    S.sum_duplicates()
    return S


def mlp(n, width=256, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    W1 = jax.random.normal(k1, (width, n)) / np.sqrt(n)
    W2 = jax.random.normal(k2, (width, width)) / np.sqrt(width)
    W3 = jax.random.normal(k3, (n, width)) / np.sqrt(width)

    def f(x):
        return W3 @ jnp.tanh(W2 @ jnp.tanh(W1 @ x)) + x

    return f


def build(kind, backend, n_dense=1000, n_sparse=20_000, n_mlp=256):
    """``(call, truth)``: ``call(estimator, key, num_matvecs) -> Estimate`` for one kind/backend."""
    if backend == "numba" and kind not in NUMPY_KINDS:
        raise NotImplementedError("numba backend: NumPy/SciPy operators only")
    if kind == "dense":
        A = dense_psd(n_dense)
        truth = float(np.trace(A))
        if backend == "numba":
            op = st.as_operator(A)
            return (lambda est, key, m: est(key, op, num_matvecs=m)), truth
        Aj = jnp.asarray(A)
        return _jitted(lambda a: st.as_operator(a), Aj), truth
    if kind == "sparse":
        S = sparse_psd(n_sparse)
        truth = float(S.diagonal().sum())
        if backend == "numba":
            op = st.as_operator(S)
            return (lambda est, key, m: est(key, op, num_matvecs=m)), truth
        from jax.experimental import sparse as jsparse

        M = jsparse.BCOO.from_scipy_sparse(S)
        return _jitted(lambda M: st.FunctionOperator(lambda v: M @ v, S.shape[0], jnp.float64), M), truth
    f = mlp(n_mlp)
    x = jax.random.normal(jax.random.key(1), (n_mlp,))
    J = np.asarray(jax.jacfwd(f)(x))
    if kind in ("jvp", "vjp"):
        mode = "fwd" if kind == "jvp" else "bwd"
        return _jitted(lambda x: st.JacobianOperator(f, x, mode=mode), x), float(np.trace(J))
    if kind == "gram":
        return _jitted(lambda x: st.gram(st.JacobianOperator(f, x), side="input"), x), float(np.sum(J * J))
    raise ValueError(kind)


def _jitted(make_op, arg):
    cache = {}

    def call(est, key, m):
        fn = cache.get((est, m))
        if fn is None:
            fn = cache[(est, m)] = jax.jit(lambda k, a: est(k, make_op(a), num_matvecs=m))
        return jax.block_until_ready(fn(key, arg))

    return call


def _key(backend, seed):
    return jax.random.key(seed) if backend == "jax" else np.random.default_rng(seed)


class Estimators:
    params = (list(ESTIMATORS), ["jax", "numba"], ["dense", "sparse", "jvp", "vjp", "gram"])
    param_names = ["estimator", "backend", "operator"]
    timeout = 300
    num_matvecs = 40
    sizes = dict(n_dense=1000, n_sparse=20_000, n_mlp=256)

    def setup(self, estimator, backend, operator):
        if estimator == "xnystrace" and operator not in PSD_KINDS:
            raise NotImplementedError("XNysTrace needs a PSD operator")
        self.call, self.truth = build(operator, backend, **self.sizes)
        self.est = ESTIMATORS[estimator]
        self.call(self.est, _key(backend, 0), self.num_matvecs)  # compile

    def time_estimate(self, estimator, backend, operator):
        self.call(self.est, _key(backend, 1), self.num_matvecs)

    def track_relative_error(self, estimator, backend, operator):
        est = self.call(self.est, _key(backend, 7), self.num_matvecs)
        return abs(float(est.value) - self.truth) / abs(self.truth)

    track_relative_error.unit = "relative error"


class ChunkedProbes:
    """Hutchinson with and without ``chunk_size`` on a matrix-free operator (JAX, jit)."""

    params = ([None, 16], [128])
    param_names = ["chunk_size", "probes"]
    timeout = 300
    n = 200_000

    def setup(self, chunk_size, probes):
        n = self.n
        d = jnp.linspace(1.0, 2.0, n)
        op = st.FunctionOperator(lambda v: d * v + 0.5 * jnp.roll(v, 1) + 0.5 * jnp.roll(v, -1), n, jnp.float64)
        self.fn = jax.jit(lambda k: st.hutchinson(k, op, num_matvecs=probes, chunk_size=chunk_size).value)
        self.fn(jax.random.key(0)).block_until_ready()

    def time_hutchinson(self, chunk_size, probes):
        self.fn(jax.random.key(1)).block_until_ready()

    def peakmem_hutchinson(self, chunk_size, probes):
        self.fn(jax.random.key(1)).block_until_ready()

    def track_xla_temp_mib(self, chunk_size, probes):
        mem = self.fn.lower(jax.random.key(1)).compile().memory_analysis()
        return mem.temp_size_in_bytes / 2**20

    track_xla_temp_mib.unit = "MiB"
