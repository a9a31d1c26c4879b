"""Bad input gets a clear error naming the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import sketchtrace as st

A = np.eye(4) + 0.1


@pytest.mark.parametrize("bad", [0, -3])
def test_num_matvecs_must_be_positive(bad, key):
    with pytest.raises(ValueError, match="num_matvecs must be >= 1"):
        st.hutchinson(key, A, num_matvecs=bad)


@pytest.mark.parametrize("bad", [2.5, "10", None, True, jnp.asarray(3)])
def test_num_matvecs_must_be_a_python_integer(bad, key):
    with pytest.raises(TypeError, match="num_matvecs must be a Python integer"):
        st.hutchinson(key, A, num_matvecs=bad)


def test_numpy_integer_budget_is_fine(key):
    assert st.hutchinson(key, A, num_matvecs=np.int64(2)).num_matvecs == 2


def test_chunk_size_checked(key):
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        st.hutchinson(key, A, num_matvecs=2, chunk_size=0)


def test_non_square_operator_refused(key):
    with pytest.raises(ValueError, match=r"op must be square.*gram"):
        st.hutchinson(key, np.ones((3, 4)), num_matvecs=2)


def test_unknown_sampler(key):
    with pytest.raises(ValueError, match="sampler must be one of"):
        st.hutchinson(key, A, num_matvecs=2, sampler="uniform")


@pytest.mark.parametrize("bad", ["matrix", [[1.0, 0.0], [0.0, 1.0]], 3.0, None])
def test_not_an_operator(bad, key):
    with pytest.raises(TypeError, match="op: expected a matrix"):
        st.hutchinson(key, bad, num_matvecs=2)


def test_bare_callable_needs_function_operator(key):
    with pytest.raises(TypeError, match="FunctionOperator"):
        st.hutchinson(key, lambda v: v, num_matvecs=2)


def test_array_must_be_2d(key):
    with pytest.raises(ValueError, match="2-D"):
        st.hutchinson(key, np.ones(4), num_matvecs=2)


def test_complex_refused():
    with pytest.raises(TypeError, match="complex"):
        st.as_operator(np.eye(2, dtype=complex))


def test_function_operator_declared_shape_mismatch(key):
    op = st.FunctionOperator(lambda v: jnp.concatenate([v, v]), 3, jnp.float64)
    with pytest.raises(ValueError, match=r"matvec returned shape \(6,\).*declared shape is \(3, 3\)"):
        st.hutchinson(key, op, num_matvecs=2)


def test_function_operator_shape_argument():
    with pytest.raises(ValueError, match="shape must (be|have)"):
        st.FunctionOperator(lambda v: v, (3, 0), jnp.float64)
    with pytest.raises(ValueError, match="shape must (be|have)"):
        st.FunctionOperator(lambda v: v, "three", jnp.float64)


def test_function_operator_dtype_must_be_floating():
    with pytest.raises(TypeError, match="dtype must be a real floating dtype"):
        st.FunctionOperator(lambda v: v, 3, jnp.int32)


def test_probe_dtype_the_operator_cannot_take(key):
    op = st.FunctionOperator(lambda v: jnp.bitwise_and(v, 1), 3, jnp.float64)  # integer-only op
    with pytest.raises(TypeError, match="matvec cannot take probes"):
        st.hutchinson(key, op, num_matvecs=2)


def test_numpy_only_callable_on_jax_backend_is_explained(key):
    op = st.FunctionOperator(lambda v: np.asarray(v) * 2.0, 3, np.float64)
    with pytest.raises(TypeError, match="numba backend"):
        st.hutchinson(key, op, num_matvecs=2)


@pytest.mark.parametrize("bad_key", [None, 0, "seed", np.random.RandomState(0)])
def test_key_must_be_explicit_randomness(bad_key):
    with pytest.raises(TypeError, match="key must be a jax.random key or a numpy.random.Generator"):
        st.hutchinson(bad_key, A, num_matvecs=2)


def test_backend_and_key_must_agree(key):
    with pytest.raises(TypeError, match="numpy.random.Generator when backend='numba'"):
        st.hutchinson(key, A, num_matvecs=2, backend="numba")
    with pytest.raises(TypeError, match="jax.random key when backend='jax'"):
        st.hutchinson(np.random.default_rng(0), A, num_matvecs=2, backend="jax")
    with pytest.raises(ValueError, match="backend must be one of"):
        st.hutchinson(key, A, num_matvecs=2, backend="torch")


def test_non_finite_operator_output(key):
    B = np.eye(4)
    B[1, 1] = np.nan
    with pytest.raises(FloatingPointError, match="non-finite"):
        st.hutchinson(key, B, num_matvecs=2)
    with pytest.raises(FloatingPointError, match="non-finite"):
        st.hutchinson(key, sp.csr_matrix(B), num_matvecs=4)


def test_blocks_must_partition_rows():
    with pytest.raises(ValueError, match="blocks cover 3 rows but the operator has 4"):
        st.as_operator(A, blocks={"a": 1, "b": 2})
    with pytest.raises(ValueError, match="consecutive"):
        st.as_operator(A, blocks={"a": slice(0, 2), "b": slice(3, 4)})
    with pytest.raises(TypeError, match="blocks"):
        st.as_operator(A, blocks=[1, 3])


def test_block_traces_needs_blocks(key):
    with pytest.raises(ValueError, match="op has no blocks"):
        st.block_traces(key, A, num_matvecs=2)


def test_gram_side_and_jacobian_mode():
    with pytest.raises(ValueError, match="side must be one of"):
        st.gram(A, side="left")
    with pytest.raises(ValueError, match="mode must be one of"):
        st.JacobianOperator(lambda x: x, jnp.ones(2), mode="reverse")


def test_jacobian_of_integer_input_refused():
    with pytest.raises(TypeError, match="x dtype must be a real floating dtype"):
        st.JacobianOperator(lambda x: x, jnp.ones(2, dtype=jnp.int32))
