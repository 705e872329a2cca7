"""Training diagnostics (histograms, dead ReLU units, gradient norm), checks before training and
the architecture record."""
from .architecture import write_architecture
from .callbacks import GradNormMonitor, HistogramDiagnostics, build_callbacks, dead_fraction

__all__ = ["write_architecture", "GradNormMonitor", "HistogramDiagnostics", "build_callbacks", "dead_fraction"]
