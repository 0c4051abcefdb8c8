"""Shared code of the leukocyte-cnn experiment scripts.

Small, boring modules that several top-level scripts use: dataset readers, fold logic,
augmentation, the input pipeline, networks, the cross-validation training loop, metrics,
tables and plots. Each top-level script is one experiment and reads like a methods section.
"""

from .progress import quiet_tensorflow_import as _quiet_tensorflow_import

# TensorFlow's C++ and absl lines (CUDA stub notices, a "failed call to cuInit" error on
# machines without a GPU, oneDNN notices) drown the lines researchers read. They are hidden
# before TensorFlow is first imported; --verbose or TF_CPP_MIN_LOG_LEVEL=0 shows them again.
_quiet_tensorflow_import()
