"""Several devices: meshes, row sharding and sharded sums (public helpers for ``mesh=``).

Estimators take ``mesh=`` directly; these helpers are for code that shards its own
per-row work the same way (the NTK adapters use :func:`sharded_row_sums`).
"""

from .backends._sharding import check_mesh, make_mesh, padded_size, row_sharding, shard_rows, sharded_row_sums

__all__ = ["check_mesh", "make_mesh", "padded_size", "row_sharding", "shard_rows", "sharded_row_sums"]
