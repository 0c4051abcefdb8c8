"""Where did the model look? Grad-CAM heatmaps for a finished run: its gallery of errors, or
chosen images.

Without ``--images``: the gallery of errors of RUN (every finished fold, or ``--fold K``):
the misclassified test cells, the most confident errors first, each with its true class, the
predicted class and its probability, then a few correctly classified cells of each class for
contrast; beside each cell, the Grad-CAM heatmap (Selvaraju et al. 2017) of the predicted
class from that fold's own checkpoint, over the last convolutional block whose map still
resolves a cell (``leukocyte_cnn.reporting.gradcam``). The cells are fed exactly as the run fed
them (``fold_XX/inputs.csv``, the checkpoint's input size, the run's colour mode and masks).
Writes ``<RUN>/errors_gallery.png``, the figure ``summary.md`` and ``report.html`` show.

With ``--images``: one fold's model (``--fold K``; default the finished fold with the lowest
validation loss, as ``serve.py`` picks it, chosen on validation images, never on test
accuracy) classifies the given image files; each is drawn with its predicted class,
probability and heatmap, and one line per image is printed. Writes
``<RUN>/explained_images.png`` unless ``--out``.

Works for every network of the repository (linear CNN, ELU CNN, paper CNN, Copenhagen
CNN/FCN, ResNeXt, ResNet50, EfficientNetB3, InceptionResNetV2). Research use only.

Example::

    python explain.py results/linear_cnn_binary_synthetic_all_idb2_quick
    python explain.py results/linear_cnn_binary_synthetic_all_idb2_quick --fold 0 \\
        --images data/synthetic/all_idb2/Im001_1.tif
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# --- the gallery
MAX_ERRORS = 16         # misclassified test cells drawn at most, the most confident first
CORRECT_PER_CLASS = 2   # correctly classified cells of each class drawn for contrast

_IMAGES_NAME = "explained_images.png"  # the --images figure's file in the run folder


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.knobs import knob_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run folder (settings.json, "
                                        "fold_XX/{predictions.csv, inputs.csv, model.keras})")
    parser.add_argument("--fold", type=int, default=None,
                        help="only this fold (gallery), or the fold whose model explains "
                             "--images (default: the finished fold with the lowest "
                             "validation loss)")
    parser.add_argument("--images", nargs="+", default=None, metavar="PATH",
                        help="image files to classify and explain with the run's model "
                             "instead of drawing the gallery of errors")
    parser.add_argument("--out", default=None,
                        help="PNG to write (default <run_dir>/errors_gallery.png, or "
                             f"<run_dir>/{_IMAGES_NAME} with --images)")
    knob_argument(parser, "--max-errors", knob="MAX_ERRORS", type=int,
                  help=f"misclassified cells drawn at most (MAX_ERRORS, default {MAX_ERRORS})")
    knob_argument(parser, "--correct-per-class", knob="CORRECT_PER_CLASS", type=int,
                  help=f"correct cells drawn per class (CORRECT_PER_CLASS, default "
                       f"{CORRECT_PER_CLASS})")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    from leukocyte_cnn.base.devices import DeviceRequest, setup_devices
    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.base.run_folder import read_settings

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    run = Path(args.run_dir)
    if not run.is_dir():
        raise InputError(f"{run}: run folder not found")
    read_settings(run)  # one line when it is not a run folder
    if s["MAX_ERRORS"] < 0 or s["CORRECT_PER_CLASS"] < 0:
        raise InputError(f"--max-errors {s['MAX_ERRORS']} / --correct-per-class "
                         f"{s['CORRECT_PER_CLASS']}: counts cannot be negative")
    setup_devices(DeviceRequest())  # before any TensorFlow op (CPU convolution fixes)

    if args.images:
        from leukocyte_cnn.reporting.gallery import explain_images
        from leukocyte_cnn.service.app import choose_fold

        checkpoint = choose_fold(run, args.fold)
        out, table = explain_images(run, args.images, checkpoint,
                                    args.out or run / _IMAGES_NAME)
        print(f"{checkpoint}: Grad-CAM of the predicted class", flush=True)
        for row in table.itertuples():
            print(f"{row.image}: pred {row.pred_class} p={row.p_pred:.3f}", flush=True)
    else:
        from leukocyte_cnn.reporting.gallery import error_gallery

        folds = None if args.fold is None else [args.fold]
        out = error_gallery(run, args.out, max_errors=s["MAX_ERRORS"],
                            correct_per_class=s["CORRECT_PER_CLASS"], folds=folds)
        if out is None:
            raise InputError(f"{run}: nothing to draw (no finished fold whose checkpoint and "
                             "test images are on this machine)")
    print(f"wrote {out}", flush=True)
    return Path(out)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
