"""Throughput and latency of the HTTP inference service, against in-process prediction.

Starts ``serve.py`` in a subprocess on a free loopback port, exactly as a user would, and
sends ``--requests`` multipart uploads of ALL-IDB2-like 257x257 JPEGs at ``--concurrency``
(httpx, asyncio), after a few warm-up requests. Prints requests/s and the p50/p95/max
latency. Baselines measured in the same run, with the service stopped so that the two do
not share the CPU:

* ``model.predict`` in-process: ``load_arrays([path]) + model.predict`` one image at a time,
  what a researcher's script would do;
* the service's own work in-process: ``decode_upload`` + ``Classifier.predict`` (checks,
  strict decode, pipeline decode/resize, traced ``tf.function``), without HTTP.

The ratios say what HTTP + multipart + the event loop cost, and what the traced predict
function gains over ``model.predict``. No timed assertions: absolute figures depend on the
machine and its load (printed).

Run: ``.venv/bin/python benchmarks/bench_serve.py [--requests 300] [--concurrency 8]
[--run results/<run>]``. Without ``--run`` an untrained paper CNN (100x100) is served.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import common

REQUESTS = 300             # timed requests
CONCURRENCY = 8            # requests in flight at once
WARMUP = 10                # untimed requests first
IMAGES = 20                # distinct images, cycled
IMAGE_SIDE = 257           # ALL-IDB2 cell images are 257x257
BASELINE_REPEATS = 3       # passes over the images for each in-process baseline (best counts)
STARTUP_DEADLINE_S = 300   # TensorFlow import on a loaded machine
REQUEST_DEADLINE_S = 600   # the timed phase stops here whatever happens


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=REQUESTS,
                        help=f"timed requests (default {REQUESTS})")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY,
                        help=f"requests in flight at once (default {CONCURRENCY})")
    parser.add_argument("--images", type=int, default=IMAGES,
                        help=f"distinct test images, cycled (default {IMAGES})")
    parser.add_argument("--run", default=None,
                        help="run folder to serve (default: an untrained paper CNN at 100x100 "
                             "under benchmarks/out/)")
    parser.add_argument("--quick", action="store_true", help="60 requests, one baseline pass")
    return parser.parse_args(argv)


def untrained_run(folder: Path) -> Path:
    """A run folder with an untrained paper CNN: speed does not depend on the weights."""
    import keras


    checkpoint = folder / "fold_00" / "model.keras"
    if not checkpoint.exists():
        keras.utils.set_random_seed(0)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        common.study_network("paper_cnn", (100, 100, 3), 2).save(checkpoint)
        (checkpoint.parent / "predictions.csv").write_text("fold,image\n")
        (folder / "settings.json").write_text(json.dumps(
            {"config": {"class_names": ["other", "lymphoblast"], "image_size": [100, 100]}}))
    return folder


def percentile(values, q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def baselines(run: Path, paths: list[Path], repeats: int) -> dict:
    """Images/s of model.predict and of the service's own in-process work, one by one."""
    from leukocyte_cnn.inputs.pipeline import load_arrays
    from leukocyte_cnn.service.app import choose_fold, decode_upload, load_classifier

    classifier = load_classifier(choose_fold(run), run / "settings.json")
    blobs = [p.read_bytes() for p in paths]

    def naive():
        for p in paths:
            classifier.model.predict(load_arrays([p], classifier.image_size), verbose=0)

    def service_work():
        for data in blobs:
            classifier.predict(decode_upload(data, "x.jpg", classifier, 40_000_000))

    naive()  # warm-up: tracing, first pipeline
    service_work()
    out = {"naive": len(paths) / common.best_of(naive, repeats),
           "service_work": len(paths) / common.best_of(service_work, repeats)}
    classifier.close()
    return out


def start_service(run: Path, port: int, log: Path) -> subprocess.Popen:
    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(common.REPO_ROOT / "serve.py"), "--run",
                                 str(run), "--port", str(port), "--no-access-log"],
                                cwd=common.REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve.py exited ({proc.returncode}): {log.read_text()[-1500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"serve.py not up after {STARTUP_DEADLINE_S} s")


async def load(url: str, blobs: list[bytes], n: int, concurrency: int) -> tuple[list, list, float]:
    import httpx

    latencies, statuses = [], []
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int):
            async with limit:
                start = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/classify", files={"file": ("cell.jpg", blobs[i % len(blobs)],
                                                        "image/jpeg")})
                    statuses.append(response.status_code)
                except httpx.TransportError:
                    statuses.append(-1)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))),
                               timeout=REQUEST_DEADLINE_S)
        return latencies, statuses, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.requests, repeats = min(args.requests, 60), 1
    else:
        repeats = BASELINE_REPEATS
    common.print_header("HTTP inference service (serve.py) vs in-process prediction")
    common.OUT_DIR.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else untrained_run(common.OUT_DIR / "bench_serve_run")
    paths = common.render_cell_jpegs(common.OUT_DIR / f"serve_cells_{IMAGE_SIDE}", args.images,
                                     size=(IMAGE_SIDE, IMAGE_SIDE))
    blobs = [p.read_bytes() for p in paths]
    print(f"model: {run}; {len(paths)} JPEGs {IMAGE_SIDE}x{IMAGE_SIDE} "
          f"(~{sum(map(len, blobs)) // len(blobs) // 1024} KB), cycled", flush=True)

    base = baselines(run, paths, repeats)
    port = free_port()
    proc = start_service(run, port, common.OUT_DIR / "bench_serve.log")
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(load(url, blobs, WARMUP, 1))
        latencies, statuses, wall = asyncio.run(load(url, blobs, args.requests,
                                                     args.concurrency))
        sequential, _, wall_1 = asyncio.run(load(url, blobs, min(args.requests, 60), 1))
        alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    rate = len(latencies) / wall
    errors = sum(1 for s in statuses if s != 200)
    print(f"service, concurrency {args.concurrency}: {len(latencies)} requests in {wall:.1f} s "
          f"= {rate:.1f} requests/s; latency p50 {1e3 * percentile(latencies, 50):.1f} ms, "
          f"p95 {1e3 * percentile(latencies, 95):.1f} ms, max {1e3 * max(latencies):.1f} ms; "
          f"non-200: {errors}; process alive after: {alive}")
    print(f"service, concurrency 1: {len(sequential) / wall_1:.1f} requests/s; latency p50 "
          f"{1e3 * percentile(sequential, 50):.1f} ms, "
          f"p95 {1e3 * percentile(sequential, 95):.1f} ms")
    print(f"baseline in-process load_arrays + model.predict, one by one: {base['naive']:.1f} "
          f"images/s ({1e3 / base['naive']:.1f} ms each)")
    print(f"baseline in-process service work (checks, decode, resize, traced predict), no "
          f"HTTP: {base['service_work']:.1f} images/s ({1e3 / base['service_work']:.1f} ms each)")
    print(f"ratio service (concurrency {args.concurrency}) / model.predict one by one: "
          f"{rate / base['naive']:.2f}x")
    print(f"ratio service (concurrency {args.concurrency}) / same work without HTTP: "
          f"{rate / base['service_work']:.2f}x")


if __name__ == "__main__":
    main(parse_args())
