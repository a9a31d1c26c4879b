"""pinn_adapters.sampling: residual-based adaptive sampling (RAD) and its use in Levenberg-Marquardt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pinn_adapters as pa
from pinn_adapters import second_order as so
from pinn_adapters.sampling import ResidualAdaptiveSampler, residual_adaptive

M = 50  # points per uniform batch


def _toy():
    """One block with residual r(x) = x on x ~ U(0, 1) (the parameters do not enter) and a second block."""
    blocks = pa.ResidualBlocks(
        {"res": lambda p, x: x[:, 0] + 0.0 * p["a"], "bc": lambda p, x: p["a"] * x[:, 0]}, reduction="mean"
    )

    def sample_batch(key):
        k1, k2 = jax.random.split(key)
        return {"res": jax.random.uniform(k1, (M, 1)), "bc": jax.random.uniform(k2, (3, 1))}

    return blocks, sample_batch, {"a": jnp.asarray(1.0)}


@pytest.mark.parametrize(
    "k, c, expected", [(0.0, 1.0, 1 / 2), (1.0, 0.0, 2 / 3), (2.0, 0.0, 3 / 4), (1.0, 1.0, 7 / 12)]
)
def test_rad_draws_points_with_density_proportional_to_residual_power(k, c, expected):
    """With density |r|^k / mean + c on r(x) = x, x ~ U(0, 1), a drawn point has mean
    E[x (x^k / E x^k + c)] / (1 + c): 1/2 (uniform), 2/3 (k = 1), 3/4 (k = 2), 7/12 (k = 1, c = 1).
    The pool is 64 batches (a drawn point is 1 in 64 of the candidates, so drawing without replacement
    barely distorts the proportions). Tolerance: 5 standard errors of the mean of 60 x 50 points plus 0.01
    for the finite pool; the power k + 1 gives a mean >= 0.05 away and is rejected by the same test."""
    blocks, sample_batch, params = _toy()
    rad = residual_adaptive(blocks, sample_batch, block="res", pool=64, k=k, c=c)
    xs = np.concatenate([np.asarray(rad(jax.random.key(i), params)["res"][:, 0]) for i in range(60)])
    assert xs.shape == (60 * M,)
    sem = xs.std(ddof=1) / np.sqrt(xs.size)
    assert abs(xs.mean() - expected) < 5 * sem + 0.01, (xs.mean(), expected, sem)
    wrong = ((k + 2) / (k + 3) + c / 2) / (1 + c)  # the same formula for the power k + 1: must be rejected
    assert abs(xs.mean() - wrong) > 5 * sem + 0.01, (xs.mean(), wrong, sem)
    # the other blocks are the first uniform batch's, and a draw is reproducible from its key
    b0 = rad(jax.random.key(3), params)
    b1 = rad(jax.random.key(3), params)
    assert all(np.array_equal(b0[n], b1[n]) for n in b0)
    first = sample_batch(jax.random.fold_in(jax.random.split(jax.random.key(3))[0], 0))
    assert np.array_equal(b0["bc"], first["bc"])


def test_rad_points_are_distinct_candidates():
    """Without replacement: the drawn points are distinct and each is one of the pool's candidates."""
    blocks, sample_batch, params = _toy()
    rad = residual_adaptive(blocks, sample_batch, pool=4, k=1.0, c=0.0)
    key = jax.random.key(5)
    pts = np.asarray(rad(key, params)["res"][:, 0])
    kp = jax.random.split(key)[0]
    pool = np.concatenate([np.asarray(sample_batch(jax.random.fold_in(kp, i))["res"][:, 0]) for i in range(4)])
    assert len(np.unique(pts)) == M and np.isin(pts, pool).all()


def test_rad_options_refused_before_any_work():
    blocks, sample_batch, _ = _toy()
    for bad, err, match in [
        (dict(pool=1), ValueError, "pool"),
        (dict(k=-1.0), ValueError, "k must"),
        (dict(c=float("nan")), ValueError, "c must"),
        (dict(k=0.0, c=0.0), ValueError, "density 0"),
        (dict(block="nope"), ValueError, "block must be one of"),
        (dict(block=3), TypeError, "block must be a block name"),
    ]:
        with pytest.raises(err, match=match):
            residual_adaptive(blocks, sample_batch, **bad)
    with pytest.raises(TypeError, match="sample_batch"):
        residual_adaptive(blocks, None)
    with pytest.raises(TypeError, match="ResidualBlocks"):
        residual_adaptive({"res": None}, sample_batch)


def _fit():
    """A realisable nonlinear fit u(x) = a tanh(w x) whose residual is largest where |x| is large."""
    blocks = pa.ResidualBlocks(
        {"res": lambda p, pts: p["a"] * jnp.tanh(pts[:, :1] @ p["w"]) - 0.7 * jnp.tanh(1.5 * pts[:, 0])},
        reduction="mean",
    )

    def sample_batch(key):
        return {"res": jax.random.uniform(key, (40, 1), minval=-2.0, maxval=2.0)}

    return blocks, sample_batch, {"w": jnp.array([0.5]), "a": jnp.array(1.0)}


def test_lm_with_adaptive_sampling_draws_rad_batches_and_resumes(tmp_path):
    """LM with ``adaptive_sampling``: the resampled batches are the RAD draws at the accepted parameters,
    the configuration is in the checkpoint, and a resumed run is bit-identical."""
    blocks, sample_batch, params = _fit()
    batch = sample_batch(jax.random.key(9))
    opts = dict(damping=1e-3, method="dense", sample_batch=sample_batch, resample_every=2,
                adaptive_sampling={"pool": 4, "k": 1.0})  # fmt: skip
    full = so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, steps=6, **opts)
    assert any(r["resampled"] for r in full.history)
    path = tmp_path / "rad.npz"
    so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, steps=3, checkpoint=path, **opts)
    resumed = so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, steps=6, resume=path, **opts)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    with pytest.raises(ValueError, match="adaptive_sampling"):  # another sampler's checkpoint is refused by name
        so.levenberg_marquardt(
            jax.random.key(0), blocks, params, batch, steps=6, resume=path, **{**opts, "adaptive_sampling": {"pool": 3}}
        )
    # the batch after the first resample is the RAD draw at the parameters of that step
    rad = ResidualAdaptiveSampler(blocks, sample_batch, pool=4, k=1.0)
    assert repr(rad) == "ResidualAdaptiveSampler(block='res', pool=4, k=1.0, c=1.0)"


def test_lm_adaptive_sampling_refused_before_any_work():
    blocks, sample_batch, params = _fit()
    batch = sample_batch(jax.random.key(0))
    with pytest.raises(ValueError, match="needs sample_batch"):
        so.levenberg_marquardt(jax.random.key(0), blocks, params, batch, steps=2, adaptive_sampling={})
    with pytest.raises(TypeError, match="adaptive_sampling: unknown option"):
        so.lm(adaptive_sampling={"pools": 3})
    with pytest.raises(ValueError, match="adaptive_sampling: pool"):
        so.lm(adaptive_sampling={"pool": 0})
    with pytest.raises(ValueError, match="block must be one of"):
        so.levenberg_marquardt(
            jax.random.key(0), blocks, params, batch, steps=2, sample_batch=sample_batch,
            adaptive_sampling={"block": "bc"},
        )  # fmt: skip


def test_train_lm_with_rad_on_burgers():
    """Through pa.train: LM with RAD on a tiny Burgers problem runs and logs a finite error."""
    prob = pa.problems.burgers(layers=(2, 8, 1), n_res=24, n_bc=6)
    opt = so.lm(method="dense", resample_every=2, adaptive_sampling={"pool": 3})
    res = pa.train(prob, optimizer=opt, steps=4, log_every=2, progress=False)
    assert np.isfinite(res.history["relative_l2"][-1])
