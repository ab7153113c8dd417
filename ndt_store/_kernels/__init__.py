"""Numpy-only array kernels: raw arrays in, raw arrays out (no xarray, no dask)."""
