"""Latency and throughput of ``medclf serve`` predicting real chest X-rays over loopback.

Starts ``medclf serve`` on 127.0.0.1 (a free port) over a run, then 20 concurrent clients
send 200 ``POST /api/runs/{run}/predict`` requests (multipart upload of X-ray files from
../shared/data/covid19-xray/test, cycled), for each service setting: ``--backend torch`` and
``--backend onnx`` (ONNX Runtime), each without micro-batching (``--batch-window-ms 0``) and
with it (``--batch-window-ms 5 --max-batch 32``); one server per setting, started in turn.
With ``--gradcam``, also ``?gradcam=true`` requests on the PyTorch server without batching.
Last, ``http_floor``: the same load on a bare FastAPI + Uvicorn app whose endpoint only reads
the upload (no decoding, no model): the latency of the HTTP path and of the clients sharing
the cores, which no prediction backend can go below.
Without ``--run``, a run is trained first with default settings (default model and image
size, so the latency is the real one) on a few training images for 2 epochs.

Prints one JSON line: per setting (``torch``, ``torch_batched``, ``onnx``, ``onnx_batched``)
``p50_ms``, ``p95_ms``, ``mean_ms``, ``requests_per_s``, ``errors``; ``ratios``: each
setting's requests/s over ``torch`` (measured in the same run, so comparable under load);
plus the setup (image size, model, clients, requests, upload sizes).

Usage: python bench/serve.py [--run RUNS_DIR/NAME] [--clients 20] [--requests 200] [--gradcam]
    [--record --note "quiet machine"]  (appends the line to bench/serve.jsonl, for docs/benchmarks.md)
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT.parent / "shared" / "data" / "covid19-xray"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), boundary


def train_quick_run(out: Path, per_class: int) -> Path:
    data = out / "data"
    for split, n in (("train", per_class), ("test", 3)):
        for cls in sorted(p for p in (COVID / split).iterdir() if p.is_dir()):
            (data / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (data / split / cls.name / f.name).symlink_to(f)
    done = subprocess.run([sys.executable, "-m", "medclf.cli", "train", str(data), "--out", str(out / "runs"),
                           "--name", "bench", "--no-progress", "--set", "train.max_epochs=2"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"training failed:\n{done.stderr[-3000:]}")
    return out / "runs" / "bench"


def load(port: int, run: str, bodies: list, clients: int, requests: int, gradcam: bool) -> dict:
    latencies, errors = [], []
    counter = iter(range(requests))
    lock = threading.Lock()
    url = f"/api/runs/{run}/predict?gradcam={'true' if gradcam else 'false'}"

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, boundary = bodies[i % len(bodies)]
            start = time.perf_counter()
            try:
                connection.request("POST", url, body=body,
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
                response = connection.getresponse()
                payload = response.read()
                ok = response.status == 200 and (not gradcam or json.loads(payload)["gradcam"])
            except (OSError, http.client.HTTPException, ValueError) as err:
                ok, payload = False, str(err).encode()
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors.append(payload[:200].decode(errors="replace"))
        connection.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"requests": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else None,
            "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "mean_ms": round(1000 * statistics.mean(ordered), 1),
            "requests_per_s": round(len(latencies) / wall, 2), "wall_s": round(wall, 1)}


def start_server(runs_dir: Path, port: int, backend: str, window_ms: float) -> subprocess.Popen:
    """``medclf serve`` in a subprocess; returns once ``/api/ready`` answers 200."""
    server = subprocess.Popen([sys.executable, "-m", "medclf.cli", "serve", str(runs_dir), "--host", "127.0.0.1",
                               "--port", str(port), "--backend", backend, "--batch-window-ms", str(window_ms)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return _wait_ready(server, port)


def _wait_ready(server: subprocess.Popen, port: int) -> subprocess.Popen:
    for _ in range(1500):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/ready")
            if c.getresponse().status == 200:
                return server
            time.sleep(0.2)
        except OSError:
            if server.poll() is not None:
                sys.exit("server failed: " + server.stderr.read().decode()[-2000:])
            time.sleep(0.2)
    server.terminate()
    sys.exit("server did not become ready")


FLOOR_APP = """
import sys
from typing import Annotated
import uvicorn
from fastapi import FastAPI, File, UploadFile
app = FastAPI()
@app.post("/api/runs/{run}/predict")
async def predict(run: str, file: Annotated[UploadFile, File()]):
    return {"filename": file.filename, "bytes": len(await file.read())}
@app.get("/api/ready")
def ready():
    return {"status": "ready"}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def start_floor(port: int) -> subprocess.Popen:
    """The HTTP floor: a FastAPI + Uvicorn app whose predict endpoint reads the upload and
    answers at once (no decoding, no model), so its latency is what the HTTP path and the
    clients on the same cores cost by themselves."""
    server = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    return _wait_ready(server, port)


SETTINGS = {"torch": ("torch", 0.0), "torch_batched": ("torch", 5.0), "onnx": ("onnx", 0.0),
            "onnx_batched": ("onnx", 5.0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="an existing run directory (default: train one quickly)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--train-per-class", type=int, default=10)
    parser.add_argument("--gradcam", action="store_true", help="also time ?gradcam=true (PyTorch, no batching)")
    parser.add_argument("--record", action="store_true",
                        help="append the JSON line to bench/serve.jsonl (shown in docs/benchmarks.md)")
    parser.add_argument("--note", default="", help="machine note stored with the record, e.g. 'quiet machine'")
    args = parser.parse_args()
    files = sorted(p for p in (COVID / "test").rglob("*") if p.is_file())
    bodies = [multipart(p) for p in files]
    with tempfile.TemporaryDirectory() as tmp:
        train_start = time.perf_counter()
        run_dir = Path(args.run) if args.run else train_quick_run(Path(tmp), args.train_per_class)
        train_s = round(time.perf_counter() - train_start, 1)
        results = {}
        for key, (backend, window_ms) in SETTINGS.items():
            port = free_port()
            server = start_server(run_dir.parent, port, backend, window_ms)
            try:
                load(port, run_dir.name, bodies[:2], 1, 2, False)  # warm-up of the HTTP path
                results[key] = load(port, run_dir.name, bodies, args.clients, args.requests, False)
                if args.gradcam and key == "torch":
                    results["torch_gradcam"] = load(port, run_dir.name, bodies, args.clients, args.requests, True)
            finally:
                server.terminate()
                server.wait(timeout=30)
        port = free_port()
        server = start_floor(port)
        try:
            load(port, run_dir.name, bodies[:2], 1, 2, False)
            results["http_floor"] = load(port, run_dir.name, bodies, args.clients, args.requests, False)
        finally:
            server.terminate()
            server.wait(timeout=30)
        config = json.loads(json.dumps(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())))
    sizes = sorted(len(b) for b, _ in bodies)
    record = {
        "clients": args.clients, "requests_per_mode": args.requests, "model": config["model"]["name"],
        "image_size": config["data"]["image_size"], "images": len(files),
        "upload_kb_median": round(statistics.median(sizes) / 1024), "upload_kb_max": round(sizes[-1] / 1024),
        "cpu_count": os.cpu_count(), "train_s": train_s if not args.run else None,
        **results,
        "ratios": {key: round(r["requests_per_s"] / results["torch"]["requests_per_s"], 2)
                   for key, r in results.items()},
        "errors": sum(r["errors"] for r in results.values())}
    print(json.dumps(record))
    if args.record:
        import records  # bench/records.py (this script's folder is on sys.path)
        records.append(records.SERVE, record, args.note, "python bench/serve.py " + shlex.join(sys.argv[1:]))
        print(f"appended to {records.SERVE} (python bench/suite.py --render shows it in docs/benchmarks.md)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
