"""serve.py: the real service in a subprocess on a loopback port, answered over HTTP.

Valid images of each class and every kind of bad upload get the promised JSON; a short
concurrent load ends with no 5xx and the process alive; served probabilities equal the
in-process model on the training pipeline's pixels."""
from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import reference_networks as ref
from PIL import Image

from leukocyte_cnn.base.errors import InputError

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["other", "lymphoblast"]
SIZE = (24, 32)                 # (height, width): not square, to catch swapped axes
MAX_UPLOAD_MB = 0.25            # small limits keep the oversize requests small
MAX_MEGAPIXELS = 0.5
STARTUP_DEADLINE_S = 180        # TensorFlow import on a loaded 2-core machine
LOAD_REQUESTS, LOAD_CONCURRENCY, LOAD_DEADLINE_S = 300, 8, 120


def cell_image(label: int, size=(40, 40), seed: int = 0) -> np.ndarray:
    """A pink field with a purple nucleus, large for label 1."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3)) + (230, 190, 200)
    radius = 0.35 * min(h, w) if label else 0.12 * min(h, w)
    img[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 < radius ** 2] = (110, 40, 150)
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def make_run(root: Path) -> Path:
    """A run folder with two finished folds; fold 1 has the lower validation loss."""
    import keras

    run = root / "tiny_run"
    keras.utils.set_random_seed(0)
    for fold, val_loss in ((0, [0.9, 0.7]), (1, [0.8, 0.5])):
        folder = run / f"fold_{fold:02d}"
        folder.mkdir(parents=True)
        model = ref.paper_cnn(input_shape=(*SIZE, 3), num_classes=2, filters=4)
        model.save(folder / "model.keras")
        pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.9], "val_loss": val_loss}).to_csv(
            folder / "epochs.csv", index=False)
        (folder / "predictions.csv").write_text("fold,image\n")
    (run / "settings.json").write_text(json.dumps(
        {"config": {"class_names": CLASSES, "image_size": list(SIZE)}, "provenance": {}}))
    return run


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """``serve.py --run`` in a subprocess; yields its base URL; stopped in teardown."""
    import httpx

    port = free_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "serve.py"), "--run", str(run_dir), "--port", str(port),
             "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-megapixels", str(MAX_MEGAPIXELS),
             "--no-access-log"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve.py exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve.py not up after {STARTUP_DEADLINE_S} s: "
                            f"{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield {"url": url, "proc": proc, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def classify(server, files=None, **kw):
    import httpx

    return httpx.post(f"{server['url']}/v1/classify", files=files, timeout=30, **kw)


def assert_error(response, status: int, *words: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    text = (body["error"] + " " + body["detail"]).lower()
    for word in words:
        assert word.lower() in text, body


# --------------------------------------------------------------------------- the real service


def test_health_names_the_best_fold_and_checkpoint_hash(server, run_dir):
    import httpx

    from leukocyte_cnn.service.app import checkpoint_sha256

    body = httpx.get(f"{server['url']}/health", timeout=10).json()
    sha = checkpoint_sha256(run_dir / "fold_01" / "model.keras")
    assert body["status"] == "ok"
    assert body["model_id"] == f"tiny_run/fold_01@{sha[:12]}"  # lowest validation loss
    assert body["class_names"] == CLASSES and body["image_size"] == list(SIZE)
    assert httpx.get(f"{server['url']}/docs", timeout=10).status_code == 200
    assert "/v1/classify" in httpx.get(f"{server['url']}/openapi.json", timeout=10).json()["paths"]


@pytest.mark.parametrize("fmt,mode,ctype", [("JPEG", None, "image/jpeg"),
                                            ("PNG", "RGBA", "image/png"),
                                            ("TIFF", None, "application/octet-stream"),
                                            ("PNG", "I;16", "image/png"),
                                            ("JPEG", "CMYK", "image/jpeg")])
def test_valid_images_of_each_class(server, fmt, mode, ctype):
    for label in (0, 1):
        data = encode(cell_image(label, seed=label), fmt, mode)
        response = classify(server, {"file": (f"cell{label}.{fmt.lower()}", data, ctype)})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"class", "probabilities", "model_id", "disclaimer"}
        assert list(body["probabilities"]) == CLASSES
        assert body["class"] in CLASSES
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert body["class"] == max(body["probabilities"], key=body["probabilities"].get)
        assert body["model_id"].startswith("tiny_run/fold_01@")
        assert "not a medical diagnosis" in body["disclaimer"]


def test_served_probabilities_equal_the_model_on_pipeline_pixels(server, run_dir, tmp_path):
    import keras

    from leukocyte_cnn.inputs.pipeline import load_arrays

    path = tmp_path / "cell.jpg"
    path.write_bytes(encode(cell_image(1, size=(61, 47), seed=3), "JPEG"))
    model = keras.models.load_model(run_dir / "fold_01" / "model.keras", safe_mode=True)
    expected = model.predict(load_arrays([path], SIZE), verbose=0)[0]
    served = classify(server, {"file": ("cell.jpg", path.read_bytes(), "image/jpeg")}).json()
    assert [served["probabilities"][c] for c in CLASSES] == pytest.approx(expected, abs=1e-5)


def test_bad_uploads_get_4xx_json(server):
    import httpx

    jpeg = encode(cell_image(1), "JPEG")
    assert_error(classify(server, {"file": ("notes.txt", b"hello, world", "text/plain")}),
                 415, "notes.txt", "text/plain")
    assert_error(classify(server, {"file": ("fake.png", b"hello, world", "image/png")}),
                 400, "fake.png", "not an image")
    assert_error(classify(server, {"file": ("empty.jpg", b"", "image/jpeg")}), 400, "empty")
    assert_error(classify(server, {"file": ("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}),
                 400, "cut.jpg", "truncated")
    assert_error(classify(server, content=b""), 415, "multipart")
    assert_error(classify(server, content=jpeg, headers={"content-type": "image/jpeg"}),
                 415, "multipart")
    assert_error(classify(server, {"image": ("a.jpg", jpeg, "image/jpeg")}), 422, "file")
    # Over the byte limit: refused from Content-Length, and counted on a chunked body.
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8)
    big = encode(noise, "PNG")
    assert len(big) > MAX_UPLOAD_MB * 2 ** 20 + 64 * 1024
    assert_error(classify(server, {"file": ("big.png", big, "image/png")}), 413, "limit")
    body = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + big + b"\r\n--xyz--\r\n")
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))  # no Content-Length
    response = httpx.post(f"{server['url']}/v1/classify", content=chunks, timeout=30,
                          headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert_error(response, 413, "limit")
    # Just over the file limit but within the multipart slack: the handler's own check.
    almost = b"\xff\xd8\xff" + bytes(int(MAX_UPLOAD_MB * 2 ** 20))
    assert_error(classify(server, {"file": ("almost.jpg", almost, "image/jpeg")}), 413,
                 "almost.jpg", "bytes")
    # Over the pixel limit: a small file whose header promises 0.6 Mpx (never decoded).
    wide = encode(np.full((600, 1000, 3), 255, np.uint8), "PNG")
    assert len(wide) < MAX_UPLOAD_MB * 2 ** 20
    assert_error(classify(server, {"file": ("wide.png", wide, "image/png")}), 413, "pixels")
    assert_error(httpx.get(f"{server['url']}/v1/classify", timeout=10), 405)
    assert server["proc"].poll() is None


def test_bounded_concurrent_load_has_no_5xx_and_the_service_survives(server):
    import httpx

    good = encode(cell_image(0), "JPEG")
    bad = [("t.txt", b"text", "text/plain"), ("x.jpg", good[:200], "image/jpeg"),
           ("e.jpg", b"", "image/jpeg")]
    statuses: list[int] = []

    async def run():
        limit = asyncio.Semaphore(LOAD_CONCURRENCY)
        async with httpx.AsyncClient(base_url=server["url"], timeout=30) as client:
            async def one(i: int):
                upload = ("c.jpg", good, "image/jpeg") if i % 4 else bad[(i // 4) % len(bad)]
                async with limit:
                    try:
                        response = await client.post("/v1/classify", files={"file": upload})
                        statuses.append(response.status_code)
                    except httpx.TransportError:
                        statuses.append(-1)
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(LOAD_REQUESTS))),
                                   timeout=LOAD_DEADLINE_S)

    asyncio.run(run())
    assert len(statuses) == LOAD_REQUESTS
    assert not [s for s in statuses if s >= 500 or s < 0]
    assert statuses.count(200) == LOAD_REQUESTS - LOAD_REQUESTS // 4
    assert server["proc"].poll() is None
    assert httpx.get(f"{server['url']}/health", timeout=10).json()["status"] == "ok"


# --------------------------------------------------------------------------- in-process pieces


def test_choose_fold_and_model_id(run_dir, tmp_path):
    from leukocyte_cnn.service.app import choose_fold, model_id_for

    assert choose_fold(run_dir) == run_dir / "fold_01" / "model.keras"
    assert choose_fold(run_dir, 0) == run_dir / "fold_00" / "model.keras"
    with pytest.raises(InputError, match="fold 5"):
        choose_fold(run_dir, 5)
    with pytest.raises(InputError, match="not a run folder"):
        choose_fold(tmp_path)
    assert model_id_for(Path("/x/run/fold_03/model.keras"), "ab" * 32) == "run/fold_03@" + "ab" * 6
    assert model_id_for(Path("/x/best.keras"), "cd" * 32) == "best@" + "cd" * 6


def test_settings_image_size_int_list_and_mismatch(run_dir, tmp_path):
    from leukocyte_cnn.service.app import load_classifier

    checkpoint = run_dir / "fold_00" / "model.keras"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"config": {"class_names": CLASSES, "image_size": 24}}))
    with pytest.raises(InputError, match="differs from the checkpoint"):
        load_classifier(checkpoint, settings)
    settings.write_text(json.dumps({"config": {"class_names": CLASSES}}))
    assert load_classifier(checkpoint, settings).image_size == SIZE  # from the model input
    settings.write_text(json.dumps({"config": {"image_size": list(SIZE)}}))
    with pytest.raises(InputError, match="class_names"):
        load_classifier(checkpoint, settings)
    square = tmp_path / "square.keras"
    ref.paper_cnn(input_shape=(20, 20, 3), filters=2).save(square)
    settings.write_text(json.dumps({"config": {"class_names": CLASSES, "image_size": 20}}))
    assert load_classifier(square, settings).image_size == (20, 20)


def test_serve_cli_refuses_bad_model_arguments(tmp_path):
    import serve

    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    (tmp_path / "settings.json").write_text(json.dumps({"config": {"class_names": CLASSES}}))
    for argv, match in [([], "no model given"),
                        (["--run", str(tmp_path / "missing")], "not a run folder"),
                        (["--checkpoint", str(broken), "--settings",
                          str(tmp_path / "settings.json")], "cannot load Keras model"),
                        (["--port", "0", "--run", "x"], "not a TCP port")]:
        with pytest.raises(InputError, match=match):
            serve.main(serve.parse_args(argv))


@pytest.mark.parametrize("fmt,mode", [("JPEG", None), ("PNG", "RGBA"), ("TIFF", None),
                                      ("PNG", "P")])
def test_load_image_equals_the_training_pipeline(tmp_path, fmt, mode):
    from leukocyte_cnn.inputs.pipeline import load_arrays, load_image

    path = tmp_path / f"cell.{fmt.lower()}"
    path.write_bytes(encode(cell_image(1, size=(57, 43), seed=1), fmt, mode))
    for kw in ({}, {"resize_method": "bicubic", "keep_aspect": True}):
        expected = load_arrays([path], SIZE, **kw)[0]
        got = load_image(path, SIZE, **kw)
        assert got.dtype == np.float32 and got.shape == (*SIZE, 3)
        assert np.array_equal(got, expected)
