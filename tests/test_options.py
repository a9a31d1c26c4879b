"""SketchOptions: the five sampling options given once (options=) mean what the keywords mean."""

import inspect
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sketchtrace as st

A = np.random.default_rng(0).standard_normal((12, 12))
A = A @ A.T
BLOCKED = st.as_operator(A, blocks={"a": 5, "b": 7}, psd=True)

# estimator, its extra arguments, the options to give (each set differs from the estimator's defaults)
CASES = [
    (st.hutchinson, {}, dict(sampler="gaussian", chunk_size=3)),
    (st.hutchpp, {}, dict(sampler="gaussian", chunk_size=4)),
    (st.na_hutchpp, {}, dict(chunk_size=2)),
    (st.diagonal, {}, dict(sampler="gaussian", chunk_size=5)),
    (st.diagonal, {"method": "xdiag"}, dict(chunk_size=5)),
    (st.block_traces, {"method": "hutchpp"}, dict(sampler="sphere")),
    (st.xtrace, {}, dict(sampler="sphere", chunk_size=3)),
    (st.xnystrace, {}, dict(sampler="gaussian")),
    (st.trace_function, {"f": "log", "lanczos_steps": 4}, dict(sampler="gaussian")),
    (st.logdet, {"lanczos_steps": 4}, dict(chunk_size=2)),
]
FIXED_BUDGET = [st.hutchinson, st.hutchpp, st.na_hutchpp, st.diagonal, st.block_traces, st.xtrace, st.xnystrace]


def _values(out):
    if isinstance(out, dict):
        return np.array([float(np.asarray(e.value).sum()) for e in out.values()])
    return np.asarray(out.value, dtype=float)


@pytest.mark.filterwarnings("ignore::sketchtrace.QuadratureWarning")  # 4 Lanczos steps on purpose: values compared
@pytest.mark.parametrize("estimator,extra,opts", CASES, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("make_key", [jax.random.key, np.random.default_rng], ids=["jax", "numba"])
def test_options_object_equals_keywords(estimator, extra, opts, make_key):
    kw = dict(num_matvecs=8, **extra)
    by_keywords = estimator(make_key(1), BLOCKED, **kw, **opts)
    by_object = estimator(make_key(1), BLOCKED, **kw, options=st.SketchOptions(**opts))
    np.testing.assert_array_equal(_values(by_object), _values(by_keywords))
    # and the options matter: the default options give another estimate (not exact here)
    default = estimator(make_key(1), BLOCKED, **kw)
    if "sampler" in opts:
        assert not np.array_equal(_values(default), _values(by_object))


@pytest.mark.parametrize("estimator", FIXED_BUDGET, ids=lambda f: f.__name__)
def test_every_fixed_budget_estimator_takes_options(estimator):
    params = inspect.signature(estimator).parameters
    assert "options" in params
    assert set(estimator.option_defaults) == {"sampler", "chunk_size", "backend", "mesh", "allow_exact"}
    for name, default in estimator.option_defaults.items():
        assert params[name].default == default  # the documented signature is the one applied


def test_allow_exact_through_options():
    key = jax.random.key(0)
    exact = st.hutchinson(key, A, num_matvecs=12)
    sampled = st.hutchinson(key, A, num_matvecs=12, options=st.SketchOptions(allow_exact=False))
    assert float(exact.sem) == 0.0 and float(sampled.sem) > 0.0
    with pytest.raises(ValueError, match="allow_exact=False"):
        st.xtrace(key, A, num_matvecs=12, options=st.SketchOptions(allow_exact=False))


def test_options_and_keyword_together_refused():
    with pytest.raises(TypeError, match=r"chunk_size= either as a keyword or in options="):
        st.hutchinson(jax.random.key(0), A, num_matvecs=4, chunk_size=2, options=st.SketchOptions())
    with pytest.raises(TypeError, match="options must be a sketchtrace.SketchOptions; got dict"):
        st.hutchpp(jax.random.key(0), A, num_matvecs=4, options={"chunk_size": 2})


def test_each_option_checked_once_with_its_name():
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        st.SketchOptions(chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        st.SketchOptions(chunk_size=2.5)
    with pytest.raises(TypeError, match="allow_exact must be True or False"):
        st.SketchOptions(allow_exact="yes")
    with pytest.raises(ValueError, match="backend must be one of"):
        st.SketchOptions(backend="cuda")
    with pytest.raises(TypeError, match="sampler must be a sampler name"):
        st.SketchOptions(sampler=3)
    # a keyword goes through the same checks (same messages)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        st.na_hutchpp(jax.random.key(0), A, num_matvecs=4, chunk_size=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        st.diagonal(jax.random.key(0), A, num_matvecs=4, backend="cuda")
    # the sampler's name is checked by the estimator that uses it
    with pytest.raises(ValueError, match="sampler"):
        st.hutchinson(jax.random.key(0), A, num_matvecs=4, options=st.SketchOptions(sampler="improved"))


def test_frozen_hashable_and_checked_on_replace():
    o = st.SketchOptions(chunk_size=np.int64(4))
    assert o.chunk_size == 4 and type(o.chunk_size) is int  # normalised by the check
    assert hash(o) == hash(st.SketchOptions(chunk_size=4)) and o == st.SketchOptions(chunk_size=4)
    with pytest.raises(AttributeError):
        o.chunk_size = 2
    assert o.replace(sampler="gaussian").sampler == "gaussian"
    with pytest.raises(ValueError, match="chunk_size"):
        o.replace(chunk_size=0)


def test_options_under_jit_and_vmap():
    opts = st.SketchOptions(sampler="gaussian", chunk_size=3)
    Aj = jnp.asarray(A)

    @jax.jit
    def f(key, options):  # a static pytree: it passes through jit as an argument
        return st.hutchpp(key, Aj, num_matvecs=9, options=options).value

    eager = st.hutchpp(jax.random.key(2), Aj, num_matvecs=9, sampler="gaussian", chunk_size=3).value
    np.testing.assert_allclose(float(f(jax.random.key(2), opts)), float(eager), rtol=1e-12)
    keys = jax.random.split(jax.random.key(3), 4)
    many = jax.vmap(lambda k: st.hutchinson(k, Aj, num_matvecs=6, options=opts).value)(keys)
    one = [float(st.hutchinson(k, Aj, num_matvecs=6, options=opts).value) for k in keys]
    np.testing.assert_allclose(np.asarray(many), one, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert jax.tree_util.tree_leaves(opts) == []
