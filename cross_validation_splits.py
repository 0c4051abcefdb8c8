"""Cross-validation splits: which images train, validate and test in every fold.

Follows ``Cross_Validation_Splits.py`` of the Helmholtz externship (J. Schouten): the images
of each class are spread evenly over the folds, so every fold contains every class, and
classes with four images or fewer are set aside (fold -1). The thesis used leave-five-out
(P = 5) on ALL-IDB: 260 ALL-IDB2 images give 52 folds of 5 test images.

Writes ``data/splits/<name>.csv`` (one row per fold and image, with its role) and
``<name>.json`` (the settings and a hash of the dataset listing). Every training script reads
these files, so all experiments on a split test the same images, and a split made for another
copy of the dataset is refused.

Examples::

    python cross_validation_splits.py --dataset all_idb2 --data-root ../shared/data/all_idb2_lowres
    python cross_validation_splits.py --dataset synthetic_multiclass --exclude thrombocyte
    python cross_validation_splits.py --dataset cnmc --data-root /data/C-NMC --method group_kfold
    python cross_validation_splits.py --dataset kaggle --data-root /data/blood-cells
"""
from __future__ import annotations

import argparse
import time
import warnings

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.cli import run_main
from leukocyte_cnn.base.io import read_json

DATASET = "synthetic_all_idb2"  # reader name; synthetic_* sets are generated on first use
K = 5  # folds of kfold / group_kfold
P = 5  # test images per fold of lpo (the thesis' leave-five-out)
SEED = 0  # seeds every random choice; same seed -> byte-identical files
VAL_FRACTION = 0.2  # share of each fold's non-test images used for early stopping
TEST_FRACTION = 0.2  # share of images tested by --method random
MIN_IMAGES = 5  # thesis rule: classes with fewer images are set aside
OUT_DIR = "data/splits"  # where split files go (docs/architecture.md)
VAL_SOURCE_NAMES = ("VAL", "VALID", "VALIDATION")  # owner's validation split, used as val
METHODS = ("kfold", "lpo", "group_kfold", "predefined", "random")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=DATASET,
                        help=f"dataset reader name (default {DATASET}), e.g. all_idb2, kaggle, "
                             "cnmc, pbc, zheng2018, synthetic_multiclass")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder as its owners distribute it (stored as given; not "
                             "needed for synthetic_* sets)")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="lpo: leave-P-out as in the thesis; kfold: stratified k-fold; "
                             "group_kfold: k-fold disjoint by patient/source cell; predefined: "
                             "the owner's TEST split or fold_k folders; random: one image-level "
                             "split that ignores groups (leaky; only to reproduce published "
                             "numbers). kfold and lpo split by group when images share "
                             "patients/smears/source cells. Default: group_kfold when images "
                             "share groups, lpo for ALL-IDB-like sets, predefined when the "
                             "data ships a TEST split, else kfold")
    parser.add_argument("--k", type=int, default=K, help=f"folds of kfold/group_kfold (default {K})")
    parser.add_argument("--p", type=int, default=P,
                        help=f"test images per fold of lpo (default {P}: ceil(N/P) folds)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    parser.add_argument("--val-fraction", type=float, default=VAL_FRACTION,
                        help=f"validation share of each fold's non-test images, per class "
                             f"(default {VAL_FRACTION}; 0: no validation set)")
    parser.add_argument("--test-fraction", type=float, default=TEST_FRACTION,
                        help=f"test share for --method random (default {TEST_FRACTION})")
    parser.add_argument("--min-images", type=int, default=MIN_IMAGES,
                        help=f"classes with fewer images are set aside (default {MIN_IMAGES})")
    parser.add_argument("--exclude", action="append", default=[], metavar="CLASS",
                        help="set this class aside too (repeatable), e.g. --exclude thrombocyte")
    parser.add_argument("--test-sources", default="TEST",
                        help="predefined: comma-separated source splits that form the test set "
                             "(default TEST)")
    parser.add_argument("--val-sources", default=None,
                        help="predefined: source splits used as validation set (default: the "
                             "owner's VAL split if there is one, else carved from training)")
    parser.add_argument("--train-sources", default=None,
                        help="predefined: source splits that train (default: TRAIN if present, "
                             "else every split that is not test or validation)")
    parser.add_argument("--near-duplicates", choices=("auto", "group", "off"), default="auto",
                        help="join copies of one cell (identical or near-duplicate pixels) "
                             "into one group before the split, so test and validation images "
                             "are drawn by group; auto = for every method but random when the "
                             "data has no groups of its own and holds copies by nature "
                             "(Kaggle), and for predefined splits of ungrouped data. off on "
                             "Kaggle gives an image-level split, labelled LEAKY. Default auto")
    parser.add_argument("--near-threshold", type=int, default=None,
                        help="hash screen: pairs within this Hamming distance in bits are "
                             "verified on pixels as possible copies (default: "
                             "leakage.DEFAULT_THRESHOLD = 10)")
    parser.add_argument("--ignore-groups", action="store_true",
                        help="split by image even when images share patients/smears/source "
                             "cells (and do not join copies): the split is marked leaky and "
                             "every run on it is labelled LEAKY; only to reproduce published "
                             "numbers made that way")
    parser.add_argument("--name", default=None,
                        help="file name of the split (default: <dataset>_<method>_<k|p>_seed<seed>"
                             ", plus exclusions, then _<fingerprint>: the first 10 hex digits "
                             "of the hash of the images and every setting, so splits made "
                             "differently never share a file). An existing file made from other "
                             "inputs is never overwritten")
    parser.add_argument("--out-dir", default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave unreadable image files out (listed in the JSON) instead of "
                             "stopping")
    parser.add_argument("--no-check-images", action="store_true",
                        help="do not decode every image first (faster; bad files then surface "
                             "during training)")
    parser.add_argument("--zheng-dataset", choices=("1", "2", "both"), default=None,
                        help="zheng2018 only: which of the two Zheng et al. sets to read")
    parser.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra option passed to the dataset reader (repeatable)")
    return parser.parse_args(argv)


def reader_options(args: argparse.Namespace) -> dict[str, str]:
    """Options for ``read_dataset``; recorded in the JSON so ``load_split`` reads the same way."""
    options = {}
    if args.zheng_dataset is not None:
        options["dataset"] = args.zheng_dataset
    for item in args.reader_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--reader-option {item}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = option_value(value.strip())
    return options


def option_value(text: str):
    """``a,b`` -> list, ``true``/``false`` -> bool, digits -> int, else the text."""
    if "," in text:
        return [option_value(part.strip()) for part in text.split(",") if part.strip()]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return int(text) if text.isdigit() else text


def default_method(dataset: str, table) -> tuple[str, str]:
    """The method a dataset is usually split with, and why (``folds.default_method``)."""
    from leukocyte_cnn.splits.folds import default_method as choose

    return choose(dataset, table)


def split_file_name(args: argparse.Namespace, method: str, options: dict) -> str:
    """``<dataset>_<method>_<k5|p5>_seed<seed>`` (the name training scripts look for), plus
    any non-default exclusion rule or reader option, so different splits never share a name."""
    import re

    parts = [args.dataset, method]
    if method in ("kfold", "group_kfold"):
        parts.append(f"k{args.k}")
    elif method == "lpo":
        parts.append(f"p{args.p}")
    parts.append(f"seed{args.seed}")
    tests = tuple(s.lower() for s in sources(args.test_sources))
    if method == "predefined" and tests and tests != ("test",):
        parts.append("test-" + "-".join(tests))  # e.g. C-NMC's validation_data as test set
    if args.min_images != MIN_IMAGES:
        parts.append(f"min{args.min_images}")
    if args.exclude:
        parts.append("excl-" + "-".join(sorted(c.lower() for c in args.exclude)))
    if args.ignore_groups:
        parts.append("ignore-groups")  # an image-level (LEAKY) split of grouped data
    if args.near_duplicates != "auto":
        parts.append(f"near-{args.near_duplicates}")
    parts += [f"{k}{v}" for k, v in sorted(options.items())]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts))


def sources(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def predefined_sources(args: argparse.Namespace, table) -> dict:
    """Test/val/train source splits for ``predefined``: the owner's VAL and TRAIN when present,
    so an extra folder (e.g. Kaggle's TEST_SIMPLE) is not silently trained on."""
    present = {s.upper() for s in table["source_split"].astype(str)}
    tests = {s.upper() for s in sources(args.test_sources)}
    # The owner's VAL split validates, unless it was named the test set (C-NMC's
    # validation_data): then validation is carved from the training images.
    val = sources(args.val_sources) or tuple(v for v in VAL_SOURCE_NAMES
                                             if v in present and v not in tests)
    train = sources(args.train_sources) or (("TRAIN",) if "TRAIN" in present else None)
    return {"test_sources": sources(args.test_sources) or ("TEST",), "val_sources": val,
            "train_sources": train}


def check_image_files(table, args: argparse.Namespace):
    """Decode every image; return (good table, bad files). Without --skip-bad the first bad
    file stops the script before anything is written."""
    if args.no_check_images:
        return table, []
    from leukocyte_cnn.data.images import check_images

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good, bad = check_images(table, skip_bad=args.skip_bad)
    for warning in caught:
        print(f"warning: {warning.message}")
    return good, bad


def summary_lines(split, settings: dict) -> list[str]:
    """One screen: data, method, classes, exclusions, images per role."""
    kept = split[split["role"] != "excluded"].drop_duplicates("image")
    per_class = kept.groupby(["label", "class_name"]).size()
    method = settings["method"]
    size = {"lpo": f", P={settings['p']}", "kfold": f", k={settings['k']}",
            "group_kfold": f", k={settings['k']}"}.get(method, "")
    lines = [
        f"dataset {settings['dataset']}"
        + (f" ({settings['data_root']})" if settings.get("data_root") else "")
        + f": {settings['n_images_read']} images, hash {settings['dataset_hash'][:12]}",
        f"method {method}{size}, seed {settings['seed']}, val fraction "
        f"{settings['val_fraction']}" + (" [grouped]" if settings.get("grouped") else ""),
        "classes: " + ", ".join(f"{name} {n}" for (_, name), n in per_class.items()),
        "excluded: " + (", ".join(f"{name} {n}" for name, n in
                                  settings["excluded_classes"].items()) or "none"),
    ]
    if settings["skipped_bad_files"]:
        lines.append(f"skipped bad files: {len(settings['skipped_bad_files'])}")
    if settings.get("leaky"):
        lines.append("WARNING: LEAKY image-level split (--method random, --ignore-groups or "
                     "copies left unjoined): one patient, smear or source cell can sit on two "
                     "sides, so test accuracy can be inflated")
    counts = {role: [c[role] for c in settings["role_counts"]] for role in ("train", "val", "test")}
    spread = ", ".join(f"{role} {min(v)}" + (f"-{max(v)}" if max(v) != min(v) else "")
                       for role, v in counts.items())
    lines.append(f"folds: {settings['n_folds']} | images per fold: {spread}")
    return lines


def split_inputs(args: argparse.Namespace, method: str, options: dict,
                 dataset_hash: str, table) -> dict:
    """Everything that determines a split file's content: its fingerprint's inputs.

    The images (``dataset_hash`` of the listing), reader options, method and every option
    that changes which image lands where, plus the versions of the fold and near-duplicate
    code. The data root is left out: the same images elsewhere give the same split.
    """
    from leukocyte_cnn.splits import folds
    from leukocyte_cnn.splits import leakage

    inputs = {"artifact": "split", "dataset": args.dataset, "reader_options": options,
              "dataset_hash": dataset_hash, "method": method, "seed": args.seed,
              "val_fraction": args.val_fraction, "min_images": args.min_images,
              "exclude": sorted(args.exclude), "ignore_groups": bool(args.ignore_groups),
              # Bad files change the split only when they are left out: kept (unchecked) or
              # stopping the script, the images listed are the same.
              "skip_bad_files": bool(args.skip_bad and not args.no_check_images),
              "code": {"folds": folds.SPLIT_CODE_VERSION}}
    if folds.joins_copies(args.near_duplicates, method, args.dataset, table, args.ignore_groups):
        # Only where copies are joined do the near-duplicate settings and code matter.
        inputs.update(near_duplicates=args.near_duplicates, near_threshold=args.near_threshold)
        inputs["code"]["near_duplicates"] = getattr(leakage, "NEAR_DUPLICATE_VERSION", 1)
    if method in ("kfold", "group_kfold"):
        inputs["k"] = args.k
    elif method == "lpo":
        inputs["p"] = args.p
    elif method == "random":
        inputs["test_fraction"] = args.test_fraction
    elif method == "predefined":
        inputs.update(test_sources=args.test_sources, val_sources=args.val_sources,
                      train_sources=args.train_sources)
    return inputs


def existing_split(csv_path, inputs: dict, named: bool):
    """``csv_path`` when it holds the split made from ``inputs`` (reuse it), ``None`` when
    nothing is there; a file made from other inputs is never overwritten: one line."""
    from pathlib import Path

    from leukocyte_cnn.base.artifacts import difference, fingerprint

    csv_path = Path(csv_path)
    if not csv_path.exists():
        return None
    json_path = csv_path.with_suffix(".json")
    recorded = read_json(json_path).get("fingerprint") if json_path.is_file() else None
    if recorded and recorded.get("fingerprint") == fingerprint(inputs):
        return csv_path
    changed = difference(recorded, inputs, limit=3) if recorded else "no fingerprint in its JSON"
    raise InputError(f"{csv_path}: holds a split made from other inputs ({changed}); it is "
                     "kept: " + ("choose another --name" if named else "delete it to re-make it"))


def main(args: argparse.Namespace):
    """Write the split (or find the identical one already written); return its CSV path."""
    from pathlib import Path

    from leukocyte_cnn.splits import folds
    from leukocyte_cnn.base.artifacts import fingerprint, short

    start = time.perf_counter()
    options = reader_options(args)
    read_dataset, dataset_hash = folds._dataset_api()
    table = read_dataset(args.dataset, args.data_root, **options)
    full_hash = dataset_hash(table)  # of the full listing: what load_split re-reads
    n_read = len(table)
    if args.method:
        method, reason = args.method, ""
    else:
        method, reason = default_method(args.dataset, table)
        print(f"method: {method} ({reason}); choose another with --method")
    inputs = split_inputs(args, method, options, full_hash, table)
    name = args.name or f"{split_file_name(args, method, options)}_{short(fingerprint(inputs))}"
    target = Path(args.out_dir) / f"{name}.csv"
    try:
        found = existing_split(target, inputs, bool(args.name))
    except InputError as conflict:  # said after the image check: a bad file is news first
        found, clash = None, conflict
    else:
        clash = None
    if found is not None:
        print(f"split {found} already made from the same images and settings (fingerprint "
              f"{short(fingerprint(inputs))}); reused")
        return found
    table, bad = check_image_files(table, args)
    if clash is not None:
        raise clash
    where = args.data_root or args.dataset
    extra = predefined_sources(args, table) if method == "predefined" else {}
    groups = None if args.ignore_groups else "auto"
    near = None
    if folds.joins_copies(args.near_duplicates, method, args.dataset, table,
                          ignore_groups=args.ignore_groups):
        from leukocyte_cnn.splits.leakage import DEFAULT_THRESHOLD, near_duplicate_groups

        threshold = DEFAULT_THRESHOLD if args.near_threshold is None else args.near_threshold
        table, near = near_duplicate_groups(table, threshold)
        print(f"near-duplicates: {near['images_joined']} images are verified copies, joined into "
              f"{near['groups_joined']} groups, the largest of {near['largest_group']} "
              f"({near['pairs_screened']} pairs screened at {threshold} bits or by ring "
              f"signature, {near['pairs_verified']} verified on pixels, {near['seconds']} s); "
              "splits are drawn by group")
        if near["links_broken"]:
            print(f"note: {near['links_broken']} weak link(s) between copies were broken so that "
                  "no group holds over half of its class (chains of look-alike images)")
    split = folds.make_split(table, method, k=args.k, p=args.p, seed=args.seed,
                             val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                             min_images=args.min_images, exclude_classes=args.exclude,
                             groups=groups, where=where, **extra)
    if near is not None and args.val_fraction > 0:
        kept_roles = split[split["role"].isin(["train", "val"])]
        reached = float((kept_roles["role"] == "val").sum() / max(1, len(kept_roles)))
        near["validation_share"] = round(reached, 4)
        print(f"validation share reached: {100 * reached:.1f} % of the non-test images "
              f"(asked {100 * args.val_fraction:.0f} %)")
    kept = split[split["role"] != "excluded"]
    grouped = folds.split_is_grouped(method, groups, kept.drop_duplicates("image"))
    leaky = folds.split_is_leaky(method, groups, kept.drop_duplicates("image"),
                                 copies_expected=folds.ships_copies(args.dataset) and near is None)
    settings = {
        "dataset": args.dataset, "data_root": args.data_root, "reader_options": options,
        "method": method, "k": args.k if method in ("kfold", "group_kfold") else None,
        "p": args.p if method == "lpo" else None, "seed": args.seed,
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction if method == "random" else None,
        "min_images": args.min_images, "exclude_classes": sorted(args.exclude),
        "groups": groups, "grouped": grouped, "leaky": leaky,
        "skipped_bad_files": bad, "images_checked": not args.no_check_images,
        "dataset_hash": full_hash, "n_images_read": n_read,
        "class_names": folds._class_names_by_label(table), **extra,
    }
    if near is not None:
        settings["near_duplicate_groups"] = near
    if method == "predefined":
        used = set(split["image"])
        settings["variant"] = folds.predefined_variant(table[table["image"].isin(used)],
                                                       extra["test_sources"])
        unused = table[~table["image"].isin(used)]
        settings["unused_sources"] = {str(k): int(v) for k, v in
                                      unused.groupby("source_split").size().items()}
    settings["fingerprint"] = {"fingerprint": fingerprint(inputs), "inputs": inputs}
    csv_path, json_path = folds.write_split(split, settings, args.out_dir, name)
    for line in summary_lines(split, read_json(json_path)):
        print(line)
    if settings.get("unused_sources"):
        print("not used: " + ", ".join(f"{k} {v}" for k, v in settings["unused_sources"].items()))
    print(f"wrote {csv_path} and {json_path.name} ({time.perf_counter() - start:.1f} s)")
    return csv_path


if __name__ == "__main__":
    run_main(lambda: main(parse_args()))
