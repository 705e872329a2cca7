"""``medclf inspect``: dataset fingerprint, exact and near duplicates, leakage between splits,
unreadable files, for any data source, split as ``medclf train`` would split it."""
from __future__ import annotations

from pathlib import Path

from ..inspect import inspect_manifest, summary_lines
from ..inspect.labels import label_statistics, label_summary_lines
from ..inspect.patients import suggest_patient_pattern, suggestion_lines
from ..io import write_json
from ..plan import plan_run


def inspect_dataset(data: str | Path, config=None, overrides=None) -> dict:
    """Find and split the data as ``medclf train`` would (:func:`medclf.plan.plan_run`) and
    inspect every image of it (:func:`medclf.inspect.inspect_manifest`); ``patient_pattern``
    suggests a ``data.patient_id_pattern`` when the file names look like they carry patient
    ids (:func:`medclf.inspect.patients.suggest_patient_pattern`).

    Args:
        data: class-per-folder tree, CSV manifest, MedMNIST ``.npz`` or ``medmnist:NAME``.
        config: YAML path, dict or Config of user settings (fractions, seed).
        overrides: ``["seed=1", ...]`` or a nested dict.

    Raises:
        MedclfError: the source is not a dataset, or bad settings (names what is wrong).
    """
    planned = plan_run(data, config, overrides)
    result = inspect_manifest(planned.manifest)
    result["data"] = str(data)
    result["ignored_files"] = planned.manifest.ignored
    result["patient_pattern"] = suggest_patient_pattern(planned.manifest.frame)  # None: ids given, or no sign
    labels = label_statistics(planned.manifest)  # multilabel / regression: frequencies, co-occurrence, histogram
    if labels is not None:
        result["labels"], result["counts"] = labels, planned.manifest.counts()
    return result


def main(args) -> int:
    """Print the inspection summary; with ``--out`` also save it as JSON."""
    result = inspect_dataset(args.data, args.config, args.overrides)
    print("\n".join(summary_lines(result) + label_summary_lines(result.get("labels"))
                    + suggestion_lines(result.get("patient_pattern"))))
    if args.out:
        write_json(args.out, result)
        print(Path(args.out))
    return 0
