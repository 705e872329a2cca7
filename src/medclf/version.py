"""The version of medclf (a leaf: the service and the command line read it)."""

__version__ = "0.1.0"
