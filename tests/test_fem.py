"""Finite element reference of the Q-tensor problem: convergence rates, cache, bad input."""

import numpy as np
import pytest

pytest.importorskip("skfem")

from pinn_adapters.fem import initial_director, initial_q, manufactured, reference, solve_qtensor  # noqa: E402

EXACT, SOURCE, Q0 = manufactured()


def _errors(exact=EXACT, source=SOURCE, T=0.25, **kw):
    out = []
    for n, steps in kw.pop("runs"):
        sol = solve_qtensor(T=T, n=n, num_steps=steps, num_snapshots=2, source=source, q0=Q0, **kw)
        out.append(sol.l2_error(exact))
    return np.array(out)


def _rates(errors):
    return np.log2(errors[:-1] / errors[1:])


def test_p1_space_rate_is_two():
    # dt = T/64 makes the BDF2 time error (about 1e-5) negligible against h^2 errors (>= 1e-3)
    e = _errors(element="P1", runs=[(4, 64), (8, 64), (16, 64)])
    r = _rates(e)
    assert np.all((r > 1.85) & (r < 2.2)), (e, r)


def test_p2_space_rate_is_three():
    e = _errors(element="P2", runs=[(2, 64), (4, 64), (8, 64)])
    r = _rates(e)
    assert np.all((r > 2.7) & (r < 3.3)), (e, r)


@pytest.mark.parametrize("scheme, order", [("bdf2", 2.0), ("bdf1", 1.0)])
def test_time_rate(scheme, order):
    # P2 on n = 8: the space error (about 1e-4) is far below the time errors measured here
    e = _errors(element="P2", scheme=scheme, T=0.5, runs=[(8, 4), (8, 8), (8, 16)])
    r = _rates(e)
    assert np.all(np.abs(r - order) < 0.2), (e, r)


def test_rate_check_fails_on_a_wrong_cubic_term():
    """The same rate check on a solver whose cubic coefficient is off stops converging."""
    _, bad_source, _ = manufactured(c=1.3)  # source built for c = 1.3, solver uses c = 1
    e = _errors(source=bad_source, element="P1", runs=[(4, 64), (8, 64), (16, 64)])
    assert _rates(e)[-1] < 1.0, e


def test_initial_data_compatible_with_dirichlet_boundary():
    s = np.linspace(0.0, 2.0, 41)
    z, two = np.zeros_like(s), np.full_like(s, 2.0)
    for x, y in ((z, s), (two, s), (s, z), (s, two)):
        nx, ny = initial_director(x, y)
        q1, q2 = initial_q(x, y)
        assert np.max(np.abs([nx, ny, q1, q2])) < 1e-12
    x, y = np.meshgrid(s, s)
    nx, ny = initial_director(x, y)
    q1, q2 = initial_q(x, y)
    # Q0 = n n^T - |n|^2 / 2 I
    np.testing.assert_allclose(q1, nx * nx - 0.5 * (nx * nx + ny * ny), atol=1e-15)
    np.testing.assert_allclose(q2, nx * ny, atol=1e-15)


def test_reference_is_cached_and_reused(tmp_path):
    kw = dict(T=0.1, n=4, num_steps=8, num_snapshots=3, cache_dir=tmp_path)
    a = reference(**kw)
    assert not a.meta["from_cache"]
    files = list((tmp_path / "fem").glob("qtensor-*.npz"))
    assert len(files) == 1
    b = reference(**kw)
    assert b.meta["from_cache"]
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.times, b.times)
    assert b.meta["convergence"]["relative_l2_difference"] == a.meta["convergence"]["relative_l2_difference"]
    assert 0 < a.meta["convergence"]["relative_l2_difference"] < 0.5
    reference(**{**kw, "L": 0.2})  # other settings -> another file
    assert len(list((tmp_path / "fem").glob("qtensor-*.npz"))) == 2
    # evaluation helpers agree with each other at grid points that are mesh nodes
    xs, g = b.on_grid(5)
    np.testing.assert_allclose(b.probe(np.array([[xs[1], xs[2]]]), snapshot=-1)[:, 0], g[-1, :, 1, 2], atol=1e-12)
    assert np.all(g[:, :, 0, :] == 0) and np.all(g[:, :, :, -1] == 0)


def test_env_var_sets_the_cache_dir(tmp_path, monkeypatch):
    from pinn_adapters.fem import default_cache_dir

    monkeypatch.setenv("SKETCHTRACE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(element="P3"), ValueError, "element"),
        (dict(num_steps=10, num_snapshots=4), ValueError, "multiple"),
        (dict(T=-1.0), ValueError, "T must be"),
        (dict(T="x"), TypeError, "T must be"),
        (dict(n=0), ValueError, "n must be"),
        (dict(scheme="rk4"), ValueError, "scheme"),
        (dict(L=0.0), ValueError, "L must be"),
        (dict(a=float("nan")), ValueError, "a must be finite"),
    ],
)
def test_bad_input(kw, exc, match):
    with pytest.raises(exc, match=match):
        solve_qtensor(**{"n": 2, "num_steps": 2, "num_snapshots": 2, **kw})


def test_reference_bad_input(tmp_path):
    with pytest.raises(TypeError, match="unknown coefficient"):
        reference(T=0.1, n=4, num_steps=4, num_snapshots=3, cache_dir=tmp_path, b=1.0)
    sol = reference(T=0.1, n=4, num_steps=4, num_snapshots=3, cache_dir=tmp_path, check=False)
    with pytest.raises(ValueError, match="points"):
        sol.probe(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="closed domain"):
        sol.probe(np.array([[2.5, 1.0]]))
