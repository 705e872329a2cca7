"""Explanation stage: Grad-CAM / Grad-CAM++ / occlusion heatmaps, overlays and the gallery."""
from .cam import METHODS, Saliency, find_target_layer, saliency
from .explain import Explainer, Explanation, explain_files, explain_image

__all__ = ["METHODS", "Saliency", "find_target_layer", "saliency", "Explainer", "Explanation",
           "explain_files", "explain_image"]
