"""Serve a trained checkpoint over HTTP: POST an image, get its class and class probabilities.

The HTTP endpoint of the ALL-IDB1 detector (Peter Moss "Acute Lymphoblastic Leukemia
Tensorflow CNN 2020" hosted its model behind a REST API), for any run folder of this
repository: ``--run results/<run>`` serves ``fold_XX/model.keras`` (``--fold``, default the
finished fold with the lowest validation loss) with the class names and input size of the
run's ``settings.json``; ``--checkpoint`` and ``--settings`` serve any other pair. What we
fixed: the image is decoded and resized by the training pipeline's own code (no second
preprocessing), checkpoints load in Keras safe mode, bad uploads get a 4xx JSON answer
instead of stopping the service, and it listens on 127.0.0.1 unless told otherwise.

    python serve.py --run results/all_idb1_paper_cnn_all_idb2 --port 8000
    curl -F file=@cell.jpg http://127.0.0.1:8000/v1/classify

Any address but loopback needs a bearer token (``--token-file PATH``, mode 600, or
``$LEUKOCYTE_SERVE_TOKEN``), which every request but ``GET /health`` then carries; without
one the service refuses to start unless ``--no-auth`` says so (logged as a warning):

    (umask 077; python -c "import secrets; print(secrets.token_urlsafe(32))" > token)
    python serve.py --run results/<run> --host 0.0.0.0 --token-file token
    curl -H "Authorization: Bearer $(cat token)" -F file=@cell.jpg http://HOST:8000/v1/classify

Research use only; the answers are not a medical diagnosis. API documentation: /docs.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

HOST = "127.0.0.1"        # loopback only; another (0.0.0.0: the network) needs --token-file
PORT = 8000               # default TCP port
MAX_UPLOAD_MB = 10.0        # largest accepted image file, in MiB (413 above)
MAX_MEGAPIXELS = 40.0       # largest accepted width x height, in millions of pixels (413 above)


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.knobs import knob_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None,
                        help="run folder (results/<run>) whose checkpoint and settings.json to "
                             "serve")
    parser.add_argument("--fold", type=int, default=None,
                        help="fold of --run to serve (default: the finished fold with the lowest "
                             "validation loss)")
    parser.add_argument("--checkpoint", default=None,
                        help="a .keras checkpoint to serve instead of --run (needs --settings)")
    parser.add_argument("--settings", default=None,
                        help="settings.json giving config.class_names and config.image_size "
                             "for --checkpoint")
    knob_argument(parser, "--host", knob="HOST",
                  help=f"address to listen on (HOST, default {HOST}: this machine only)")
    knob_argument(parser, "--port", knob="PORT", type=int, help=f"TCP port (PORT, default {PORT})")
    knob_argument(parser, "--max-upload-mb", knob="MAX_UPLOAD_MB", type=float,
                  help=f"largest accepted file in MiB (MAX_UPLOAD_MB, default {MAX_UPLOAD_MB})")
    knob_argument(parser, "--max-megapixels", knob="MAX_MEGAPIXELS", type=float,
                  help=f"largest accepted image in megapixels (MAX_MEGAPIXELS, default "
                       f"{MAX_MEGAPIXELS})")
    parser.add_argument("--token-file", default=None,
                        help="file holding the bearer token every request but /health must "
                             "carry (mode 600; or set $LEUKOCYTE_SERVE_TOKEN); needed for a "
                             "--host other than loopback")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve a non-loopback --host without a token (logs a warning): "
                             "anyone who reaches the address can use the service")
    parser.add_argument("--no-access-log", action="store_true",
                        help="do not log one line per request")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import uvicorn

    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.service.app import DISCLAIMER, create_app, resolve_model
    from leukocyte_cnn.service.auth import is_loopback, service_token

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    host, port = s["HOST"], s["PORT"]
    max_upload_mb, max_megapixels = s["MAX_UPLOAD_MB"], s["MAX_MEGAPIXELS"]

    if not 0 < port < 65536:
        raise InputError(f"--port {port}: not a TCP port (1-65535)")
    if max_upload_mb <= 0 or max_megapixels <= 0:
        raise InputError("--max-upload-mb/--max-megapixels: must be positive")
    # Before the model loads and long before a socket opens: no token, no public address.
    token, token_source = service_token(host, args.token_file, args.no_auth, os.environ)
    if token is None and not is_loopback(host):
        logging.getLogger("serve").warning(
            f"warning: --no-auth: serving http://{host}:{port} without authentication; anyone "
            "who can reach this address can use the service")
    classifier = resolve_model(args.run, args.fold, args.checkpoint, args.settings)
    app = create_app(classifier, max_bytes=int(max_upload_mb * 1024 * 1024),
                     max_pixels=int(max_megapixels * 1_000_000), token=token)
    auth = f"bearer token from {token_source}" if token else "none"
    print(f"serving {classifier.model_id} ({', '.join(classifier.class_names)}; input "
          f"{classifier.image_size[0]}x{classifier.image_size[1]}) on "
          f"http://{host}:{port}  auth: {auth}  docs: /docs  | {DISCLAIMER}", flush=True)
    uvicorn.run(app, host=host, port=port, access_log=not args.no_access_log,
                log_level="info")


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
