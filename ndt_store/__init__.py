"""ndt_store: labeled Zarr storage and vectorized measurements of training dynamics."""

from __future__ import annotations

from ndt_store.errors import NdtStoreError

__version__ = "0.1.0"

__all__ = ["NdtStoreError", "__version__"]
