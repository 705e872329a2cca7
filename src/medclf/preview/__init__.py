"""A visual preview of a run's input pipeline: images per class after preprocessing, random
augmentations, and the normalisation modes with their histograms."""
from .figure import PreviewResult, Sample, display_array, render_preview
from .samples import pick_samples, preview_manifest

__all__ = ["PreviewResult", "Sample", "display_array", "pick_samples", "preview_manifest", "render_preview"]
