"""Open dispatch: a user's operator on every backend, derived products, no writes onto user objects."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import sketchtrace as st

numba = pytest.importorskip("numba")
torch = pytest.importorskip("torch")

from sketchtrace.backends import JaxBackend  # noqa: E402
from sketchtrace.backends._numba import NumbaBackend  # noqa: E402
from sketchtrace.operators import TorchFunctionOperator, TorchGramOperator, TorchTensorOperator  # noqa: E402

N = 24
_rng = np.random.default_rng(3)
_B = _rng.standard_normal((N, N))
A = _B @ _B.T / N + np.diag(np.linspace(1.0, 3.0, N))


class UserOperator(st.LinearOperator):
    """What a user writes: shape, dtype and matmat, nothing else (the products take the
    arrays of whatever backend holds ``M``)."""

    def __init__(self, M):
        self.M = M
        self.shape = tuple(M.shape)
        self.dtype = np.float64

    def matmat(self, V):
        return V @ self.M.T


# per backend: the randomness, the user's matrix in that backend's arrays, the built-in equivalent
BACKENDS = {
    "jax": (lambda s: jax.random.key(s), jnp.asarray, st.as_operator),
    "numba": (lambda s: np.random.default_rng(s), np.asarray, st.as_operator),
    "torch": (lambda s: torch.Generator().manual_seed(s), torch.from_numpy, lambda M: TorchTensorOperator(M)),
}
ESTIMATORS = {"hutchinson": st.hutchinson, "hutchpp": st.hutchpp, "xtrace": st.xtrace}


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_user_operator_runs_on_every_backend(backend, estimator):
    """A subclass with only matmat and shape/dtype gives, with the same randomness, the estimate of
    the built-in operator holding the same matrix, and the exact trace at the full budget."""
    make_key, to_array, builtin = BACKENDS[backend]
    fn = ESTIMATORS[estimator]
    user = UserOperator(to_array(A))
    assert user.products == frozenset({"matmat", "quad_forms"})
    got = fn(make_key(7), user, num_matvecs=12)
    ref = fn(make_key(7), builtin(to_array(A)), num_matvecs=12)
    assert np.isclose(float(got.value), float(ref.value), rtol=1e-9, atol=0)
    assert np.isclose(float(got.sem), float(ref.sem), rtol=1e-7, atol=1e-12)
    exact = fn(make_key(7), user, num_matvecs=N)
    assert np.isclose(float(exact.value), np.trace(A), rtol=1e-10) and float(exact.sem) == 0.0


def test_user_operator_refused_where_its_arrays_do_not_fit():
    """A JAX-array operator with a NumPy Generator: a clear TypeError naming the backend's arrays."""
    user = UserOperator(jnp.asarray(A))
    with pytest.raises(TypeError, match="NumPy arrays"):
        st.hutchinson(np.random.default_rng(0), user, num_matvecs=4)

    class HostOperator(UserOperator):  # always answers in NumPy
        def matmat(self, V):
            return np.asarray(V) @ self.M.T

    with pytest.raises(TypeError, match="torch tensors"):
        st.hutchinson(torch.Generator().manual_seed(0), HostOperator(A), num_matvecs=4)


def test_gram_of_a_numpy_matrix_on_numba():
    G = np.random.default_rng(1).standard_normal((30, N))
    fro = float((G**2).sum())
    for side in ("input", "output"):
        op = st.gram(G, side=side)
        dim = op.shape[0]
        assert np.isclose(float(st.hutchinson(np.random.default_rng(0), op, num_matvecs=dim).value), fro, rtol=1e-12)
        # same probes as the dense Gram matrix: the same estimate to rounding
        dense = G.T @ G if side == "input" else G @ G.T
        a = st.hutchinson(np.random.default_rng(5), op, num_matvecs=6).value
        b = st.hutchinson(np.random.default_rng(5), dense, num_matvecs=6).value
        assert np.isclose(float(a), float(b), rtol=1e-10)
    # XTrace needs matmat: J^T J v from the stored matrix and its transpose
    x = st.xtrace(np.random.default_rng(2), st.gram(G), num_matvecs=12).value
    y = st.xtrace(np.random.default_rng(2), G.T @ G, num_matvecs=12).value
    assert np.isclose(float(x), float(y), rtol=1e-8)


def test_wrappers_derive_their_products():
    f = TorchFunctionOperator(lambda v: 2.0 * v, N, torch.float64)  # no rmatvec
    assert f.products == frozenset({"matmat", "quad_forms"})
    assert st.gram(f, side="input").products == frozenset({"quad_forms"})  # J^T J v needs J^T
    assert st.gram(f, side="output").products == frozenset()  # ||J^T u||^2 needs J^T
    assert f.T.products == frozenset({"rmatmat"})
    assert st.as_operator(A).T.products == frozenset({"matmat", "rmatmat", "quad_forms"})
    assert UserOperator(A).T.products == frozenset({"rmatmat"})
    # a Gram of a matvec-only torch operator is refused by Hutch++/XTrace before any product
    calls = []

    def mv(v):
        calls.append(1)
        return 2.0 * v

    g = st.gram(TorchFunctionOperator(mv, N, torch.float64, vectorized=False), side="input")
    for est in (st.hutchpp, st.xtrace):
        with pytest.raises(ValueError, match="needs the product.*matmat"):
            est(torch.Generator().manual_seed(0), g, num_matvecs=6)
    assert not calls
    # ... and Hutchinson runs on its quadratic forms ||J v||^2 = 4 ||v||^2
    assert np.isclose(float(st.hutchinson(torch.Generator().manual_seed(0), g, num_matvecs=N).value), 4.0 * N)


def test_with_structure_on_a_transpose():
    t = st.as_operator(A).T.with_structure(psd=True)
    assert t.symmetric is True and t.psd is True
    assert isinstance(t, st.operators.TransposedOperator)
    with pytest.raises(ValueError, match="square"):
        st.as_operator(np.ones((3, 4))).T.with_structure(symmetric=True)


def test_torch_gram_is_the_gram_operator():
    J = TorchTensorOperator(torch.from_numpy(np.random.default_rng(4).standard_normal((9, 5))))
    g = st.operators.torch_gram(J)
    assert isinstance(g, TorchGramOperator) and isinstance(g, st.GramOperator)
    assert type(g).quad_forms is st.GramOperator.quad_forms and type(g).matmat is st.GramOperator.matmat
    blocked = st.operators.torch_gram(J.with_blocks({"a": 4, "b": 5}), side="output")
    V = torch.from_numpy(np.random.default_rng(5).standard_normal((3, 9)))
    JtV = V @ J.A  # rows J^T v
    per_block = [((V[:, a:b] @ J.A[a:b]) ** 2).sum(-1) for a, b in ((0, 4), (4, 9))]
    np.testing.assert_allclose(blocked.quad_forms(V).numpy(), torch.stack(per_block, -1).numpy(), rtol=1e-12)
    unblocked = st.operators.torch_gram(J, side="output").quad_forms(V)
    np.testing.assert_allclose(unblocked[:, 0].numpy(), (JtV**2).sum(-1).numpy(), rtol=1e-12)
    # st.gram of a torch operator runs on the torch backend as the same operator
    a = st.hutchinson(torch.Generator().manual_seed(1), st.gram(J), num_matvecs=3).value
    b = st.hutchinson(torch.Generator().manual_seed(1), g, num_matvecs=3).value
    assert float(a) == float(b)


def test_backends_write_nothing_onto_user_operators():
    from scipy.sparse.linalg import aslinearoperator

    ops = [st.as_operator(A), st.as_operator(sp.csr_matrix(A)), st.as_operator(aslinearoperator(A))]
    before = [dict(op.__dict__) for op in ops]
    for op in ops:
        st.hutchinson(np.random.default_rng(0), op, num_matvecs=3)
        st.hutchinson(jax.random.key(0), op, num_matvecs=3)
        st.hutchinson(np.random.default_rng(0), op, num_matvecs=3)  # the cached (weakly keyed) path
    for op, d in zip(ops, before):
        assert op.__dict__.keys() == d.keys()


def test_registering_an_operator_type():
    """The dispatch is open: a registration for a new type is what the backend uses."""

    class Scaled(st.LinearOperator):
        def __init__(self, c):
            self.c, self.shape, self.dtype = c, (N, N), np.float64

        def matmat(self, V):  # pragma: no cover - the registered rule replaces it on numba
            raise AssertionError("the registration should have been used")

    NumbaBackend.prepare_rule.register(Scaled)(lambda op: NumbaBackend.prepare(op.c * np.eye(N)))
    assert np.isclose(float(st.hutchinson(np.random.default_rng(0), Scaled(2.0), num_matvecs=N).value), 2.0 * N)
    seen = []
    JaxBackend.prepare_rule.register(Scaled)(lambda op: seen.append(op) or st.as_operator(op.c * jnp.eye(N)))
    assert np.isclose(float(st.hutchinson(jax.random.key(0), Scaled(3.0), num_matvecs=N).value), 3.0 * N)
    assert seen


def test_import_pinn_adapters_does_not_import_the_app():
    import subprocess
    import sys

    code = (
        "import sys, pinn_adapters as pa; print('pinn_adapters.app' in sys.modules); "
        "pa.train; print('pinn_adapters.app' in sys.modules, 'train' in dir(pa))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_one_version_source():
    from importlib.metadata import version

    assert st.__version__ == version("sketchtrace")


def test_a_backend_from_the_five_core_members():
    """BackendDefaults derives the rest of the protocol from name, xp, prepare, probes and split."""
    from sketchtrace.backends import Backend, BackendDefaults, CoreBackend

    class MiniBackend(BackendDefaults):
        name, xp = "mini", np

        def prepare(self, op):
            return NumbaBackend.prepare(op)  # NumPy products

        def probes(self, rng, num, dim, dtype, sampler="rademacher"):
            return (1 - 2 * rng.integers(0, 2, (num, dim))).astype(dtype)

        def split(self, rng, num):
            return list(rng.spawn(num))

    bk = MiniBackend()
    assert isinstance(bk, CoreBackend)
    # every member but Lanczos (the matrix-function estimators' kernel) comes from the defaults
    assert {m for m in dir(Backend) if not m.startswith("_")} - set(dir(bk)) == {"lanczos"}
    op = bk.prepare(UserOperator(A))
    np.testing.assert_allclose(bk.exact_quad_forms(op, 5).sum(), np.trace(A), rtol=1e-12)
    V = bk.probes(np.random.default_rng(1), 7, N, np.float64)
    Q = bk.quad_forms(np.random.default_rng(1), op, 7, "rademacher", 3)
    np.testing.assert_allclose(Q[:, 0], np.einsum("ki,ij,kj->k", V, A, V), rtol=1e-12)
    np.testing.assert_allclose(bk.matmat(op, V, 2), V @ A.T, rtol=1e-12)
    bad = A.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        bk.check_finite("op", bk.exact_quad_forms(bk.prepare(bad), None))
