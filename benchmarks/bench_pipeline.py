"""Input-pipeline speed: tf.data streaming from disk vs in-memory arrays vs a naive Python loop.

Images: Kaggle-like 320x240 JPEGs (the synthetic Kaggle set when ``leukocyte_cnn.data.synthetic``
is present, else JPEGs rendered with NumPy into ``benchmarks/out/``; ``--images DIR`` uses the
JPEGs of any folder, e.g. the real Kaggle set), brought to 120x160 (height x width) as the
4-class studies train.

What each side does, per image:

* **pipeline** = ``leukocyte_cnn.inputs.pipeline.make_dataset``: read the file, TensorFlow JPEG
  decode at libjpeg's 1/2 DCT scale (a 320x240 image comes out at 160x120, so no resize is
  left to do), batch of 32 as uint8, cast to float32 (parallel maps, prefetch); with
  augmentation also ``augment.online_augmentation``: one ``RandomAffine`` resampling per
  image (any rotation angle, bilinear, reflect fill, and random flips), batches augmented
  in parallel with one seed per batch.
* **naive loop** = one image at a time in Python: Pillow open + full decode,
  ``convert("RGB")``, ``resize((160, 120), BILINEAR)`` (Pillow antialiases downscales too);
  with augmentation the same reflect-filled rotation (mirror-pad to the diagonal with
  ``np.pad``, ``Image.rotate(random angle, BILINEAR)``, crop) and random left-right /
  top-bottom transposes; then ``np.asarray(float32)`` and ``np.stack`` of 32.

Measurements (each timed on a second pass, so graph tracing and first file reads are out;
the best of ``REPEATS`` passes counts):

1. images/s of the pipeline alone and of the naive loop, both without and with the same
   augmentation. **Target: pipeline with augmentation >= 5 x the naive loop with it.**
2. the feed as the training step sees it (decode and cache once, then per epoch shuffle,
   batch and hand over), old (augmented in ``tf.data``) and new (uint8 batches, augmented in
   the training step, ``AUGMENT_IN = "step"``), in CPU ms per image, with the ceiling of a
   16-core machine (16 / ms). **Target: the new feed alone <= 0.2 ms CPU per image.**
3. one training epoch of a small CNN fed by the pipeline streaming from disk vs the same
   epoch fed by ``tf.data.Dataset.from_tensor_slices`` of the same images preloaded as a
   float32 array (the baseline); both shuffled, no augmentation, the same seeded model; the
   second and later epochs are timed. **Target: streamed epoch <= 1.10 x in-memory epoch.**
   Two models: a small ELU CNN (the 4-class study's network with fewer filters) and the
   thesis' linear CNN (7 k parameters, so cheap that it shows the pipeline's own cost).

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--quick] [--images DIR]``
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import common

N_IMAGES = 2000           # JPEGs decoded per pass of the pipeline-alone measurement
EPOCH_IMAGES = 1280       # images per training epoch (a subset of the same files)
IMAGE_SIZE = common.KAGGLE_TRAIN_SIZE  # (120, 160): what the 4-class studies train at
BATCH_SIZE = 32           # images per batch (the 4-class studies' batch size)
REPEATS = 2               # passes timed per pipeline variant; the fastest counts
TIMED_EPOCHS = 3          # epochs timed after the first (tracing) one; the fastest counts
ROTATION_DEGREES = 359    # augmentation: rotation range, as in the thesis
FLIPS = True              # augmentation: random left-right and top-bottom flips
SEED = 0
# The small ELU CNN of the epoch measurement: the study's block structure with fewer filters.
SMALL_ELU = dict(filters=(16, 32, 64, 128), convs_per_block=1, dense_units=128, dense_layers=1)
TARGET_PIPELINE_VS_NAIVE = 5.0   # pipeline with augmentation / naive loop with augmentation
TARGET_STREAMED_VS_MEMORY = 1.10  # streamed epoch time / in-memory epoch time
TARGET_FEED_MS = 0.2     # CPU ms per image of the cached uint8 feed, after the first epoch
# --quick: a smoke run in about a minute or two
QUICK = dict(N_IMAGES=240, EPOCH_IMAGES=160, REPEATS=1, TIMED_EPOCHS=1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"few images, one timed pass (a smoke run; {QUICK})")
    parser.add_argument("--images", default=None,
                        help="folder of JPEGs to use instead of the synthetic set (searched "
                             "recursively, cycled to the image count), e.g. the real Kaggle "
                             "dataset2-master/images/TRAIN")
    parser.add_argument("--n-images", type=int, default=None,
                        help=f"images per pipeline pass (default {N_IMAGES})")
    parser.add_argument("--skip-epochs", action="store_true",
                        help="measure the pipeline and the naive loop only, no training")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- the two loaders


def naive_loop(paths, labels, size, batch_size: int, augment: bool, seed: int):
    """Yield (float32 batch, labels) built one image at a time with Pillow and NumPy."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    height, width = size
    diagonal = int(np.ceil(np.hypot(height, width)))
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start:start + batch_size]:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((width, height), Image.BILINEAR)
            if augment:
                # Reflect fill as the pipeline's: mirror-pad to the diagonal, rotate, crop.
                pad_y, pad_x = (diagonal - height + 1) // 2, (diagonal - width + 1) // 2
                padded = np.pad(np.asarray(im), ((pad_y, pad_y), (pad_x, pad_x), (0, 0)),
                                mode="symmetric")
                im = Image.fromarray(padded).rotate(
                    rng.uniform(-min(ROTATION_DEGREES, 180), min(ROTATION_DEGREES, 180)),
                    resample=Image.BILINEAR)
                im = im.crop((pad_x, pad_y, pad_x + width, pad_y + height))
                if FLIPS and rng.random() < 0.5:
                    im = im.transpose(Image.FLIP_LEFT_RIGHT)
                if FLIPS and rng.random() < 0.5:
                    im = im.transpose(Image.FLIP_TOP_BOTTOM)
            images.append(np.asarray(im, dtype=np.float32))
        yield np.stack(images), np.asarray(labels[start:start + batch_size])


def pipeline(paths, labels, size, batch_size: int, augment: bool, seed: int, shuffle=False,
             cache=None):
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.inputs.pipeline import make_dataset

    layers = (online_augmentation(rotation_degrees=ROTATION_DEGREES, horizontal_flip=FLIPS,
                                  vertical_flip=FLIPS, seed=seed) if augment else None)
    return make_dataset(paths, labels, size, batch_size, shuffle=shuffle, augment=layers,
                        seed=seed, cache=cache)


def rate(make_iterable, n: int, repeats: int) -> tuple[float, float]:
    """(images/s, CPU ms per image) of the best passes after one untimed pass.

    ``make_iterable()`` is called before every pass; return the same dataset object each
    time (built outside, so building and tracing stay out of the timing, and a cache stays
    filled), or a fresh generator. CPU time (all threads of this process) hardly depends on
    what else runs on the machine, so it compares the work each side does even when the
    wall times are disturbed.
    """
    common.iterate(make_iterable())
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        common.iterate(make_iterable())
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return n / wall, 1e3 * cpu / n


# --------------------------------------------------------------------------- epochs


def small_cnn(kind: str, size, classes: int):
    import warnings


    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # linear_cnn: fewer blocks fit 120x160 (expected)
        if kind == "elu":
            return common.study_network("elu_cnn", (*size, 3), classes, **SMALL_ELU)
        return common.study_network("linear_cnn", (*size, 3), classes, binary_sigmoid=False)


def epoch_seconds(kind: str, dataset, size, classes: int, epochs: int) -> tuple[float, float]:
    """(wall s, CPU s) of the fastest epoch after the first of a fresh seeded model."""
    import keras

    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.start_cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            times.append((time.perf_counter() - self.start, time.process_time() - self.start_cpu))

    keras.utils.set_random_seed(SEED)
    model = small_cnn(kind, size, classes)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(dataset, epochs=1 + epochs, verbose=0, callbacks=[Timer()], shuffle=False)
    return min(times[1:])


def in_memory_dataset(images, labels, batch_size: int, seed: int):
    """The baseline: preloaded float32 arrays, shuffled per epoch, batched, prefetched."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- the feed


def feed_as_the_step_sees_it(paths, labels, repeats: int) -> str:
    """Section 3: CPU ms per training image of the feed after its first epoch, old and new.

    Old (``AUGMENT_IN = "pipeline"``): decoded once into the memory cache, then per epoch
    shuffled, batched, cast to float32 and turned and flipped in ``tf.data``, on the CPU.
    New (``AUGMENT_IN = "step"``): the same cache, shuffled and batched, handed over as uint8;
    the turn and flips (``step_augment.StepAugmentation``) run inside the training step, on
    the device that trains. Their cost here (a CPU) is measured apart, on the fed batches.
    """
    import os

    import tensorflow as tf

    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.inputs.pipeline import make_dataset

    n = len(paths)
    old = pipeline(paths, labels, IMAGE_SIZE, BATCH_SIZE, True, SEED, shuffle=True,
                   cache="memory")
    new = make_dataset(paths, labels, IMAGE_SIZE, BATCH_SIZE, shuffle=True, seed=SEED,
                       cache="memory", as_uint8=True)
    layer = online_augmentation(rotation_degrees=ROTATION_DEGREES, horizontal_flip=FLIPS,
                                vertical_flip=FLIPS, seed=SEED, where="step")
    step = tf.function(lambda images: layer(images, training=True))
    augmented = new.map(lambda images, labels: (step(images), labels))
    figures = {name: rate(lambda ds=ds: ds, n, repeats)
               for name, ds in (("old", old), ("new", new), ("new+aug", augmented))}
    feed, old_ms = figures["new"][1], figures["old"][1]
    in_step = figures["new+aug"][1] - feed
    cores = 16
    print(f"\n2. the feed as the training step sees it: decoded and cached once, then per "
          f"epoch shuffled, batched and handed over (CPU ms per image, best of {repeats} "
          "epoch(s) after the first); a 16-core machine's ceiling is 16 / (CPU ms per image)")
    print(f"   old: tf.data casts, turns and flips on the CPU: {old_ms:6.3f} ms CPU/img -> "
          f"{cores * 1e3 / old_ms:9,.0f} img/s on {cores} cores")
    print(f"   new: uint8 batches only:                      {feed:6.3f} ms CPU/img -> "
          f"{cores * 1e3 / feed:9,.0f} img/s on {cores} cores ({old_ms / feed:.0f}x less CPU)")
    print(f"   new: the turn and flips in the step, here on the CPU ({os.cpu_count()} cores): "
          f"{in_step:.3f} ms CPU/img (on a GPU this runs there, beside the network)")
    return common.verdict("feed alone after the first epoch (AUGMENT_IN step)",
                          feed <= TARGET_FEED_MS, f"{feed:.3f} ms CPU/img",
                          f"<= {TARGET_FEED_MS} ms ({cores * 1e3 / TARGET_FEED_MS:,.0f} img/s "
                          f"on {cores} cores)")


# --------------------------------------------------------------------------- main


def image_files(folder: str | None, n: int) -> tuple[list[str], list[int], str]:
    if folder is None:
        return common.kaggle_like_files(n, seed=SEED)
    files = sorted(str(p) for p in Path(folder).rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"{folder}: no JPEG files found")
    classes = sorted({Path(p).parent.name for p in files})
    files = [files[i % len(files)] for i in range(n)]
    return (files, [classes.index(Path(p).parent.name) for p in files],
            f"{n} JPEGs from {folder} ({len(set(files))} distinct files, cycled)")


def main(args: argparse.Namespace) -> int:
    import numpy as np

    s = dict(N_IMAGES=N_IMAGES, EPOCH_IMAGES=EPOCH_IMAGES, REPEATS=REPEATS,
             TIMED_EPOCHS=TIMED_EPOCHS)
    if args.quick:
        s.update(QUICK)
    if args.n_images:
        s["N_IMAGES"] = args.n_images
    common.print_header("input pipeline vs in-memory arrays vs a naive Pillow loop")
    paths, labels, where = image_files(args.images, s["N_IMAGES"])
    n = len(paths)
    print(f"images: {where}; -> {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} (HxW), batch {BATCH_SIZE}",
          flush=True)

    print(f"\n1. decode + resize + batch: images/s (wall) and CPU ms per image (all threads), "
          f"best of {s['REPEATS']} pass(es) after a warm-up pass")
    figures = {}
    for augment in (False, True):
        tag = "with rotation+flips" if augment else "no augmentation"
        ds = pipeline(paths, labels, IMAGE_SIZE, BATCH_SIZE, augment, SEED)
        pipe = rate(lambda ds=ds: ds, n, s["REPEATS"])
        naive = rate(lambda augment=augment: naive_loop(paths, labels, IMAGE_SIZE, BATCH_SIZE,
                                                        augment, SEED), n, s["REPEATS"])
        figures[augment] = (pipe, naive)
        print(f"   {tag:19s}: pipeline {pipe[0]:7.1f} img/s, {pipe[1]:5.2f} ms CPU/img | "
              f"naive loop {naive[0]:7.1f} img/s, {naive[1]:5.2f} ms CPU/img | "
              f"ratio {pipe[0] / naive[0]:5.2f}x (CPU per image {naive[1] / pipe[1]:4.2f}x)",
              flush=True)
    ds = pipeline(paths, labels, IMAGE_SIZE, BATCH_SIZE, True, SEED, cache="memory")
    cached = rate(lambda: ds, n, s["REPEATS"])
    print(f"   (for reference: pipeline with rotation+flips and cache='memory', 2nd+ pass: "
          f"{cached[0]:.1f} img/s, {cached[1]:.2f} ms CPU/img; decoding happens once)")

    results = []
    pipe, naive = figures[True]
    results.append(common.verdict(
        "pipeline vs naive loop, both decode+resize+rotation+flips",
        pipe[0] / naive[0] >= TARGET_PIPELINE_VS_NAIVE,
        f"{pipe[0] / naive[0]:.2f}x ({pipe[0]:.1f} vs {naive[0]:.1f} img/s)",
        f">= {TARGET_PIPELINE_VS_NAIVE:.1f}x"))
    import math
    import os

    cores = os.cpu_count() or 1
    print(f"   why: per image the pipeline spends {pipe[1]:.2f} ms CPU, the naive loop "
          f"{naive[1]:.2f} ms; the pipeline spreads over all {cores} cores, the loop uses one. "
          f"Idle-machine bound here: {cores} x {naive[1]:.2f}/{pipe[1]:.2f} = "
          f"{cores * naive[1] / pipe[1]:.2f}x; {TARGET_PIPELINE_VS_NAIVE:.0f}x needs >= "
          f"{math.ceil(TARGET_PIPELINE_VS_NAIVE * pipe[1] / naive[1])} free cores at these "
          f"per-image costs")

    results.append(feed_as_the_step_sees_it(paths, labels, s["REPEATS"]))

    if not args.skip_epochs:
        from leukocyte_cnn.inputs.pipeline import load_arrays

        m = min(s["EPOCH_IMAGES"], n)
        epaths, elabels = paths[:m], labels[:m]
        classes = max(elabels) + 1
        preloaded = load_arrays(epaths, IMAGE_SIZE)  # the same pixels the pipeline yields
        print(f"\n3. one training epoch of {m} images (shuffled, no augmentation), fastest of "
              f"{s['TIMED_EPOCHS']} epoch(s) after the first; in-memory = float32 array of "
              f"{preloaded.nbytes / 2**20:.0f} MiB; streamed = make_dataset from the JPEGs "
              f"(cache='memory' in brackets: uint8 cache of {preloaded.nbytes / 4 / 2**20:.0f} "
              f"MiB filled in the first epoch)")
        for kind, title in (("elu", "small ELU CNN"), ("linear", "linear CNN")):
            memory = epoch_seconds(kind, in_memory_dataset(preloaded, np.asarray(elabels),
                                                           BATCH_SIZE, SEED),
                                   IMAGE_SIZE, classes, s["TIMED_EPOCHS"])
            streamed = epoch_seconds(kind, pipeline(epaths, elabels, IMAGE_SIZE, BATCH_SIZE,
                                                    False, SEED, shuffle=True),
                                     IMAGE_SIZE, classes, s["TIMED_EPOCHS"])
            cached = epoch_seconds(kind, pipeline(epaths, elabels, IMAGE_SIZE, BATCH_SIZE,
                                                  False, SEED, shuffle=True, cache="memory"),
                                   IMAGE_SIZE, classes, s["TIMED_EPOCHS"])
            ratio = streamed[0] / memory[0]
            print(f"   {title:14s}: in-memory {memory[0]:6.2f} s ({m / memory[0]:6.1f} img/s, "
                  f"{1e3 * memory[1] / m:5.1f} ms CPU/img) | streamed {streamed[0]:6.2f} s "
                  f"({m / streamed[0]:6.1f} img/s, {1e3 * streamed[1] / m:5.1f} ms CPU/img) | "
                  f"ratio {ratio:5.2f}x, CPU {streamed[1] / memory[1]:4.2f}x "
                  f"(cached: {cached[0] / memory[0]:4.2f}x, CPU {cached[1] / memory[1]:4.2f}x)",
                  flush=True)
            results.append(common.verdict(
                f"streamed vs in-memory epoch, {title}", ratio <= TARGET_STREAMED_VS_MEMORY,
                f"{ratio:.2f}x", f"<= {TARGET_STREAMED_VS_MEMORY:.2f}x"))
            if ratio > TARGET_STREAMED_VS_MEMORY:
                added = 1e3 * (streamed[1] - memory[1]) / m
                train = 1e3 * memory[1] / m
                print(f"   why: streaming adds {added:.1f} ms CPU/img of reading and decoding to "
                      f"{train:.1f} ms CPU/img of training, and here both share the same "
                      f"{os.cpu_count()} cores (no accelerator): {1 + added / train:.2f}x when "
                      f"CPU-bound. With a GPU training while the cores decode, or with "
                      f"cache='memory' (the scripts cache sets of <= 512 MB decoded), it is "
                      f"{cached[0] / memory[0]:.2f}x here.")
    print(f"\nload average at the end: {common.load_average()}")
    return 0  # the verdicts are the PASS/FAIL lines; timing never fails a command


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
