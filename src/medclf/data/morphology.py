"""Morphological and contrast preprocessing steps (scikit-image), run before normalisation.

The ``preprocess.steps`` list of the configuration is an ordered list of these steps; each
is a pydantic model (so every step and parameter is validated and described) with an
``apply`` method. They run inside the cached, deterministic preprocessing
(:func:`medclf.data.preprocess.preprocess_file`) on the resized image, before the intensity
normalisation, in the file's raw intensity units (0..255 for 8-bit files, 0..65535 for
16-bit files). Arrays are ``(C, H, W)`` for images and ``(C, D, H, W)`` for volumes;
every step works channel by channel with a ``disk(r)`` (2D) or ``ball(r)`` (3D)
structuring element.

Steps (``name``):

* ``threshold``: fixed value, Otsu's method (``skimage.filters.threshold_otsu``, computed
  over the whole image) or a percentile of the image's intensities. With
  ``as_mask: false`` the image is replaced by the binary image (0 or the full scale);
  with ``as_mask: true`` the binary image becomes a *mask*: the image is kept, and the
  morphology steps that follow work on the mask, which is applied to the image (pixels
  outside the mask set to 0) before the next threshold/contrast step or at the end of the
  list. Example, keep the bright body and remove specks from the mask::

      preprocess:
        steps:
          - {name: threshold, method: otsu, as_mask: true}
          - {name: opening, radius: 3}

* ``erosion``, ``dilation``, ``opening``, ``closing``: ``skimage.morphology`` grey-level
  morphology (binary on a mask) with ``disk(radius)`` / ``ball(radius)``; ``radius`` in
  pixels (voxels) of the resized image. Opening removes small bright specks, closing
  small dark ones (Gonzalez & Woods, *Digital Image Processing*, ch. 9).
* ``clahe``: contrast-limited adaptive histogram equalisation
  (``skimage.exposure.equalize_adapthist``; Zuiderveld 1994), 2D and 3D.
* ``equalize``: global histogram equalisation (``skimage.exposure.equalize_hist``).
* ``local_contrast``: subtract the local average colour (a Gaussian blur,
  ``skimage.filters.gaussian``) and amplify the rest around mid-grey: Graham's preprocessing
  of fundus photographs (Kaggle Diabetic Retinopathy Detection, 2015), which evens out
  illumination and camera colour so that small lesions stand out.

The contrast steps map the image to [0, 1] by the full scale, equalise, and scale back,
so later steps keep working in the same intensity units.

Errors (bad step name, negative radius, a threshold outside the intensity range) are
:class:`PreprocessStepError` messages naming the step by index and name.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from skimage import exposure, filters, morphology

from ..errors import ConfigError


class PreprocessStepError(ConfigError):
    """A preprocessing step cannot be applied; the message names the step (index and name)."""


class _StepFailure(Exception):
    """Raised inside a step; :func:`apply_steps` adds which step it was."""


class _State:
    """The image being preprocessed, a pending mask, and the intensity full scale."""

    def __init__(self, image: np.ndarray, full_scale: float):
        self.image = image
        self.mask: Optional[np.ndarray] = None
        self.full_scale = float(full_scale)

    def flush(self) -> None:
        """Apply the pending mask to the image (outside the mask -> 0) and drop it."""
        if self.mask is not None:
            self.image = np.where(self.mask, self.image, np.float32(0)).astype(np.float32)
            self.mask = None


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # each step narrows this to its Literal tag (kept first in config.yaml)

    def apply(self, state: _State) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def footprint(radius: int, spatial_dims: int) -> np.ndarray:
    """``skimage.morphology.disk(radius)`` for 2D, ``ball(radius)`` for 3D."""
    return morphology.disk(radius) if spatial_dims == 2 else morphology.ball(radius)


class ThresholdStep(_Step):
    """Binarise the image, or make a mask of it (``as_mask``)."""

    name: Literal["threshold"] = Field(description="Threshold the intensities.")
    method: Literal["value", "otsu", "percentile"] = Field(
        "otsu", description="'value': the fixed `value`; 'otsu': Otsu's threshold of the image "
        "(skimage.filters.threshold_otsu); 'percentile': the `percentile`-th percentile of the image.")
    value: Optional[float] = Field(None, description="Threshold for method 'value', in raw intensity units "
                                   "(e.g. 125 for the midpoint of 8-bit images); must lie in 0..full scale.")
    percentile: float = Field(50.0, ge=0, le=100, description="Percentile for method 'percentile', 0-100.")
    keep: Literal["above", "below"] = Field("above", description="'above': pixels brighter than the "
                                            "threshold are foreground (1); 'below': pixels at or below it.")
    as_mask: bool = Field(False, description="false: replace the image by the binary image (0 / full scale); "
                          "true: keep the image and use the binary image as a mask (outside -> 0), "
                          "refined by the morphology steps that follow.")

    @model_validator(mode="after")
    def _value_given(self):
        if self.method == "value" and self.value is None:
            raise ValueError("method 'value' needs a `value`")
        if self.method != "value" and self.value is not None:
            raise ValueError(f"`value` is only used by method 'value' (method is {self.method!r})")
        return self

    def threshold(self, image: np.ndarray, full_scale: float) -> float:
        """The threshold for ``image`` in raw intensity units."""
        if self.method == "value":
            if not 0 <= self.value <= full_scale:
                raise _StepFailure(f"value {self.value:g} is outside the intensity range "
                                   f"0..{full_scale:g} of the image")
            return float(self.value)
        if self.method == "otsu":
            return float(filters.threshold_otsu(image))
        return float(np.percentile(image, self.percentile))

    def apply(self, state: _State) -> None:
        state.flush()
        t = self.threshold(state.image, state.full_scale)
        binary = state.image > t if self.keep == "above" else state.image <= t
        if self.as_mask:
            state.mask = binary
        else:
            state.image = np.where(binary, np.float32(state.full_scale), np.float32(0)).astype(np.float32)


class _MorphologyStep(_Step):
    radius: int = Field(1, ge=1, description="Radius of the disk (2D) or ball (3D) structuring element, "
                        "in pixels (voxels) of the resized image.")

    def apply(self, state: _State) -> None:
        target = state.mask if state.mask is not None else state.image
        spatial = target.shape[1:]
        if 2 * self.radius + 1 > min(spatial):
            raise _StepFailure(f"radius {self.radius} is too large for an image of "
                               f"{'x'.join(map(str, spatial))} pixels")
        function = getattr(morphology, self.name)
        element = footprint(self.radius, len(spatial))
        out = np.stack([function(channel, element) for channel in target])
        if state.mask is not None:
            state.mask = out.astype(bool)
        else:
            state.image = out.astype(np.float32)


class ErosionStep(_MorphologyStep):
    """Grey-level (or mask) erosion: minimum over the structuring element."""

    name: Literal["erosion"] = Field(description="skimage.morphology.erosion: shrinks bright regions.")


class DilationStep(_MorphologyStep):
    """Grey-level (or mask) dilation: maximum over the structuring element."""

    name: Literal["dilation"] = Field(description="skimage.morphology.dilation: grows bright regions.")


class OpeningStep(_MorphologyStep):
    """Erosion then dilation: removes bright specks smaller than the element."""

    name: Literal["opening"] = Field(description="skimage.morphology.opening: removes small bright specks.")


class ClosingStep(_MorphologyStep):
    """Dilation then erosion: removes dark specks smaller than the element."""

    name: Literal["closing"] = Field(description="skimage.morphology.closing: removes small dark specks.")


class ClaheStep(_Step):
    """Contrast-limited adaptive histogram equalisation, per channel."""

    name: Literal["clahe"] = Field(description="skimage.exposure.equalize_adapthist (CLAHE).")
    clip_limit: float = Field(0.01, gt=0, le=1, description="Clipping limit of the local histograms, 0-1 "
                              "(higher: more contrast).")
    kernel_size: Optional[int] = Field(None, ge=2, description="Size of the contextual regions in pixels "
                                       "(default: 1/8 of the image size).")
    nbins: int = Field(256, ge=2, description="Histogram bins.")

    def apply(self, state: _State) -> None:
        state.flush()
        scale = state.full_scale
        out = [exposure.equalize_adapthist(np.clip(channel / scale, 0, 1), kernel_size=self.kernel_size,
                                           clip_limit=self.clip_limit, nbins=self.nbins)
               for channel in state.image]
        state.image = (np.stack(out) * scale).astype(np.float32)


class EqualizeStep(_Step):
    """Global histogram equalisation, per channel."""

    name: Literal["equalize"] = Field(description="skimage.exposure.equalize_hist (histogram equalisation).")
    nbins: int = Field(256, ge=2, description="Histogram bins.")

    def apply(self, state: _State) -> None:
        state.flush()
        out = [exposure.equalize_hist(channel, nbins=self.nbins) for channel in state.image]
        state.image = (np.stack(out) * state.full_scale).astype(np.float32)


class LocalContrastStep(_Step):
    """``mid-grey + gain * (image - gaussian(image, sigma))``, per channel, clipped to the
    intensity range (Graham 2015, Kaggle Diabetic Retinopathy Detection)."""

    name: Literal["local_contrast"] = Field(description="Subtract the local average colour "
                                            "(skimage.filters.gaussian) and amplify the rest (Graham 2015).")
    sigma: Optional[float] = Field(None, gt=0, description="Standard deviation of the Gaussian blur, in "
                                   "pixels of the resized image (default: 1/60 of the smaller side, "
                                   "Graham's radius/30 for an eye that fills the image).")
    gain: float = Field(4.0, gt=0, description="Factor on the difference from the local average.")

    def apply(self, state: _State) -> None:
        state.flush()
        spatial = state.image.shape[1:]
        sigma = self.sigma if self.sigma is not None else min(spatial) / 60.0
        scale = state.full_scale
        out = [scale / 2 + self.gain * (channel - filters.gaussian(channel, sigma=sigma, preserve_range=True))
               for channel in state.image]
        state.image = np.clip(np.stack(out), 0, scale).astype(np.float32)


STEP_TYPES = (ThresholdStep, ErosionStep, DilationStep, OpeningStep, ClosingStep, ClaheStep, EqualizeStep,
              LocalContrastStep)
"""Every step model; the ``name`` field is the tag of the discriminated union."""

PreprocessStep = Annotated[Union[STEP_TYPES], Field(discriminator="name")]
"""One entry of ``preprocess.steps`` (pydantic discriminated union on ``name``)."""


def apply_steps(array: np.ndarray, steps, full_scale: float = 255.0) -> np.ndarray:
    """Run the preprocessing steps in order on one image or volume.

    Args:
        array: raw intensities, ``(C, H, W)`` or ``(C, D, H, W)``.
        steps: a list of step models (``config.preprocess.steps``).
        full_scale: maximum value of the file's data type (255 for 8-bit), the intensity range
            that fixed thresholds are checked against and that binary images take.

    Returns:
        float32 array of the same shape, still in raw intensity units (a pending mask is
        applied at the end).

    Raises:
        PreprocessStepError: naming the step by index and name (``preprocess.steps.<i>.<name>``) and what is wrong.
    """
    state = _State(np.asarray(array, dtype=np.float32), full_scale)
    if state.image.ndim not in (3, 4):
        raise PreprocessStepError(f"preprocess.steps: expected an array (C, H, W) or (C, D, H, W), "
                                  f"got shape {state.image.shape}")
    for index, step in enumerate(steps):
        try:
            step.apply(state)
        except (_StepFailure, ValueError) as err:
            raise PreprocessStepError(f"preprocess.steps.{index}.{step.name}: {err}") from None
    state.flush()
    return state.image
