"""The sources' networks for tests: the builders with the numbers each source reports.

The package's builders take every architectural number as an argument (the scripts' knob
blocks spell them out); tests pin parameter counts against the sources, so they name the
sources' numbers here once. Keyword arguments override any of them.
"""
from __future__ import annotations

from leukocyte_cnn.models import applications, networks, resnext

THESIS_LINEAR = dict(filters=(4, 8, 8, 8, 16, 16), kernel_size=3, pool_size=2, dense_units=32)
STUDY_ELU = dict(filters=(32, 64, 128, 256, 512), convs_per_block=3, kernel_size=3, pool_size=2,
                 dense_units=512, dense_layers=2, dropout=0.0, bn_momentum=0.9,
                 head_pooling="global_average")
PAPER = dict(filters=30, kernel_size=5, padding=2, pool_size=2)
DECK = dict(filters=(64, 128, 256, 512, 1024), first_pool=(3, 4))
DECK_CNN = dict(DECK, kernel=2, dropout=0.3, dense_units=128)
DECK_FCN = dict(DECK, kernel=2, dropout=0.1, last_pool=5, conv_units=64)
DECK_UNET = dict(start_filters=16, first_dropout=0.25, dropout=0.5)
CNMC_HEAD = dict(dense_units=(512, 256, 128, 64), dropouts=(0.5, 0.3, 0.2, 0.1), l2=0.016,
                 l1=0.006, bn_momentum=0.9)


def linear_cnn(**kw):
    return networks.linear_cnn(**{"input_shape": (257, 257, 3), "num_classes": 2,
                                  **THESIS_LINEAR, **kw})


def elu_cnn(**kw):
    return networks.elu_cnn(**{"input_shape": (120, 160, 3), "num_classes": 4, **STUDY_ELU, **kw})


def paper_cnn(**kw):
    return networks.paper_cnn(**{"input_shape": (100, 100, 3), "num_classes": 2, **PAPER, **kw})


def copenhagen_cnn(**kw):
    return networks.copenhagen_cnn(**{"input_shape": (120, 160, 3), "num_classes": 4,
                                      **DECK_CNN, **kw})


def copenhagen_fcn(**kw):
    return networks.copenhagen_fcn(**{"input_shape": (120, 160, 3), "num_classes": 4,
                                      **DECK_FCN, **kw})


def unet(**kw):
    return networks.unet(**{"input_shape": (120, 160, 1), **DECK_UNET, **kw})


def cnmc_model(**kw):
    return applications.cnmc_model(**{"backbone_name": "EfficientNetB3",
                                      "input_shape": (224, 224, 3), "num_classes": 2,
                                      "weights": None, "backbone_trainable": True,
                                      "pooling": "max", **CNMC_HEAD, **kw})


def resnet50_model(**kw):
    return applications.resnet50_model(**{"input_shape": (224, 224, 3), "num_classes": 4,
                                          "weights": None, "trainable": "full",
                                          "unfreeze_from": "conv5_block1_1_conv",
                                          "pooling": "avg", "dropout": 0.0, "bn_momentum": 0.9,
                                          **kw})


def transfer_head(features, num_classes, **kw):
    return applications.transfer_head(features, num_classes, **{**CNMC_HEAD, **kw})


def _resnext(variant: str, kw: dict):
    settings = {**resnext.VARIANT_ARCHITECTURES[variant], "bn_momentum": 0.9, "name": variant}
    return resnext.build_resnext(**{**settings, **kw})


def resnext50_32x4d(**kw):
    return _resnext("resnext50_32x4d", {"input_shape": (224, 224, 3), "num_classes": 1000, **kw})


def resnext29(**kw):
    return _resnext("resnext29", {"input_shape": (64, 64, 3), "num_classes": 7, **kw})


def resnext14(**kw):
    return _resnext("resnext14", {"input_shape": (64, 64, 3), "num_classes": 7, **kw})
