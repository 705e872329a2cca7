"""``medclf preview``: draw what preprocessing, augmentation and normalisation do to a dataset."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..plan import plan_run
from ..preview import PreviewResult, preview_manifest


def preview(data: str | Path, config=None, overrides=None, n: int = 16, out: str | Path = "preview.png",
            n_augment: int = 5) -> PreviewResult:
    """Preview the input pipeline of a dataset folder with the configuration ``train`` would use.

    The configuration is resolved as by :func:`medclf.plan.plan_run` (dataset plan,
    then the YAML/dict ``config``, then ``overrides``), so the preview shows exactly the
    preprocessing and augmentation a training run would get.

    Args:
        data: any dataset source (class folders, CSV manifest, ``.npz``, ``medmnist:NAME``).
        config: YAML path, dict or :class:`~medclf.config.Config`.
        overrides: ``["preprocess.steps=[...]", ...]`` or a nested dict.
        n: images in the first grid (``n // num_classes`` per class).
        out: PNG path.
        n_augment: random augmentations per shown image.

    Raises:
        MedclfError: bad configuration or data (names the key or file).
    """
    planned = plan_run(data, config, overrides)
    return preview_manifest(planned.manifest, planned.config, out, n, n_augment)


def main(args) -> int:
    """Write the preview PNG and print its panels and path."""
    if args.n < 1 or args.augment < 0:
        raise ConfigError("--n must be at least 1 and --augment at least 0")
    result = preview(args.data, config=args.config, overrides=args.overrides, n=args.n,
                     out=args.out, n_augment=args.augment)
    grids = ", ".join(f"{name} {r}x{c}" for name, (r, c) in result.grids.items())
    print(f"preview: {grids} panels, {result.size[0]}x{result.size[1]} pixels")
    print(result.path)
    return 0
