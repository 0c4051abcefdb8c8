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

The service runs with authentication on, as on a network (``--token-file``: a token file of
mode 600 in a temporary folder; every request carries ``Authorization: Bearer``). Then a
bounded soak (``--soak-seconds``, default two minutes; 0 skips it): ``--concurrency`` client
threads, each with its own keep-alive connection, post for the whole time a fixed mix: per 100
requests 87 valid uploads, 10 malformed ones (non-image bytes, a truncated PNG, an empty file:
400 expected), 2 with a wrong token and 1 with none (401 expected). After a warm-up of the same
mix it reports requests/s, p50/p99 latency, the answers by kind (expected 4xx vs unexpected
4xx, 5xx and connection errors) and the server process's resident memory at the start and at
the end (psutil if installed, else VmRSS of /proc/<pid>/status). Targets: RSS growth <= 10 %
over the soak, 0 server errors (5xx or connection errors), every answer the expected one.

Run: ``.venv/bin/python benchmarks/bench_serve.py [--requests 300] [--concurrency 8]
[--run results/<run>] [--soak-seconds 120] [--soak-only]``. Without ``--run`` an untrained
paper CNN (100x100) is served.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
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
# Soak: a bounded run of a fixed request mix, for errors and memory growth.
SOAK_SECONDS = 120         # timed soak (--soak-seconds; 0 skips it)
SOAK_WARMUP_S = 15         # the same mix first, untimed: threads, caches, allocator arenas
MALFORMED_PER_100 = 10     # non-image bytes, truncated PNG, empty file in turn (400 expected)
WRONG_TOKEN_PER_100 = 2    # a valid upload with a wrong token (401 expected)
NO_TOKEN_PER_100 = 1       # a valid upload without the Authorization header (401 expected)
RSS_SAMPLE_S = 5           # how often the server's resident memory is read during the soak
MAX_RSS_GROWTH = 0.10      # target: end RSS <= 1.10x start RSS


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
    parser.add_argument("--soak-seconds", type=float, default=SOAK_SECONDS,
                        help=f"length of the soak after the throughput phase, s (default "
                             f"{SOAK_SECONDS}; 0 skips it)")
    parser.add_argument("--soak-only", action="store_true",
                        help="skip the in-process baselines and the throughput phase")
    parser.add_argument("--quick", action="store_true",
                        help="60 requests, one baseline pass, a 20 s soak")
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


def write_token_file(folder: Path) -> tuple[Path, str]:
    """A fresh random token in ``folder/token``, created with mode 600 (no other user reads
    it at any moment; serve.py refuses a group- or world-readable one)."""
    token = secrets.token_urlsafe(32)
    path = folder / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return path, token


def start_service(run: Path, port: int, log: Path, token_file: Path) -> subprocess.Popen:
    import httpx

    environment = {key: value for key, value in os.environ.items()
                   if key != "LEUKOCYTE_SERVE_TOKEN"}  # the token comes from the file only
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(common.REPO_ROOT / "serve.py"), "--run",
                                 str(run), "--port", str(port), "--no-access-log",
                                 "--token-file", str(token_file)],
                                cwd=common.REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**environment, "TF_CPP_MIN_LOG_LEVEL": "3"})
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


async def load(url: str, blobs: list[bytes], n: int, concurrency: int,
               token: str) -> tuple[list, list, float]:
    import httpx

    latencies, statuses = [], []
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 headers={"authorization": f"Bearer {token}"},
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


# --------------------------------------------------------------------------- soak


def resident_mib(pid: int) -> float:
    """Resident memory of process ``pid``, MiB: psutil if installed, else /proc VmRSS."""
    try:
        import psutil
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError(f"/proc/{pid}/status: no VmRSS line") from None
    return psutil.Process(pid).memory_info().rss / 2 ** 20


def soak_mix(jpegs: list[bytes], token: str) -> list[tuple[str, tuple, dict, int]]:
    """100 requests as (kind, multipart file, headers, expected status), kinds spread evenly
    (position ``i * 37 % 100``) so that the bad ones never come in a burst."""
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.open(io.BytesIO(jpegs[0])).save(png, "PNG")
    png = png.getvalue()
    right, wrong = {"authorization": f"Bearer {token}"}, {"authorization": "Bearer not-it"}
    malformed = [("non-image bytes", ("notes.jpg", b"this is not an image\n" * 40,
                                      "image/jpeg")),
                 ("truncated PNG", ("cut.png", png[: len(png) // 2], "image/png")),
                 ("empty file", ("empty.jpg", b"", "image/jpeg"))]
    plan = []
    for k in range(100):
        slot = k * 37 % 100
        valid = ("cell.jpg", jpegs[k % len(jpegs)], "image/jpeg")
        if slot < MALFORMED_PER_100:
            kind, upload = malformed[slot % len(malformed)]
            plan.append((kind, upload, right, 400))
        elif slot < MALFORMED_PER_100 + WRONG_TOKEN_PER_100:
            plan.append(("wrong token", valid, wrong, 401))
        elif slot < MALFORMED_PER_100 + WRONG_TOKEN_PER_100 + NO_TOKEN_PER_100:
            plan.append(("no token", valid, {}, 401))
        else:
            plan.append(("valid upload", valid, right, 200))
    return plan


def soak_phase(url: str, plan: list, seconds: float, concurrency: int,
               on_tick=None) -> tuple[list, float]:
    """``concurrency`` threads post ``plan`` in turn until ``seconds`` have passed; returns
    (kind, expected, status or error name, latency s) per request and the wall time.
    ``on_tick`` is called every RSS_SAMPLE_S meanwhile (memory samples)."""
    import httpx

    counter, records = itertools.count(), []

    def client_loop(stop_at: float) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.monotonic() < stop_at:
                kind, upload, headers, expected = plan[next(counter) % len(plan)]
                start = time.perf_counter()
                try:
                    outcome = client.post("/v1/classify", files={"file": upload},
                                          headers=headers).status_code
                except httpx.TransportError as exc:  # connection refused, reset, timeout
                    outcome = type(exc).__name__
                records.append((kind, expected, outcome, time.perf_counter() - start))

    start = time.monotonic()
    threads = [threading.Thread(target=client_loop, args=(start + seconds,), daemon=True)
               for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    deadline, next_tick = start + seconds + 90, start + RSS_SAMPLE_S  # requests time out at 60
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        time.sleep(0.05)
        if on_tick is not None and time.monotonic() >= next_tick:
            on_tick()
            next_tick += RSS_SAMPLE_S
    wall = time.monotonic() - start
    hung = sum(t.is_alive() for t in threads)
    records += [("client", 200, "hung", float("nan"))] * hung  # a request never answered
    return records, wall


def soak(url: str, proc: subprocess.Popen, plan: list, seconds: float,
         concurrency: int) -> dict:
    """Warm-up, then the timed soak with the server's RSS read at the start, every
    RSS_SAMPLE_S and at the end."""
    soak_phase(url, plan, min(SOAK_WARMUP_S, seconds), concurrency)
    rss = [resident_mib(proc.pid)]

    def sample():
        if proc.poll() is None:
            rss.append(resident_mib(proc.pid))

    records, wall = soak_phase(url, plan, seconds, concurrency, on_tick=sample)
    alive = proc.poll() is None
    end = resident_mib(proc.pid) if alive else float("nan")
    return {"records": records, "wall": wall, "rss_start": rss[0], "rss_end": end,
            "rss_peak": max([*rss, end]), "alive": alive}


def report_soak(result: dict, seconds: float, concurrency: int) -> bool:
    """The soak's table and its three PASS/FAIL lines; True when all pass."""
    records, wall = result["records"], result["wall"]
    by_kind = collections.defaultdict(collections.Counter)
    for kind, _expected, outcome, _latency in records:
        by_kind[kind][outcome] += 1
    tally = collections.Counter()
    for _kind, expected, outcome, _latency in records:
        if not isinstance(outcome, int):
            tally["connection errors"] += 1
        elif outcome >= 500:
            tally["5xx"] += 1
        elif outcome == expected:
            tally["expected 4xx" if outcome >= 400 else "200"] += 1
        elif outcome >= 400:
            tally["unexpected 4xx"] += 1
        else:
            tally["unexpected 2xx/3xx"] += 1  # e.g. a wrong token answered 200
    answered = [r[3] for r in records if isinstance(r[2], int)]
    valid = [r[3] for r in records if r[0] == "valid upload" and r[2] == 200]
    ms = lambda values, q: 1e3 * percentile(values, q) if values else float("nan")
    growth = result["rss_end"] / result["rss_start"] - 1
    print(f"soak: {seconds:.0f} s after a {min(SOAK_WARMUP_S, seconds):.0f} s warm-up, "
          f"{concurrency} client threads, auth on (token file mode 600); per 100 requests "
          f"{100 - MALFORMED_PER_100 - WRONG_TOKEN_PER_100 - NO_TOKEN_PER_100} valid, "
          f"{MALFORMED_PER_100} malformed, {WRONG_TOKEN_PER_100} wrong token, "
          f"{NO_TOKEN_PER_100} no token")
    print("| requests | requests/s | p50 ms | p99 ms | p50 ms (valid) | p99 ms (valid) |")
    print(f"| {len(records):,} | {len(records) / wall:.1f} | {ms(answered, 50):.1f} | "
          f"{ms(answered, 99):.1f} | {ms(valid, 50):.1f} | {ms(valid, 99):.1f} |")
    print("answers by kind:")
    for kind, counts in sorted(by_kind.items()):
        print(f"  {kind}: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(
            counts.items(), key=lambda kv: str(kv[0]))))
    print("outcomes: " + ", ".join(f"{name} {tally[name]:,}" for name in (
        "200", "expected 4xx", "unexpected 4xx", "unexpected 2xx/3xx", "5xx",
        "connection errors")))
    print(f"server RSS: start {result['rss_start']:.0f} MiB (after warm-up), end "
          f"{result['rss_end']:.0f} MiB, peak sampled {result['rss_peak']:.0f} MiB; growth "
          f"{100 * growth:+.1f} %; process alive after: {result['alive']}")
    server_errors = tally["5xx"] + tally["connection errors"] + (not result["alive"])
    wrong = tally["unexpected 4xx"] + tally["unexpected 2xx/3xx"]
    oks = [common.verdict("soak RSS growth", growth <= MAX_RSS_GROWTH, f"{100 * growth:+.1f} %",
                          f"<= {100 * MAX_RSS_GROWTH:.0f} %"),
           common.verdict("soak server errors", server_errors == 0,
                          f"{tally['5xx']} 5xx, {tally['connection errors']} connection "
                          f"errors, alive {result['alive']}", "0 and alive"),
           common.verdict("soak answers as expected", wrong == 0,
                          f"{wrong} unexpected statuses", "0")]
    return all(oks)


# --------------------------------------------------------------------------- main


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.requests, repeats = min(args.requests, 60), 1
        args.soak_seconds = min(args.soak_seconds, 20)
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

    base = None if args.soak_only else baselines(run, paths, repeats)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as secret_dir:
        token_file, token = write_token_file(Path(secret_dir))
        proc = start_service(run, port, common.OUT_DIR / "bench_serve.log", token_file)
        try:
            url = f"http://127.0.0.1:{port}"
            if base is not None:
                asyncio.run(load(url, blobs, WARMUP, 1, token))
                latencies, statuses, wall = asyncio.run(load(url, blobs, args.requests,
                                                             args.concurrency, token))
                sequential, _, wall_1 = asyncio.run(load(url, blobs, min(args.requests, 60),
                                                         1, token))
            alive = proc.poll() is None
            soaked = (soak(url, proc, soak_mix(blobs, token), args.soak_seconds,
                           args.concurrency) if args.soak_seconds > 0 and alive else None)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        token_logged = token in (common.OUT_DIR / "bench_serve.log").read_text(errors="replace")

    if base is not None:
        report_throughput(base, latencies, statuses, wall, sequential, wall_1, alive,
                          args.concurrency)
    if soaked is not None:
        report_soak(soaked, args.soak_seconds, args.concurrency)
    common.verdict("token kept out of the server log", not token_logged,
                   "found" if token_logged else "absent", "absent")


def report_throughput(base: dict, latencies: list, statuses: list, wall: float,
                      sequential: list, wall_1: float, alive: bool, concurrency: int) -> None:
    rate = len(latencies) / wall
    errors = sum(1 for s in statuses if s != 200)
    print(f"service, concurrency {concurrency}: {len(latencies)} requests in {wall:.1f} s "
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
    print(f"ratio service (concurrency {concurrency}) / model.predict one by one: "
          f"{rate / base['naive']:.2f}x")
    print(f"ratio service (concurrency {concurrency}) / same work without HTTP: "
          f"{rate / base['service_work']:.2f}x")


if __name__ == "__main__":
    main(parse_args())
