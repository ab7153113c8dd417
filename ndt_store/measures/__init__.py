"""Labeled measurements: xarray in, named xarray out; reduced dims named, others kept."""
