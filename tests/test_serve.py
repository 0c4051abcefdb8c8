"""serve.py: the real service in a subprocess on a loopback port, answered over HTTP.

Valid images of each class and every kind of bad upload get the promised JSON; a short
concurrent load ends with no 5xx and the process alive; served probabilities equal the
in-process model on the training pipeline's pixels. Authentication: 401 without the bearer
token or with a wrong one, 200 with it, ``/health`` open; every start that would expose the
service without a token, or with a token file other users can read, stops in one line before
a socket opens (``uvicorn.run`` is replaced, and no test binds beyond loopback); the token
appears in no log and no answer."""
from __future__ import annotations

import asyncio
import io
import json
import logging
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
from leukocyte_cnn.service.auth import TOKEN_ENV

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["other", "lymphoblast"]
SIZE = (24, 32)                 # (height, width): not square, to catch swapped axes
MAX_UPLOAD_MB = 0.25            # small limits keep the oversize requests small
MAX_MEGAPIXELS = 0.5
STARTUP_DEADLINE_S = 180        # TensorFlow import on a loaded 2-core machine
LOAD_REQUESTS, LOAD_CONCURRENCY, LOAD_DEADLINE_S = 300, 8, 120
TOKEN = "tok-4f9c2e71a8b3d6e0-5b1aFq_Zr9"   # distinctive: searched for in logs and answers
WRONG = TOKEN[:-1] + "X"                    # one character off
CHALLENGE = 'Bearer realm="leukocyte-cnn"'


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


def start_server(run_dir: Path, log: Path, *extra: str, env: dict | None = None) -> dict:
    """``serve.py --run`` in a subprocess on a free loopback port, once ``/health`` answers."""
    import httpx

    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    environment.update({"TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "serve.py"), "--run", str(run_dir), "--port", str(port),
             "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-megapixels", str(MAX_MEGAPIXELS),
             *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"serve.py exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return {"url": url, "proc": proc, "log": log}
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail(f"serve.py not up after {STARTUP_DEADLINE_S} s: "
                        f"{log.read_text()[-2000:]}")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """``serve.py --run`` on loopback without a token; yields its base URL; stopped in teardown."""
    started = start_server(run_dir, tmp_path_factory.mktemp("log") / "serve.log",
                           "--no-access-log")
    yield started
    stop_server(started["proc"])


@pytest.fixture(scope="module")
def auth_server(run_dir, tmp_path_factory):
    """``serve.py`` with the token in ``$LEUKOCYTE_SERVE_TOKEN`` and the access log on."""
    started = start_server(run_dir, tmp_path_factory.mktemp("log") / "serve_auth.log",
                           env={TOKEN_ENV: TOKEN})
    yield started
    stop_server(started["proc"])


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
    assert body["status"] == "ok" and body["auth"] == "none"
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
        assert set(body) == {"class", "probabilities", "calibrated", "temperature", "model_id",
                             "disclaimer"}
        assert body["calibrated"] is False and body["temperature"] is None  # none fitted
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


# --------------------------------------------------------------------------- authentication


def client_of(app):
    """FastAPI's TestClient for ``app``, in process: nothing listens on any socket.

    Not used as a context manager, so the app's lifespan (which closes the classifier when the
    service stops) never runs and a module's classifier serves several tests."""
    import warnings

    with warnings.catch_warnings():  # Starlette's notice that httpx2 exists; not our concern
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(app)


def bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def assert_unauthorized(response, *, wrong: bool = False) -> None:
    """401, the one-line error shape of every 4xx, the Bearer challenge, and no token echoed."""
    assert_error(response, 401, "unauthorized", "authorization header")
    assert response.json()["error"] == "unauthorized"
    expected = CHALLENGE + (', error="invalid_token"' if wrong else "")
    assert response.headers["www-authenticate"] == expected
    assert TOKEN not in response.text and WRONG not in response.text


def test_real_service_needs_the_token_and_never_logs_it(auth_server):
    """Over real HTTP (token from the environment, access log on): /health open, 401 without
    or with a wrong token on one kept-alive connection, 200 with it; the log never has it."""
    import httpx

    jpeg = encode(cell_image(1), "JPEG")
    upload = {"file": ("cell.jpg", jpeg, "image/jpeg")}
    with httpx.Client(base_url=auth_server["url"], timeout=30) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["auth"] == "bearer"
        assert_unauthorized(client.post("/v1/classify", files=upload))
        assert_unauthorized(client.post("/v1/classify", files=upload, headers=bearer(WRONG)),
                            wrong=True)
        good = client.post("/v1/classify", files=upload, headers=bearer(TOKEN))
        assert good.status_code == 200, good.text
        assert set(good.json()) == {"class", "probabilities", "calibrated", "temperature",
                                    "model_id", "disclaimer"}
        assert_error(client.post("/v1/classify", headers=bearer(TOKEN),
                                 files={"file": ("x.png", b"not a png", "image/png")}),
                     400, "not an image")
        assert_unauthorized(client.get("/docs"))
        assert client.get("/docs", headers=bearer(TOKEN)).status_code == 200
    assert auth_server["proc"].poll() is None
    log = auth_server["log"].read_text()
    assert "auth: bearer token from $LEUKOCYTE_SERVE_TOKEN" in log
    assert '"POST /v1/classify HTTP/1.1" 401' in log and '"POST /v1/classify HTTP/1.1" 200' in log
    assert TOKEN not in log and WRONG not in log


@pytest.fixture(scope="module")
def classifier(run_dir):
    from leukocyte_cnn.service.app import load_classifier

    loaded = load_classifier(run_dir / "fold_01" / "model.keras", run_dir / "settings.json")
    yield loaded
    loaded.close()


@pytest.mark.parametrize("headers,status,wrong", [
    ({}, 401, False),
    (bearer(WRONG), 401, True),
    (bearer(TOKEN[:-4]), 401, True),                     # a prefix is not the token
    (bearer(TOKEN + "x"), 401, True),
    ({"authorization": f"Basic {TOKEN}"}, 401, False),   # another scheme
    ({"authorization": "Bearer"}, 401, False),           # no token after the scheme
    ({"authorization": TOKEN}, 401, False),              # no scheme
    ([("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {WRONG}")], 401, False),
    (bearer(TOKEN), 200, False),
    ({"authorization": f"bearer {TOKEN}"}, 200, False),  # the scheme is case-insensitive
])
def test_classify_needs_the_bearer_token(classifier, headers, status, wrong):
    from leukocyte_cnn.service.app import create_app

    client = client_of(create_app(classifier, token=TOKEN))
    response = client.post("/v1/classify", headers=headers,
                           files={"file": ("cell.jpg", encode(cell_image(0), "JPEG"),
                                           "image/jpeg")})
    if status == 401:
        assert_unauthorized(response, wrong=wrong)
    else:
        assert response.status_code == 200, response.text
        assert response.json()["class"] in CLASSES


def test_only_health_is_open_and_nothing_is_read_before_the_token(classifier):
    from leukocyte_cnn.service.app import create_app

    client = client_of(create_app(classifier, max_bytes=1024, token=TOKEN))
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["auth"] == "bearer"
    for path in ("/docs", "/openapi.json", "/nowhere"):
        assert_unauthorized(client.get(path))
    # Over the body limit but without the token: 401, not 413 (the body is never read) ...
    big = {"file": ("big.jpg", bytes(4096), "image/jpeg")}
    assert_unauthorized(client.post("/v1/classify", files=big))
    # ... while with the token the limit answers.
    assert_error(client.post("/v1/classify", files=big, headers=bearer(TOKEN)), 413, "limit")
    # Without a token the app is open, and /health says so.
    open_client = client_of(create_app(classifier))
    assert open_client.get("/health").json()["auth"] == "none"
    assert open_client.post("/v1/classify", files={"file": (
        "c.jpg", encode(cell_image(1), "JPEG"), "image/jpeg")}).status_code == 200


def test_the_token_is_compared_in_constant_time(monkeypatch):
    """Both the right and a wrong token go through hmac.compare_digest on equal-length
    digests, whatever the length of the token sent."""
    from leukocyte_cnn.service import auth

    calls = []

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    guard = auth.BearerAuth(app=None, token=TOKEN)
    assert guard.problem([(b"authorization", f"Bearer {TOKEN}".encode())]) is None
    assert guard.problem([(b"authorization", b"Bearer x")])[0].endswith("wrong bearer token")
    assert guard.problem([(b"authorization", b"Bearer " + b"y" * 500)]) is not None
    assert calls == [(32, 32)] * 3
    assert TOKEN.encode() not in repr(vars(guard)).encode()  # only its digest is kept


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("LOCALHOST", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("128.0.0.1", False),
    ("example.org", False), ("localhost.example.org", False), ("", False)])
def test_what_counts_as_loopback(host, loopback):
    from leukocyte_cnn.service.auth import is_loopback

    assert is_loopback(host) is loopback


@pytest.fixture
def starts(monkeypatch):
    """serve.main's ``uvicorn.run`` replaced: records (app, host, port) instead of binding;
    any bind beyond loopback in this process fails the test; no token in the environment."""
    import uvicorn

    from leukocyte_cnn.service.auth import is_loopback

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: calls.append(
        {"app": app, "host": host, "port": port}))
    real_bind = socket.socket.bind

    def loopback_bind(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0]):
            pytest.fail(f"bound {address} beyond loopback")
        return real_bind(sock, address)

    monkeypatch.setattr(socket.socket, "bind", loopback_bind)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    return calls


def run_serve(argv: list[str], capsys) -> tuple[int, str, str]:
    """``serve.py``'s ``__main__``: main(parse_args(argv)) under run_main; (exit, out, err)."""
    from test_reliability import run_script

    return run_script("serve", argv, capsys)


def token_file(folder: Path, text: str, mode: int = 0o600, name: str = "token") -> Path:
    path = folder / name
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("case", ["public host", "public ipv6", "public name", "group-readable",
                                  "other-readable", "group-writable", "empty file",
                                  "blank file", "missing file", "a folder", "two lines",
                                  "empty variable", "file and variable", "no-auth with token"])
def test_unsafe_starts_stop_in_one_line_before_any_socket(case, starts, run_dir, tmp_path,
                                                         monkeypatch, capsys):
    """Each refusal: exit 2, one ``error:`` line naming the problem, no traceback, the model
    never loaded and uvicorn.run never reached."""
    import leukocyte_cnn.service.app as app_module

    monkeypatch.setattr(app_module, "resolve_model",
                        lambda *a, **k: pytest.fail("model loaded before the auth check"))
    good = token_file(tmp_path, TOKEN + "\n", name="good")
    cases = {
        "public host": (["--host", "0.0.0.0"], {}, ["--host 0.0.0.0", "not a loopback",
                                                    "--token-file", TOKEN_ENV, "--no-auth"]),
        "public ipv6": (["--host", "::"], {}, ["--host ::", "not a loopback"]),
        "public name": (["--host", "example.org"], {}, ["not a loopback"]),
        "group-readable": (["--token-file", str(token_file(tmp_path, TOKEN, 0o640, "g"))], {},
                           [f"{tmp_path / 'g'}: token file has mode 0640", "chmod 600"]),
        "other-readable": (["--token-file", str(token_file(tmp_path, TOKEN, 0o604, "o"))], {},
                           ["mode 0604", f"chmod 600 {tmp_path / 'o'}"]),
        "group-writable": (["--token-file", str(token_file(tmp_path, TOKEN, 0o620, "w"))], {},
                           ["mode 0620", "chmod 600"]),
        "empty file": (["--token-file", str(token_file(tmp_path, "", name="e"))], {},
                       [f"{tmp_path / 'e'}: token file is empty"]),
        "blank file": (["--token-file", str(token_file(tmp_path, " \n\n", name="b"))], {},
                       [f"{tmp_path / 'b'}: token file is empty"]),
        "missing file": (["--token-file", str(tmp_path / "nope")], {},
                         [f"{tmp_path / 'nope'}: token file not found"]),
        "a folder": (["--token-file", str(tmp_path)], {}, ["not a regular file"]),
        "two lines": (["--token-file", str(token_file(tmp_path, f"{TOKEN}\n{TOKEN}\n",
                                                      name="two"))], {},
                      ["whitespace inside the token"]),
        "empty variable": ([], {TOKEN_ENV: ""}, [f"${TOKEN_ENV} is empty"]),
        "file and variable": (["--token-file", str(good)], {TOKEN_ENV: TOKEN},
                              ["both give a token"]),
        "no-auth with token": (["--no-auth", "--host", "0.0.0.0", "--token-file", str(good)],
                               {}, ["--no-auth", "give one or the other"]),
    }
    argv, env, words = cases[case]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out, err = run_serve(["--run", str(run_dir), *argv], capsys)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in out + err and "serving" not in out
    assert TOKEN not in out + err
    assert starts == []


def test_loopback_without_a_token_starts_open_and_quiet(starts, run_dir, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    for host in ("127.0.0.2", "localhost", "::1"):
        code, out, err = run_serve(["--run", str(run_dir), "--host", host], capsys)
        assert code == 0, err
        assert f"on http://{host}:8000  auth: none" in out
    assert [c["host"] for c in starts] == ["127.0.0.2", "localhost", "::1"]
    assert client_of(starts[0]["app"]).get("/health").json()["auth"] == "none"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_no_auth_on_a_public_host_is_allowed_and_warns(starts, run_dir, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    code, out, err = run_serve(["--run", str(run_dir), "--host", "0.0.0.0", "--no-auth"],
                               capsys)
    assert code == 0, err
    assert [(c["host"], c["port"]) for c in starts] == [("0.0.0.0", 8000)]  # recorded, not bound
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "--no-auth" in warnings[0] and "0.0.0.0:8000 without authentication" in warnings[0]
    client = client_of(starts[0]["app"])
    assert client.get("/health").json()["auth"] == "none"
    assert client.post("/v1/classify", files={"file": (
        "c.jpg", encode(cell_image(1), "JPEG"), "image/jpeg")}).status_code == 200


@pytest.mark.parametrize("source", ["file", "environment"])
def test_the_token_appears_in_no_log_output_or_answer(source, starts, run_dir, tmp_path,
                                                      monkeypatch, capsys, caplog):
    """serve.main on a public host with the token, then every kind of answer through the app
    it would serve: no log record, no line on stdout/stderr, no body or header has it."""
    caplog.set_level(logging.DEBUG)
    if source == "file":
        argv = ["--token-file", str(token_file(tmp_path, TOKEN + "\n"))]
    else:
        argv = []
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
    code, out, err = run_serve(["--run", str(run_dir), "--host", "0.0.0.0", *argv], capsys)
    assert code == 0, err
    assert ("auth: bearer token from " + ("--token-file" if source == "file" else "$")) in out
    client = client_of(starts[0]["app"])
    jpeg = encode(cell_image(1), "JPEG")
    responses = [
        client.get("/health"),
        client.post("/v1/classify", files={"file": ("c.jpg", jpeg, "image/jpeg")}),
        client.post("/v1/classify", files={"file": ("c.jpg", jpeg, "image/jpeg")},
                    headers=bearer(WRONG)),
        client.post("/v1/classify", files={"file": ("c.jpg", jpeg, "image/jpeg")},
                    headers={"authorization": f"Token {TOKEN}"}),
        client.post("/v1/classify", files={"file": ("c.jpg", jpeg, "image/jpeg")},
                    headers=bearer(TOKEN)),
        client.post("/v1/classify", files={"file": ("e.jpg", b"", "image/jpeg")},
                    headers=bearer(TOKEN)),
        client.post("/v1/classify", content=b"x", headers=bearer(TOKEN)),
    ]
    assert [r.status_code for r in responses] == [200, 401, 401, 401, 200, 400, 415]
    later_out, later_err = capsys.readouterr()
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in caplog.records)
    answers = "\n".join(f"{r.headers} {r.text}" for r in responses)
    for secret in (TOKEN, WRONG):
        for where, text in (("stdout", out + later_out), ("stderr", err + later_err),
                            ("log", logged), ("answers", answers)):
            assert secret not in text, f"token in {where}"


def test_served_probabilities_are_temperature_scaled_when_the_fold_has_a_temperature(
        tmp_path):
    """Issue 24: the temperature fitted on the fold's validation images is stored beside its
    checkpoint; the service applies it and says so (in each answer and in /health)."""
    import keras

    from leukocyte_cnn.inputs.pipeline import load_arrays
    from leukocyte_cnn.reporting.calibration import apply_temperature, write_temperature
    from leukocyte_cnn.service.app import create_app, resolve_model

    run = make_run(tmp_path)
    write_temperature(run / "fold_01", {"temperature": 2.5, "fitted_on": "validation images"})
    classifier = resolve_model(run=str(run))
    assert classifier.temperature == 2.5
    path = tmp_path / "cell.jpg"
    path.write_bytes(encode(cell_image(1, size=(61, 47), seed=3), "JPEG"))
    model = keras.models.load_model(run / "fold_01" / "model.keras", safe_mode=True)
    raw = model.predict(load_arrays([path], SIZE), verbose=0)
    client = client_of(create_app(classifier))
    body = client.post("/v1/classify", files={"file": ("cell.jpg", path.read_bytes(),
                                                        "image/jpeg")}).json()
    assert body["calibrated"] is True and body["temperature"] == 2.5
    served = [body["probabilities"][c] for c in CLASSES]
    assert served == pytest.approx(apply_temperature(raw, 2.5)[0], abs=1e-5)
    assert served != pytest.approx(raw[0], abs=1e-3)  # scaling changed them
    assert client.get("/health").json()["calibrated"] is True
