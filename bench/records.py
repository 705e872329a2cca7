"""Results of the cost benchmarks (``bench/scale.py``, ``bench/serve.py``) kept beside the
suite's, and their sections of ``docs/benchmarks.md`` (rendered by ``bench/suite.py``).

Each script appends its JSON line, with the date and a machine note, to its own JSON-lines
file in ``bench/`` (``scale.jsonl``, ``serve.jsonl``); the page shows the latest line of
each, so a figure quoted anywhere can be traced to the command and the run that gave it.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCALE = BENCH / "scale.jsonl"
SERVE = BENCH / "serve.jsonl"
SCALE_STAGES = ("discover", "fingerprint", "plan", "preprocess", "inspect", "fit", "evaluate", "postrun", "total")
SERVE_SETTINGS = ("torch", "torch_batched", "onnx", "onnx_batched", "torch_gradcam", "http_floor")


def append(path: Path, record: dict, note: str, command: str) -> None:
    """Add ``record`` with today's date, ``note`` and ``command`` as one line of ``path``."""
    line = {"date": datetime.date.today().isoformat(), "note": note, "command": command, **record}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def latest(path: Path) -> dict | None:
    """The last record of a JSON-lines file, None when there is none."""
    if not path.is_file():
        return None
    lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return json.loads(lines[-1]) if lines else None


def _context(record: dict) -> str:
    note = f", {record['note']}" if record.get("note") else ""
    return f"Measured {record.get('date', '?')}{note}: `{record.get('command', '')}`.\n"


def render_scale(record: dict | None) -> str:
    """The "Cost growth" section from a ``bench/scale.py`` record ('' without one)."""
    if not record:
        return ""
    head = "| Images | Kind | Storage | " + " | ".join(SCALE_STAGES) + " | Peak RSS, MB |\n"
    rows = [head, "| " + " | ".join(["---"] * (len(SCALE_STAGES) + 4)) + " |\n"]
    for run in record["runs"]:
        seconds = run["seconds"]
        rows.append(f"| {run['n']} | {run['kind']} | {run.get('storage')} | "
                    + " | ".join(f"{seconds[s]:.1f}" if s in seconds else "" for s in SCALE_STAGES)
                    + f" | {run['peak_rss_mb']:.0f} |\n")
    growth = ["\n| Growth | Size ratio | " + " | ".join(SCALE_STAGES) + " |\n",
              "| " + " | ".join(["---"] * (len(SCALE_STAGES) + 2)) + " |\n"]
    for step, ratios in record.get("growth", {}).items():
        growth.append(f"| {step} | {ratios['size_ratio']:g} | "
                      + " | ".join(f"{ratios[s]:.2f}" if s in ratios else "" for s in SCALE_STAGES) + " |\n")
    return ("## Cost growth (`bench/scale.py`)\n\n" + _context(record)
            + "\nSeconds per stage of `medclf train` (one epoch of a small network on synthetic 256x256 PNGs; "
              "a size measured twice is shown twice and enters the growth ratio with its median), and the "
              "peak resident memory of the training process.\n\n" + "".join(rows) + "".join(growth))


def render_serve(record: dict | None) -> str:
    """The "Service" section from a ``bench/serve.py`` record ('' without one)."""
    if not record:
        return ""
    rows = ["| Setting | p50, ms | p95, ms | Requests/s | Ratio to torch | Errors |\n",
            "| --- | --- | --- | --- | --- | --- |\n"]
    for key in SERVE_SETTINGS:
        if key in record:
            r = record[key]
            rows.append(f"| {key} | {r['p50_ms']} | {r['p95_ms']} | {r['requests_per_s']} | "
                        f"{record['ratios'].get(key, '')} | {r['errors']} |\n")
    return ("## Service (`bench/serve.py`)\n\n" + _context(record)
            + f"\n{record.get('clients')} concurrent clients on the same machine, {record.get('requests_per_mode')} "
              f"requests per setting, model {record.get('model')} at {record.get('image_size')} px, uploads of "
              f"{record.get('upload_kb_median')} KB (median). `_batched`: micro-batching (5 ms window, at most "
              "32 images). `http_floor`: a bare FastAPI upload endpoint (no decoding, no model) under the same "
              "load, the floor that the HTTP path and the clients on the same cores set.\n\n" + "".join(rows))
