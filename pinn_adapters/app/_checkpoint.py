"""Training checkpoints: arrays plus a JSON manifest in one ``.npz`` file, written atomically.

Nothing in a checkpoint is executed on load: the arrays are read with
``numpy.load(..., allow_pickle=False)`` and the manifest is JSON. The pytree
structure is not stored as code either: loading needs a template (the state a
fresh run would start from, built abstractly with ``jax.eval_shape``), and the
file's leaves must match the template's paths, shapes and dtypes one for one.

A write goes to a temporary file in the same directory, is flushed and
``fsync``-ed, and then renamed over the old checkpoint with ``os.replace`` (atomic
on POSIX and Windows), so a kill at any moment leaves either the previous complete
checkpoint or the new complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import warnings

import jax
import numpy as np

from sketchtrace.validation import check_output_path

from .._checkpoint_io import atomic_write, leaf_table  # the generic pieces, shared with second_order

FORMAT = "pinn_adapters.checkpoint"
FORMAT_VERSION = 1
_MANIFEST = "__manifest__"
_CHECKED = ("problem", "architecture", "weighting", "training")  # refused on mismatch
_BASIC = (type(None), bool, int, float, str)


def jsonable(value):
    """A JSON-safe, address-free description of ``value`` (used to record configurations)."""
    if isinstance(value, _BASIC):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return f"<{type(value).__name__}>"


def versions() -> dict:
    """Library versions recorded in every checkpoint (a mismatch warns on resume)."""
    import sketchtrace

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "sketchtrace": sketchtrace.__version__,
    }
    with contextlib.suppress(Exception):
        import jaxlib

        out["jaxlib"] = jaxlib.__version__
    with contextlib.suppress(Exception):
        import optax

        out["optax"] = optax.__version__
    return out


def check_writable(path, *, what="checkpoint"):
    """Refuse (before any work) an output file whose directory is missing or not writable."""
    return check_output_path(path, name=what)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a reader sees the old file or the new one."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_checkpoint(path, tree, manifest: dict):
    """Write the leaves of ``tree`` and ``manifest`` (JSON) atomically to ``path``."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]
    full = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, versions=versions(), leaves=leaf_table(tree))
    arrays = {f"leaf_{i:05d}": a for i, a in enumerate(leaves)}
    arrays[_MANIFEST] = np.frombuffer(json.dumps(full).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_checkpoint(path) -> tuple[dict, list]:
    """``(manifest, leaves)`` of a checkpoint file; a clear ``ValueError`` naming ``path`` otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise ValueError("not an .npz (zip) archive")
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single NumPy array, not an archive")  # noqa: TRY004 (re-raised below)
        with data:
            if _MANIFEST not in data.files:
                raise ValueError("no manifest")
            manifest = json.loads(bytes(data[_MANIFEST]).decode())
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError(f"format is {manifest.get('format') if isinstance(manifest, dict) else None!r}")
            leaves = [np.asarray(data[f"leaf_{i:05d}"]) for i in range(len(manifest["leaves"]))]
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib, json, numpy and OS errors all mean the same thing here
        raise ValueError(
            f"checkpoint {path!r} is not a readable pinn_adapters checkpoint (truncated, corrupt or another "
            f"format: {type(exc).__name__}: {exc})"
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path!r} has format_version {manifest.get('format_version')!r}; this version of "
            f"pinn_adapters reads {FORMAT_VERSION}"
        )
    return manifest, leaves


def _first_difference(a, b, prefix):
    """The dotted name of the first field where JSON values ``a`` and ``b`` differ (or None)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _first_difference(a.get(k), b.get(k), f"{prefix}.{k}")
            if d is not None:
                return d
        return None
    return None if a == b else (prefix, a, b)


def check_manifest(path, manifest: dict, expected: dict):
    """Refuse a checkpoint written for another problem/architecture/weighting/training setup."""
    for field in _CHECKED:
        if field not in expected:
            continue
        d = _first_difference(manifest.get(field), jsonable(expected[field]), field)
        if d is not None:
            name, got, want = d
            raise ValueError(
                f"checkpoint {path!r} does not match this run: {name} is {got!r} in the checkpoint but "
                f"{want!r} here (resume with the same settings, or start a new run)"
            )
    mine, theirs = versions(), manifest.get("versions", {})
    changed = {k: (theirs.get(k), v) for k, v in mine.items() if k != "python" and theirs.get(k) != v}
    if changed:
        warnings.warn(
            f"checkpoint {path!r} was written with other library versions {changed}; the resumed run may "
            "not be bit-for-bit identical to an uninterrupted one",
            RuntimeWarning,
            stacklevel=3,
        )


def restore_leaves(path, manifest: dict, leaves: list, like):
    """Put the file's ``leaves`` into the structure of the template ``like``, checking each leaf."""
    want = leaf_table(like)
    got = manifest["leaves"]
    if len(got) != len(want):
        raise ValueError(
            f"checkpoint {path!r} holds {len(got)} arrays but this run's state has {len(want)} (another "
            "optimizer, weighting or network?)"
        )
    for (gp, gs, gd), (wp, ws, wd), arr in zip(got, want, leaves):
        if gp != wp or gs != ws or gd != wd or list(arr.shape) != ws or str(arr.dtype) != wd:
            raise ValueError(
                f"checkpoint {path!r} does not match this run's state: leaf {gp} {tuple(gs)} {gd} in the "
                f"checkpoint, {wp} {tuple(ws)} {wd} here"
            )
    return jax.tree.unflatten(jax.tree.structure(like), [jax.numpy.asarray(a) for a in leaves])
