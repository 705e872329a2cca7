"""Training diagnostics (histograms, dead ReLU units, gradient norm) and the architecture record."""
from .architecture import write_architecture
from .callbacks import (GradNormMonitor, HistogramDiagnostics, build_callbacks, dead_fraction,
                        dead_relu_fractions)

__all__ = ["write_architecture", "GradNormMonitor", "HistogramDiagnostics", "build_callbacks",
           "dead_fraction", "dead_relu_fractions"]
