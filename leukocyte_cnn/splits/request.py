"""Making a split file, or finding the identical one already made: the split step.

``cross_validation_splits.py`` and every training script's default split go through
:func:`make_split_file`, so a script's default split is exactly the file the split script
writes with the same options. A :class:`SplitRequest` says everything that decides the split;
its fingerprint (the images' hash, the reader options, the method and every setting, and the
versions of the fold and near-duplicate code) ends the file's name and is stored in its JSON,
so a split made with other settings or from other images lies under another name and is never
reused or overwritten by mistake.
"""
from __future__ import annotations

import dataclasses
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from leukocyte_cnn.base.artifacts import difference, fingerprint, short
from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import read_json
from leukocyte_cnn.splits import policy, split_files
from leukocyte_cnn.splits.copies import (
    COPIES_OF_TEST_VERSION,
    NEAR_DUPLICATE_VERSION,
    copies_of_test,
)
from leukocyte_cnn.splits.plans import SPLIT_CODE_VERSION, make_split
from leukocyte_cnn.splits.split_table import class_names_by_label

METHODS = ("kfold", "lpo", "group_kfold", "predefined", "random")
NEAR_DUPLICATE_MODES = ("auto", "group", "off")
VAL_SOURCE_NAMES = ("VAL", "VALID", "VALIDATION")  # an owner's validation split validates
NAMED_MIN_IMAGES = 5  # the thesis rule; a split file's name says so when another was asked


@dataclasses.dataclass(frozen=True)
class SplitRequest:
    """Everything that decides a split file (the options of ``cross_validation_splits.py``).

    ``method`` ``None`` picks the dataset's usual method (:func:`policy.default_method`).
    ``k`` is used by ``kfold``/``group_kfold``, ``p`` by ``lpo`` and ``test_fraction`` by
    ``random``; the sources by ``predefined``. ``near_threshold`` ``None`` is the screen's
    calibrated Hamming distance (``perceptual_hash.DEFAULT_THRESHOLD``).
    """

    dataset: str
    data_root: str | None
    method: str | None
    seed: int
    val_fraction: float
    min_images: int
    k: int | None = None
    p: int | None = None
    test_fraction: float | None = None
    exclude: tuple[str, ...] = ()
    reader_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    test_sources: str = "TEST"
    val_sources: str | None = None
    train_sources: str | None = None
    near_duplicates: str = "auto"
    near_threshold: int | None = None
    ignore_groups: bool = False
    name: str | None = None
    out_dir: str = "data/splits"
    skip_bad: bool = False
    check_images: bool = True


def parse_reader_options(items: Sequence[str], zheng_dataset: str | None = None
                         ) -> dict[str, Any]:
    """``--reader-option KEY=VALUE`` items (and ``--zheng-dataset``) as reader keywords;
    recorded in the split's JSON so ``load_split`` reads the dataset the same way."""
    options: dict[str, Any] = {}
    if zheng_dataset is not None:
        options["dataset"] = zheng_dataset
    for item in items or ():
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


def sources(text: str | None) -> tuple[str, ...]:
    return tuple(s.strip() for s in (text or "").split(",") if s.strip())


def split_file_name(request: SplitRequest, method: str) -> str:
    """``<dataset>_<method>_<k5|p5>_seed<seed>`` plus any non-default exclusion rule or reader
    option, so different splits never share a name (the fingerprint is appended after it)."""
    parts = [request.dataset, method]
    if method in ("kfold", "group_kfold"):
        parts.append(f"k{request.k}")
    elif method == "lpo":
        parts.append(f"p{request.p}")
    parts.append(f"seed{request.seed}")
    tests = tuple(s.lower() for s in sources(request.test_sources))
    if method == "predefined" and tests and tests != ("test",):
        parts.append("test-" + "-".join(tests))  # e.g. C-NMC's validation_data as test set
    if request.min_images != NAMED_MIN_IMAGES:
        parts.append(f"min{request.min_images}")
    if request.exclude:
        parts.append("excl-" + "-".join(sorted(c.lower() for c in request.exclude)))
    if request.ignore_groups:
        parts.append("ignore-groups")  # an image-level (LEAKY) split of grouped data
    if request.near_duplicates != "auto":
        parts.append(f"near-{request.near_duplicates}")
    parts += [f"{k}{v}" for k, v in sorted(request.reader_options.items())]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts))


def predefined_sources(request: SplitRequest, table) -> dict:
    """Test/val/train source splits for ``predefined``: the owner's VAL and TRAIN when present,
    so an extra folder (e.g. Kaggle's TEST_SIMPLE) is not silently trained on."""
    present = {s.upper() for s in table["source_split"].astype(str)}
    tests = {s.upper() for s in sources(request.test_sources)}
    # The owner's VAL split validates, unless it was named the test set (C-NMC's
    # validation_data): then validation is carved from the training images.
    val = sources(request.val_sources) or tuple(v for v in VAL_SOURCE_NAMES
                                                if v in present and v not in tests)
    train = sources(request.train_sources) or (("TRAIN",) if "TRAIN" in present else None)
    return {"test_sources": sources(request.test_sources) or ("TEST",), "val_sources": val,
            "train_sources": train}


def check_image_files(table, request: SplitRequest, say: Callable[[str], None]):
    """Decode every image; return (good table, bad files). Without ``skip_bad`` the first bad
    file stops the split before anything is written."""
    if not request.check_images:
        return table, []
    from leukocyte_cnn.data.images import check_images

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good, bad = check_images(table, skip_bad=request.skip_bad)
    for warning in caught:
        say(f"warning: {warning.message}")
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
    if settings.get("set_aside"):
        lines.append(f"set aside: {len(settings['set_aside'])} TRAIN/validation images that are "
                     "verified copies of test images (role excluded; the reasons are in the "
                     "split's JSON)")
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


def split_inputs(request: SplitRequest, method: str, dataset_hash: str, table) -> dict:
    """Everything that determines a split file's content: its fingerprint's inputs.

    The images (``dataset_hash`` of the listing), reader options, method and every option
    that changes which image lands where, plus the versions of the fold and near-duplicate
    code. The data root is left out: the same images elsewhere give the same split.
    """
    inputs = {"artifact": "split", "dataset": request.dataset,
              "reader_options": dict(request.reader_options), "dataset_hash": dataset_hash,
              "method": method, "seed": request.seed, "val_fraction": request.val_fraction,
              "min_images": request.min_images, "exclude": sorted(request.exclude),
              "ignore_groups": bool(request.ignore_groups),
              # Bad files change the split only when they are left out: kept (unchecked) or
              # stopping the script, the images listed are the same.
              "skip_bad_files": bool(request.skip_bad and request.check_images),
              "code": {"folds": SPLIT_CODE_VERSION}}
    if policy.joins_copies(request.near_duplicates, method, request.dataset, table,
                          request.ignore_groups):
        # Only where copies are joined do the near-duplicate settings and code matter.
        inputs.update(near_duplicates=request.near_duplicates,
                      near_threshold=request.near_threshold)
        inputs["code"]["near_duplicates"] = NEAR_DUPLICATE_VERSION
    if method in ("kfold", "group_kfold"):
        inputs["k"] = request.k
    elif method == "lpo":
        inputs["p"] = request.p
    elif method == "random":
        inputs["test_fraction"] = request.test_fraction
    elif method == "predefined":
        inputs.update(test_sources=request.test_sources, val_sources=request.val_sources,
                      train_sources=request.train_sources)
        if "near_duplicates" in inputs:  # copies of test images are looked for and set aside
            inputs["code"]["copies_of_test"] = COPIES_OF_TEST_VERSION
    return inputs


# More than this share of a class's training images "copies" of test images means the images
# are too alike for the copy check (look-alikes chain, as in near_duplicate_groups' cap): then
# nothing is set aside, and the audit (check_leakage.py) is left to show the pairs.
MAX_SET_ASIDE_SHARE = 0.5


def set_aside_copies_of_test(split, table, threshold: int, cache: dict,
                             say: Callable[[str], None] = print) -> dict[str, str]:
    """For a split by the owner's TRAIN/TEST (one fold): the training and validation images
    that are verified copies of a test image, with the reason (:func:`copies_of_test`, which
    finds copies as the leakage audit does, over the images the split uses). ``{}`` for the
    owner's folds (C-NMC): there each image tests one fold and trains the others; and when
    the copies would take more than ``MAX_SET_ASIDE_SHARE`` of a class's training images (one
    line says so)."""
    if split.loc[split["fold"] >= 0, "fold"].nunique() != 1:
        return {}
    rows = split[split["role"].isin(["train", "val", "test"])][["image", "role", "class_name"]]
    rows = rows.merge(table[["image", "path"]], on="image", how="left")
    aside = copies_of_test(rows, threshold, cache=cache)
    training = rows[rows["role"] != "test"]
    share = training["image"].isin(set(aside)).groupby(training["class_name"]).mean()
    if len(share) and share.max() > MAX_SET_ASIDE_SHARE:
        say(f"note: {len(aside)} training images look like copies of test images, "
            f"{share.max():.0%} of class {share.idxmax()}: these images are too alike for the "
            "copy check, so none is set aside (check_leakage.py shows the pairs)")
        return {}
    return aside


def existing_split(csv_path: Path, inputs: dict, named: bool) -> Path | None:
    """``csv_path`` when it holds the split made from ``inputs`` (reuse it), ``None`` when
    nothing is there; a file made from other inputs is never overwritten: one line."""
    if not csv_path.exists():
        return None
    json_path = csv_path.with_suffix(".json")
    recorded = read_json(json_path).get("fingerprint") if json_path.is_file() else None
    if recorded and recorded.get("fingerprint") == fingerprint(inputs):
        return csv_path
    changed = difference(recorded, inputs, limit=3) if recorded else "no fingerprint in its JSON"
    raise InputError(f"{csv_path}: holds a split made from other inputs ({changed}); it is "
                     "kept: " + ("choose another --name" if named else "delete it to re-make it"))


def _check_request(request: SplitRequest, method: str) -> None:
    needed = {"kfold": "k", "group_kfold": "k", "lpo": "p", "random": "test_fraction"}
    field = needed.get(method)
    if field and getattr(request, field) is None:
        raise InputError(f"split {request.dataset} by {method}: no {field} given")
    if request.near_duplicates not in NEAR_DUPLICATE_MODES:
        raise InputError(f"near-duplicates {request.near_duplicates!r}: choose from "
                         f"{', '.join(NEAR_DUPLICATE_MODES)}")


def make_split_file(request: SplitRequest, say: Callable[[str], None] = print) -> Path:
    """Write the split of ``request`` (or find the identical one already written); return
    its CSV path. ``say`` prints the progress and summary lines."""
    start = time.perf_counter()
    read_dataset, dataset_hash = split_files.dataset_api()
    options = dict(request.reader_options)
    table = read_dataset(request.dataset, request.data_root, **options)
    full_hash = dataset_hash(table)  # of the full listing: what load_split re-reads
    n_read = len(table)
    if request.method:
        method = request.method
        if method not in METHODS:
            raise InputError(f"method {method!r}: choose from {', '.join(METHODS)}")
    else:
        method, reason = policy.default_method(request.dataset, table)
        say(f"method: {method} ({reason}); choose another with --method")
    _check_request(request, method)
    inputs = split_inputs(request, method, full_hash, table)
    name = request.name or f"{split_file_name(request, method)}_{short(fingerprint(inputs))}"
    target = Path(request.out_dir) / f"{name}.csv"
    try:
        found = existing_split(target, inputs, bool(request.name))
    except InputError as conflict:  # said after the image check: a bad file is news first
        found, clash = None, conflict
    else:
        clash = None
    if found is not None:
        say(f"split {found} already made from the same images and settings (fingerprint "
            f"{short(fingerprint(inputs))}); reused")
        return found
    table, bad = check_image_files(table, request, say)
    if clash is not None:
        raise clash
    where = request.data_root or request.dataset
    extra = predefined_sources(request, table) if method == "predefined" else {}
    groups = None if request.ignore_groups else "auto"
    near = None
    if policy.joins_copies(request.near_duplicates, method, request.dataset, table,
                          ignore_groups=request.ignore_groups):
        from leukocyte_cnn.splits.copies import near_duplicate_groups
        from leukocyte_cnn.splits.perceptual_hash import DEFAULT_THRESHOLD

        threshold = DEFAULT_THRESHOLD if request.near_threshold is None else request.near_threshold
        cache: dict = {}  # each file is decoded once for the grouping and the check across parts
        table, near = near_duplicate_groups(table, threshold, cache=cache)
        say(f"near-duplicates: {near['images_joined']} images are verified copies, joined into "
            f"{near['groups_joined']} groups, the largest of {near['largest_group']} "
            f"({near['pairs_screened']} pairs screened at {threshold} bits or by ring "
            f"signature, {near['pairs_verified']} verified on pixels, {near['seconds']} s); "
            "splits are drawn by group")
        if near["links_broken"]:
            say(f"note: {near['links_broken']} weak link(s) between copies were broken so that "
                "no group holds over half of its class (chains of look-alike images)")
    how = dict(k=request.k, p=request.p, seed=request.seed, val_fraction=request.val_fraction,
               test_fraction=request.test_fraction, min_images=request.min_images,
               exclude_classes=list(request.exclude), groups=groups, where=where, **extra)
    split = make_split(table, method, **how)
    aside = None
    if near is not None and method == "predefined":
        aside = set_aside_copies_of_test(split, table, threshold, cache, say)
        if aside:  # made again without them: validation is carved from what is left
            split = make_split(table, method, set_aside=list(aside), **how)
    if near is not None and request.val_fraction > 0:
        kept_roles = split[split["role"].isin(["train", "val"])]
        reached = float((kept_roles["role"] == "val").sum() / max(1, len(kept_roles)))
        near["validation_share"] = round(reached, 4)
        say(f"validation share reached: {100 * reached:.1f} % of the non-test images "
            f"(asked {100 * request.val_fraction:.0f} %)")
    kept = split[split["role"] != "excluded"]
    grouped = policy.split_is_grouped(method, groups, kept.drop_duplicates("image"))
    leaky = policy.split_is_leaky(method, groups, kept.drop_duplicates("image"),
                                 copies_expected=policy.ships_copies(request.dataset)
                                 and near is None)
    settings = {
        "dataset": request.dataset, "data_root": request.data_root, "reader_options": options,
        "method": method, "k": request.k if method in ("kfold", "group_kfold") else None,
        "p": request.p if method == "lpo" else None, "seed": request.seed,
        "val_fraction": request.val_fraction,
        "test_fraction": request.test_fraction if method == "random" else None,
        "min_images": request.min_images, "exclude_classes": sorted(request.exclude),
        "groups": groups, "grouped": grouped, "leaky": leaky,
        "skipped_bad_files": bad, "images_checked": request.check_images,
        "dataset_hash": full_hash, "n_images_read": n_read,
        "class_names": class_names_by_label(table), **extra,
    }
    if near is not None:
        settings["near_duplicate_groups"] = near
    if aside is not None:
        settings["set_aside"] = aside
    if method == "predefined":
        used = set(split["image"])
        settings["variant"] = policy.predefined_variant(table[table["image"].isin(used)],
                                                       extra["test_sources"])
        unused = table[~table["image"].isin(used)]
        settings["unused_sources"] = {str(k): int(v) for k, v in
                                      unused.groupby("source_split").size().items()}
    settings["fingerprint"] = {"fingerprint": fingerprint(inputs), "inputs": inputs}
    csv_path, json_path = split_files.write_split(split, settings, request.out_dir, name)
    for line in summary_lines(split, read_json(json_path)):
        say(line)
    if settings.get("unused_sources"):
        say("not used: " + ", ".join(f"{k} {v}" for k, v in settings["unused_sources"].items()))
    say(f"wrote {csv_path} and {json_path.name} ({time.perf_counter() - start:.1f} s)")
    return csv_path
