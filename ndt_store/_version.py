"""The package version (kept in one place; imported by the package and the Recorder)."""

__version__ = "0.1.0"
