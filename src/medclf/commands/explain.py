"""``medclf explain``: saliency heatmaps (Grad-CAM, Grad-CAM++, occlusion) of a run's model, per image."""
from __future__ import annotations

from .. import rundir
from ..explain import explain_files


def main(args) -> int:
    """Write one figure per image (and a NIfTI heatmap per volume); print where they are."""
    run = rundir.load_run(args.run)
    method = args.method or run.config.explain.method
    out, frame = explain_files(run.path, args.images, args.out, args.class_name, method,
                               args.layer or run.config.explain.target_layer)
    for _, row in frame.iterrows():
        extra = f"  {row.nifti}" if row.nifti else ""
        print(f"{row.path}: {row.predicted} ({row.probability:.3f}); {method} for {row.class_name}: "
              f"{row.png}{extra}")
    print(out)
    return 0
