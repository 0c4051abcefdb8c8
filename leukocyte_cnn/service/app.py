"""HTTP inference service: one trained checkpoint behind ``POST /v1/classify``.

``serve.py`` is the command line; this module builds the FastAPI app so tests and
benchmarks can import it. Research use only: the answers are not a medical diagnosis, and
every response says so.

What a request goes through, and why:

0. Token: with a token (``serve.py --token-file``/``$LEUKOCYTE_SERVE_TOKEN``), every request
   but ``GET /health`` needs ``Authorization: Bearer <token>``, checked before anything else
   so that an unauthenticated upload is never read (401; :mod:`leukocyte_cnn.service.auth`).
1. Body size: a pure ASGI guard refuses a ``Content-Length`` over the limit before reading
   and counts the bytes of bodies without one while they arrive (413), so a huge upload
   never fills memory or disk; the file part itself is checked against ``max_bytes`` too.
2. Content type of the file part: ``image/*`` or ``application/octet-stream`` (what
   ``curl -F file=@x`` sends for unknown suffixes); anything else is 415. A request that is
   not ``multipart/form-data`` is 415, a missing ``file`` field 422.
3. Pixels: width × height from the header (Pillow reads no pixels yet) against
   ``max_pixels`` (413), below Pillow's own decompression-bomb guard.
4. Decoding: a strict full decode with :func:`leukocyte_cnn.data.images.load_rgb` (empty,
   truncated, corrupt and non-image files are 400 with the reason), then the pixels the
   model gets come from :func:`leukocyte_cnn.inputs.pipeline.load_image`: the training pipeline's
   own decoder choice, resize and rounding (TensorFlow's and Pillow's JPEG decoders differ by
   a few grey levels, so decoding with Pillow alone would feed the model other pixels).
5. Prediction: one dedicated thread runs a ``tf.function`` of ``model(x, training=False)``
   traced once for batch 1 (measured on 2 CPU cores: ~12 ms, against ~16 ms for
   ``predict_on_batch``, ~55 ms for an eager call and ~275 ms for ``model.predict``), so
   predictions never run concurrently on one model while decoding runs in parallel.

Errors are JSON ``{"error": "<what>", "detail": "<name>: <problem>"}`` with a 4xx status;
no input can stop the service.
"""
# No ``from __future__ import annotations``: FastAPI reads the endpoint annotations at runtime.
import asyncio
import json
import logging
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import file_sha256, read_json
from leukocyte_cnn.models.checkpoints import checkpoint_class_count
from leukocyte_cnn.service.auth import BearerAuth

DISCLAIMER = "Research use only; not a medical diagnosis."
MAX_UPLOAD_BYTES = 10 * 1024 * 1024   # largest accepted file
MAX_PIXELS = 40_000_000               # largest accepted width × height (40 Mpx)
MULTIPART_SLACK = 64 * 1024           # multipart headers and boundaries on top of the file
FILE_FIELD = "file"
_FOLD_DIR = re.compile(r"^fold_\d+$")


# --------------------------------------------------------------------------- the model


@dataclass
class Classifier:
    """A loaded checkpoint with what is needed to feed it: classes, input size, resize."""

    model: Any
    class_names: list[str]
    image_size: tuple[int, int]
    model_id: str
    checkpoint: Path
    resize_method: str = "bilinear"
    keep_aspect: bool = False
    color_mode: str = "rgb"  # the run's COLOR_MODE knob: uploads are converted as in training
    temperature: float | None = None  # the fold's fitted temperature: calibrated probabilities
    _predict_fn: Any = field(default=None, repr=False)
    _executor: ThreadPoolExecutor | None = field(default=None, repr=False)

    def __post_init__(self):
        import tensorflow as tf

        height, width = self.image_size
        spec = tf.TensorSpec([1, height, width, 3], tf.float32)
        self._predict_fn = tf.function(lambda x: self.model(x, training=False),
                                       input_signature=[spec])
        # One thread owns the model: predictions are serialised without a lock.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
        # Trace once, before serving. One tf.function per loaded model is by design: TF's
        # warning about functions "created repeatedly" (several models loaded in one process,
        # as in tests) says nothing a user can act on, so it is not passed on.
        logger = logging.getLogger("tensorflow")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            self.predict(np.zeros((height, width, 3), np.float32))
        finally:
            logger.setLevel(level)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities (C,) of one float32 (H, W, 3) image in [0, 255]; temperature
        scaled when the checkpoint's fold has a fitted temperature."""
        from leukocyte_cnn.reporting.calibration import apply_temperature
        from leukocyte_cnn.reporting.metrics import probabilities_from_output

        output = self._predict_fn(np.asarray(image, np.float32)[None]).numpy()
        prob = probabilities_from_output(output)
        if self.temperature is not None:
            prob = apply_temperature(prob, self.temperature)
        prob = prob[0]
        if prob.shape[0] != len(self.class_names):
            raise RuntimeError(f"model gives {prob.shape[0]} probabilities for "
                               f"{len(self.class_names)} classes")
        return prob

    async def predict_async(self, image: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.predict, image)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


checkpoint_sha256 = file_sha256  # the served model's id names its checkpoint's bytes


def choose_fold(run_dir: str | os.PathLike, fold: int | None = None) -> Path:
    """The checkpoint to serve from a run folder.

    ``fold`` picks ``fold_XX/model.keras``. Otherwise, among finished folds (with
    ``predictions.csv`` and ``model.keras``) the one with the lowest validation loss in its
    ``epochs.csv``: chosen on validation images, never on test accuracy, so the served
    model's reported test numbers stay unbiased. Without validation losses, the first.
    """
    import pandas as pd

    from leukocyte_cnn.base.run_folder import CHECKPOINT, EPOCHS, PREDICTIONS, fold_dir

    run_dir = Path(run_dir)
    if not (run_dir / "settings.json").is_file():
        raise InputError(f"{run_dir}: not a run folder (no settings.json)")
    if fold is not None:
        path = fold_dir(run_dir, fold) / CHECKPOINT
        if not path.is_file():
            raise InputError(f"{path}: checkpoint not found (fold {fold} not trained here)")
        return path
    finished = [d for d in sorted(run_dir.glob("fold_*"))
                if (d / PREDICTIONS).is_file() and (d / CHECKPOINT).is_file()]
    if not finished:
        raise InputError(f"{run_dir}: no finished fold with a checkpoint "
                         f"(fold_XX/{PREDICTIONS} and fold_XX/{CHECKPOINT})")

    def best_val_loss(folder: Path) -> float:
        try:
            log = pd.read_csv(folder / EPOCHS)
            return float(log["val_loss"].min()) if "val_loss" in log else float("inf")
        except (OSError, ValueError, pd.errors.ParserError):
            return float("inf")

    losses = [best_val_loss(d) for d in finished]
    return finished[int(np.argmin(losses))] / CHECKPOINT  # argmin: first on ties / all inf


def model_id_for(checkpoint: Path, sha256: str) -> str:
    """``<run>/<fold>@<sha12>`` for run-folder checkpoints, ``<file stem>@<sha12>`` otherwise."""
    checkpoint = Path(checkpoint).resolve()
    if _FOLD_DIR.match(checkpoint.parent.name):
        return f"{checkpoint.parent.parent.name}/{checkpoint.parent.name}@{sha256[:12]}"
    return f"{checkpoint.stem}@{sha256[:12]}"


def _image_size(config: dict, model, settings_path: Path) -> tuple[int, int]:
    """(height, width) from ``config.image_size`` (int or [h, w]), checked against the model."""
    shape = tuple(model.inputs[0].shape[1:3]) if getattr(model, "inputs", None) else (None, None)
    raw = config.get("image_size")
    if raw is None:
        if None in shape:
            raise InputError(f"{settings_path}: no config.image_size and the model takes any "
                             "size; add image_size to the settings")
        return int(shape[0]), int(shape[1])
    try:
        size = (int(raw), int(raw)) if np.ndim(raw) == 0 else tuple(int(v) for v in raw)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"{settings_path}: config.image_size {raw!r} is not a side or "
                         "[height, width]")
    if None not in shape and tuple(shape) != size:
        raise InputError(f"{settings_path}: config.image_size {list(size)} differs from the "
                         f"checkpoint's input {list(shape)}")
    return size


def load_classifier(checkpoint: str | os.PathLike, settings: str | os.PathLike) -> Classifier:
    """Load a ``.keras`` checkpoint (safe mode, no compile state) and its run settings, and
    the temperature fitted on its fold's validation images (``temperature.json`` beside it)
    when there is one."""
    import keras

    from leukocyte_cnn.inputs.pipeline import COLOR_MODES

    checkpoint, settings = Path(checkpoint), Path(settings)
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: checkpoint not found")
    document = read_json(settings)
    config = document.get("config", document) if isinstance(document, dict) else {}
    names = config.get("class_names")
    if not isinstance(names, list) or len(names) < 2:
        raise InputError(f"{settings}: no config.class_names list of two or more classes")
    try:
        model = keras.models.load_model(checkpoint, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file; one line for the user
        raise InputError(f"{checkpoint}: cannot load Keras model "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    found = checkpoint_class_count(model)
    if found != len(names):  # else a traceback at the first (warm-up) prediction
        raise InputError(f"{checkpoint}: checkpoint predicts {found} classes, but {settings} "
                         f"names {len(names)} ({', '.join(map(str, names))})")
    size = _image_size(config, model, settings)
    color_mode = (config.get("knobs") or {}).get("COLOR_MODE", "rgb")
    if color_mode not in COLOR_MODES:
        raise InputError(f"{settings}: knob COLOR_MODE {color_mode!r} is not one of "
                         f"{', '.join(COLOR_MODES)}")
    from leukocyte_cnn.reporting.calibration import read_temperature

    return Classifier(model=model, class_names=[str(n) for n in names], image_size=size,
                      model_id=model_id_for(checkpoint, checkpoint_sha256(checkpoint)),
                      checkpoint=checkpoint,
                      resize_method=str(config.get("resize_method", "bilinear")),
                      keep_aspect=bool(config.get("keep_aspect", False)),
                      color_mode=color_mode,
                      temperature=read_temperature(checkpoint.parent))


def resolve_model(run: str | None = None, fold: int | None = None,
                  checkpoint: str | None = None, settings: str | None = None) -> Classifier:
    """``run`` (+ optional ``fold``) or ``checkpoint`` + ``settings`` → :class:`Classifier`."""
    if run is not None:
        if checkpoint is not None or settings is not None:
            raise InputError("--run: give either --run or --checkpoint with --settings, not both")
        path = choose_fold(run, fold)
        return load_classifier(path, Path(run) / "settings.json")
    if checkpoint is None or settings is None:
        raise InputError("no model given: pass --run results/<run>, or --checkpoint PATH "
                         "--settings PATH")
    return load_classifier(checkpoint, settings)


# --------------------------------------------------------------------------- errors and limits


class RequestProblem(Exception):
    """A bad request: HTTP status, a short ``error`` and a one-line ``detail``."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def error_body(error: str, detail: str) -> dict:
    return {"error": error, "detail": detail}


class BodyLimit:
    """ASGI middleware: 413 for request bodies over ``limit`` bytes, counted while reading."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send, f"{int(declared):,} bytes")
        received = 0
        started = responded = False

        async def counting_receive():
            # FastAPI turns exceptions raised while it parses the body into a 400, so the
            # 413 is sent from here and the app is told the client left.
            nonlocal received, responded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if not started and not responded:
                        responded = True
                        await self._refuse(send, f"more than {self.limit:,} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if responded:
                return  # the 413 went out already; drop the app's own answer
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not responded:
                raise

    async def _refuse(self, send, size: str):
        body = json.dumps(error_body(
            "request too large", f"request body: {size}; the limit is {self.limit:,} bytes "
                                 "(image file plus multipart overhead)")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _display_name(filename: str | None) -> str:
    """The client's file name, safe to echo: no folders, no control characters, short."""
    name = Path(str(filename or "")).name
    name = re.sub(r"[^\w.\- ()+]", "_", name)[:80]
    return name or "upload"


def _accepted_type(content_type: str | None) -> bool:
    if not content_type:
        return True  # no type given: the bytes decide
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind.startswith("image/") or kind == "application/octet-stream"


def decode_upload(data: bytes, name: str, classifier: Classifier,
                  max_pixels: int) -> np.ndarray:
    """Check and decode uploaded bytes exactly as training decodes files; raise RequestProblem."""
    from leukocyte_cnn.data.images import image_mode_info, load_rgb
    from leukocyte_cnn.inputs.pipeline import load_image

    if not data:
        raise RequestProblem(400, "empty file", f"{name}: empty file (0 bytes)")
    with tempfile.NamedTemporaryFile(prefix="upload-", suffix=".img") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            width, height, _mode = image_mode_info(tmp.name)
            if width * height > max_pixels:
                raise RequestProblem(413, "image too large",
                                     f"{name}: {width}×{height} = {width * height:,} pixels; "
                                     f"the limit is {max_pixels:,}")
            load_rgb(tmp.name)  # strict full decode: truncated or corrupt files stop here
            return load_image(tmp.name, classifier.image_size,
                              resize_method=classifier.resize_method,
                              keep_aspect=classifier.keep_aspect,
                              color_mode=classifier.color_mode)
        except InputError as exc:
            text = str(exc).replace(tmp.name, name)
            problem = text.split(": ", 1)[1] if ": " in text else text
            error = ("not an image" if "not an image" in problem else
                     "image too large" if "too large" in problem else "unreadable image")
            raise RequestProblem(413 if error == "image too large" else 400, error,
                                 f"{name}: {problem}") from None
        except RequestProblem:
            raise
        except Exception as exc:  # a decoder failing in a way images.py does not name
            raise RequestProblem(400, "unreadable image",
                                 f"{name}: cannot decode ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- the app


def create_app(classifier: Classifier, *, max_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS, token: str | None = None):
    """The FastAPI app: ``POST /v1/classify``, ``GET /health``, OpenAPI at ``/docs``.

    ``token``: every request but ``GET /health`` must carry ``Authorization: Bearer <token>``
    (401 otherwise); ``None`` serves without authentication (``serve.py`` allows that on
    loopback only, or with ``--no-auth``).
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, File, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @asynccontextmanager
    async def lifespan(app):
        yield
        classifier.close()

    app = FastAPI(title="leukocyte-cnn classifier",
                  description=f"Classifies one microscope image per request. {DISCLAIMER}",
                  version="1", lifespan=lifespan)
    app.state.classifier = classifier

    @app.exception_handler(RequestProblem)
    async def problem_handler(request: Request, exc: RequestProblem):
        return JSONResponse(error_body(exc.error, exc.detail), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_handler(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type", "")
        if request.url.path == "/v1/classify" and not content_type.lower().startswith(
                "multipart/form-data"):
            return JSONResponse(error_body(
                "unsupported media type",
                f"request body: content type {content_type or 'none'}; send "
                f"multipart/form-data with the image in field '{FILE_FIELD}'"), status_code=415)
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body"
                           for e in exc.errors())
        return JSONResponse(error_body("invalid request",
                                       f"missing or invalid field(s): {fields}"),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_handler(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(_reason(exc.status_code), str(exc.detail)),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected_handler(request: Request, exc: Exception):  # pragma: no cover
        return JSONResponse(error_body("internal error", type(exc).__name__), status_code=500)

    # Whether the probabilities are temperature-scaled (fitted on the fold's validation images).
    calibration = {"calibrated": classifier.temperature is not None,
                   "temperature": classifier.temperature}

    @app.get("/health")
    async def health() -> dict:
        """Liveness, the model being served, whether requests need a token; always open."""
        return {"status": "ok", "auth": "bearer" if token else "none",
                "model_id": classifier.model_id, **calibration,
                "class_names": classifier.class_names,
                "image_size": list(classifier.image_size), "disclaimer": DISCLAIMER}

    upload = File(..., description="the image (JPEG, PNG, TIFF, BMP, …)")

    @app.post("/v1/classify")
    async def classify(file: UploadFile = upload) -> dict:
        """Class and class probabilities of one image. Research use only."""
        name = _display_name(file.filename)
        if not _accepted_type(file.content_type):
            raise RequestProblem(415, "unsupported media type",
                                 f"{name}: content type {file.content_type}; send image/* "
                                 "or application/octet-stream")
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise RequestProblem(413, "image too large",
                                 f"{name}: more than {max_bytes:,} bytes; the limit is "
                                 f"{max_bytes:,}")
        image = await run_in_threadpool(decode_upload, data, name, classifier, max_pixels)
        prob = await classifier.predict_async(image)
        best = int(np.argmax(prob))
        return {"class": classifier.class_names[best],
                "probabilities": {c: float(p) for c, p in
                                  zip(classifier.class_names, prob, strict=True)},
                **calibration, "model_id": classifier.model_id, "disclaimer": DISCLAIMER}

    # Refuses oversized bodies before FastAPI parses them; outside it, the token check, so that
    # a request without the token is refused before any of its body is read.
    guarded = BodyLimit(app, max_bytes + MULTIPART_SLACK) if max_bytes else app
    return BearerAuth(guarded, token) if token else guarded


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"
