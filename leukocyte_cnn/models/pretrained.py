"""ImageNet weights for ``keras.applications`` backbones: a local file, or one clear line.

Transfer-learning scripts want ImageNet weights, but a compute node may have no network and a
test must never download 40-200 MB. :func:`resolve_imagenet_weights` therefore turns the
``--weights`` option into what a backbone constructor takes, and decides *before training* what
happens when no weights can be had:

- ``--weights PATH``: that file (``.h5``, ``.weights.h5`` or ``.keras``), checked to exist.
- ``--weights imagenet`` (the default): Keras' cached copy of the application's "notop" file,
  fetched once with ``keras.utils.get_file`` (the same file name, URL and MD5 that
  ``keras.applications`` uses) when it is not cached yet.
- Nothing available: ``InputError`` with one line that says where to put the file, unless
  ``allow_random_init`` is set; then ``None`` (random weights), and the caller says so in its
  titles.

The result is always a file path or ``None``, never the string ``"imagenet"``: EfficientNet
derives its weight file name from the model's ``name``, so a backbone named ``backbone`` (as
``networks.backbone_features`` names it) would look for ``backbone_notop.h5`` and fail.
"""
from __future__ import annotations

import os
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path

from leukocyte_cnn.base.errors import InputError

_KERAS_APPS = "https://storage.googleapis.com/keras-applications/"
_TF_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"

# application -> (file name in Keras' cache, download URL, MD5): copied from keras.applications
# (Keras 3.15) for include_top=False.
IMAGENET_NOTOP = {
    "EfficientNetB3": ("efficientnetb3_notop.h5", _KERAS_APPS + "efficientnetb3_notop.h5",
                       "af6d107764bb5b1abb91932881670226"),
    "InceptionResNetV2": (
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        _TF_APPS + "inception_resnet_v2/"
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4"),
    "ResNet50": ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 _TF_APPS + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 "4d473c1dd8becc155b73f8504c6f6626"),
}
WEIGHT_SUFFIXES = (".h5", ".keras")  # what Model.load_weights reads (".weights.h5" ends in .h5)
DOWNLOAD_TIMEOUT_S = 30  # a node whose firewall drops packets fails fast instead of hanging


def resolve_imagenet_weights(app_name: str, weights_arg: str | os.PathLike | None = "imagenet",
                             allow_random_init: bool = False) -> str | None:
    """A weights file for ``keras.applications.<app_name>`` (include_top=False), or ``None``.

    ``weights_arg``: ``"imagenet"`` (or ``None``) fetches/uses Keras' cached ImageNet file; any
    other value is a path to a weights file. Raises :class:`InputError` (one line) for a
    missing or unsuitable path, and when ImageNet weights cannot be had and
    ``allow_random_init`` is false. With ``allow_random_init`` a failed fetch returns ``None``
    after one warning line.
    """
    if app_name not in IMAGENET_NOTOP:
        raise ValueError(f"no ImageNet weights known for {app_name!r}; "
                         f"choose from {sorted(IMAGENET_NOTOP)}")
    if weights_arg is not None and str(weights_arg).lower() != "imagenet":
        return str(check_weights_file(weights_arg))
    file_name, url, md5 = IMAGENET_NOTOP[app_name]
    try:
        return str(fetch_weights(file_name, url, md5))
    except Exception as exc:  # no network, HTTP error, bad hash: all mean "not available"
        reason = _short_reason(exc)
    if allow_random_init:
        warnings.warn(f"{file_name}: ImageNet weights for {app_name} not available ({reason}); "
                      "training from random weights (--allow-random-init)", stacklevel=2)
        return None
    raise InputError(f"{file_name}: ImageNet weights for {app_name} not available ({reason}); "
                     f"download {url} and pass --weights PATH, or pass --allow-random-init to "
                     "train from random weights")


def _short_reason(exc: BaseException) -> str:
    """The useful tail of a fetch error (Keras repeats the URL: "URL fetch failure on ... --
    [Errno -2] Name or service not known")."""
    text = " ".join(str(exc).split())
    return (text.rsplit(" -- ", 1)[-1] or text)[:160] or type(exc).__name__


def check_weights_file(path: str | os.PathLike) -> Path:
    """``path`` as a readable weights file Keras can load, else a one-line ``InputError``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: weights file not found (--weights takes 'imagenet' or the "
                         "path of a .h5/.weights.h5/.keras file)")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise InputError(f"{path}: not a Keras weights file (expected .h5, .weights.h5 or "
                         ".keras)")
    return path.resolve()


def fetch_weights(file_name: str, url: str, md5: str) -> Path:
    """Keras' cached copy of ``file_name`` (MD5-checked), downloading it when absent."""
    import keras

    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        return Path(keras.utils.get_file(file_name, url, cache_subdir="models", file_hash=md5))


@contextmanager
def _socket_timeout(seconds: float):
    """``urlretrieve`` has no timeout argument; bound it through the socket default."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextmanager
def weights_load_errors(weights: str | None, app_name: str):
    """Turn a weights file that does not fit ``app_name`` into a one-line ``InputError``."""
    try:
        yield
    except (ValueError, OSError, KeyError) as exc:
        if weights is None:
            raise
        first = " ".join(str(exc).split())[:200]
        raise InputError(f"{weights}: cannot load as {app_name} weights (include_top=False): "
                         f"{first}") from None


def weights_description(weights: str | None) -> str:
    """What a run's title and settings say about its starting weights."""
    if weights is None:
        return "random init"
    if Path(weights).name in {entry[0] for entry in IMAGENET_NOTOP.values()}:
        return "ImageNet weights"
    return f"weights from {Path(weights).name}"
