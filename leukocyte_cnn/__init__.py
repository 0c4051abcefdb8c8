"""Shared code of the leukocyte-cnn experiment scripts.

Small, boring modules that several top-level scripts use: dataset readers, fold logic,
augmentation, the input pipeline, networks, the cross-validation training loop, metrics,
tables and plots. Each top-level script is one experiment and reads like a methods section.
"""

import os as _os

# TensorFlow's C++ INFO/WARNING lines (oneDNN notices, graph attribute chatter) drown the one
# line per fold that researchers read; set TF_CPP_MIN_LOG_LEVEL=0 to see them again.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
