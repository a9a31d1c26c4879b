"""Sharding probes and collocation points across devices (``mesh=``).

The multi-device checks run in ONE subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (this test session keeps its
single device); the subprocess runs this very file as a script (``worker()``) and
prints a JSON report that the tests below inspect. In-process tests cover the
one-device mesh and argument checking.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinn_adapters as pa
import sketchtrace as st
from sketchtrace.backends import ShardedJaxBackend
from sketchtrace.sharding import check_mesh, make_mesh, padded_size

ROOT = Path(__file__).resolve().parents[1]
NUM_DEVICES = 4
# sharded and single-device runs differ only in floating-point summation order
RTOL = 1e-10


# ----------------------------------------------------------------------------- shared fixtures


def _psd(n, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (U * 0.8 ** np.arange(n)) @ U.T + 0.05 * np.eye(n)


def _mlp_blocks():
    def net(p, x):
        h = jnp.tanh(x @ p["W1"] + p["b1"])
        return h @ p["W2"]

    def res(p, pts):
        return jax.vmap(lambda x: jax.grad(lambda t: net(p, jnp.stack([x[0], t]))[0])(x[1]) - x[0])(pts)

    def bc(p, pts):
        return jax.vmap(lambda x: net(p, x))(pts)  # 2 components per point

    k = jax.random.split(jax.random.key(5), 5)
    params = {
        "W1": jax.random.normal(k[0], (2, 6)) / 2,
        "b1": 0.1 * jax.random.normal(k[1], (6,)),
        "W2": jax.random.normal(k[2], (6, 2)) / 3,
    }
    batch = {"res": jax.random.uniform(k[3], (9, 2)), "bc": jax.random.uniform(k[4], (6, 2))}
    return pa.ResidualBlocks({"res": res, "bc": bc}), params, batch


def _maxrel(a, b):
    """Largest relative difference over the leaves of two results (Estimates, dicts)."""
    pairs = []
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, float), np.asarray(y, float)
        both_inf = np.isinf(x) & np.isinf(y) & (np.sign(x) == np.sign(y))
        pairs.append((np.where(both_inf, 0, x), np.where(both_inf, 0, y)))
    # relative to the largest entry of the result (a zero standard error may come out as 1e-15)
    scale = max(max(float(np.max(np.abs(y))) for _, y in pairs), 1e-300)
    return max(float(np.max(np.abs(x - y))) for x, y in pairs) / scale


# ----------------------------------------------------------------------------- the worker (subprocess)


class _Recorder(st.LinearOperator):
    """A dense operator that records the row counts of the probe blocks it is applied to."""

    def __init__(self, A, log):
        self.A, self.log = jnp.asarray(A), log
        self.shape, self.dtype, self.blocks = A.shape, np.dtype(A.dtype), None

    def matmat(self, V):
        self.log.append(int(V.shape[0]))
        return V @ self.A.T


def worker():  # pragma: no cover - runs in the subprocess
    jax.config.update("jax_enable_x64", True)
    from sketchtrace import probe_rows
    from sketchtrace.backends import map_chunks
    from sketchtrace.estimators._common import summarize

    rep = {"devices": len(jax.devices())}
    mesh = make_mesh()
    mesh2d = jax.make_mesh((2, 2), ("a", "b"))  # several axes (explicit axis types by default)
    A = _psd(24)
    key = jax.random.key(11)
    op = st.as_operator(A, blocks={"x": 10, "y": 14})

    # -- 1. agreement with the single-device run (same key -> same probes)
    agree = {}

    def cmp(name, fn, jit=True):
        # both runs in one compiled program (eager runs compile every primitive: slow on 2 cores)
        both = lambda: (fn(mesh), fn(None))
        sharded, single = jax.jit(both)() if jit else both()
        agree[name] = _maxrel(sharded, single)

    # divisible, padded, fewer probes than devices, exact path
    for m, sampler in ((8, "rademacher"), (7, "gaussian"), (3, "sphere"), (30, "rademacher")):
        cmp(f"hutchinson m={m} {sampler}", lambda ms: st.hutchinson(key, A, num_matvecs=m, sampler=sampler, mesh=ms))
    cmp("hutchinson eager", lambda ms: st.hutchinson(key, A, num_matvecs=7, mesh=ms), jit=False)
    cmp("hutchinson chunk_size=1", lambda ms: st.hutchinson(key, A, num_matvecs=10, chunk_size=1, mesh=ms))
    cmp("block_traces", lambda ms: st.block_traces(key, op, num_matvecs=9, mesh=ms))
    cmp("block_traces exact", lambda ms: st.block_traces(key, op, num_matvecs=24, mesh=ms))
    cmp("block_traces hutchpp", lambda ms: st.block_traces(key, op, num_matvecs=10, method="hutchpp", mesh=ms))
    cmp("hutchpp", lambda ms: st.hutchpp(key, A, num_matvecs=11, mesh=ms))
    cmp("na_hutchpp", lambda ms: st.na_hutchpp(key, A, num_matvecs=13, mesh=ms))
    cmp("diagonal", lambda ms: st.diagonal(key, A, num_matvecs=9, mesh=ms))
    cmp("diagonal xdiag", lambda ms: st.diagonal(key, A, num_matvecs=10, method="xdiag", mesh=ms))
    import inspect

    if "mesh" in inspect.signature(st.xtrace).parameters:
        cmp("xtrace", lambda ms: st.xtrace(key, A, num_matvecs=10, mesh=ms))
        cmp("xnystrace", lambda ms: st.xnystrace(key, A, num_matvecs=10, mesh=ms))
    cmp(
        "trace adaptive",
        lambda ms: st.trace(key, A, rtol=0.5, max_matvecs=20, method="hutchinson", options=st.SketchOptions(mesh=ms)),
        jit=False,
    )
    agree["2-D mesh"] = _maxrel(
        st.block_traces(key, op, num_matvecs=7, mesh=mesh2d), st.block_traces(key, op, num_matvecs=7)
    )
    J = st.JacobianOperator(lambda x: {"u": jnp.sin(x[:5]) * x[5:10].sum(), "v": x**2}, jnp.linspace(0.1, 1, 12))
    for side in ("input", "output"):
        cmp(f"jacobian gram {side}", lambda ms: st.block_traces(key, st.gram(J, side), num_matvecs=6, mesh=ms))

    blocks, params, batch = _mlp_blocks()
    cmp(
        "ntk exact",
        lambda ms: pa.ntk_traces(None, blocks, params, batch, method="exact", chunk_size=2, mesh=ms),
        jit=False,
    )
    for side in ("params", "residuals"):
        cmp(
            f"ntk hutchinson {side}",
            lambda ms: pa.ntk_traces(
                key, blocks, params, batch, method="hutchinson", num_matvecs=5, side=side, mesh=ms
            ),
        )
    # NTK weighting: exact / Hutchinson refreshes and pc's exact first estimate take mesh=
    p2 = jax.tree.map(lambda x: 1.01 * x, params)
    for est in ("exact", "hutchinson", "pc"):

        def weights(ms, est=est):
            w = pa.ntk_weighting(blocks, estimator=est, num_probes=3, mesh=ms)
            state = w.init(key, params, batch)
            return state.weights, w.update(key, state, params, p2, batch)[0]

        cmp(f"ntk_weighting {est}", weights, jit=False)
    # pc with the points placed on the mesh (NamedSharding): XLA partitions the point axis
    from sketchtrace.sharding import row_sharding

    w = pa.ntk_weighting(blocks, estimator="pc", num_probes=1)
    b4 = {"res": batch["res"][:8], "bc": batch["bc"][:4]}
    update = jax.jit(lambda k, s, a, b, bt: w.update(k, s, a, b, bt)[0])
    s0 = w.init(key, params, b4)
    placed = jax.device_put(b4, row_sharding(mesh))
    # (finite differences divide summation-order rounding by the step h ~ 1e-8: own tolerance)
    rep["pc_sharded_points_rel"] = _maxrel(update(key, s0, params, p2, placed), update(key, s0, params, p2, b4))
    rep["placed_points_sharded"] = len(placed["res"].sharding.device_set) == NUM_DEVICES
    rep["agree"] = agree

    # -- 2. the work is really distributed
    bk = ShardedJaxBackend(mesh)
    Q = bk.quad_forms(key, op, 8, "rademacher", None)
    rep["q_spec"] = str(Q.sharding.spec)
    rep["q_shards"] = sorted((s.device.id, list(s.data.shape)) for s in Q.addressable_shards)
    Y = bk.matmat(op, jnp.ones((8, 24)))
    rep["matmat_replicated"] = bool(Y.sharding.is_fully_replicated) and len(Y.sharding.device_set) == NUM_DEVICES
    log = []
    st.hutchinson(key, _Recorder(A, log), num_matvecs=12, mesh=mesh)
    rep["local_rows_eager"] = sorted(set(log))
    log.clear()
    st.hutchinson(key, _Recorder(A, log), num_matvecs=10, mesh=mesh)  # padded to 12
    rep["local_rows_padded"] = sorted(set(log))
    log.clear()
    st.hutchinson(key, _Recorder(A, log), num_matvecs=12, chunk_size=2, mesh=mesh)
    rep["local_rows_chunked"] = sorted(set(log))
    hlo = jax.jit(lambda k: st.hutchinson(k, A, num_matvecs=12, mesh=mesh)).lower(key).compile().as_text()
    rep["hutchinson_hlo_has_collective"] = ("all-reduce" in hlo) or ("all-gather" in hlo)
    seen = []
    orig = blocks.point_grad_sq_norms

    def spy(p, b, *, chunk_size=256):
        seen.append({n: int(jax.tree.leaves(v)[0].shape[0]) for n, v in b.items()})
        return orig(p, b, chunk_size=chunk_size)

    blocks.point_grad_sq_norms = spy
    pa.ntk_traces(None, blocks, params, batch, method="exact", mesh=mesh)
    rep["ntk_local_points"] = seen
    hlo = jax.jit(lambda p: pa.ntk_traces(None, blocks, p, batch, method="exact", mesh=mesh)).lower(params)
    rep["ntk_hlo_has_all_reduce"] = "all-reduce" in hlo.compile().as_text()
    blocks.point_grad_sq_norms = orig

    # -- 3. the agreement check can fail: a wrong sharding (every device reuses the first keys)
    class ReusedKeys(ShardedJaxBackend):
        def quad_forms(self, key, op, num, sampler, chunk_size):
            keys = jax.random.split(key, num)[: num // NUM_DEVICES]
            keys = jnp.concatenate([keys] * NUM_DEVICES)
            n, dt = op.probe_dim, op.jax_dtype
            fn = lambda ks: map_chunks(lambda kk: op.quad_forms(probe_rows(kk, n, dt, sampler)), ks, chunk_size)
            return self._rows(fn, keys, keys[0], gather=False)

    Qbad = ReusedKeys(mesh).quad_forms(key, op, 8, "rademacher", None).sum(axis=1, keepdims=True)
    bad = summarize(jnp, Qbad, exact=False)[0][0]
    rep["bad_variant_rel"] = _maxrel(bad, st.hutchinson(key, op, num_matvecs=8).value)

    # -- 4. bad input
    errors = {}

    def expect(name, exc, fn):
        try:
            fn()
        except exc as e:
            errors[name] = str(e)
        else:
            errors[name] = None

    expect("too many devices", ValueError, lambda: make_mesh(NUM_DEVICES + 1))
    half = make_mesh(jax.devices()[:2])
    far_key = jax.device_put(key, jax.devices()[3])
    expect("key outside mesh", ValueError, lambda: st.hutchinson(far_key, A, num_matvecs=4, mesh=half))
    expect(
        "generator with mesh", TypeError, lambda: st.hutchinson(np.random.default_rng(0), A, num_matvecs=4, mesh=mesh)
    )
    rep["errors"] = errors
    # a key committed to a device OF the mesh is fine (it is replicated)
    near_key = jax.device_put(key, jax.devices()[1])
    rep["near_key_rel"] = _maxrel(
        st.hutchinson(near_key, A, num_matvecs=8, mesh=mesh), st.hutchinson(key, A, num_matvecs=8)
    )
    # an operator whose matrix sits on one device is replicated onto the mesh
    A_on_2 = jax.device_put(jnp.asarray(A), jax.devices()[2])
    rep["committed_op_rel"] = _maxrel(
        st.hutchinson(key, A_on_2, num_matvecs=8, mesh=mesh), st.hutchinson(key, A, num_matvecs=8)
    )
    print("REPORT " + json.dumps(rep))


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={NUM_DEVICES}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, (
        f"worker failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return json.loads(lines[-1][len("REPORT ") :])


# ----------------------------------------------------------------------------- multi-device tests


def test_worker_sees_forced_devices(report):
    assert report["devices"] == NUM_DEVICES


def test_sharded_equals_single_device(report):
    bad = {k: v for k, v in report["agree"].items() if not v <= RTOL}
    assert not bad, f"sharded and single-device results differ beyond summation order: {bad}"
    assert len(report["agree"]) >= 23


def test_pc_weighting_with_points_placed_on_the_mesh(report):
    assert report["placed_points_sharded"]
    # forward differences amplify rounding differences by 1/h (h ~ sqrt(eps) ~ 1e-8)
    assert report["pc_sharded_points_rel"] <= 1e-6


def test_agreement_check_detects_wrong_sharding(report):
    # the same comparison flags a sharding that gives devices the wrong probes
    assert report["bad_variant_rel"] > 1e3 * RTOL


def test_probe_quadratic_forms_are_sharded(report):
    assert report["q_spec"] == "PartitionSpec(('probes',),)" or "probes" in report["q_spec"]
    assert report["q_shards"] == [[d, [2, 2]] for d in range(NUM_DEVICES)]
    assert report["matmat_replicated"]
    assert report["hutchinson_hlo_has_collective"]


def test_each_device_applies_the_operator_to_its_share(report):
    assert report["local_rows_eager"] == [12 // NUM_DEVICES]
    assert report["local_rows_padded"] == [3]  # 10 probes padded to 12
    assert report["local_rows_chunked"] == [1, 2]  # 3 rows per device: a chunk of 2, then 1


def test_ntk_exact_shards_points_and_reduces_with_a_collective(report):
    # 9 residual points -> 12 padded -> 3 per device; 6 boundary points -> 8 -> 2 per device
    # (one record for the eager call, one for the jit lowering)
    assert report["ntk_local_points"] == [{"bc": 2, "res": 3}] * 2
    assert report["ntk_hlo_has_all_reduce"]


def test_inconsistent_devices_are_refused_clearly(report):
    err = report["errors"]
    assert err["too many devices"] and "xla_force_host_platform_device_count" in err["too many devices"]
    assert err["key outside mesh"] and "key is committed" in err["key outside mesh"]
    assert err["generator with mesh"] and "numba backend" in err["generator with mesh"]
    assert report["near_key_rel"] <= RTOL
    assert report["committed_op_rel"] <= RTOL


def test_multihost_example_runs_two_processes_on_localhost():
    """examples/multihost.py through jax.distributed.initialize: 2 processes x 2 host devices."""
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "multihost.py"),
        "--local-processes",
        "2",
        "--devices",
        "2",
        "--n",
        "40",
        "--points",
        "8",
        "--probes",
        "6",
        "--quick",
    ]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "[process 0] OK" in out and "[process 1] OK" in out, out[-4000:]
    assert "mesh of 4 devices" in out


# ----------------------------------------------------------------------------- in-process (one device)


def test_one_device_mesh_matches_and_keeps_budget(key):
    A = _psd(16)
    mesh = make_mesh()
    assert mesh.size == len(jax.devices()) == 1
    for m in (5, 16):
        a = st.hutchinson(key, A, num_matvecs=m, mesh=mesh)
        b = st.hutchinson(key, A, num_matvecs=m)
        assert _maxrel(a, b) <= RTOL
        assert a.num_matvecs == b.num_matvecs == min(m, 16)


def test_ntk_traces_mesh_one_device():
    blocks, params, batch = _mlp_blocks()
    a = pa.ntk_traces(None, blocks, params, batch, method="exact", mesh=make_mesh())
    b = pa.ntk_traces(None, blocks, params, batch, method="exact")
    assert _maxrel(a, b) <= RTOL
    assert {n: e.num_matvecs for n, e in a.items()} == {n: e.num_matvecs for n, e in b.items()}


def test_make_mesh_and_check_mesh_validate():
    assert make_mesh(1).size == 1
    assert make_mesh(jax.devices()).axis_names == ("probes",)
    assert make_mesh(axis_name="pts").axis_names == ("pts",)
    assert check_mesh(1).size == 1
    assert padded_size(7, make_mesh()) == 7
    with pytest.raises(ValueError, match="positive number"):
        make_mesh(0)
    with pytest.raises(ValueError, match="only 1"):
        make_mesh(2)
    with pytest.raises(ValueError, match="at least one device"):
        make_mesh([])
    with pytest.raises(ValueError, match="duplicates"):
        make_mesh([jax.devices()[0]] * 2)
    with pytest.raises(TypeError, match="jax.Device"):
        make_mesh(["cpu:0"])
    with pytest.raises(TypeError, match="devices must be"):
        make_mesh(2.5)
    with pytest.raises(TypeError, match="axis_name"):
        make_mesh(axis_name="")
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        st.hutchinson(jax.random.key(0), np.eye(3), num_matvecs=2, mesh="gpu")


def test_numba_backend_refuses_mesh():
    with pytest.raises(TypeError, match="numba backend"):
        st.hutchinson(np.random.default_rng(0), np.eye(4), num_matvecs=2, mesh=make_mesh())


def test_sharded_backend_repr():
    assert "devices=1" in repr(ShardedJaxBackend(make_mesh()))


if __name__ == "__main__":  # the subprocess
    worker()
