"""Cost of the input-pipeline preview on ../shared/data/covid19-xray (default plan, n=16).

Measures :func:`medclf.preview.preview_manifest` twice in one process: ``cold`` (files
decoded and preprocessed) and ``warm`` (preprocessed arrays served by the memory cache, as
inside ``medclf train``, which is what ``plots/preview.png`` of a run costs), and the cost of
the preprocessing steps on the 224x224 images. Wall and CPU seconds (CPU time is less
affected by other processes on a shared machine). Prints one JSON line.

Usage: python bench/preview.py [--data DIR] [--n 16]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    value = function()
    return value, round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "covid19-xray"))
    parser.add_argument("--n", type=int, default=16)
    args = parser.parse_args()
    from medclf.config import validate
    from medclf.data.morphology import apply_steps
    from medclf.data.sources.folder import discover
    from medclf.plan import fingerprint, plan_config
    from medclf.preview import pick_samples, preview_manifest

    manifest = discover(args.data)
    config = validate(plan_config(fingerprint(manifest)))
    result = {"data": Path(args.data).name, "n": args.n}
    with tempfile.TemporaryDirectory() as out:
        for name in ("cold", "warm"):
            preview, wall, cpu = timed(lambda: preview_manifest(manifest, config, Path(out) / "p.png", args.n))
            result[f"{name}_wall_s"], result[f"{name}_cpu_s"] = wall, cpu
        result["png_size"] = list(preview.size)
    samples = pick_samples(manifest, config, 5)
    steps = validate({"preprocess": {"steps": [{"name": "threshold", "method": "otsu", "as_mask": True},
                                               {"name": "opening", "radius": 3}, {"name": "clahe"}]}}).preprocess.steps
    _, wall, cpu = timed(lambda: [apply_steps(s.raw, steps, s.full_scale) for s in samples])
    result["steps_otsu_mask_opening3_clahe_ms_per_image"] = round(1000 * cpu / len(samples), 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
