"""Version of the pagedattn package (read by scikit-build-core's regex metadata provider)."""

__version__ = "0.1.0"
