"""Shared code of the leukocyte-cnn experiment scripts.

Small, boring modules that several top-level scripts use: dataset readers, fold logic,
augmentation, the input pipeline, networks, the cross-validation training loop, metrics,
tables and plots. Each top-level script is one experiment and reads like a methods section.
"""
