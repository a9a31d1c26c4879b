"""Analytic variances of Hutchinson quadratic forms, for test tolerances, and the direct (brute-force)
leave-one-out XTrace / XNysTrace oracles shared by test_xtrace.py and test_oracles.py."""

import math

import numpy as np


def qform_variance(G, sampler):
    """Variance of ``v^T G v`` for one probe ``v`` (``G`` symmetric, ``n x n``).

    Rademacher: ``2 (||G||_F^2 - sum g_ii^2)``; Gaussian: ``2 ||G||_F^2``;
    uniform on the sphere of radius sqrt(n): ``2n/(n+2) (||G||_F^2 - tr(G)^2/n)``.
    """
    G = np.asarray(G, dtype=float)
    G = 0.5 * (G + G.T)
    n = G.shape[0]
    fro2 = float(np.sum(G * G))
    if sampler == "rademacher":
        return 2.0 * (fro2 - float(np.sum(np.diag(G) ** 2)))
    if sampler == "gaussian":
        return 2.0 * fro2
    if sampler == "sphere":
        return 2.0 * n / (n + 2.0) * (fro2 - float(np.trace(G)) ** 2 / n)
    raise ValueError(sampler)


def assert_mean_within(samples, truth, var_one_trial, *, z=5.0, what="estimate"):
    """``|mean - truth| <= z * sqrt(var / N)`` (two-sided false-failure rate 5.7e-7 at z=5)."""
    samples = np.asarray(samples, dtype=float)
    n = samples.size
    sd = math.sqrt(var_one_trial / n)
    dev = abs(samples.mean() - truth)
    assert dev <= z * sd + 1e-12 * max(1.0, abs(truth)), (
        f"{what}: mean {samples.mean():.6g} vs truth {truth:.6g} is {dev / sd:.2f} sd off (allowed {z})"
    )
    return dev / sd if sd > 0 else 0.0


def variance_ratio_bounds(num_trials, *, z=5.0, kurtosis=10.0):
    """Loose bounds for sample variance / true variance over ``num_trials`` trials.

    The sample variance has relative standard deviation about
    ``sqrt((kurtosis - 1) / N)``; ``kurtosis`` bounds the (non-excess) kurtosis of the
    estimates (<= 15 for quadratic forms of Gaussian/Rademacher probes).
    """
    rel = z * math.sqrt((kurtosis - 1.0) / num_trials)
    return max(0.0, 1.0 - rel), 1.0 + rel


def map_keys(fn, keys):
    """``fn`` over a batch of keys, compiled, one key at a time (``lax.map``).

    Used instead of ``jax.vmap`` for estimators that call LAPACK (QR, Cholesky, eigh, solves):
    jaxlib 0.10.2 can deadlock on a 2-core CPU when two batched LAPACK kernels run at the same
    time (each waits on the same two-thread pool). Unbatched calls inside a loop do not.
    """
    import jax

    return jax.jit(lambda ks: jax.lax.map(fn, ks))(keys)


#: The relative bias every estimator's powered unbiasedness test must detect (power 0.99).
DETECT_RTOL = 0.01


def assert_unbiased_powered(samples, truth, *, rtol=DETECT_RTOL, false_alarm=1e-6, what="estimate"):
    """Unbiasedness t-test that must also be able to detect a relative bias ``rtol`` (power 0.99).

    Fails when the mean is off (``check_unbiased`` at ``false_alarm``) or when the test is
    under-powered (``detectable_bias > rtol * |truth|``). Returns the report; its
    ``relative_detectable_bias(truth)`` is the bias the test states it detects. Each caller
    also shows that the same samples scaled by ``1 + rtol`` fail (:func:`assert_catches_scale`).
    """
    from sketchtrace.testing import check_power, check_unbiased

    rep = check_unbiased(samples, truth, false_alarm=false_alarm)
    assert rep.passed, f"{what}: " + rep.describe(truth)
    check_power(rep, truth, rtol)
    return rep


def assert_catches_scale(samples, truth, *, rtol=DETECT_RTOL, false_alarm=1e-6):
    """The powered test rejects the same samples scaled by ``1 + rtol`` (a deliberately biased estimator)."""
    import pytest

    with pytest.raises(AssertionError, match="standard errors"):
        assert_unbiased_powered(
            (1.0 + rtol) * np.asarray(samples, dtype=float), truth, rtol=rtol, false_alarm=false_alarm
        )


def low_variance_matrix(n, *, shift=2.0, rank=0, noise=0.05, seed=0):
    """``shift I + U diag(6, 4, 2)[:rank] U^T + noise E`` (``E`` symmetric, entries of size ``1/sqrt(n)``).

    Small Hutchinson variance for Rademacher/sphere probes (the diagonal is sampled
    exactly, the off-diagonal is small) and, with ``rank`` up to 3, a dominant low-rank
    part that sketching estimators capture exactly: estimates with a relative spread of
    a few percent, so a few thousand trials detect a 1% bias.
    """
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((n, max(rank, 1))))
    E = rng.standard_normal((n, n))
    E = (E + E.T) / np.sqrt(2 * n)
    low = (U[:, :rank] * np.array([6.0, 4.0, 2.0][:rank])) @ U[:, :rank].T
    return shift * np.eye(n) + low + noise * E


# ----------------------------------------------------------------------------- X-family oracles (by definition)


def orth(M):
    """An orthonormal basis of the columns of ``M`` (reduced QR)."""
    q, _ = np.linalg.qr(M)
    return q


def xtrace_loo_samples(A, Om, improved):
    """Direct leave-one-out XTrace samples (``Om``: test vectors as columns): k QR factorisations, no downdating."""
    n, k = Om.shape
    Y = A @ Om
    t = np.empty(k)
    for i in range(k):
        Qi = orth(np.delete(Y, i, axis=1))
        u = Om[:, i] - Qi @ (Qi.T @ Om[:, i])
        scale = (n - k + 1) / (u @ u) if improved else 1.0
        t[i] = np.trace(Qi.T @ A @ Qi) + scale * (u @ A @ u)
    return t


def xnystrace_loo_samples(A, Om, improved):
    """Direct leave-one-out XNysTrace samples (Nystrom approximations with pseudo-inverses)."""
    n, k = Om.shape
    Y = A @ Om
    t = np.empty(k)
    for i in range(k):
        Oi, Yi = np.delete(Om, i, axis=1), np.delete(Y, i, axis=1)
        Ahat = Yi @ np.linalg.pinv(Oi.T @ Yi) @ Yi.T
        w = Om[:, i]
        if improved:
            Po = orth(Oi)
            r = w - Po @ (Po.T @ w)
            scale = (n - k + 1) / (r @ r)
        else:
            scale = 1.0
        t[i] = np.trace(Ahat) + scale * (w @ (A - Ahat) @ w)
    return t


def x_mean_sem(samples, A, Om, improved):
    """X-family mean and sem by definition: the leave-one-out spread plus the covariance estimate
    ``C = sum_{i != j} D_ij D_ji / (k (k - 1))``, ``D_ij = t_i - t_i^(-j)`` by re-running ``samples``
    without ``omega_j``; ``sem^2 = s^2/k + max(C, 0)`` plus a rounding term."""
    k = Om.shape[1]
    t = samples(A, Om, improved)
    D = np.zeros((k, k))
    for j in range(k):
        rest = [i for i in range(k) if i != j]
        D[rest, j] = t[rest] - samples(A, Om[:, rest], improved)
    s2 = t.var(ddof=1)
    C = np.sum(D * D.T) / (k * (k - 1))
    rnd = k * np.finfo(float).eps * np.mean(np.abs(t))
    return t.mean(), math.sqrt(s2 / k + max(C, 0.0) + rnd * rnd)
