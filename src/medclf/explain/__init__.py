"""Explanation stage: Grad-CAM / Grad-CAM++ / occlusion heatmaps, overlays and the gallery.

Inputs are read by the data stage (:func:`medclf.explain.explain.read_input`), exactly as
``medclf predict`` and the web service read them. Writing a folder of explanations is the
``medclf explain`` command's job (:func:`medclf.commands.explain.explain_files`).
"""
from .cam import METHODS, Saliency, find_target_layer, saliency
from .explain import Explainer, Explanation, explain_image, read_input, write_heatmap_nifti

__all__ = ["METHODS", "Saliency", "find_target_layer", "saliency", "Explainer", "Explanation",
           "explain_image", "read_input", "write_heatmap_nifti"]
