"""Checkpoint files below the application layer: pytree leaves plus a JSON manifest in one ``.npz``.

The same layout as the training app's checkpoints (``leaf_00000``, ... and a ``__manifest__``
array of UTF-8 JSON bytes), usable by modules that must not import :mod:`pinn_adapters.app`
(:mod:`pinn_adapters.second_order`). Nothing is executed on load (``allow_pickle=False``, JSON);
the tree structure comes from a template, and every leaf's path, shape and dtype is checked
against it. Writes go to a temporary file in the target directory, are ``fsync``-ed and renamed
over the target (``os.replace``), so a reader sees the old complete file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import jax
import numpy as np

_MANIFEST = "__manifest__"


def leaf_table(tree) -> list:
    """``[[path, shape, dtype], ...]`` of a pytree's leaves (arrays or ShapeDtypeStructs)."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.dtype(x.dtype))] for p, x in flat]


def _umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it over ``path``."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_tree(path, tree, manifest: dict) -> None:
    """Write ``tree``'s leaves and ``manifest`` (JSON-able, plus a leaf table) atomically to ``path``."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
    arrays = {f"leaf_{i:05d}": a for i, a in enumerate(leaves)}
    text = json.dumps(dict(manifest, leaves=leaf_table(tree)))
    arrays[_MANIFEST] = np.frombuffer(text.encode("utf-8"), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_tree(path, like, *, format: str) -> tuple[dict, object]:  # noqa: A002 - the manifest field's name
    """``(manifest, tree)`` from a file written by :func:`write_tree` whose manifest ``format`` is
    ``format``; ``tree`` has the structure of the template ``like`` (arrays or ShapeDtypeStructs).
    A clear error naming ``path`` for a missing, corrupt or mismatching file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume: checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            manifest = json.loads(bytes(data[_MANIFEST]).decode("utf-8"))
            if not isinstance(manifest, dict) or manifest.get("format") != format:
                raise ValueError(f"format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
            leaves = [np.asarray(data[f"leaf_{i:05d}"]) for i in range(len(manifest["leaves"]))]
    except Exception as exc:  # noqa: BLE001 - zip, json, numpy and OS errors all mean "not this format"
        raise ValueError(
            f"resume: {path!r} is not a readable {format} file (truncated, corrupt or another format: "
            f"{type(exc).__name__}: {exc})"
        ) from None
    want = leaf_table(like)
    if len(want) != len(leaves):
        raise ValueError(f"resume: {path!r} holds {len(leaves)} arrays, this run's state has {len(want)}")
    for got, exp, arr in zip(manifest["leaves"], want, leaves):
        if got != exp or [list(arr.shape), str(arr.dtype)] != exp[1:]:
            raise ValueError(f"resume: {path!r} does not match this run: leaf {got} in the file, {exp} here")
    return manifest, jax.tree.unflatten(jax.tree.structure(like), [jax.numpy.asarray(a) for a in leaves])
