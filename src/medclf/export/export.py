"""A run's network as an ONNX or TorchScript file, with what is needed to reproduce its input.

The exported graph is the module that :func:`medclf.evaluation.predict.load_model` returns
(best checkpoint, output prior folded into the last layer; for an ensemble run the module
that averages its members), followed by a softmax. It takes preprocessed images
``(N, C, H, W)`` (2D) or volumes ``(N, C, D, H, W)`` (3D), float32, with a dynamic batch
axis ``N``, and returns two outputs: ``logits`` ``(N, num_classes)`` and ``probabilities``
``(N, num_classes)`` (softmax of the logits).

The metadata (input shape, ``in_channels``, ``spatial_dims``, the ``data`` and
``preprocess`` settings that produce the input from a file, class names, medclf version)
is stored in the ONNX model's ``metadata_props`` (key ``medclf``, a JSON string), in the
TorchScript file's ``extra_files`` (``medclf.json``), and in a sidecar JSON
``<file>.json`` beside the exported file.

ONNX export uses :func:`torch.onnx.export` with the TorchScript-based exporter
(``dynamo=False``: it needs no ``onnxscript`` and works offline) and ``dynamic_axes`` for
the batch; inference with ONNX Runtime (:class:`onnxruntime.InferenceSession`).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..errors import ConfigError, RunDirError
from ..evaluation.predict import load_model
from ..version import __version__

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
METADATA_KEY = "medclf"
OPSET = 17


class _WithProbabilities(torch.nn.Module):
    """``(N, C, *spatial) -> (logits (N, K), softmax probabilities (N, K))``."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        logits = self.model(images)
        return logits, torch.softmax(logits, dim=1)


@dataclass
class ExportedModel:
    """Where an export went: the model file, its sidecar JSON and the metadata written."""

    path: Path
    sidecar: Path
    format: str
    metadata: dict


def export_metadata(run: rundir.Run) -> dict:
    """What a consumer needs besides the graph: ``input_shape`` ``[-1, C, *image_size]``
    (``-1``: any batch size), ``in_channels``, ``spatial_dims``, ``class_names``, the run's
    ``data`` settings that shape the input (``image_size``, ``in_channels``) and its whole
    ``preprocess`` section (``normalization``, ``percentiles``, ``window``, ``resize``,
    ``shrink``, ``steps``), the output names and the medclf version."""
    config = run.config
    size = list(config.data.image_size)
    return {
        "format_version": 1,
        "medclf_version": __version__,
        "run": run.path.name,
        "input_name": "images",
        "output_names": ["logits", "probabilities"],
        "input_shape": [-1, config.data.in_channels, *size],
        "in_channels": config.data.in_channels,
        "spatial_dims": config.model.spatial_dims,
        "num_classes": len(run.class_names),
        "class_names": list(run.class_names),
        "model": config.model.name,
        "output_prior": config.train.output_prior,
        "data": {"image_size": size, "in_channels": config.data.in_channels},
        "preprocess": config.preprocess.model_dump(mode="json"),
        "dtype": "float32",
    }


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> ExportedModel:
    """Export a run's network (see the module docstring for inputs, outputs and metadata).

    Args:
        run_dir: a run directory with a checkpoint.
        fmt: ``onnx`` or ``torchscript``.
        out: the file to write (default ``<run>/export/model.onnx`` or ``model.pt``).

    Returns:
        :class:`ExportedModel`; the sidecar is ``<out>.json``.

    Raises:
        ConfigError: unknown format.
        RunDirError: not a run directory, no checkpoint, or the network cannot be exported.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = rundir.load_run(run_dir)
    model = _WithProbabilities(load_model(run)).eval()
    metadata = export_metadata(run)
    path = Path(out) if out else run.path / "export" / f"model{SUFFIX[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *metadata["input_shape"][1:])
    text = json.dumps(metadata, sort_keys=True)
    try:
        if fmt == "onnx":
            _export_onnx(model, example, path, text)
        else:
            with torch.no_grad():
                traced = torch.jit.trace(model, example, check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={"medclf.json": text})
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as err:  # unsupported operator etc.
        raise RunDirError(f"{run.path}: the network cannot be exported as {fmt}: {err}") from err
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps({**metadata, "format": fmt, "file": path.name}, indent=2), encoding="utf-8")
    return ExportedModel(path, sidecar, fmt, metadata)


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, metadata: str) -> None:
    path.write_bytes(onnx_bytes(model, example, metadata))


def onnx_bytes(model: torch.nn.Module, example: torch.Tensor, metadata: str | None = None) -> bytes:
    """The serialised, checked ONNX model of ``model`` (batch axis of input and outputs
    dynamic), with ``metadata`` (a JSON string) under the ``medclf`` metadata key.

    ``model`` maps ``images`` ``(N, C, *spatial)`` to ``(logits, probabilities)``; ``example``
    is an input of the right shape (any batch size)."""
    import io

    import onnx
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter is deprecated in favour of dynamo=True, which needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["logits", "probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"},
                                        "probabilities": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    if metadata is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata
    proto.producer_name, proto.producer_version = "medclf", __version__
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def onnx_session_for(model: torch.nn.Module, input_shape: list[int], threads: int | None = None,
                     spinning: bool = True):
    """An ONNX Runtime CPU session of a network in memory (no file written).

    Args:
        model: maps ``(N, C, *spatial)`` to logits ``(N, num_classes)`` (e.g. what
            :func:`medclf.evaluation.predict.load_model` returns); a softmax is added.
        input_shape: ``[C, *spatial]`` of one input.
        threads: intra-op threads (default: ONNX Runtime's choice).
        spinning: let the intra-op threads busy-wait for the next run (ONNX Runtime's
            default, ``session.intra_op.allow_spinning``); False in a service, where the
            cores are shared with decoding and HTTP work that the spinning would take from.

    Use :func:`onnx_probabilities` on the session."""
    import onnxruntime as ort
    data = onnx_bytes(_WithProbabilities(model).eval(), torch.zeros(2, *input_shape))
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def load_onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported model, and its medclf metadata (dict).

    Args:
        path: the ``.onnx`` file written by :func:`export_run`.
        threads: intra-op threads (default: ONNX Runtime's choice).

    Raises:
        RunDirError: the file is missing, not an ONNX model, or has no medclf metadata.
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001  (onnxruntime raises its own Fail/InvalidGraph types)
        raise RunDirError(f"{path}: not a loadable ONNX model: {err}") from err
    meta = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if meta is None:
        raise RunDirError(f"{path}: no '{METADATA_KEY}' metadata (not exported by medclf export)")
    return session, json.loads(meta)


def onnx_probabilities(session, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Softmax probabilities ``(N, num_classes)`` from an ONNX Runtime session for
    preprocessed float32 images ``(N, C, *spatial)``."""
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return session.run(["probabilities"], {"images": np.ascontiguousarray(array, dtype=np.float32)})[0]
