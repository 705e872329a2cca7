"""A visual preview of a run's input pipeline (``medclf preview``): images per class after
preprocessing, random augmentations, and the normalisation modes with their histograms."""
from .dataset import pick_samples, preview, preview_manifest, read_raw, write_run_preview
from .figure import PreviewResult, Sample, display_array, render_preview

__all__ = ["PreviewResult", "Sample", "display_array", "pick_samples", "preview", "preview_manifest",
           "read_raw", "render_preview", "write_run_preview"]
