"""ResNeXt network (Xie et al., "Aggregated Residual Transformations for Deep Neural Networks",
CVPR 2017), the network of the Helmholtz thesis' ResNeXt scripts.

The network itself (``build_resnext``, the named variants ``resnext50_32x4d``, ``resnext29``
and ``resnext14``, ``set_retrain``, ``replace_head``) is in ``leukocyte_cnn.models.resnext``;
this script builds one variant and prints its parameter counts.

Run ``python resnext_network.py --summary`` to print a summary and the parameter count.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from leukocyte_cnn.base.cli import run_main
from leukocyte_cnn.models import resnext
from leukocyte_cnn.models.parts import trainable_param_count

# --- defaults of the command line summary
VARIANT = "resnext29"     # which named variant --summary builds
IMAGE_SIZE = 64           # input height = width in px
NUM_CLASSES = 7           # e.g. the seven ALL-IDB single-cell classes
BN_MOMENTUM = 0.9         # BatchNorm momentum (no parameter count depends on it)


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of the summary tool."""
    from leukocyte_cnn.base.knobs import knob_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--summary", action="store_true",
                        help="print the Keras model summary, not only the parameter counts")
    knob_argument(parser, "--variant", knob="VARIANT",
                  choices=sorted(resnext.VARIANT_ARCHITECTURES),
                  help=f"named ResNeXt variant to build (VARIANT, default {VARIANT})")
    knob_argument(parser, "--image-size", knob="IMAGE_SIZE", type=int,
                  help=f"input height and width in px (IMAGE_SIZE, default {IMAGE_SIZE})")
    knob_argument(parser, "--num-classes", knob="NUM_CLASSES", type=int,
                  help=f"classes of the softmax head (NUM_CLASSES, default {NUM_CLASSES})")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Build the chosen variant and print its summary and parameter counts."""
    from keras import layers  # after leukocyte_cnn, which hides TensorFlow's start-up lines

    from leukocyte_cnn.base.knobs import resolve_settings

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    size, classes = s["IMAGE_SIZE"], s["NUM_CLASSES"]
    model = resnext.build_variant(s["VARIANT"], size, classes, bn_momentum=s["BN_MOMENTUM"])
    if args.summary:
        model.summary(line_length=110)
    grouped = sum(1 for layer in model.layers
                  if isinstance(layer, layers.Conv2D) and layer.groups > 1)
    print(f"{model.name}: {model.count_params():,} parameters, "
          f"{trainable_param_count(model):,} trainable, {grouped} grouped convolutions, "
          f"input {size}x{size}, {classes} classes")


if __name__ == "__main__":
    run_main(lambda: main(parse_args()))
