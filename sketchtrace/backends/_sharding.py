"""Sharding probes (and collocation points) across devices with ``jax.sharding``.

Probes are independent, so every estimator's expensive part -- applying the
operator to a ``(k, n)`` block of probe rows -- splits along the probe axis.
Passing ``mesh=`` to an estimator makes :func:`sketchtrace.backends.get_backend`
return a :class:`ShardedJaxBackend` bound to that mesh. It implements the same
backend interface as :class:`~sketchtrace.backends.JaxBackend`, but runs the
probe-applying primitives (``quad_forms``, ``exact_quad_forms``, ``matmat``,
``quad_forms_of``) under :func:`jax.shard_map`:

* the row range of the probe block is split across all mesh devices (over every
  mesh axis, flattened), each device applies the (replicated) operator to its rows,
  ``chunk_size`` rows at a time;
* per-probe quadratic forms come back sharded along the probe axis (the mean and
  standard error are tiny reductions XLA turns into all-reduces);
* ``matmat`` results are all-gathered, so the small dense algebra of the
  X-family and Hutch++ (QR, small solves) runs replicated.

Probe ``i`` is always drawn from the ``i``-th split of the key, whatever device
computes it, so sharded and single-device runs use the same probes and agree up to
floating-point summation order. A probe count that the mesh size does not divide is
padded (with zero probes, or copies of the first key, whose results are dropped);
each device then computes ``ceil(k / D)`` products.

Several hosts: call :func:`jax.distributed.initialize` first; ``jax.devices()`` is
then the global device list and :func:`make_mesh` spans every host. Every process
must run the same program with the same key (see ``examples/multihost.py``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .._optional import jax, jnp, require_jax
from .._samplers import get_sampler, probe_rows
from ._jax import JaxBackend, map_chunks

if TYPE_CHECKING:
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

DEFAULT_AXIS = "probes"


# ----------------------------------------------------------------------------- meshes


def make_mesh(devices=None, *, axis_name: str = DEFAULT_AXIS) -> Mesh:
    """A one-dimensional device mesh for sharding probes or collocation points.

    Parameters
    ----------
    devices : int or sequence of jax.Device, optional
        The devices to use: all of ``jax.devices()`` (every host's devices after
        :func:`jax.distributed.initialize`) by default, the first ``devices`` of them
        for an int, or an explicit list.
    axis_name : str
        Name of the mesh axis.

    Returns
    -------
    jax.sharding.Mesh
    """
    require_jax("make_mesh (device meshes)")
    if not isinstance(axis_name, str) or not axis_name:
        raise TypeError(f"axis_name must be a non-empty string; got {axis_name!r}")
    available = jax.devices()
    if devices is None:
        devs = list(available)
    elif isinstance(devices, numbers.Integral) and not isinstance(devices, bool):
        count = int(devices)
        if count < 1:
            raise ValueError(f"devices must be a positive number of devices; got {count}")
        if count > len(available):
            raise ValueError(
                f"devices={count} but only {len(available)} {available[0].platform} device(s) are visible. "
                "On a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N (set before importing jax) "
                "creates N host devices; across hosts call jax.distributed.initialize() first."
            )
        devs = list(available[:count])
    elif isinstance(devices, Sequence) and not isinstance(devices, (str, bytes)):
        devs = list(devices)
        if not devs:
            raise ValueError("devices must name at least one device; got an empty sequence")
        bad = [d for d in devs if not isinstance(d, jax.Device)]
        if bad:
            raise TypeError(f"devices must be jax.Device objects (from jax.devices()); got {bad[0]!r}")
        if len(set(devs)) != len(devs):
            raise ValueError(f"devices contains duplicates: {devs}")
    else:
        raise TypeError(f"devices must be None, an int or a sequence of jax.Device; got {type(devices).__name__}")
    return jax.sharding.Mesh(np.asarray(devs, dtype=object), (axis_name,))


def check_mesh(mesh) -> Mesh:
    """Accept a :class:`jax.sharding.Mesh` (or an int / device list, see :func:`make_mesh`)."""
    if isinstance(mesh, jax.sharding.Mesh):
        if mesh.size < 1:  # pragma: no cover - jax refuses empty meshes itself
            raise ValueError("mesh has no devices")
        return mesh
    if isinstance(mesh, (numbers.Integral, Sequence)) and not isinstance(mesh, (bool, str, bytes)):
        return make_mesh(mesh)
    raise TypeError(
        f"mesh must be a jax.sharding.Mesh (e.g. sketchtrace.make_mesh()), a device count or a list of "
        f"devices; got {type(mesh).__name__}"
    )


def padded_size(num: int, mesh: Mesh) -> int:
    """``num`` rounded up to a multiple of the mesh size."""
    d = mesh.size
    return -(-num // d) * d


def _spec(mesh: Mesh) -> PartitionSpec:
    """Split the leading axis over every mesh axis (flattened)."""
    return jax.sharding.PartitionSpec(tuple(mesh.axis_names))


def row_sharding(mesh: Mesh) -> NamedSharding:
    """The :class:`NamedSharding` that splits an array's leading (row) axis over ``mesh``."""
    return jax.sharding.NamedSharding(mesh, _spec(mesh))


def _pad_rows(x, total, fill=None):
    """Pad the leading axis of ``x`` to ``total`` rows (zeros, or copies of row 0 / ``fill``)."""
    extra = total - x.shape[0]
    if extra == 0:
        return x
    if fill is None:
        pad = jnp.zeros((extra,) + x.shape[1:], x.dtype)
    else:
        pad = jnp.broadcast_to(fill, (extra,) + x.shape[1:])
    return jnp.concatenate([x, pad], axis=0)


def _has_explicit_axes(mesh: Mesh) -> bool:
    explicit = getattr(jax.sharding.AxisType, "Explicit", None)
    return explicit is not None and explicit in tuple(getattr(mesh, "axis_types", ()) or ())


def _committed_devices(x):
    """Devices a concrete array is committed to (``None`` for tracers / uncommitted arrays)."""
    if isinstance(x, jax.core.Tracer) or not isinstance(x, jax.Array):
        return None
    if not getattr(x, "committed", False):
        return None
    return set(x.sharding.device_set)


def check_key_on_mesh(key, mesh: Mesh, *, name: str = "key"):
    """Refuse a key committed to devices outside ``mesh`` (an inconsistent placement)."""
    devs = _committed_devices(key)
    if devs is not None and not devs <= set(mesh.devices.flat):
        raise ValueError(
            f"{name} is committed to {sorted(map(str, devs))}, which are not all in the mesh "
            f"{[str(d) for d in mesh.devices.flat]}; create the key without device_put, or put it on the "
            "mesh's devices (the key is replicated: every device draws its own probes from it)"
        )


def shard_rows(fn, xs, mesh: Mesh, *, gather: bool = False):
    """Apply ``fn`` to the rows of ``xs`` (leading axis divisible by the mesh size) on every device.

    Each device receives ``len(xs) / D`` consecutive rows; ``fn`` must map a row block
    to an array with the same leading size. The result stays sharded along that axis,
    or is all-gathered (replicated on every device) with ``gather=True``.
    """
    spec = _spec(mesh)
    axes = tuple(mesh.axis_names)

    def local(block):
        out = fn(block)
        if gather:
            out = jax.lax.all_gather(out, axes, axis=0, tiled=True)
        return out

    # check_vma=False: the operator may close over values linearized outside the shard_map
    # (JacobianOperator), which JAX's replication typing would reject as "invariant" primals.
    out_specs = jax.sharding.PartitionSpec() if gather else spec
    # jit: one compiled program per call (eager shard_map would dispatch every primitive on its own)
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=out_specs, check_vma=False))(xs)


def sharded_row_sums(fn, mesh: Mesh, replicated, groups):
    """Per-device partial sums over row groups, combined with a ``psum``.

    Parameters
    ----------
    fn : callable
        ``fn(replicated, local_groups, local_valid) -> pytree of partial sums``.
        ``local_groups`` has the structure of ``groups`` with each group's rows
        restricted to this device's share; ``local_valid`` maps each group name to a
        boolean mask of the real (non-padding) rows.
    replicated : pytree
        Arguments every device needs whole (network parameters).
    groups : mapping
        Name -> pytree of arrays sharing a leading row axis (collocation points).
        Each group is padded to a multiple of the mesh size by repeating its last
        row; padded rows are marked invalid and must not contribute to the sums.

    Returns
    -------
    pytree
        ``fn``'s partial sums added over all devices (replicated).
    """
    spec, axes = _spec(mesh), tuple(mesh.axis_names)
    padded, valid = {}, {}
    for name, tree in groups.items():
        leaves = jax.tree_util.tree_leaves(tree)
        n = int(leaves[0].shape[0])
        total = padded_size(n, mesh)
        padded[name] = jax.tree.map(lambda a, n=n, total=total: _pad_rows(a, total, a[n - 1]), tree)
        valid[name] = jnp.arange(total) < n

    def local(rep, grp, ok):
        part = fn(rep, grp, ok)
        return jax.tree.map(lambda p: jax.lax.psum(p, axes), part)

    in_specs = (
        jax.tree.map(lambda _: jax.sharding.PartitionSpec(), replicated),
        jax.tree.map(lambda _: spec, padded),
        jax.tree.map(lambda _: spec, valid),
    )
    run = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=jax.sharding.PartitionSpec(), check_vma=False)
    )
    return run(replicated, padded, valid)


# ----------------------------------------------------------------------------- backend


class ShardedJaxBackend(JaxBackend):
    """The JAX backend with probe blocks split across the devices of a mesh.

    Same interface and the same probes as :class:`~sketchtrace.backends.JaxBackend`
    (probe ``i`` from the ``i``-th split of the key); only where the operator is
    applied changes. ``chunk_size`` bounds the rows each device processes at once.
    """

    def __init__(self, mesh):
        self.mesh = check_mesh(mesh)

    def __repr__(self):
        return f"ShardedJaxBackend(devices={self.mesh.size}, axes={self.mesh.axis_names})"

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def _rows(self, fn, xs, fill, gather):
        """``fn`` over the rows of ``xs``, padded to the mesh size, sharded; padding dropped."""
        k = xs.shape[0]
        total = padded_size(k, self.mesh)
        xs = _pad_rows(xs, total, fill)
        if not isinstance(xs, jax.core.Tracer) and not self.mesh.is_multi_process:
            # place the rows (probe keys, basis indices) explicitly; across processes the jitted
            # shard_map takes the (identical) process-local rows as they are
            xs = jax.device_put(xs, row_sharding(self.mesh))
        try:
            out = shard_rows(fn, xs, self.mesh, gather=gather)
        except ValueError as exc:
            if "incompatible devices" not in str(exc):
                raise
            raise ValueError(
                "op holds arrays committed to devices other than the mesh's "
                f"{[str(d) for d in self.mesh.devices.flat]}: with mesh= the operator is replicated on every "
                "mesh device, so create its arrays without jax.device_put to one device, or place them with "
                "jax.device_put(x, NamedSharding(mesh, PartitionSpec())). Original error: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        if total == k:
            return out
        if _has_explicit_axes(self.mesh):  # sharding-in-types: slicing a sharded axis must be resolved
            out = jax.sharding.reshard(out, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
        return out[:k]

    def quad_forms(self, key, op, num, sampler, chunk_size):
        get_sampler(sampler)
        check_key_on_mesh(key, self.mesh)
        n, dt = op.probe_dim, op.jax_dtype
        keys = jax.random.split(key, num)

        def local(ks):
            return map_chunks(lambda kk: op.quad_forms(probe_rows(kk, n, dt, sampler)), ks, chunk_size)

        return self._rows(local, keys, keys[0], gather=False)

    def exact_quad_forms(self, op, chunk_size):
        n, dt = op.probe_dim, op.jax_dtype

        def local(ix):  # index n (padding) is an all-zero "basis vector"
            return map_chunks(lambda i: op.quad_forms(jax.nn.one_hot(i, n, dtype=dt)), ix, chunk_size)

        return self._rows(local, jnp.arange(n), jnp.asarray(n), gather=False)

    def matmat(self, op, V, chunk_size=None):
        return self._rows(lambda B: map_chunks(op.matmat, B, chunk_size), V, None, gather=True)

    def quad_forms_of(self, op, V, chunk_size=None):
        return self._rows(lambda B: map_chunks(op.quad_forms, B, chunk_size), V, None, gather=False)


def sharded_backend(mesh, backend_name: str, key):
    """The sharded JAX backend for ``mesh=``, or a clear error for a non-JAX run."""
    if backend_name != "jax":
        raise TypeError(
            "mesh= shards JAX computations across devices, but this call runs on the numba backend "
            f"(key is a {type(key).__name__}); pass a jax.random key (and backend='jax' or None) with mesh=, "
            "or drop mesh= for the numba backend (it parallelises over CPU threads)"
        )
    return ShardedJaxBackend(mesh)


__all__ = [
    "make_mesh",
    "check_mesh",
    "row_sharding",
    "padded_size",
    "shard_rows",
    "sharded_row_sums",
    "ShardedJaxBackend",
]
