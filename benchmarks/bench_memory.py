"""Peak memory of training on a Kaggle-sized set: streaming pipeline vs all images in NumPy.

One of the earlier studies could not train at full resolution: it loaded every image into
one float64 NumPy array first and ran out of RAM. This benchmark measures what the
repository's way costs instead:

* **streamed** (a fresh child process, which reports its own peak RSS from
  ``resource.getrusage``): one training epoch over the TRAIN images of a Kaggle-sized
  synthetic set (9,960 JPEGs of 320x240 from ``leukocyte_cnn.data.synthetic``: 830 source cells x
  4 classes x 3 copies, like the real set's 9,957) at 120x160 through
  ``pipeline.make_dataset`` (shuffled, online rotation+flips, batch 32), a small ELU CNN,
  then predictions for the TEST images (2,488), as one cross-validation fold would do. The
  child also reports its RSS after TensorFlow and the model were set up (the part that
  does not grow with the data).
* **all in NumPy, float64** (the original approach): its size is computed, not allocated:
  N x H x W x 3 x 8 bytes, at full resolution (240x320) and at the training size
  (120x160). A second child loads ``FLOAT64_SAMPLE`` images the way such scripts do
  (Pillow decode into a list, ``np.asarray(images, dtype=float64) / 255``) and its peak RSS
  above its own start is extrapolated to N images, temporaries included.

**Target: peak RSS of the streamed epoch <= 2 GB (2,048 MiB).**

The set is generated once (timed separately, cached under ``data/synthetic/``; about an
hour on 2 busy cores). Run: ``.venv/bin/python benchmarks/bench_memory.py [--quick]``
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import common

TRAIN_CELLS = common.KAGGLE_SIZED["train_cells"]  # source cells per class in TRAIN (x 4 x COPIES)
COPIES = common.KAGGLE_SIZED["copies"]  # augmented copies of each TRAIN cell (real set: ~3)
TEST_CELLS = common.KAGGLE_SIZED["test_cells"]  # cells per class in TEST (real TEST: 2,487)
IMAGE_SIZE = common.KAGGLE_TRAIN_SIZE  # (120, 160) (height, width): the training size
SOURCE_SIZE = common.KAGGLE_SOURCE_SIZE  # (240, 320): the files' full resolution
BATCH_SIZE = 32
EPOCHS = 1                 # epochs trained by the streamed child
FLOAT64_SAMPLE = 1000      # images the float64 child really loads (then extrapolated)
SEED = 0
SMALL_ELU = dict(filters=(16, 32, 64, 128), convs_per_block=1, dense_units=128, dense_layers=1)
TARGET_PEAK_MIB = 2048     # 2 GB
# --quick: a small set, a smoke run in a few minutes (not Kaggle-sized: no verdict on size)
QUICK = dict(TRAIN_CELLS=20, COPIES=3, TEST_CELLS=15, FLOAT64_SAMPLE=100)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small synthetic set (240 TRAIN images), 100-image float64 sample")
    parser.add_argument("--child", choices=("stream", "float64"), default=None,
                        help=argparse.SUPPRESS)  # internal: the measuring child process
    parser.add_argument("--root", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- children


def child_stream(root: str) -> dict:
    """Train one epoch streamed from disk and predict TEST; report peak RSS (MiB)."""
    import warnings

    import keras

    from leukocyte_cnn.data.datasets import read_dataset
    from leukocyte_cnn.inputs.augment import online_augmentation
    from leukocyte_cnn.inputs.pipeline import dataset_from_table

    # The images: from the set root the reader would find the masks/{TRAIN,TEST} PNGs first.
    table = read_dataset("kaggle", Path(root) / "dataset2-master")
    train = table[table["source_split"] == "TRAIN"]
    test = table[table["source_split"] == "TEST"]
    keras.utils.set_random_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = common.study_network("elu_cnn", (*IMAGE_SIZE, 3), 4, **SMALL_ELU)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train_ds = dataset_from_table(train, IMAGE_SIZE, BATCH_SIZE, shuffle=True, seed=SEED,
                                  augment=online_augmentation(seed=SEED))
    test_ds = dataset_from_table(test, IMAGE_SIZE, BATCH_SIZE)
    setup_mib = common.peak_rss_mib()
    start = time.perf_counter()
    model.fit(train_ds, epochs=EPOCHS, verbose=0, shuffle=False)
    trained = time.perf_counter() - start
    prob = model.predict(test_ds, verbose=0)
    return {"peak_rss_mib": common.peak_rss_mib(), "setup_rss_mib": setup_mib,
            "train_images": len(train), "test_images": len(test), "predictions": len(prob),
            "train_seconds": trained, "total_seconds": time.perf_counter() - start}


def child_float64(root: str, n: int) -> dict:
    """Load ``n`` TRAIN images at full resolution as one float64 array, the original way.

    Only NumPy and Pillow are imported, so the child's peak RSS before loading is small and
    the growth is the data's (the reader table would import much more).
    """
    import numpy as np
    from PIL import Image

    paths = sorted(Path(root).glob("dataset2-master/images/TRAIN/*/*.jpeg"))[:n]
    start_mib = common.peak_rss_mib()
    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))
    data = np.asarray(images, dtype=np.float64) / 255.0  # the usual one-liner
    return {"peak_rss_mib": common.peak_rss_mib(), "start_rss_mib": start_mib,
            "images": len(paths), "array_mib": data.nbytes / 2**20}


# --------------------------------------------------------------------------- main


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def main(args: argparse.Namespace) -> int:
    if args.child == "stream":
        print(json.dumps(child_stream(args.root)))
        return 0
    if args.child == "float64":
        print(json.dumps(child_float64(args.root, args.n)))
        return 0

    s = dict(TRAIN_CELLS=TRAIN_CELLS, COPIES=COPIES, TEST_CELLS=TEST_CELLS,
             FLOAT64_SAMPLE=FLOAT64_SAMPLE)
    if args.quick:
        s.update(QUICK)
    common.print_header("peak memory: streamed training vs all images in NumPy (float64)")
    from leukocyte_cnn.data.synthetic import ensure_synthetic

    start = time.perf_counter()
    root = ensure_synthetic("kaggle", common.DATA_DIR, SEED, train_cells=s["TRAIN_CELLS"],
                            copies=s["COPIES"], test_cells=s["TEST_CELLS"])
    print(f"data: {root} (ready in {time.perf_counter() - start:.1f} s; generation is cached "
          "and not part of any figure below)", flush=True)

    stream = common.run_child(Path(__file__), ["--child", "stream", "--root", str(root)])
    n_train, n_test = stream["train_images"], stream["test_images"]
    print(f"\nstreamed: {n_train} TRAIN images 320x240 -> {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, "
          f"{EPOCHS} epoch(s) of a small ELU CNN with rotation+flips "
          f"({stream['train_seconds']:.0f} s"
          f", {n_train * EPOCHS / stream['train_seconds']:.1f} img/s), then {n_test} TEST "
          f"predictions")
    print(f"   RSS after TensorFlow + model set-up: {stream['setup_rss_mib']:7.0f} MiB")
    # The verdict takes the larger of the child's own getrusage peak and the parent's
    # 20 ms samples of its VmRSS (two independent readings of the same quantity).
    stream["peak_rss_mib"] = max(stream["peak_rss_mib"], stream.get("sampled_peak_rss_mib", 0))
    print(f"   peak RSS of the whole child:         {stream['peak_rss_mib']:7.0f} MiB "
          f"(+{stream['peak_rss_mib'] - stream['setup_rss_mib']:.0f} MiB while training; "
          f"sampled by the parent every 20 ms: "
          f"{stream.get('sampled_peak_rss_mib', float('nan')):.0f} MiB)")

    n_all = n_train + n_test
    print("\nall images in one NumPy float64 array (analytic, N x H x W x 3 x 8 bytes):")
    for label, n in (("TRAIN", n_train), ("TRAIN+TEST", n_all)):
        full = n * SOURCE_SIZE[0] * SOURCE_SIZE[1] * 3 * 8
        small = n * IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3 * 8
        print(f"   {label:10s} N={n:6d}: full resolution 240x320 {gib(full):>10s} | "
              f"at 120x160 {gib(small):>9s}")
    sample = common.run_child(Path(__file__), ["--child", "float64", "--root", str(root),
                                               "--n", str(s["FLOAT64_SAMPLE"])])
    peak_sample = max(sample["peak_rss_mib"], sample.get("sampled_peak_rss_mib", 0))
    grown = (peak_sample - sample["start_rss_mib"]) * 2**20
    per_image = grown / sample["images"]
    print(f"   measured: loading {sample['images']} images as float64 "
          f"(list of uint8 + np.asarray(float64) / 255) raised the peak RSS by "
          f"{grown / 2**20:.0f} MiB = {per_image / 2**20:.2f} MiB per image "
          f"(array alone {sample['array_mib'] / sample['images']:.2f} MiB); extrapolated to "
          f"N={n_train}: {gib(per_image * n_train)}")

    peak = stream["peak_rss_mib"]
    small_train = n_train * IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3 * 8 / 2**20
    print(f"\nratios to the streamed peak ({peak:.0f} MiB): the float64 TRAIN array at 120x160 "
          f"alone {small_train / peak:.1f}x; the measured float64 load extrapolated "
          f"(full resolution) {per_image * n_train / 2**20 / peak:.1f}x")
    common.verdict("peak RSS of a streamed training epoch", peak <= TARGET_PEAK_MIB,
                        f"{peak:.0f} MiB for {n_train} images", f"<= {TARGET_PEAK_MIB} MiB")
    if args.quick:
        print("   (--quick: a small set; the verdict that counts is the Kaggle-sized run)")
    print(f"\nload average at the end: {common.load_average()}")
    return 0  # the verdict is the PASS/FAIL line; timing never fails a command


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
