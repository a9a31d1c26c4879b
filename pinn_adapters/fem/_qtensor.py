"""Finite element reference for the 2D Landau-de Gennes (Q-tensor) gradient flow.

The problem (Hirsch and Pichi 2025, second experiment): ``Q = [[q1, q2], [q2, -q1]]`` on
``(0, 2)^2``, ``t in (0, T)``,

    q_t = M (L lap q - a q - 2 c (q1^2 + q2^2) q) + f        (componentwise, q = (q1, q2))

with homogeneous Dirichlet data ``q = 0`` on the boundary and ``Q0 = n0 n0^T - |n0|^2/2 I``,
``n0 = (x(2-x) y(2-y), sin(pi x) sin(pi y / 2))`` (``f = 0`` except in manufactured-solution
checks). ``n0`` vanishes on the whole boundary, so ``Q0`` is compatible with the Dirichlet data.

Discretisation: continuous P1 or P2 Lagrange triangles (scikit-fem) on a uniform
``n x n`` square grid split into triangles; in time a linearly implicit BDF2 scheme
(BDF1 for the first step). At step ``n + 1`` the cubic coefficient ``|q|^2`` is extrapolated,
``q* = 2 q^n - q^{n-1}``, and ``q^{n+1}`` is implicit:

    (3 q^{n+1} - 4 q^n + q^{n-1}) / (2 dt) = M (L lap q^{n+1} - a q^{n+1} - 2 c |q*|^2 q^{n+1}) + f^{n+1}.

This is second order in time (the extrapolation error is O(dt^2)), needs one sparse linear
solve per step (the same matrix for q1 and q2, so one factorisation and two right-hand
sides) and keeps the cubic term's damping implicit. Errors are O(h^{k+1} + dt^2) in L2 for
P_k elements. scikit-fem is imported lazily, inside the functions.

References
----------
G. Akrivis, M. Crouzeix, C. Makridakis, "Implicit-explicit multistep methods for
quasilinear parabolic equations", Numer. Math. 82 (1999). doi:10.1007/s002110050429
T. Gustafsson, G. D. McBain, "scikit-fem: A Python package for finite element assembly",
JOSS 5(52) (2020). doi:10.21105/joss.02369
M. Hirsch, F. Pichi, arXiv:2511.15530 (2025).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
ELEMENTS = ("P1", "P2")
SCHEMES = ("bdf2", "bdf1")
PARAMETERS = {"a": -0.2, "c": 1.0, "L": 0.1, "M": 1.0}


def initial_director(x, y):
    """``n0 = (x(2-x) y(2-y), sin(pi x) sin(pi y / 2))`` (works on NumPy and JAX arrays)."""
    xp = _xp(x)
    return x * (2 - x) * y * (2 - y), xp.sin(np.pi * x) * xp.sin(np.pi * y / 2)


def initial_q(x, y):
    """``(q1, q2)`` of ``Q0 = n0 n0^T - |n0|^2 / 2 I``: ``q1 = (nx^2 - ny^2) / 2``, ``q2 = nx ny``."""
    nx, ny = initial_director(x, y)
    return 0.5 * (nx * nx - ny * ny), nx * ny


def _skfem():
    try:
        import skfem
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the finite element reference needs scikit-fem: pip install scikit-fem (tested with 12.0.2)"
        ) from exc
    return skfem


def _xp(x):
    if type(x).__module__.startswith("jax"):
        import jax.numpy as jnp

        return jnp
    return np


def _check_positive_int(name, v, minimum=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {v!r}")
    return int(v)


def _check_positive_float(name, v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number; got {v!r}") from None
    if not np.isfinite(f) or f <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {v!r}")
    return f


@dataclasses.dataclass
class FEMSolution:
    """Snapshots of a finite element Q-tensor solution.

    Attributes
    ----------
    times : ndarray, shape (S,)
        Snapshot times (``0`` and ``T`` included).
    q : ndarray, shape (S, 2, N)
        Degrees of freedom of ``q1`` and ``q2`` at each snapshot.
    config : dict
        The solver settings (mesh ``n``, ``element``, ``num_steps``, ``T``, coefficients).
    meta : dict
        Wall time, number of DOFs, and (for cached references) the convergence check.
    """

    times: np.ndarray
    q: np.ndarray
    config: dict
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def basis(self):
        if getattr(self, "_basis", None) is None:
            self._basis = make_basis(self.config["n"], self.config["element"])
        return self._basis

    def probe(self, points, snapshot=-1):
        """``(2, P)`` values of ``(q1, q2)`` at ``points`` (``(P, 2)`` array) at one snapshot."""
        pts = np.asarray(points, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"points must have shape (P, 2); got {pts.shape}")
        if np.any(pts < -1e-12) or np.any(pts > 2 + 1e-12):
            raise ValueError("points must lie in the closed domain [0, 2]^2")
        P = self.basis.probes(np.clip(pts, 0.0, 2.0).T).tocsr()
        return np.stack([P @ self.q[snapshot, 0], P @ self.q[snapshot, 1]])

    def on_grid(self, num=41):
        """Values on the uniform ``num x num`` grid of ``[0, 2]^2`` at every snapshot.

        Returns ``(xs, q)`` with ``xs`` of shape ``(num,)`` and ``q`` of shape
        ``(S, 2, num, num)`` (``q[s, c, i, j]`` at ``x = xs[i], y = xs[j]``).
        """
        num = _check_positive_int("num", num, 2)
        xs = np.linspace(0.0, 2.0, num)
        X, Y = np.meshgrid(xs, xs, indexing="ij")
        P = self.basis.probes(np.stack([X.ravel(), Y.ravel()])).tocsr()
        S, N = len(self.times), self.q.shape[-1]
        vals = (P @ self.q.reshape(S * 2, N).T).T  # sparse (points x DOFs) times dense (DOFs x 2S)
        return xs, vals.reshape(S, 2, num, num)

    def l2_error(self, exact, snapshot=-1):
        """``||q_h - q*||_{L2}`` (both components) at a snapshot; ``exact(x, y, t) -> (q1, q2)``."""
        fem = _skfem()

        t = float(self.times[snapshot])
        basis = self.basis

        @fem.Functional
        def err(w):
            e1, e2 = exact(w.x[0], w.x[1], t)
            return (w["q1"] - e1) ** 2 + (w["q2"] - e2) ** 2

        qs = self.q[snapshot]
        return float(np.sqrt(err.assemble(basis, q1=basis.interpolate(qs[0]), q2=basis.interpolate(qs[1]))))

    def l2_norm(self, snapshot=-1):
        """``||q_h||_{L2}`` (both components) at a snapshot."""
        return self.l2_error(lambda x, y, t: (0.0 * x, 0.0 * x), snapshot)


def make_basis(n, element="P2"):
    """scikit-fem basis on the uniform ``n x n`` triangulated square grid of ``[0, 2]^2``."""
    fem = _skfem()

    n = _check_positive_int("n", n)
    if element not in ELEMENTS:
        raise ValueError(f"element must be one of {ELEMENTS}; got {element!r}")
    xs = np.linspace(0.0, 2.0, n + 1)
    mesh = fem.MeshTri.init_tensor(xs, xs)
    el = fem.ElementTriP2() if element == "P2" else fem.ElementTriP1()
    return fem.Basis(mesh, el, intorder=6)


def _check_solver_args(T, num_steps, num_snapshots, scheme, a, c, L, M):
    """Checked ``(T, num_steps, num_snapshots, a, c, L, M)`` of :func:`solve_qtensor`."""
    T = _check_positive_float("T", T)
    num_steps = _check_positive_int("num_steps", num_steps)
    num_snapshots = _check_positive_int("num_snapshots", num_snapshots, 2)
    if num_steps % (num_snapshots - 1):
        raise ValueError(f"num_steps ({num_steps}) must be a multiple of num_snapshots - 1 ({num_snapshots - 1})")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}; got {scheme!r}")
    for name, v in (("a", a), ("c", c), ("L", L), ("M", M)):
        if not np.isfinite(float(v)):
            raise ValueError(f"{name} must be finite; got {v!r}")
    return T, num_steps, num_snapshots, float(a), float(c), _check_positive_float("L", L), _check_positive_float("M", M)


def _forms(fem, basis):
    """The mass and stiffness matrices and the ``|q|^2``-weighted mass form."""
    from skfem.helpers import dot, grad

    @fem.BilinearForm
    def mass(u, v, w):
        return u * v

    @fem.BilinearForm
    def stiff(u, v, w):
        return dot(grad(u), grad(v))

    @fem.BilinearForm
    def weighted_mass(u, v, w):
        return w["s"] * u * v

    return mass.assemble(basis), stiff.assemble(basis), weighted_mass


def solve_qtensor(
    *,
    T=1.0,
    n=32,
    element="P2",
    num_steps=400,
    num_snapshots=21,
    scheme="bdf2",
    a=PARAMETERS["a"],
    c=PARAMETERS["c"],
    L=PARAMETERS["L"],
    M=PARAMETERS["M"],
    q0=None,
    source=None,
):
    """Solve the Q-tensor gradient flow with finite elements (see the module docstring).

    Parameters
    ----------
    T : float
        Final time.
    n : int
        Squares per side of the mesh (``2 n^2`` triangles, ``h = 2 / n``).
    element : {"P2", "P1"}
        Lagrange element.
    num_steps : int
        Time steps (``dt = T / num_steps``); must be a multiple of ``num_snapshots - 1``.
    num_snapshots : int
        Stored time levels, equally spaced, ``0`` and ``T`` included.
    scheme : {"bdf2", "bdf1"}
        Linearly implicit BDF2 (second order) or backward Euler with ``|q^n|^2`` lagged
        (first order).
    a, c, L, M : float
        Coefficients (defaults ``-0.2, 1, 0.1, 1``).
    q0 : callable, optional
        ``q0(x, y) -> (q1, q2)``; default :func:`initial_q`. Interpolated at the nodes.
    source : callable, optional
        ``source(x, y, t) -> (f1, f2)`` added to the right-hand side (manufactured solutions).

    Returns
    -------
    FEMSolution

    References
    ----------
    G. Akrivis, M. Crouzeix, C. Makridakis, Numer. Math. 82 (1999). doi:10.1007/s002110050429
    """
    import scipy.sparse.linalg as spla

    fem = _skfem()
    T, num_steps, num_snapshots, a, c, L, M = _check_solver_args(T, num_steps, num_snapshots, scheme, a, c, L, M)
    t_start = time.perf_counter()
    basis = make_basis(n, element)
    Mass, K, weighted_mass = _forms(fem, basis)
    D = basis.get_dofs().all()  # boundary DOFs (q = 0 there)
    interior = basis.complement_dofs(D)
    N = basis.N
    q0 = initial_q if q0 is None else q0
    # nodal interpolation (Lagrange DOFs at nodes / edge midpoints) rather than L2 projection
    dof_x = basis.doflocs
    q = np.stack(q0(dof_x[0], dof_x[1]))
    q[:, D] = 0.0

    if source is not None:

        @fem.LinearForm
        def load(v, w):
            f = source(w.x[0], w.x[1], w["t"])
            return f[w["comp"]] * v

    dt = T / num_steps
    base = M * L * K + (M * a) * Mass
    every = num_steps // (num_snapshots - 1)
    snaps = [q.copy()]
    q_prev = None
    for step in range(1, num_steps + 1):
        t_new = step * dt
        bdf2 = scheme == "bdf2" and q_prev is not None
        q_star = 2 * q - q_prev if bdf2 else q
        s = basis.interpolate(q_star[0]) ** 2 + basis.interpolate(q_star[1]) ** 2
        W = weighted_mass.assemble(basis, s=s)
        if bdf2:
            A = (1.5 / dt) * Mass + base + (2 * M * c) * W
            rhs = Mass @ ((2.0 * q - 0.5 * q_prev).T) / dt
        else:
            A = Mass / dt + base + (2 * M * c) * W
            rhs = Mass @ q.T / dt
        if source is not None:
            rhs = rhs + np.stack([load.assemble(basis, t=t_new, comp=i) for i in range(2)], axis=1)
        A_ii = A[interior][:, interior].tocsc()
        lu = spla.splu(A_ii)
        q_new = np.zeros_like(q)
        q_new[:, interior] = lu.solve(np.ascontiguousarray(rhs[interior])).T
        if not np.all(np.isfinite(q_new)):
            raise FloatingPointError(f"solve_qtensor: non-finite solution at step {step} (t = {t_new:g})")
        q_prev, q = q, q_new
        if step % every == 0:
            snaps.append(q.copy())
    times = np.linspace(0.0, T, num_snapshots)
    config = {
        "T": T,
        "n": int(n),
        "element": element,
        "num_steps": num_steps,
        "num_snapshots": num_snapshots,
        "scheme": scheme,
        "a": a,
        "c": c,
        "L": L,
        "M": M,
    }
    meta = {"wall_time_s": time.perf_counter() - t_start, "num_dofs": int(N), "h": 2.0 / n, "dt": dt}
    sol = FEMSolution(times, np.stack(snaps), config, meta)
    sol._basis = basis
    return sol


def manufactured(*, amplitude=0.6, a=PARAMETERS["a"], c=PARAMETERS["c"], L=PARAMETERS["L"], M=PARAMETERS["M"]):
    """A manufactured solution for verification: ``(exact, source, q0)``.

    ``q1 = A exp(-t) sin(pi x / 2) sin(pi y / 2)``, ``q2 = A cos(2 t) x (2 - x) sin(pi y / 2)``
    (zero on the boundary of ``(0, 2)^2``), and the source ``f = q_t - M (L lap q - a q -
    2 c |q|^2 q)`` that makes it an exact solution. All three callables take NumPy or JAX
    arrays: ``exact(x, y, t)``, ``source(x, y, t)``, ``q0(x, y)``, each returning ``(q1, q2)``.
    """
    A, k = float(amplitude), np.pi / 2

    def exact(x, y, t):
        xp = _xp(x)
        sy = xp.sin(k * y)
        return A * xp.exp(-t) * xp.sin(k * x) * sy, A * xp.cos(2 * t) * x * (2 - x) * sy

    def source(x, y, t):
        xp = _xp(x)
        q1, q2 = exact(x, y, t)
        sy = xp.sin(k * y)
        q1_t = -q1
        q2_t = -2 * A * xp.sin(2 * t) * x * (2 - x) * sy
        lap1 = -2 * k * k * q1
        lap2 = A * xp.cos(2 * t) * (-2 * sy - x * (2 - x) * k * k * sy)
        s = q1 * q1 + q2 * q2
        return (q1_t - M * (L * lap1 - a * q1 - 2 * c * s * q1), q2_t - M * (L * lap2 - a * q2 - 2 * c * s * q2))

    return exact, source, (lambda x, y: exact(x, y, 0.0 * x))


def default_cache_dir() -> Path:
    """``$SKETCHTRACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/sketchtrace``, else ``~/.cache/sketchtrace``."""
    env = os.environ.get("SKETCHTRACE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sketchtrace"


def _relative_difference(fine: FEMSolution, coarse: FEMSolution, num=81):
    """Max over snapshots of the relative L2 grid difference between two solutions."""
    _, a = fine.on_grid(num)
    _, b = coarse.on_grid(num)
    step = (len(fine.times) - 1) // (len(coarse.times) - 1)
    a = a[::step]
    num_ = np.sqrt(np.sum((a - b) ** 2, axis=(1, 2, 3)))
    den = np.sqrt(np.sum(a**2, axis=(1, 2, 3)))
    return float(np.max(num_ / den))


def reference(
    *,
    T=1.0,
    n=32,
    element="P2",
    num_steps=None,
    num_snapshots=21,
    cache_dir=None,
    check=True,
    verbose=False,
    **coefficients,
):
    """The cached finite element reference for the Q-tensor problem.

    Solves once with :func:`solve_qtensor` and stores the snapshots in
    ``cache_dir/fem/qtensor-<hash>.npz`` (``cache_dir`` defaults to
    :func:`default_cache_dir`); later calls with the same settings load the file.
    With ``check=True`` the solve is repeated on the mesh with half the squares per side
    and twice the time step, and the relative L2 difference of the two (max over
    snapshots) is stored in ``meta["convergence"]`` as an a posteriori error estimate
    of the coarse solve (the reference itself is more accurate).

    Parameters
    ----------
    T, n, element, num_snapshots : see :func:`solve_qtensor`
    num_steps : int, optional
        Default ``400 T`` rounded up to a multiple of ``2 (num_snapshots - 1)``.
    cache_dir : path, optional
    check : bool
        Run (and store) the mesh / time step convergence check.
    coefficients : a, c, L, M

    Returns
    -------
    FEMSolution
    """
    T = _check_positive_float("T", T)
    num_snapshots = _check_positive_int("num_snapshots", num_snapshots, 2)
    if num_steps is None:
        unit = 2 * (num_snapshots - 1)
        num_steps = unit * max(1, int(np.ceil(400 * T / unit)))
    unknown = set(coefficients) - set(PARAMETERS)
    if unknown:
        raise TypeError(f"reference: unknown coefficient(s) {sorted(unknown)}; expected some of {sorted(PARAMETERS)}")
    coef = {**PARAMETERS, **{k: float(v) for k, v in coefficients.items()}}
    settings = {
        "T": T,
        "n": int(n),
        "element": element,
        "num_steps": int(num_steps),
        "num_snapshots": num_snapshots,
        "scheme": "bdf2",
        **coef,
        "check": bool(check),
        "format": FORMAT_VERSION,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / "fem" / f"qtensor-{digest}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            config = json.loads(str(z["config"]))
            meta = json.loads(str(z["meta"]))
            sol = FEMSolution(z["times"], z["q"], config, meta)
        meta["cache_file"] = str(path)
        meta["from_cache"] = True
        return sol
    if verbose:
        print(f"solving the finite element reference ({element}, n={n}, {num_steps} steps) ...", flush=True)
    sol = solve_qtensor(T=T, n=n, element=element, num_steps=num_steps, num_snapshots=num_snapshots, **coef)
    if check:
        if n % 2 or num_steps % (2 * (num_snapshots - 1)):
            raise ValueError("check=True needs an even n and num_steps a multiple of 2 (num_snapshots - 1)")
        coarse = solve_qtensor(
            T=T, n=n // 2, element=element, num_steps=num_steps // 2, num_snapshots=num_snapshots, **coef
        )
        sol.meta["convergence"] = {
            "coarse": {"n": n // 2, "num_steps": num_steps // 2},
            "relative_l2_difference": _relative_difference(sol, coarse),
            "note": "max over snapshots of ||q(n, dt) - q(n/2, 2 dt)|| / ||q(n, dt)|| on an 81 x 81 grid",
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, times=sol.times, q=sol.q, config=json.dumps(sol.config), meta=json.dumps(sol.meta))
    os.replace(tmp, path)
    sol.meta["cache_file"] = str(path)
    sol.meta["from_cache"] = False
    return sol
