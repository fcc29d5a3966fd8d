"""buildctl: a memory-governed build controller for native GPU-kernel PyTorch extensions."""

__version__ = "0.1.0"
