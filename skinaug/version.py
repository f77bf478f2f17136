"""The version of skinaug: one place, read by the package, the model and dataset writers, and the build."""

__version__ = "0.1.0"
