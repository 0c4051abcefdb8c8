"""Checkpoints of a source task for transfer learning: writing them, and the checks before
fine-tuning.

A source model (``resnext_transfer_learning.py --pretrain``) is saved as ``<name>.keras`` with
two files beside it, written after the model and the sidecar last (a checkpoint with its
sidecar is complete):

- ``<name>.images.csv``: the SHA-256 of every image file the source model trained or validated
  on, so that fine-tuning can refuse a target split whose images the source weights have
  already seen (pretraining on the target data would leak its test images into every fold);
- ``<name>.json``: class names, input shape, preprocessing, architecture, source dataset and
  its hash, seed, validation accuracy.

:func:`check_source_checkpoint` loads a checkpoint in Keras' safe mode and refuses it, with one
line and before any training, when the file is missing or not a Keras model, when it has no
``head_dense`` layer or no ResNeXt stages, when its input shape is not the target image size,
or when its preprocessing differs from the target pipeline's (this repository feeds float32
pixels in [0, 255] and every model scales them in its own first layer).
:func:`check_source_disjoint` refuses a source model that has seen an image of the target split.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import file_sha256, read_json, save_model, write_csv, write_json

# The only preprocessing this repository's pipelines produce: float32 pixels in [0, 255] go
# in, and the model scales them itself (a Rescaling layer right after its input).
PRETRAIN_CODE_VERSION = 4  # in a source checkpoint's fingerprint; bump when pretraining changes
PREPROCESSING = "rescaling_in_model"
INPUT_PIXELS = "[0, 255]"


# --------------------------------------------------------------------------- files of a checkpoint


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """``<name>.json`` beside ``<name>.keras``."""
    return Path(checkpoint).with_suffix(".json")


def images_path(checkpoint: str | os.PathLike) -> Path:
    """``<name>.images.csv`` beside ``<name>.keras``: digests of the source images."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.images.csv")


def file_digests(paths: Sequence[str | os.PathLike], workers: int = 4) -> list[str]:
    """SHA-256 of each file's bytes, in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(file_sha256, paths))


def input_scaling(model) -> dict | None:
    """``{"scale", "offset"}`` of the Rescaling layer right after the model's input, or None."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers or not isinstance(layers[0], keras.layers.Rescaling):
        return None
    first = layers[0]
    return {"scale": float(np.ravel(first.scale)[0]), "offset": float(np.ravel(first.offset)[0])}


def save_source_checkpoint(model, path: str | os.PathLike, *, metadata: dict,
                           images: pd.DataFrame) -> Path:
    """Write ``<name>.keras``, ``<name>.images.csv`` and ``<name>.json`` (last), atomically.

    ``images`` has ``image`` (the source key), ``role`` and ``path`` of every image the
    model trained or validated on; only keys, roles and digests are written.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise InputError(f"{path}: a checkpoint name must end in .keras")
    save_model(model, path)
    listing = pd.DataFrame({"image": images["image"].astype(str).to_numpy(),
                            "role": images["role"].astype(str).to_numpy(),
                            "sha256": file_digests(images["path"].tolist())})
    write_csv(images_path(path), listing)
    sidecar = {**metadata,
               "input_shape": [int(v) for v in model.input_shape[1:]],
               "preprocessing": PREPROCESSING, "input_pixels": INPUT_PIXELS,
               "input_scaling": input_scaling(model),
               "images_file": images_path(path).name,
               "checkpoint_sha256": file_sha256(path)}
    write_json(sidecar_path(path), sidecar)  # last: the checkpoint is complete
    return path


# --------------------------------------------------------------------------- checking a checkpoint


@dataclasses.dataclass
class SourceCheckpoint:
    """A checked source checkpoint: its path, sidecar (``{}`` without one) and file digest."""

    path: Path
    metadata: dict
    sha256: str
    input_shape: tuple[int, ...]

    def load_for(self, num_classes: int, retrain: str):
        """A fresh copy of the source weights with a new ``num_classes`` head, ``retrain`` set.

        Loaded from the file every time, so each fold starts from the source weights and
        never from another fold's fine-tuned ones.
        """
        import keras

        from leukocyte_cnn.models.resnext import replace_head, set_retrain

        model = keras.models.load_model(self.path, compile=False, safe_mode=True)
        model = replace_head(model, num_classes)
        set_retrain(model, retrain)
        return model


def check_source_checkpoint(path: str | os.PathLike | None,
                            image_size: tuple[int, int]) -> SourceCheckpoint:
    """Load ``path`` in safe mode and check it can be fine-tuned on ``image_size`` images.

    One-line ``InputError`` for: no path given, missing file, not a Keras model, no
    ``head_dense`` layer, no ``stageK_*`` layers, an input shape other than
    ``(*image_size, 3)``, and preprocessing other than [0, 255] pixels scaled inside the
    model (declared in the sidecar or seen in the model).
    """
    from leukocyte_cnn.models.checkpoints import load_checkpoint
    from leukocyte_cnn.models.resnext import stage_of_layer

    if path is None:
        raise InputError("--source-checkpoint: required for fine-tuning and the learning "
                         "curve (make one with --pretrain)")
    path = Path(path)
    model = load_checkpoint(path)  # missing, not a .keras archive, unsafe or unreadable
    names = [layer.name for layer in model.layers]
    if "head_dense" not in names:
        raise InputError(f"{path}: no 'head_dense' layer to replace (a feature extractor or "
                         "a model not built by resnext_network.py); pretrain with --pretrain")
    if not any(stage_of_layer(name) for name in names):
        raise InputError(f"{path}: no stageK_* layers, so RETRAIN cannot choose what to "
                         "fine-tune; use a ResNeXt built by resnext_network.py")
    have = tuple(int(v) for v in model.input_shape[1:])
    want = (int(image_size[0]), int(image_size[1]), 3)
    if have != want:
        hint = (f"pass --image-size {have[0]}" if have[0] == have[1] and have[2] == 3
                else "pretrain a source model at the target size")
        raise InputError(f"{path}: checkpoint takes {'x'.join(map(str, have))} images but this "
                         f"run feeds {'x'.join(map(str, want))}; {hint}")
    metadata = _read_sidecar(path)
    declared = metadata.get("preprocessing", PREPROCESSING)
    if declared != PREPROCESSING or metadata.get("input_pixels", INPUT_PIXELS) != INPUT_PIXELS:
        raise InputError(
            f"{sidecar_path(path)}: source preprocessing is {declared!r} (input pixels "
            f"{metadata.get('input_pixels', '?')}), but this pipeline feeds {INPUT_PIXELS} "
            f"pixels that the model scales itself ({PREPROCESSING!r}); the fine-tuned model "
            "would see pixels scaled unlike those it learnt from - pretrain with --pretrain")
    scaling = input_scaling(model)
    if scaling is None:
        raise InputError(f"{path}: model has no Rescaling input layer, so it expects "
                         f"pre-scaled pixels while this pipeline feeds {INPUT_PIXELS}; "
                         "rebuild it with the repository's builders (scaling inside the model)")
    recorded = metadata.get("input_scaling")
    if recorded is not None and not np.allclose([recorded["scale"], recorded["offset"]],
                                                [scaling["scale"], scaling["offset"]]):
        raise InputError(f"{sidecar_path(path)}: records input scaling {recorded} but the "
                         f"checkpoint scales by {scaling}; the sidecar belongs to another model")
    return SourceCheckpoint(path=path, metadata=metadata, sha256=file_sha256(path),
                            input_shape=have)


def _read_sidecar(path: Path) -> dict:
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        print(f"note: {sidecar} not found; source classes and data unknown, preprocessing "
              "taken from the model", flush=True)
        return {}
    metadata = read_json(sidecar)
    if not isinstance(metadata, dict):
        raise InputError(f"{sidecar}: expected a JSON object")
    return metadata


def check_source_disjoint(source: SourceCheckpoint, target_hash: str | None,
                          target: pd.DataFrame) -> int:
    """Refuse a source model that has seen any image of the target split; return images checked.

    Compares the recorded source dataset hash with the target's and the SHA-256 of every
    target file (``target['path']``) with the source listing. Without a listing (a
    checkpoint made elsewhere) only the dataset hash is compared, and a note says so.
    """
    where = sidecar_path(source.path)
    source_hash = source.metadata.get("source_dataset_hash")
    if source_hash and target_hash and source_hash == target_hash:
        raise InputError(f"{where}: the source model was trained on the target dataset itself "
                         "(same dataset hash); its weights have seen this split's test images "
                         "- pretrain on another dataset")
    listing_path = images_path(source.path)
    if not listing_path.exists():
        print(f"note: {listing_path} not found; cannot check that the source model never saw "
              "the target images", flush=True)
        return 0
    listing = pd.read_csv(listing_path, dtype=str, keep_default_na=False)
    if "sha256" not in listing.columns:
        raise InputError(f"{listing_path}: no sha256 column")
    seen = set(listing["sha256"])
    target = target.drop_duplicates("path")
    digests = file_digests(target["path"].tolist())
    shared = [image for image, digest in zip(target["image"], digests, strict=True)
              if digest in seen]
    if shared:
        raise InputError(f"{listing_path}: the source model trained on {len(shared)} image(s) "
                         f"of the target split (e.g. {shared[0]}); its weights have seen test "
                         "images - pretrain on data disjoint from the target")
    return len(target)


def describe(metadata: dict) -> str:
    """One line about a source checkpoint, for the run log."""
    if not metadata:
        return "source checkpoint without sidecar"
    accuracy = (f"held-out accuracy {metadata['held_out_accuracy']:.3f}"
                if "held_out_accuracy" in metadata else
                f"val accuracy {metadata.get('val_accuracy', float('nan')):.3f}")
    return (f"source {metadata.get('source_dataset')} ({len(metadata.get('class_names', []))} "
            f"classes, {accuracy}, "
            f"{json.dumps(metadata.get('architecture', {}), sort_keys=True)})")
