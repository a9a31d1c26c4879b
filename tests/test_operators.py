"""Operators: every accepted input type, Jacobians over pytrees, Gram products, blocks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from jax.flatten_util import ravel_pytree
from scipy.sparse.linalg import aslinearoperator

import sketchtrace as st


def _rect(m=5, n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((m, n))


@pytest.mark.parametrize(
    "convert",
    [
        np.asarray,
        jnp.asarray,
        sp.csr_matrix,
        sp.csc_matrix,
        sp.coo_matrix,
        sp.csr_array,
        aslinearoperator,
    ],
    ids=["numpy", "jax", "csr", "csc", "coo", "csr_array", "scipy-linop"],
)
def test_as_operator_products_match_dense(convert):
    A = _rect()
    op = st.as_operator(convert(A))
    assert op.shape == (5, 4) and op.dtype == np.float64
    V = np.random.default_rng(1).standard_normal((3, 4))
    U = np.random.default_rng(2).standard_normal((3, 5))
    np.testing.assert_allclose(op.matmat(jnp.asarray(V)), V @ A.T, rtol=1e-12)
    np.testing.assert_allclose(op.rmatmat(jnp.asarray(U)), U @ A, rtol=1e-12)
    np.testing.assert_allclose(op @ jnp.asarray(V[0]), A @ V[0], rtol=1e-12)


def test_integer_matrix_is_converted_to_float():
    op = st.as_operator(np.eye(3, dtype=int))
    assert np.issubdtype(op.dtype, np.floating)
    # sparse too, as documented (it was refused as "not a real floating dtype" while dense was converted)
    for S in (sp.csr_matrix(2 * np.eye(3, dtype=np.int64)), sp.csr_matrix(np.eye(3, dtype=bool))):
        sop = st.as_operator(S)
        assert sop.dtype == np.float64
        assert float(st.hutchinson(np.random.default_rng(0), sop, num_matvecs=3).value) == S.diagonal().sum()


@pytest.mark.parametrize("shape", [(3.0, 3), (3, 2.5), (3,), (3, 3, 3), (True, 3), "33"])
def test_function_operator_shape_must_be_integers(shape):
    with pytest.raises(ValueError, match="shape must be an int n or a pair"):
        st.FunctionOperator(lambda v: v, shape=shape, dtype=jnp.float64)


def test_function_operator_with_and_without_rmatvec():
    A = jnp.asarray(_rect())
    op = st.FunctionOperator(lambda v: A @ v, (5, 4), jnp.float64)
    U = jnp.ones((2, 5))
    np.testing.assert_allclose(op.rmatmat(U), U @ A, rtol=1e-12)  # via jax.linear_transpose
    op2 = st.FunctionOperator(lambda v: A @ v, (5, 4), jnp.float64, rmatvec=lambda u: A.T @ u)
    np.testing.assert_allclose(op2.rmatmat(U), U @ A, rtol=1e-12)


def test_lineax_operator_is_accepted():
    lx = pytest.importorskip("lineax")
    A = jnp.asarray(_rect(4, 4))
    op = st.as_operator(lx.MatrixLinearOperator(A))
    assert op.shape == (4, 4)
    np.testing.assert_allclose(op.matmat(jnp.eye(4)), A.T, rtol=1e-12)
    est = st.hutchinson(jax.random.key(0), op, num_matvecs=4)
    np.testing.assert_allclose(float(est.value), float(jnp.trace(A)), rtol=1e-12)


def test_lineax_duck_typing_without_lineax():
    class Duck:  # the three methods lineax operators have
        def __init__(self, a):
            self.a = a

        def mv(self, x):
            return {"top": self.a[:2] @ x, "bottom": self.a[2:] @ x}

        def in_structure(self):
            return jax.ShapeDtypeStruct((3,), jnp.float64)

        def out_structure(self):
            return {"top": jax.ShapeDtypeStruct((2,), jnp.float64), "bottom": jax.ShapeDtypeStruct((1,), jnp.float64)}

    a = jnp.asarray(_rect(3, 3))
    op = st.as_operator(Duck(a))
    assert op.block_names == ("bottom", "top")  # jax flattens dicts in sorted key order
    exact = st.block_traces(jax.random.key(0), op, num_matvecs=3)
    # output rows are (bottom, top) = (a[2], a[0], a[1]); block traces are diagonals in that order
    perm = a[jnp.array([2, 0, 1])]
    np.testing.assert_allclose(float(exact["bottom"].value), float(perm[0, 0]), rtol=1e-12)
    np.testing.assert_allclose(float(exact["top"].value), float(perm[1, 1] + perm[2, 2]), rtol=1e-12)


def _pytree_f(params, x, scale):
    h = jnp.tanh(params["layer"]["w"] @ x + params["layer"]["b"])
    return {"u": scale * h, "v": jnp.stack([jnp.sum(h**2), params["c"] ** 2])}


@pytest.fixture
def pytree_case():
    rng = np.random.default_rng(0)
    params = {
        "layer": {"w": jnp.asarray(rng.standard_normal((3, 2))), "b": jnp.asarray(rng.standard_normal(3))},
        "c": jnp.asarray(0.7),
    }
    x = jnp.asarray([0.3, -0.2])
    flat, unravel = ravel_pytree(params)
    jac = jax.jacfwd(lambda p: ravel_pytree(_pytree_f(unravel(p), x, 2.0))[0])(flat)
    return params, x, np.asarray(jac)


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_jacobian_operator_over_pytrees(mode, pytree_case):
    params, x, jac = pytree_case
    J = st.JacobianOperator(_pytree_f, params, x, 2.0, mode=mode)
    assert J.shape == jac.shape == (5, 10)
    assert J.blocks == (("u", 0, 3), ("v", 3, 5))
    V = jnp.asarray(np.random.default_rng(3).standard_normal((4, 10)))
    U = jnp.asarray(np.random.default_rng(4).standard_normal((4, 5)))
    np.testing.assert_allclose(J.matmat(V), V @ jac.T, rtol=1e-12)
    np.testing.assert_allclose(J.rmatmat(U), U @ jac, rtol=1e-12)
    tree = J.unravel_input(V[0])
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    assert set(J.value) == {"u", "v"}


def test_jacobian_is_linearized_once(pytree_case):
    params, x, _ = pytree_case
    calls = []

    def f(p, x, s):
        calls.append(1)
        return _pytree_f(p, x, s)

    J = st.JacobianOperator(f, params, x, 2.0)
    n_after_linearize = len(calls)
    J.matmat(jnp.ones((3, 10)))
    st.hutchinson(jax.random.key(0), st.gram(J), num_matvecs=4)
    assert len(calls) == n_after_linearize == 1


@pytest.mark.parametrize("side", ["input", "output"])
def test_gram_products_and_trace(side, pytree_case):
    params, x, jac = pytree_case
    G = st.gram(st.JacobianOperator(_pytree_f, params, x, 2.0), side=side)
    dense = jac.T @ jac if side == "input" else jac @ jac.T
    assert G.shape == dense.shape
    V = jnp.asarray(np.random.default_rng(5).standard_normal((2, dense.shape[0])))
    np.testing.assert_allclose(G.matmat(V), V @ dense, rtol=1e-10)
    est = st.hutchinson(jax.random.key(0), G, num_matvecs=dense.shape[0])
    np.testing.assert_allclose(float(est.value), np.sum(jac**2), rtol=1e-10)


def test_gram_auto_picks_smaller_side(pytree_case):
    params, x, _ = pytree_case
    J = st.JacobianOperator(_pytree_f, params, x, 2.0)  # 5 x 10
    assert st.gram(J).side == "output" and st.gram(J).probe_dim == 5
    assert st.gram(J.T).side == "input" and st.gram(J.T).probe_dim == 5


def test_gram_of_dense_matrix():
    A = _rect(6, 3)
    G = st.gram(A, side="auto")
    est = st.hutchinson(jax.random.key(0), G, num_matvecs=3)
    np.testing.assert_allclose(float(est.value), np.sum(A**2), rtol=1e-12)


def test_dense_operator_is_a_pytree():
    op = st.as_operator(jnp.eye(3), blocks={"a": 1, "b": 2})
    leaves, tree = jax.tree.flatten(op)
    assert len(leaves) == 1
    op2 = jax.tree.unflatten(tree, leaves)
    assert op2.blocks == op.blocks


def test_blocks_spec_forms():
    A = np.eye(6)
    a = st.as_operator(A, blocks={"x": 2, "y": 4})
    b = st.as_operator(A, blocks={"x": slice(0, 2), "y": (2, 6)})
    assert a.blocks == b.blocks == (("x", 0, 2), ("y", 2, 6))


def test_samplers_moments_and_sphere_norm():
    k = jax.random.key(0)
    for name, fn in [
        ("rademacher", st.sampler_rademacher),
        ("gaussian", st.sampler_gaussian),
        ("sphere", st.sampler_sphere),
    ]:
        V = np.asarray(fn(k, (20000, 6), jnp.float64))
        cov = V.T @ V / V.shape[0]
        np.testing.assert_allclose(cov, np.eye(6), atol=0.06, err_msg=name)
    S = np.asarray(st.sampler_sphere(k, (10, 7), jnp.float64))
    np.testing.assert_allclose(np.linalg.norm(S, axis=1), np.sqrt(7), rtol=1e-12)
    R = np.asarray(st.sampler_rademacher(k, (10, 7), jnp.float32))
    assert R.dtype == np.float32 and set(np.unique(R)) == {-1.0, 1.0}


def test_sample_like_keeps_structure_and_dtypes():
    tree = {"w": jnp.zeros((2, 3), jnp.float32), "b": [jnp.zeros(4, jnp.float32)]}
    v = st.sample_like(jax.random.key(0), tree, sampler="sphere")
    assert jax.tree.structure(v) == jax.tree.structure(tree)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(v))
    flat = ravel_pytree(v)[0]
    np.testing.assert_allclose(float(jnp.linalg.norm(flat)), np.sqrt(10), rtol=1e-5)


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_jacobian_value_is_a_concrete_pytree(mode, pytree_case):
    params, x, _ = pytree_case
    J = st.JacobianOperator(_pytree_f, params, x, 2.0, mode=mode)
    expected = _pytree_f(params, x, 2.0)
    for k in expected:  # used outside the linearization: must not be a leaked tracer
        np.testing.assert_allclose(np.asarray(J.value[k]) + 0.0, expected[k], rtol=1e-12)


# ----------------------------------------------------------------------------- the operator contract


def _sym(n=6, seed=3):
    A = np.random.default_rng(seed).standard_normal((n, n))
    return A @ A.T + np.eye(n)


def _mlp(p, x):
    return {"a": jnp.tanh(x @ p["w"]), "b": jnp.sin(x @ p["w"]).sum(axis=0)}


def _params():
    return {"w": jnp.asarray(np.random.default_rng(4).standard_normal((3, 2)))}


_X = jnp.asarray(np.random.default_rng(5).standard_normal((4, 3)))

CONTRACT_OPS = {
    "dense": lambda: st.as_operator(_sym()),
    "sparse": lambda: st.as_operator(sp.csr_matrix(_sym())),
    "function": lambda: st.FunctionOperator(lambda v: jnp.asarray(_sym()) @ v, 6, jnp.float64),
    "transposed": lambda: st.as_operator(_sym()).T,
    "gram-fwd": lambda: st.gram(st.JacobianOperator(_mlp, _params(), _X, mode="fwd")),
    "gram-bwd": lambda: st.gram(st.JacobianOperator(_mlp, _params(), _X, mode="bwd"), side="output"),
    "finite-difference": lambda: st.FiniteDifferenceGram(_mlp, _params(), _X, h=1e-6),
}


@pytest.mark.parametrize("name", list(CONTRACT_OPS))
def test_operator_is_a_pytree_traced_under_jit(name):
    """Every operator passed into jax.jit is traced like any argument (leaves become tracers)."""
    op = CONTRACT_OPS[name]()
    leaves, treedef = jax.tree.flatten(op)
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert type(rebuilt) is type(op) and rebuilt.shape == op.shape and rebuilt.block_names == op.block_names
    V = jnp.asarray(np.random.default_rng(6).standard_normal((3, op.shape[1])))
    eager = op.quad_forms(V)
    seen = []

    def f(o, V):
        seen.append([isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(o)])
        return o.quad_forms(V)

    np.testing.assert_allclose(jax.jit(f)(op, V), eager, rtol=1e-10)
    assert all(seen[0])  # every array leaf was traced, none baked in as a constant
    est = jax.jit(lambda k, o: st.hutchinson(k, o, num_matvecs=4).value)(jax.random.key(0), op)
    assert np.isclose(float(est), float(st.hutchinson(jax.random.key(0), op, num_matvecs=4).value), rtol=1e-10)


@pytest.mark.parametrize("name", ["dense", "sparse"])
def test_operator_vmaps_over_a_stack(name):
    op = CONTRACT_OPS[name]()

    def two(a):  # the operator and twice it, one pytree (index arrays shared)
        a = jnp.asarray(a)
        return jnp.stack([a, 2 * a if jnp.issubdtype(a.dtype, jnp.floating) else a])

    ops = jax.tree.map(two, op)
    V = jnp.asarray(np.random.default_rng(7).standard_normal((2, op.shape[1])))
    out = jax.vmap(lambda o: o.quad_forms(V))(ops)
    one = op.quad_forms(V)
    np.testing.assert_allclose(out[0], one, rtol=1e-10)
    np.testing.assert_allclose(out[1], 2.0 * one, rtol=1e-10)


def test_declared_structure():
    A = _sym()
    assert st.as_operator(A).symmetric is None and st.as_operator(A).psd is None
    op = st.as_operator(A, psd=True)
    assert op.symmetric is True and op.psd is True
    assert st.gram(_rect()).psd is True and st.JacobianOperator(_mlp, _params(), _X).symmetric is False
    with pytest.raises(ValueError, match="square"):
        st.as_operator(_rect(), symmetric=True)
    with pytest.raises(ValueError, match="psd=True requires"):
        st.as_operator(A, symmetric=False, psd=True)
    with pytest.raises(TypeError, match="symmetric"):
        st.as_operator(A, symmetric="yes")
    with pytest.raises(ValueError, match="by construction"):
        st.gram(_rect()).with_structure(psd=False)
    # estimators read the declaration: auto picks XNysTrace for a declared-PSD operator ...
    key = jax.random.key(1)
    with pytest.warns(RuntimeWarning, match="tolerance not met"):
        auto = st.trace(key, op, stop=st.StoppingRule(rtol=1e-9, max_matvecs=4, first_matvecs=4))
        nys = st.trace(key, op, stop=st.StoppingRule(rtol=1e-9, max_matvecs=4, first_matvecs=4), method="xnystrace")
    assert float(auto.value) == float(nys.value)
    # ... and XNysTrace refuses an operator declared not PSD
    with pytest.raises(ValueError, match="psd=False"):
        st.xnystrace(key, st.as_operator(A, psd=False), num_matvecs=4)


def test_missing_products_refused_before_any_work():
    calls = []

    def f(p, x):
        calls.append(1)
        return _mlp(p, x)

    op = st.FiniteDifferenceGram(f, _params(), _X, h=1e-6)
    assert op.products == frozenset({"quad_forms"})
    n0 = len(calls)
    key = jax.random.key(2)
    for est in (st.hutchpp, st.na_hutchpp, st.xtrace, st.xnystrace, st.diagonal):
        with pytest.raises(ValueError, match="needs the product.*matmat"):
            est(key, op, num_matvecs=6)
    with pytest.raises(ValueError, match="matmat"):
        st.trace(key, op, rtol=0.1, max_matvecs=6, method="xtrace")
    assert len(calls) == n0  # nothing ran


def test_sparse_operator_canonicalises_unsorted_and_duplicate_entries():
    # valid CSR with unsorted column indices and a duplicate entry (summed by SciPy's convention)
    S = sp.csr_matrix((np.array([1.0, 2.0, 3.0, 4.0]), np.array([2, 0, 0, 1]), np.array([0, 3, 4, 4])), shape=(3, 3))
    dense = S.toarray()
    op = st.as_operator(S)
    V = jnp.asarray(np.random.default_rng(8).standard_normal((2, 3)))
    np.testing.assert_allclose(op.matmat(V), np.asarray(V) @ dense.T, rtol=1e-12)
    assert not S.has_canonical_format  # the user's matrix is left as it was
