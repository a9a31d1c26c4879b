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
        st.hutchinson(key, A, num_matvecs=2, backend="cupy")


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


# ----------------------------------------------------------------------------- issue 15: what slipped through

RNG = np.random.default_rng


def _csr_2i6():
    return sp.csr_matrix(2.0 * np.eye(6))


@pytest.mark.parametrize("estimator", ["hutchinson", "hutchpp", "xtrace"])
@pytest.mark.parametrize("corrupt", ["indptr", "indices"])
@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_corrupt_csr_refused_before_any_kernel_reads_it(estimator, corrupt, backend, key):
    S = _csr_2i6()
    if corrupt == "indptr":
        S.indptr[2] = 40  # read past the end of indices/data: segfaulted in the numba kernels
    else:
        S.indices[3] = 5000  # an out-of-range column: silently wrong before
    rand = RNG(0) if backend == "numba" else key
    with pytest.raises(ValueError, match=r"op: corrupt sparse matrix: .*(indptr|indices)"):
        getattr(st, estimator)(rand, S, num_matvecs=3)


def test_float16_on_jax_accumulates_in_float32(key):
    d = np.linspace(1.0, 100.0, 101)
    A16 = np.diag(d).astype(np.float16)
    est = st.hutchinson(key, A16, num_matvecs=8)
    assert est.value.dtype == jnp.float32 and np.isfinite(float(est.sem))
    assert float(est.value) == pytest.approx(float(np.trace(A16.astype(np.float64))), rel=1e-6)
    assert st.as_operator(A16).dtype == np.float32


def test_float16_declared_operator_refused_on_jax(key):
    op = st.FunctionOperator(lambda v: v, 40, jnp.float16)
    with pytest.raises(TypeError, match=r"op dtype float16.*float32 or float64"):
        st.hutchinson(key, op, num_matvecs=4)


def test_numba_function_operator_returning_complex_refused():
    op = st.FunctionOperator(lambda v: v * (1 + 1j), 40, np.float64)
    with pytest.raises(TypeError, match=r"matvec of op .* returned complex values"):
        st.hutchinson(RNG(0), op, num_matvecs=4)


def test_duplicate_block_names_refused():
    with pytest.raises(ValueError, match="blocks: duplicate block name 'a'"):
        st.as_operator(np.eye(6), blocks=(("a", 0, 3), ("a", 3, 6)))


@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_scipy_linear_operator_of_the_wrong_output_shape_refused_up_front(backend, key):
    from scipy.sparse.linalg import LinearOperator as SciPyLinearOperator

    calls = []

    def matvec(v):
        calls.append(1)
        return np.ones(41)

    L = SciPyLinearOperator((40, 40), matvec=matvec, dtype=np.float64)
    rand = RNG(0) if backend == "numba" else key
    with pytest.raises(
        ValueError, match=r"op \(a SciPy LinearOperator of shape \(40, 40\)\) returned shape \(41,\); expected \(40,\)"
    ):
        st.hutchinson(rand, L, num_matvecs=4)
    assert len(calls) == 1  # one probe at setup, before any estimation


@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_sampler_returning_the_wrong_shape_refused(backend, key):
    xp = np if backend == "numba" else jnp
    rand = RNG(0) if backend == "numba" else key
    with pytest.raises(ValueError, match=r"sampler returned shape \(3,\); expected"):
        st.hutchinson(rand, np.eye(40), num_matvecs=4, sampler=lambda k, shape, dtype: xp.ones(3, dtype))


@pytest.mark.parametrize("backend", ["numba", "jax"])
def test_big_endian_arrays_are_accepted_with_the_same_result(backend, key):
    A_native = np.diag(np.arange(1.0, 41.0)) + 0.01
    A_big = A_native.astype(">f8")
    rand = (lambda: RNG(3)) if backend == "numba" else (lambda: key)
    a = st.hutchinson(rand(), A_big, num_matvecs=6)
    b = st.hutchinson(rand(), A_native, num_matvecs=6)
    assert float(a.value) == float(b.value) and float(a.sem) == float(b.sem)


@pytest.mark.parametrize("scalar", [np.int64(6), np.int32(6), np.uint8(6)])
def test_numpy_integers_accepted_as_budgets(scalar, key):
    assert st.hutchinson(key, np.eye(40), num_matvecs=scalar).num_matvecs == 6


def test_validation_number_helpers_accept_numpy_scalars_and_name_the_argument():
    from sketchtrace.validation import check_int, check_real

    assert check_real(np.float32(1e-3), name="eps", low=0, high=1, low_open=True, high_open=True) == pytest.approx(1e-3)
    assert check_int(np.int64(3), name="steps", minimum=0) == 3
    for bad in ("0.1", True, None):
        with pytest.raises(TypeError, match=r"eps must be a real number in \(0, 1\)"):
            check_real(bad, name="eps", low=0, high=1, low_open=True, high_open=True)
    for bad in (np.float64(2.0), np.nan, 0.0):
        with pytest.raises(ValueError, match=r"eps must be a real number in \(0, 1\)"):
            check_real(bad, name="eps", low=0, high=1, low_open=True, high_open=True)
    with pytest.raises(ValueError, match="steps must be an integer >= 0; got -1"):
        check_int(np.int8(-1), name="steps", minimum=0)
    with pytest.raises(TypeError, match="steps must be an integer"):
        check_int(np.float64(3.0), name="steps")


# ----------------------------------------------------------------------------- issue 15: pinn_adapters


def _tiny_problem():
    import pinn_adapters as pa

    return pa.problems.poisson1d(layers=(1, 4, 1), n_res=4, n_bc=1)


@pytest.mark.parametrize(
    ("kw", "err", "msg"),
    [
        ({"seed": "abc"}, TypeError, r"seed must be an integer >= 0; got str 'abc'"),
        ({"seed": -1}, ValueError, r"seed must be an integer >= 0; got -1"),
        ({"steps": 2.5}, TypeError, r"steps must be an integer >= 0"),
        ({"log_every": 0}, ValueError, r"log_every must be an integer >= 1"),
        ({"checkpoint_every": np.float32(2)}, TypeError, r"checkpoint_every must be an integer >= 1"),
    ],
)
def test_train_arguments_named_before_any_work(kw, err, msg):
    import pinn_adapters as pa

    with pytest.raises(err, match=msg):
        pa.train(_tiny_problem(), **{"steps": 2, "progress": False, **kw})


def test_train_accepts_numpy_integers():
    import pinn_adapters as pa

    res = pa.train(_tiny_problem(), steps=np.int64(2), log_every=np.int32(1), seed=np.uint8(0), progress=False)
    assert res.history["step"] == [1, 2]


@pytest.mark.parametrize("problem", ["poisson1d", "wave1d", "qtensor2d"])
@pytest.mark.parametrize(("kw", "msg"), [({"n_res": 0}, "n_res"), ({"n_bc": -1}, "n_bc")])
def test_problem_point_counts_must_be_positive(problem, kw, msg):
    import pinn_adapters as pa

    with pytest.raises(ValueError, match=rf"{msg} must be a"):
        getattr(pa.problems, problem)(**kw)


def test_from_equinox_refuses_a_list_of_fns_and_a_non_module():
    eqx = pytest.importorskip("equinox")
    from pinn_adapters import adapters

    model = eqx.nn.Linear(1, 1, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"from_equinox: fns must be a mapping block name -> fn\(model, points\)"):
        adapters.from_equinox(model, [lambda m, x: x[:, 0]])
    with pytest.raises(TypeError, match=r"from_equinox: fns must map block names \(str\) to callables"):
        adapters.from_equinox(model, {"res": 1.0})
    with pytest.raises(TypeError, match="from_equinox: model must be an equinox.Module; got dict"):
        adapters.from_equinox({"w": jnp.ones(2)}, {"res": lambda m, x: x[:, 0]})


def test_from_nnx_refuses_a_dict_and_from_linen_a_list():
    pytest.importorskip("flax")
    from pinn_adapters import adapters

    with pytest.raises(TypeError, match="from_nnx: model must be a flax.nnx.Module; got dict"):
        adapters.from_nnx({"not": "a module"}, {"res": lambda m, x: x[:, 0]})
    with pytest.raises(TypeError, match="from_nnx: fns must be a mapping"):
        adapters.from_nnx({"not": "a module"}, [lambda m, x: x[:, 0]])
    with pytest.raises(TypeError, match="from_linen: module must be a flax.linen.Module"):
        adapters.from_linen(object(), {"params": {}}, {"res": lambda u, x: x[:, 0]})


# ----------------------------------------------------------------------------- issue 29: by class


def test_numpy_and_jax_scalars_accepted_where_numbers_are_asked_for():
    import pinn_adapters as pa

    blocks = pa.ResidualBlocks({"a": lambda p, x: x[:, 0] * p["w"], "b": lambda p, x: x[:, 0] * p["w"]})
    w = pa.ntk_weights({"a": 1.0, "b": 2.0}, eps=np.float32(1e-3), cap=jnp.float32(10.0))
    assert set(w) == {"a", "b"}
    cfg = pa.ntk_weighting(blocks, estimator="pc", ema=np.float32(0.5), gamma=np.float64(0.1)).config
    assert cfg["ema"] == 0.5 and cfg["gamma"] == 0.1 and isinstance(cfg["gamma"], float)
    assert st.predictor_corrector(gamma=np.float32(0.5)).gamma == 0.5


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"side": "left"}, "side"), ({"h": -1e-3}, "h"), ({"batched": 1}, "batched"), ({"sampler": "cauchy"}, "sampler")],
)
def test_ntk_weighting_options_refused_at_construction(kwargs, name):
    import pinn_adapters as pa

    blocks = pa.ResidualBlocks({"a": lambda p, x: x[:, 0] * p["w"]})
    with pytest.raises((TypeError, ValueError), match=name):
        pa.ntk_weighting(blocks, estimator="pc" if "side" not in kwargs else "hutchinson", **kwargs)


def test_pc_state_for_another_operator_size_refused(key):
    pc = st.predictor_corrector(num_probes=2)
    s = pc.init(key, np.eye(40))
    with pytest.raises(ValueError, match="probe dimension n = 40"):
        pc.update(key, s, np.eye(30), np.eye(30))


def test_boolean_options_are_refused_not_coerced():
    """Every boolean option is checked by ``check_bool``: ``bool("no")`` is True, so a coercion would
    silently do the opposite of what was written."""
    import pinn_adapters as pa

    calls = {
        "staircase": lambda: pa.optim.warmup_exponential_decay(staircase="no"),
        "precondition_1d": lambda: pa.optim.soap(precondition_1d="no"),
        "balance": lambda: pa.causal.CausalBlock(lambda p, x: x[:, 0], time=1, t_range=(0.0, 1.0), balance="no"),
        "check_psd": lambda: st.trace(jax.random.key(0), A, rtol=0.1, max_matvecs=20, check_psd="no"),
    }
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        import torch

        from pinn_adapters.torch import TorchResidualBlocks
        from sketchtrace.operators import TorchFunctionOperator

        calls["vectorized"] = lambda: TorchFunctionOperator(lambda v: v, 3, torch.float64, vectorized="no")
        calls["pointwise"] = lambda: TorchResidualBlocks(
            torch.nn.Linear(1, 1), {"r": lambda m, x: m(x)}, pointwise="no"
        )
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            call()
