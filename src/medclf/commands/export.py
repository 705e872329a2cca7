"""``medclf export``: a run's network as ONNX or TorchScript, with its preprocessing metadata."""
from __future__ import annotations

from ..export import export_run


def main(args) -> int:
    """Export the run and print where the model and its sidecar JSON went."""
    exported = export_run(args.run, fmt=args.format, out=args.out)
    meta = exported.metadata
    print(f"medclf export: {exported.format} model, input {meta['input_shape']} (batch dynamic), "
          f"classes {meta['class_names']}; metadata: {exported.sidecar}")
    print(exported.path)
    return 0
