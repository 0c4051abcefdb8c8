"""Device set-up for training scripts: devices, precision, XLA, determinism, replicas.

Every training script calls :func:`setup_devices` first in ``main()``, before any TensorFlow
op: choosing GPUs (``--gpus``), GPU memory growth and splitting the CPU into logical devices
(``--cpu-replicas``) are only possible before TensorFlow initialises its runtime. The switches
(``--mixed-precision``, ``--xla``, ``--deterministic/--no-deterministic``) each do what they
say or stop the script with one line, and :func:`device_settings` gives the truth for
``settings.json``:

* ``--mixed-precision``: Keras policy ``mixed_float16`` on a GPU (float16 compute, float32
  weights, loss scaling by Keras' ``LossScaleOptimizer``, float32 output layers). Ignored with
  a warning on CPU-only machines, and recorded as ignored (policy ``float32``).
* ``--xla``: ``model.compile(jit_compile=True)``, checked after every compile
  (:func:`require_xla`): the training step is one XLA program or the script stops.
* Determinism: on unless ``--xla`` (``--deterministic``/``--no-deterministic`` decide
  explicitly). Without XLA it is TensorFlow's op determinism; Keras refuses XLA under op
  determinism (``model_supports_jit``), so with ``--xla --deterministic`` on a GPU it is XLA's
  own deterministic mode (``XLA_FLAGS=--xla_gpu_deterministic_ops=true``, what TensorFlow
  itself sets for XLA under op determinism); on a CPU that combination is refused.
* Replicas: several visible GPUs (all, or those of ``--gpus 0,1``) train one model under a
  ``MirroredStrategy``; models, optimizers, losses and metrics are created in
  :func:`model_scope`. ``BATCH_SIZE`` stays the global batch: each step takes ``BATCH_SIZE``
  images, split evenly over the replicas, so a study's optimisation does not change with the
  number of GPUs. ``--cpu-replicas N`` does the same over N logical CPU devices, so that the
  multi-device path is tested on machines without a GPU (no speed-up).

On a CPU-only machine :func:`configure_devices` also switches on the convolution fixes of
:mod:`leukocyte_cnn.base.grouped_conv`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import warnings
from collections.abc import Sequence
from typing import Any

from leukocyte_cnn.base.errors import InputError

BATCH_MEANING = "global: each step takes BATCH_SIZE images, split evenly over the replicas"
XLA_GPU_DETERMINISTIC = "--xla_gpu_deterministic_ops=true"


@dataclasses.dataclass(frozen=True)
class DeviceRequest:
    """The device switches a run asks for (the options of :func:`add_gpu_arguments`)."""

    mixed_precision: bool = False
    xla: bool = False
    deterministic: bool | None = None  # None: on unless xla
    gpus: str | None = None
    cpu_replicas: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DeviceRequest:
        """The request of a script's parsed options (defaults where it has no such option)."""
        return cls(mixed_precision=bool(getattr(args, "mixed_precision", False)),
                   xla=bool(getattr(args, "xla", False)),
                   deterministic=getattr(args, "deterministic", None),
                   gpus=getattr(args, "gpus", None),
                   cpu_replicas=int(getattr(args, "cpu_replicas", 0) or 0))

    def as_tuple(self) -> tuple:
        return (self.mixed_precision, self.xla, self.deterministic, self.gpus, self.cpu_replicas)


@dataclasses.dataclass
class DeviceSetup:
    """What :func:`configure_devices` set up (one per process; see :func:`current_setup`)."""

    request: tuple
    strategy: Any
    devices: list[str]
    mixed_precision_requested: bool
    policy: str
    xla: bool
    deterministic: bool
    deterministic_chosen: str  # "default", "--deterministic" or "--no-deterministic"
    determinism: str           # how, in words
    memory_growth: bool | None  # None: no GPU

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def settings(self) -> dict[str, Any]:
        """The switches as they took effect, for ``settings.json`` (``config`` part)."""
        return {
            "mixed_precision": {"requested": self.mixed_precision_requested,
                                "policy": self.policy,
                                "loss_scaling": self.policy == "mixed_float16"},
            # compiled == requested: every compile is checked by require_xla, which stops the
            # script when Keras would not compile the training step with XLA.
            "xla": {"requested": self.xla, "compiled": self.xla},
            "deterministic": {"on": self.deterministic, "chosen": self.deterministic_chosen,
                              "how": self.determinism},
            "replicas": {"count": self.replicas, "batch_size": BATCH_MEANING,
                         "strategy": type(self.strategy).__name__ if self.replicas > 1
                         else "one device"},
        }


_CURRENT: DeviceSetup | None = None


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def tensorflow_initialised() -> bool:
    """Whether TensorFlow's runtime (eager context) exists: after that, visible devices,
    logical devices and GPU memory growth can no longer be changed."""
    import sys

    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context

    return bool(context.context()._initialized)


def decide_determinism(requested: bool | None, xla: bool, on_gpu: bool) -> tuple[bool, str]:
    """``(deterministic, how)`` for ``--deterministic`` (True/False/None = default).

    Default: deterministic unless ``--xla`` (Keras does not compile with XLA under
    TensorFlow's op determinism). ``--xla --deterministic`` uses XLA's own deterministic mode
    on a GPU; on a CPU there is none to ask for, so it is refused.
    """
    deterministic = (not xla) if requested is None else bool(requested)
    if not deterministic:
        return False, ("off: seeds only; kernels may vary between runs"
                       + (" (the default with --xla)" if xla and requested is None else ""))
    if not xla:
        return True, "TensorFlow op determinism (tf.config.experimental.enable_op_determinism)"
    if on_gpu:
        return True, ("XLA's deterministic GPU mode (XLA_FLAGS " + XLA_GPU_DETERMINISTIC
                      + "); TensorFlow op determinism stays off, Keras would drop XLA under it")
    raise InputError("--xla --deterministic: no GPU visible, and XLA on a CPU has no "
                     "deterministic mode to ask for (Keras turns XLA off under TensorFlow's op "
                     "determinism); drop --xla (slower on a CPU anyway) or --deterministic")


def _parse_gpu_list(text: str | None, available: int) -> list[int] | None:
    if text is None:
        return None
    text = text.strip().lower()
    if text in ("", "none"):
        return []
    try:
        chosen = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--gpus {text}: expected GPU numbers like 0,1 (or none)") from None
    bad = [i for i in chosen if not 0 <= i < available]
    if bad:
        raise InputError(f"--gpus {text}: GPU(s) {bad} not on this machine "
                         f"({available} visible{'' if not available else f': 0..{available - 1}'})")
    return sorted(set(chosen))


def configure_devices(mixed_precision: bool = False, xla: bool = False, *,
                      deterministic: bool | None = None, gpus: str | None = None,
                      cpu_replicas: int = 0) -> DeviceSetup:
    """Apply the device switches once per process and return the :class:`DeviceSetup`.

    Calling it again is harmless (what is already set is kept) and re-applies what can still
    change (policy, determinism), e.g. for several runs in one process. Set-up that needs an
    uninitialised TensorFlow (``gpus``, ``cpu_replicas``, memory growth) refuses, or warns in
    one line, when TensorFlow already ran an op.
    """
    global _CURRENT
    import keras
    import tensorflow as tf

    request = DeviceRequest(bool(mixed_precision), bool(xla), deterministic, gpus,
                            int(cpu_replicas or 0)).as_tuple()
    late = tensorflow_initialised()
    physical = _gpus()
    chosen = _parse_gpu_list(gpus, len(physical))
    if chosen is not None and [physical[i] for i in chosen] != physical:
        if late:
            raise RuntimeError(f"--gpus {gpus}: TensorFlow was initialised before "
                               "configure_devices; call setup_devices first in main()")
        tf.config.set_visible_devices([physical[i] for i in chosen], "GPU")
    visible = physical if chosen is None else [physical[i] for i in chosen]
    memory_growth = _set_memory_growth(visible) if visible else None

    if cpu_replicas and cpu_replicas > 1:
        if visible:
            raise InputError("--cpu-replicas: for machines without a GPU (it tests the "
                             "multi-device path on CPUs); use --gpus on this one")
        _split_cpu(cpu_replicas)

    policy = "mixed_float16" if mixed_precision and visible else "float32"
    if mixed_precision and not visible:
        warnings.warn("--mixed-precision ignored: no GPU visible, and float16 on a CPU is "
                      "slower than float32 (settings.json records policy float32)", stacklevel=2)
    keras.mixed_precision.set_global_policy(policy)
    if policy == "mixed_float16":
        _warn_if_old_gpu(visible)

    on, how = decide_determinism(deterministic, xla, bool(visible))
    if not visible:
        from leukocyte_cnn.base import grouped_conv

        # idempotent; checks itself against Keras first (before op determinism, as set_seed
        # used to be called only after it)
        grouped_conv.use_cpu_convolution_fixes()
    if on and xla:
        _add_xla_flag(XLA_GPU_DETERMINISTIC)
    _set_op_determinism(on and not xla)
    if xla and not visible:
        warnings.warn("--xla on a CPU-only machine: XLA compilation was slower than plain "
                      "float32 here (see shared/NOTES.md)", stacklevel=2)

    strategy, devices = _strategy(len(visible), cpu_replicas)
    if xla and strategy.num_replicas_in_sync > 1:
        raise InputError(f"--xla with {strategy.num_replicas_in_sync} replicas: Keras compiles "
                         "the whole replicated step as one XLA program, which TensorFlow cannot "
                         "run across devices; use --xla with one GPU per process (--gpus 0)")
    chosen_word = ("default" if deterministic is None
                   else "--deterministic" if deterministic else "--no-deterministic")
    _CURRENT = DeviceSetup(request=request, strategy=strategy, devices=devices,
                           mixed_precision_requested=bool(mixed_precision), policy=policy,
                           xla=bool(xla), deterministic=on, deterministic_chosen=chosen_word,
                           determinism=how, memory_growth=memory_growth)
    return _CURRENT


def setup_devices(request: DeviceRequest) -> DeviceSetup:
    """:func:`configure_devices` for a :class:`DeviceRequest` (a script's
    ``DeviceRequest.from_args(args)``).

    Call it first in a script's ``main()``, before anything touches TensorFlow.
    """
    return configure_devices(request.mixed_precision, request.xla,
                             deterministic=request.deterministic, gpus=request.gpus,
                             cpu_replicas=request.cpu_replicas)


def current_setup() -> DeviceSetup | None:
    """The set-up of this process, ``None`` before :func:`configure_devices`."""
    return _CURRENT


def device_settings(request: DeviceRequest | None = None) -> dict[str, Any]:
    """``mixed_precision``, ``xla``, ``deterministic`` and ``replicas`` as they took effect,
    for a run's ``settings.json`` (sets the devices up for ``request`` unless that is done)."""
    setup = _CURRENT
    if request is not None and (setup is None or setup.request != request.as_tuple()):
        setup = setup_devices(request)
    if setup is None:
        setup = configure_devices()
    return setup.settings()


def deterministic_ops() -> bool:
    """Whether TensorFlow's op determinism should be on for this process's runs (what
    ``seeding.set_seed`` applies): on when nothing was configured, off under ``--xla``."""
    if _CURRENT is None:
        return True
    return _CURRENT.deterministic and not _CURRENT.xla


def model_scope():
    """The scope to build and compile models in: the strategy's, or a no-op for one device."""
    if _CURRENT is None or _CURRENT.replicas == 1:
        return contextlib.nullcontext()
    return _CURRENT.strategy.scope()


def check_global_batch(batch_size: int) -> None:
    """Refuse, in one line, a global batch that the replicas cannot share evenly: Keras'
    ``MirroredStrategy`` training fails on per-replica batches of unequal size (measured:
    batch 5 over two replicas); a partial last batch of an epoch is fine."""
    replicas = _CURRENT.replicas if _CURRENT is not None else 1
    if replicas > 1 and batch_size % replicas:
        raise InputError(f"BATCH_SIZE {batch_size} over {replicas} replicas: the global batch "
                         f"must be a multiple of {replicas} (e.g. "
                         f"{-(-batch_size // replicas) * replicas}); set BATCH_SIZE or choose "
                         "GPUs with --gpus")


def require_xla(model, xla: bool) -> None:
    """After ``model.compile(**compile_kwargs(xla))``: stop with one line when ``--xla`` was
    asked for and Keras will not compile the training step with XLA."""
    if xla and not model.jit_compile:
        from tensorflow.python.framework.config import is_op_determinism_enabled

        if is_op_determinism_enabled():
            reason = "TensorFlow op determinism is on (set_seed without setup_devices?)"
        else:
            layers = [layer.name for layer in model._flatten_layers() if not layer.supports_jit]
            reason = f"layer(s) {', '.join(layers[:3]) or '?'} do not support XLA"
        raise InputError(f"--xla: Keras will not XLA-compile {model.name}: {reason}; "
                         "run without --xla")


def _set_memory_growth(gpus: Sequence) -> bool:
    """Memory growth on every visible GPU, so two runs can share one; one warning line when
    TensorFlow was initialised first (the process then holds the whole GPU)."""
    import tensorflow as tf

    for gpu in gpus:
        try:
            if tf.config.experimental.get_memory_growth(gpu):
                continue  # set by an earlier call
        except (RuntimeError, ValueError, TypeError, AttributeError):
            pass
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError) as exc:
            warnings.warn(f"GPU memory growth not set ({str(exc).splitlines()[0]}): TensorFlow "
                          "was initialised before configure_devices, so this process may hold "
                          "the whole GPU memory", stacklevel=3)
            return False
    return True


def _split_cpu(n: int) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration()] * n
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == n:
        return
    if tensorflow_initialised():
        raise RuntimeError(f"--cpu-replicas {n}: TensorFlow was initialised before "
                           "configure_devices; call setup_devices first in main()")
    tf.config.set_logical_device_configuration(cpu, wanted)


def _strategy(n_gpus: int, cpu_replicas: int):
    import tensorflow as tf

    if n_gpus > 1:
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        return tf.distribute.MirroredStrategy(names), names
    if not n_gpus and cpu_replicas and cpu_replicas > 1:
        names = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        return tf.distribute.MirroredStrategy(names), names
    kind = "GPU" if n_gpus else "CPU"
    return tf.distribute.get_strategy(), [d.name for d in tf.config.list_logical_devices(kind)][:1]


def _add_xla_flag(flag: str) -> None:
    """Add ``flag`` to ``XLA_FLAGS`` (read when XLA first compiles, i.e. after set-up)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    if flag not in flags:
        os.environ["XLA_FLAGS"] = " ".join([*flags, flag])


def _set_op_determinism(on: bool) -> None:
    from tensorflow.python.framework import config as tf_config

    if on:
        tf_config.enable_op_determinism()
    elif tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()  # an earlier run in this process turned it on


def _warn_if_old_gpu(gpus: list) -> None:
    """Mixed float16 only pays on GPUs with tensor cores (compute capability 7.0, Volta+)."""
    import tensorflow as tf

    for gpu in gpus:
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) < (7, 0):
            warnings.warn(f"{gpu.name}: compute capability {capability[0]}.{capability[1]} has "
                          "no tensor cores; mixed precision may be slower", stacklevel=3)


def compile_kwargs(xla: bool) -> dict[str, Any]:
    """Keyword arguments for ``model.compile``: ``{"jit_compile": True}`` with XLA, else ``{}``.

    ``{}`` (not ``jit_compile=False``) leaves Keras' own default untouched. Follow the compile
    with :func:`require_xla`.
    """
    return {"jit_compile": True} if xla else {}


def add_gpu_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--mixed-precision --xla --deterministic/--no-deterministic --gpus --cpu-replicas``."""
    parser.add_argument(
        "--mixed-precision", action="store_true",
        help="compute in float16 with float32 weights (mixed_float16) and loss scaling. Use on "
             "NVIDIA GPUs with tensor cores (Volta or newer); H200: 1.33-1.71x float32 images/s "
             "(docs/gpu_and_cluster.md). Ignored with a warning on CPU, where it is slower")
    parser.add_argument(
        "--xla", action="store_true",
        help="compile the training step with XLA (jit_compile=True; checked, never silently "
             "dropped). Turns TensorFlow's op determinism off (Keras refuses XLA under it). "
             "For GPUs; on a CPU it was slower (~230 vs ~390 images/s, shared/NOTES.md)")
    parser.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction, default=None,
        help="repeatable kernels (default: on, off with --xla). Without --xla: TensorFlow's op "
             "determinism; with --xla on a GPU: XLA's deterministic mode "
             "(--xla_gpu_deterministic_ops); --xla --deterministic on a CPU is refused")
    parser.add_argument(
        "--gpus", default=None, metavar="LIST",
        help="GPUs to use, e.g. 0,1 (default: all visible; 'none': CPU only). Several GPUs "
             "train one model (MirroredStrategy); BATCH_SIZE stays the global batch")
    parser.add_argument(
        "--cpu-replicas", type=int, default=0, metavar="N",
        help="testing only: split the CPU into N logical devices and train under a "
             "MirroredStrategy over them, as on N GPUs (no speed-up; machines without a GPU)")
    return parser


def describe_devices() -> dict[str, Any]:
    """What the run used, for ``settings.json``: TF/Keras versions, GPUs, precision policy."""
    import keras
    import tensorflow as tf

    gpus = []
    for gpu in tf.config.get_visible_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        gpus.append({"name": details.get("device_name", gpu.name),
                     "compute_capability": ".".join(map(str, capability)) if capability else None})
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "built_with_cuda": bool(tf.test.is_built_with_cuda()),
        "gpus": gpus,
        "gpu_count": len(gpus),
        "precision_policy": keras.mixed_precision.global_policy().name,
        "replicas": _CURRENT.replicas if _CURRENT is not None else 1,
    }
