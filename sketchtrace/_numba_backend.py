"""numba CPU backend (placeholder until the numba backend lands)."""

try:  # pragma: no cover - exercised only when numba is missing
    import numba  # noqa: F401
except ImportError as exc:  # pragma: no cover
    raise ImportError(
        "the numba backend needs numba: pip install 'sketchtrace[numba]'"
    ) from exc


class NumbaBackend:  # pragma: no cover - replaced by the numba backend issue
    name = "numba"

    @staticmethod
    def prepare(op):
        raise NotImplementedError("the numba backend is not implemented yet; use a jax.random key")
