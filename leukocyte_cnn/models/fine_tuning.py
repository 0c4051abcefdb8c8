"""Fine-tuning a pretrained network: which layers learn, and at which learning rate.

A source model is fine-tuned in one of the ``RETRAIN`` modes of
:func:`leukocyte_cnn.models.resnext.set_retrain` (``head``: a linear probe of the frozen
features; ``last_stage``; ``last_two_stages``; ``all``). The pretrained layers that learn may
learn more slowly than the new head: ``factor`` (a script's ``PRETRAINED_LR_FACTOR`` for the
mode) scales their learning rate, so ``all`` at 0.1 adjusts the source features instead of
overwriting them while the head, which starts from random weights, learns at the full rate.

:func:`rate_factors` names each trainable variable's factor, :func:`layer_rate_optimizer`
applies them (any Keras optimizer: its ``update_step`` gets each variable's own rate) and
:func:`describe_layers` is what ``settings.json`` records: per part of the network (stem,
each stage, head) whether it trained, at which rate, and how many parameters it has.
"""
from __future__ import annotations

from collections.abc import Mapping

HEAD_PREFIX = "head_"  # the new head's layers (models.parts.classifier_head)


def _part(layer_name: str) -> str:
    from leukocyte_cnn.models.resnext import stage_of_layer

    if layer_name.startswith(HEAD_PREFIX):
        return "head"
    stage = stage_of_layer(layer_name)
    return "stem" if stage is None else f"stage{stage}"


def rate_factors(model, factor: float) -> dict[str, float]:
    """``{variable path: factor}`` for the trainable variables of the pretrained layers (every
    layer but the new head); the head's variables are absent (factor 1)."""
    return {variable.path: float(factor) for layer in model.layers
            if not layer.name.startswith(HEAD_PREFIX) for variable in layer.trainable_weights}


def layer_rate_optimizer(optimizer, factors: Mapping[str, float]):
    """A copy of ``optimizer`` (same class and configuration) whose update of each variable
    uses ``learning rate x factors[variable.path]`` (1 for variables not named)."""
    if not factors or all(value == 1.0 for value in factors.values()):
        return optimizer
    base = type(optimizer)
    table = dict(factors)

    def build(self, variables):
        base.build(self, variables)
        # by the optimizer's own variable index: on TensorFlow, update_step gets the backend
        # variable (no Keras path); the index maps it back to the variable built here
        self._rate_factors = [table.get(variable.path, 1.0) for variable in variables]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._rate_factors[self._get_variable_index(variable)]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        return base.update_step(self, gradient, variable, learning_rate)

    cls = type(f"LayerRate{base.__name__}", (base,), {"build": build, "update_step": update_step})
    return cls.from_config(optimizer.get_config())


def describe_layers(model, learning_rate: float, factor: float) -> dict:
    """Per part of the network (``stem``, ``stageK``, ``head``): whether it trains, its
    learning rate (``None`` when frozen) and its parameters, in network order."""
    parts: dict[str, dict] = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        part = parts.setdefault(_part(layer.name), {"trained": False, "learning_rate": None,
                                                   "parameters": 0})
        part["parameters"] += int(sum(int(w.numpy().size) for w in layer.weights))
        if layer.trainable_weights:
            part["trained"] = True
            rate = learning_rate * (1.0 if layer.name.startswith(HEAD_PREFIX) else factor)
            part["learning_rate"] = float(rate)
    return parts


def summary_line(parts: Mapping[str, Mapping]) -> str:
    """``stem, stage1 frozen; stage2-3 at 1e-4; head at 1e-3`` for the run log."""
    groups: list[tuple[str, list[str]]] = []
    for name, part in parts.items():
        what = f"at {part['learning_rate']:g}" if part["trained"] else "frozen"
        if groups and groups[-1][0] == what:
            groups[-1][1].append(name)
        else:
            groups.append((what, [name]))
    return "; ".join(f"{', '.join(names)} {what}" for what, names in groups)
