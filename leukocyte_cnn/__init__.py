"""Shared code of the leukocyte-cnn experiment scripts.

Small, boring modules that several top-level scripts use: dataset readers, fold logic,
augmentation, the input pipeline, networks, the cross-validation training loop, metrics,
tables and plots. Each top-level script is one experiment and reads like a methods section.
"""

import os as _os

from leukocyte_cnn.base.progress import quiet_tensorflow_import as _quiet_tensorflow_import

# TensorFlow enables its oneDNN CPU kernels by default on some x86 CPUs (Intel) and not on
# others (AMD EPYC here). Without them it has no gradient for grouped convolutions, so ResNeXt
# falls back to XLA's ~150x slower path (grouped_conv.py) and results depend on the CPU vendor.
# Switched on for every CPU unless the user chose otherwise; it must precede TF's import.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# TensorFlow's C++ and absl lines (CUDA stub notices, a "failed call to cuInit" error on
# machines without a GPU, oneDNN notices) drown the lines researchers read. They are hidden
# before TensorFlow is first imported; --verbose or TF_CPP_MIN_LOG_LEVEL=0 shows them again.
_quiet_tensorflow_import()
