"""Reference solutions: Burgers by the Cole-Hopf transform, Allen-Cahn by a Fourier ETDRK4 solver.

Both are plain NumPy (float64) and independent of the networks; the problems
evaluate them once on their error grids.

References
----------
C. Basdevant, M. Deville, P. Haldenwang, J. M. Lacroix, J. Ouazzani, R. Peyret,
P. Orlandi, A. T. Patera, "Spectral and finite difference solutions of the Burgers
equation", Computers & Fluids 14 (1986) 23-41. A.-K. Kassam, L. N. Trefethen,
"Fourth-order time-stepping for stiff PDEs", SIAM J. Sci. Comput. 26 (2005) 1214-1233.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from sketchtrace.validation import check_int, check_real

FORMAT_VERSION = 1
MAX_HERMITE_ORDER = 300  # numpy's hermgauss overflows its weights beyond about 350 nodes


def default_cache_dir() -> Path:
    """``$SKETCHTRACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sketchtrace``, else ``~/.cache/sketchtrace``.

    The same folder as :func:`pinn_adapters.fem.default_cache_dir` (references go in
    its ``references/`` subfolder).
    """
    env = os.environ.get("SKETCHTRACE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sketchtrace"


# ----------------------------------------------------------------------------- Burgers (Cole-Hopf)


def _cole_hopf_terms(x, t, nu, order):
    """Quadrature nodes ``y = x - sqrt(4 nu t) z`` and normalised weights ``w f(y)`` (last axis)."""
    z, w = np.polynomial.hermite.hermgauss(order)
    x = np.asarray(x, np.float64)[..., None]
    t = np.asarray(t, np.float64)[..., None]
    y = x - np.sqrt(4.0 * nu * t) * z
    # f(y) = exp(-cos(pi y) / (2 pi nu)) spans exp(+-1/(2 pi nu)) (e^{+-50} at nu = 0.01/pi):
    # work with log-weights shifted by their maximum so that nothing overflows.
    e = -np.cos(math.pi * y) / (2.0 * math.pi * nu) + np.log(w)
    f = np.exp(e - np.max(e, axis=-1, keepdims=True))
    return y, f


def _check_burgers_args(x, t, nu, order):
    nu = check_real(nu, name="nu", low=0.0, low_open=True)
    order = check_int(order, name="order", minimum=2)
    if order > MAX_HERMITE_ORDER:
        raise ValueError(f"order must be at most {MAX_HERMITE_ORDER} (Gauss-Hermite weights overflow); got {order}")
    x, t = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(t, np.float64))
    if np.any(t < 0) or not np.all(np.isfinite(t)):
        raise ValueError("t must be finite and non-negative for the Burgers reference")
    return x, t, nu, order


def burgers_reference(x, t, *, nu=0.01 / math.pi, order=200):
    """Burgers ``u_t + u u_x = nu u_xx``, ``u(x, 0) = -sin(pi x)``, ``u(+-1, t) = 0``, exactly.

    The Cole-Hopf transform gives

    ``u(x, t) = -int sin(pi (x - eta)) f(x - eta) G(eta) d eta / int f(x - eta) G(eta) d eta``

    with ``f(y) = exp(-cos(pi y) / (2 pi nu))`` and the heat kernel ``G`` of variance
    ``2 nu t``; substituting ``eta = sqrt(4 nu t) z`` both integrals are Gauss-Hermite
    integrals, evaluated with ``order`` nodes and weights shifted in log space (``f``
    spans ``e^{+-50}`` at ``nu = 0.01/pi``). At ``t = 0`` the formula is exactly
    ``-sin(pi x)``. Measured at ``nu = 0.01/pi`` (see docs/problems.md): 100 and 200
    nodes agree to ``4e-15`` on the whole domain, shock included, and
    ``max_t |u_x(0, t)| = 152.00516`` at ``t = 1.60369/pi``, Basdevant et al.'s value.

    Parameters
    ----------
    x, t : array_like
        Points (broadcast together); ``t >= 0``.
    nu : float
        Viscosity (default ``0.01/pi``).
    order : int
        Gauss-Hermite nodes (at most 300).

    Returns
    -------
    numpy.ndarray of the broadcast shape (float64).
    """
    x, t, nu, order = _check_burgers_args(x, t, nu, order)
    y, f = _cole_hopf_terms(x, t, nu, order)
    return -np.sum(np.sin(math.pi * y) * f, axis=-1) / np.sum(f, axis=-1)


def burgers_reference_ux(x, t, *, nu=0.01 / math.pi, order=200):
    """``u_x`` of :func:`burgers_reference`, from the same quadrature (``u = -2 nu phi_x / phi``).

    ``u_x = -2 nu (phi_xx / phi - (phi_x / phi)^2)`` with ``phi`` the heat solution
    whose initial value is ``f``; ``f' = a pi sin(pi y) f`` and
    ``f'' = (a pi^2 cos(pi y) + (a pi sin(pi y))^2) f`` for ``a = 1 / (2 pi nu)``.
    """
    x, t, nu, order = _check_burgers_args(x, t, nu, order)
    y, f = _cole_hopf_terms(x, t, nu, order)
    a = 1.0 / (2.0 * math.pi * nu)
    s, c = np.sin(math.pi * y), np.cos(math.pi * y)
    total = np.sum(f, axis=-1)
    d1 = np.sum(a * math.pi * s * f, axis=-1) / total
    d2 = np.sum((a * math.pi**2 * c + (a * math.pi * s) ** 2) * f, axis=-1) / total
    return -2.0 * nu * (d2 - d1**2)


# ----------------------------------------------------------------------------- ETDRK4


def etdrk4_coefficients(linear, dt, *, contour_points=64):
    """Kassam-Trefethen ETDRK4 coefficients for a diagonal linear part, by contour integrals.

    For ``z = dt L`` the coefficients are ``E = e^z``, ``E2 = e^{z/2}``,
    ``Q = dt (e^{z/2} - 1) / z`` and ``f1, f2, f3 = dt (phi-combinations) / z^3``; each
    is evaluated as the mean of its formula over ``contour_points`` points on the circle
    of radius 1 around ``z``, which avoids the cancellation of the direct formulas for
    small ``|z|`` (``z = 0`` included). Real ``linear`` gives real coefficients.

    Returns
    -------
    dict with keys ``E, E2, Q, f1, f2, f3`` (arrays shaped like ``linear``).
    """
    M = check_int(contour_points, name="contour_points", minimum=4)
    dt = check_real(dt, name="dt", low=0.0, low_open=True)
    L = np.asarray(linear)
    r = np.exp(1j * math.pi * (np.arange(1, M + 1) - 0.5) / M)
    z = dt * L[..., None] + r
    ez, ez2 = np.exp(z), np.exp(z / 2)
    out = {
        "Q": dt * np.mean((ez2 - 1) / z, axis=-1),
        "f1": dt * np.mean((-4 - z + ez * (4 - 3 * z + z**2)) / z**3, axis=-1),
        "f2": dt * np.mean((2 + z + ez * (z - 2)) / z**3, axis=-1),
        "f3": dt * np.mean((-4 - 3 * z - z**2 + ez * (4 - z)) / z**3, axis=-1),
    }
    if not np.iscomplexobj(L):
        out = {k: v.real for k, v in out.items()}
    out["E"], out["E2"] = np.exp(dt * L), np.exp(dt * L / 2)
    return out


def etdrk4(linear, nonlinear, v0, *, dt, num_steps, save_every=1, contour_points=64):
    """Integrate ``v' = L v + N(v)`` (``L`` diagonal) with ETDRK4 (Cox-Matthews, Kassam-Trefethen).

    Parameters
    ----------
    linear : array
        The diagonal of ``L`` (e.g. ``-nu k^2`` in Fourier space).
    nonlinear : callable
        ``N(v)`` with ``v`` shaped like ``v0``.
    v0 : array
        Initial state.
    dt : float
    num_steps : int
    save_every : int
        Keep every ``save_every``-th state (``num_steps`` must be a multiple).

    Returns
    -------
    numpy.ndarray ``(num_steps // save_every + 1, *v0.shape)``: the states at
    ``t = 0, save_every dt, ...``.
    """
    num_steps = check_int(num_steps, name="num_steps", minimum=1)
    save_every = check_int(save_every, name="save_every", minimum=1)
    if num_steps % save_every:
        raise ValueError(f"num_steps ({num_steps}) must be a multiple of save_every ({save_every})")
    c = etdrk4_coefficients(linear, dt, contour_points=contour_points)
    E, E2, Q, f1, f2, f3 = (c[k] for k in ("E", "E2", "Q", "f1", "f2", "f3"))
    v = np.asarray(v0)
    out = [v]
    for step in range(1, num_steps + 1):
        Nv = nonlinear(v)
        a = E2 * v + Q * Nv
        Na = nonlinear(a)
        b = E2 * v + Q * Na
        Nb = nonlinear(b)
        cc = E2 * a + Q * (2 * Nb - Nv)
        Nc = nonlinear(cc)
        v = E * v + f1 * Nv + 2 * f2 * (Na + Nb) + f3 * Nc
        if step % save_every == 0:
            out.append(v)
    return np.stack(out)


# ----------------------------------------------------------------------------- Allen-Cahn


@dataclasses.dataclass(frozen=True, eq=False)
class SpectralSolution:
    """Snapshots ``u[i, j] = u(x[j], t[i])`` of a periodic solution on a uniform grid.

    ``x`` is the grid ``-1 + 2 j / n`` of the period ``[-1, 1)``; ``u_t`` holds the time
    derivative from the PDE at the snapshots (for :meth:`__call__`'s interpolation in
    time); ``meta`` the settings and the measured accuracy.
    """

    x: np.ndarray
    t: np.ndarray
    u: np.ndarray
    u_t: np.ndarray
    meta: dict

    def __call__(self, x, t):
        """``u(x, t)`` anywhere: Fourier interpolation in ``x``, cubic Hermite in ``t``.

        Exact (to the solve) at the snapshot times; between them the cubic Hermite error
        is measured in ``meta["accuracy"]["time_interpolation"]`` where available.
        """
        x, t = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(t, np.float64))
        t0, t1 = float(self.t[0]), float(self.t[-1])
        if np.any((t < t0 - 1e-12) | (t > t1 + 1e-12)) or not np.all(np.isfinite(t)):
            raise ValueError(f"t must lie in [{t0}, {t1}] for this reference")
        shape, x, t = x.shape, x.ravel(), t.ravel()
        h = (t1 - t0) / (len(self.t) - 1)
        i = np.clip(np.floor((t - t0) / h).astype(int), 0, len(self.t) - 2)
        s = np.clip((t - t0) / h - i, 0.0, 1.0)
        n = self.u.shape[1]
        m = np.fft.rfftfreq(n, d=1.0 / n)  # integer wave numbers; period 2, so k = pi m
        wgt = np.where((m == 0) | (2 * m == n), 1.0, 2.0) / n
        cu, cut = np.fft.rfft(self.u, axis=-1) * wgt, np.fft.rfft(self.u_t, axis=-1) * wgt * h
        h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
        out = np.empty(x.shape)
        for a in range(0, len(x), 1024):  # chunks bound the (points, modes) temporaries
            sl = slice(a, a + 1024)
            phase = np.exp(1j * math.pi * m * (x[sl, None] + 1.0))  # the grid starts at x = -1
            coef = h00[sl, None] * cu[i[sl]] + h10[sl, None] * cut[i[sl]]
            coef += h01[sl, None] * cu[i[sl] + 1] + h11[sl, None] * cut[i[sl] + 1]
            out[sl] = np.real(np.sum(coef * phase, axis=-1))
        return out.reshape(shape)


def _allen_cahn_rhs(n, eps, gamma):
    m = np.fft.rfftfreq(n, d=1.0 / n)
    k = math.pi * m
    linear = -eps * k**2

    def nonlinear(v):
        u = np.fft.irfft(v, n=n)
        return np.fft.rfft(gamma * (u - u**3))

    return linear, nonlinear


def solve_allen_cahn(*, n=2048, dt=5e-4, T=1.0, num_snapshots=201, eps=1e-4, gamma=5.0, u0=None):
    """``u_t = eps u_xx + gamma (u - u^3)`` on ``[-1, 1)`` periodic by Fourier ETDRK4.

    ``u0`` (a callable of ``x``) defaults to ``x^2 cos(pi x)``; ``n`` grid points
    (pseudo-spectral nonlinearity, no dealiasing), ``round(T / dt)`` steps (a multiple
    of ``num_snapshots - 1``).

    Returns
    -------
    SpectralSolution
    """
    n = check_int(n, name="n", minimum=8)
    if n % 2:
        raise ValueError(f"n must be even; got {n}")
    dt = check_real(dt, name="dt", low=0.0, low_open=True)
    T = check_real(T, name="T", low=0.0, low_open=True)
    num_snapshots = check_int(num_snapshots, name="num_snapshots", minimum=2)
    eps, gamma = check_real(eps, name="eps", low=0.0), check_real(gamma, name="gamma")
    num_steps = int(round(T / dt))
    if abs(num_steps * dt - T) > 1e-9 * T or num_steps % (num_snapshots - 1):
        raise ValueError(
            f"T / dt must be an integer multiple of num_snapshots - 1 = {num_snapshots - 1}; got T={T}, dt={dt}"
        )
    x = -1.0 + 2.0 * np.arange(n) / n
    u_init = x**2 * np.cos(math.pi * x) if u0 is None else np.asarray(u0(x), np.float64)
    linear, nonlinear = _allen_cahn_rhs(n, eps, gamma)
    v = etdrk4(linear, nonlinear, np.fft.rfft(u_init), dt=dt, num_steps=num_steps,
               save_every=num_steps // (num_snapshots - 1))  # fmt: skip
    u = np.fft.irfft(v, n=n, axis=-1)
    u_t = np.fft.irfft(linear * v, n=n, axis=-1) + gamma * (u - u**3)
    t = np.linspace(0.0, T, num_snapshots)
    meta = {"n": n, "dt": dt, "T": T, "eps": eps, "gamma": gamma, "scheme": "fourier-etdrk4"}
    return SpectralSolution(x, t, u, u_t, meta)


def _relative_difference(fine: SpectralSolution, coarse: SpectralSolution):
    """Relative L2 difference over all snapshots, on the coarse grid (a subset of the fine one)."""
    step = fine.u.shape[1] // coarse.u.shape[1]
    a = fine.u[:, ::step]
    return float(np.linalg.norm(a - coarse.u) / np.linalg.norm(a))


def allen_cahn_reference(
    *, n=2048, dt=5e-4, T=1.0, num_snapshots=201, eps=1e-4, gamma=5.0, check=True, cache_dir=None
) -> SpectralSolution:
    """The cached Allen-Cahn reference (jaxpi's setting): :func:`solve_allen_cahn`, stored on first use.

    Stored in ``cache_dir/references/allen-cahn-<hash>.npz`` (``cache_dir`` defaults to
    :func:`default_cache_dir`; written atomically, read with ``allow_pickle=False``).
    With ``check=True`` two more solves estimate the error: one with ``n / 2`` points
    (``meta["accuracy"]["space"]``) and one with ``2 dt`` (``meta["accuracy"]["time"]``),
    each the relative L2 difference to the reference over all snapshots (an upper
    estimate of the coarser solve's error, so a conservative bound for the reference).
    """
    settings = {
        "n": int(n), "dt": float(dt), "T": float(T), "num_snapshots": int(num_snapshots),
        "eps": float(eps), "gamma": float(gamma), "check": bool(check), "format": FORMAT_VERSION,
    }  # fmt: skip
    solve_kw = {k: settings[k] for k in ("n", "dt", "T", "num_snapshots", "eps", "gamma")}
    steps = settings["T"] / settings["dt"] / (settings["num_snapshots"] - 1)
    if check and (abs(steps / 2 - round(steps / 2)) > 1e-9 * steps or settings["n"] % 4):
        raise ValueError(
            "check=True solves with 2 dt and n / 2 points too: T / (2 dt) must be a multiple of num_snapshots - 1 "
            f"and n a multiple of 4; got T={T}, dt={dt}, num_snapshots={num_snapshots}, n={n} (or pass check=False)"
        )
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / "references" / f"allen-cahn-{digest}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            sol = SpectralSolution(z["x"], z["t"], z["u"], z["u_t"], meta)
        meta.update(cache_file=str(path), from_cache=True)
        return sol
    sol = solve_allen_cahn(**solve_kw)
    if check:
        half_n = solve_allen_cahn(**{**solve_kw, "n": solve_kw["n"] // 2})
        double_dt = solve_allen_cahn(**{**solve_kw, "dt": 2 * solve_kw["dt"]})
        sol.meta["accuracy"] = {
            "space": _relative_difference(sol, half_n),
            "time": _relative_difference(sol, double_dt),
            "note": "relative L2 difference over all snapshots to the solve with n/2 points and with 2 dt",
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, x=sol.x, t=sol.t, u=sol.u, u_t=sol.u_t, meta=np.asarray(json.dumps(sol.meta)))
    os.replace(tmp, path)
    sol.meta.update(cache_file=str(path), from_cache=False)
    return sol
