"""Leakage audit of a split file: does any test or validation image also sit in training?

Reads a split written by ``cross_validation_splits.py`` (through ``load_split``, so the split
must match the dataset on disk) and reports, for every fold and every pair of roles
(train-val, train-test, val-test):

- ``same_image``: one image key in two roles (images);
- ``same_content``: two keys whose files are byte-identical, by SHA-256 (pairs);
- ``same_group``: one patient/source group in two roles (groups);
- ``near_duplicate``: two different files that are copies of one cell (pairs): rotated by any
  angle, shifted, sheared, flipped or re-encoded. Found in two stages: a cheap screen (64-bit
  DCT perceptual hashes within ``--hash-threshold`` bits over the 8 rotations/flips, or among
  each image's nearest by a rotation-invariant ring signature), then verification on pixels:
  the pair is aligned (mirror, rotation, shift, affine refinement) and counts only if its
  detail (band-pass luma) correlates at ``--similarity`` or more. Rotation fill is ignored.
  Copies share their label, so verified pairs of two classes estimate the false-positive rate,
  printed beside the counts (with a warning above 1 %).

Prints a table per fold (counts and one example pair each) and writes ``<split>_leakage.csv``
(one row per fold, role pair and kind), ``<split>_leakage.md`` and a contact sheet
``<split>_leakage_pairs.png`` (the flagged pairs side by side, hash distance and similarity
under them, grouped by role pair, the most similar first) next to the split file.

Exit status: 0 when no overlap of any kind is found, 1 when some is (the table says where),
2 on bad input (a missing or mismatched split, an unreadable image, an unwritable folder).
Splits that fail ``load_split``'s own checks (an image or patient in two roles of a grouped
split, a hand-edited file) are refused with status 2 before any hashing.

Examples::

    python check_leakage.py data/splits/kaggle_predefined_seed0.csv
    python check_leakage.py data/splits/all_idb2_lpo_p5_seed0.csv --data-root /data/ALL_IDB2/img
"""
from __future__ import annotations

import argparse
import sys
import time

# Hash screen: pairs within this Hamming distance (of 64 bits) are verified on pixels (as are
# each image's nearest by ring signature). Copies of one cell lie at 0-10 bits, but so do
# look-alike cells; verification tells them apart.
HASH_THRESHOLD = 10
SIMILARITY = 0.9      # detail NCC (-1..1) a verified copy reaches; 0.9 was calibrated on real
                      # Kaggle copies (leukocyte_cnn/splits/near_duplicate_verify.py)
MAX_SHEET_PAIRS = 60  # pairs drawn on the contact sheet at most
WORKERS = None        # decoding threads (None: up to 8, one per CPU)
MAX_FOLDS_SHOWN = 12  # more folds than this: stdout lists only the folds with overlaps


def parse_args(argv=None) -> argparse.Namespace:
    from leukocyte_cnn.base.knobs import knob_argument

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("split", help="split CSV written by cross_validation_splits.py "
                                      "(its .json must sit beside it)")
    parser.add_argument("--data-root", default=None,
                        help="dataset folder on this machine (default: the one recorded in the "
                             "split's JSON)")
    knob_argument(parser, "--hash-threshold", knob="HASH_THRESHOLD", type=int,
                  help=f"near-duplicate if the perceptual hashes differ in at most this many "
                       f"of 64 bits (HASH_THRESHOLD, default {HASH_THRESHOLD}; 0 finds only "
                       "rotated/flipped copies of identical pixels)")
    knob_argument(parser, "--similarity", knob="SIMILARITY", type=float,
                  help="pixel similarity (NCC of aligned detail, -1..1) at or above which a "
                       f"screened pair is a copy (SIMILARITY, default {SIMILARITY}, calibrated "
                       "on real data)")
    knob_argument(parser, "--max-sheet-pairs", knob="MAX_SHEET_PAIRS", type=int,
                  help=f"pairs drawn on the contact sheet at most (MAX_SHEET_PAIRS, default "
                       f"{MAX_SHEET_PAIRS})")
    parser.add_argument("--out-dir", default=None,
                        help="where <split>_leakage.csv/.md go (default: beside the split file)")
    knob_argument(parser, "--workers", knob="WORKERS", type=int,
                  help="decoding threads (WORKERS, default: one per CPU, at most 8)")
    return parser.parse_args(argv)


def report_markdown(report, split, threshold: int) -> str:
    """The ``.md`` file: what was checked, totals, and the per-fold table."""
    from leukocyte_cnn.reporting.summary import markdown_table
    from leukocyte_cnn.splits.leakage import wide_table

    settings = split.settings
    verdict = ("**Clean**: no overlap of any kind between the roles of any fold." if report.clean
               else f"**Leaks found**: {report.n_leaks} overlaps (see the tables).")
    lines = [f"# Leakage audit of `{split.csv_path.name}`", "",
             f"- dataset `{settings.get('dataset')}`, method `{settings.get('method')}`, "
             f"{len(split.folds)} fold(s), dataset hash `{str(settings.get('dataset_hash'))[:12]}`"
             + (" (split marked leaky: image-level split, --method random or --ignore-groups)"
                if settings.get("leaky") else ""),
             f"- {report.n_images} images hashed; near-duplicate screen: DCT pHash within "
             f"{threshold} of 64 bits (best of 8 rotations/flips) or ring-signature neighbours; "
             f"verified on pixels at similarity {report.calibration.get('similarity')}",
             "- " + calibration_line(report),
             "- across the whole data (any roles): "
             f"{report.duplicates_within_data['identical_pairs']}"
             f" pairs of identical files, {report.duplicates_within_data['near_duplicate_pairs']}"
             " near-duplicate pairs", "", verdict, "",
             "Counts: `same_image` images and `same_group` groups that hold two roles of a fold; "
             "`same_content` (identical bytes) and `near_duplicate` pairs of files split between "
             "the two roles.", "", "## Totals over folds", "",
             markdown_table(report.totals()), "", "## Per fold", "",
             markdown_table(wide_table(report)), ""]
    return "\n".join(lines)


def calibration_line(report) -> str:
    """Screened and verified pairs, and the false-positive rate estimated from those that
    cross classes (copies share their label)."""
    c = report.calibration
    rate = c.get("false_positive_rate", 0.0)
    joined = c.get("joined_pairs", 0)
    text = (f"near-duplicates: {c.get('pairs_screened', 0)} pairs screened, "
            f"{c.get('verified_pairs', 0)} verified as copies, {c.get('cross_class_pairs', 0)} "
            "of them across classes"
            + (f" ({joined} more pairs joined as copies of copies, not compared)"
               if joined else "")
            + "; estimated false-positive rate "
            + ("n/a (one class)" if rate != rate else f"{100 * rate:.1f} %"))
    if report.false_positive_warning:
        text += " - WARNING: above 1 %, look at the contact sheet and raise --similarity"
    return text


def main(args: argparse.Namespace):
    import pandas as pd

    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.io import ensure_writable_dir, write_csv, write_text
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.reporting.contact_sheet import contact_sheet
    from leukocyte_cnn.splits.leakage import audit, wide_table
    from leukocyte_cnn.splits.split_files import load_split

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    threshold, similarity = s["HASH_THRESHOLD"], s["SIMILARITY"]
    if not 0 <= threshold <= 64:
        raise InputError(f"--hash-threshold {threshold}: must be 0..64 bits")
    start = time.perf_counter()
    split = load_split(args.split, data_root=args.data_root)
    out_dir = ensure_writable_dir(args.out_dir or split.csv_path.parent)  # fail before hashing
    if not -1 <= similarity <= 1:
        raise InputError(f"--similarity {similarity}: must be -1..1")
    report = audit(split.table, threshold=threshold, workers=s["WORKERS"],
                   similarity=similarity)
    flagged = report.copies[report.copies["roles"] != "same role"] if len(report.copies) else \
        report.copies
    sheet_path = out_dir / f"{split.name}_leakage_pairs.png"
    contact_sheet(flagged, sheet_path, max_pairs=s["MAX_SHEET_PAIRS"],
                  title=f"{split.csv_path.name}: {len(flagged)} near-duplicate pair(s) between "
                        "roles (distance: hash bits; similarity: aligned detail NCC)")
    csv_path = write_csv(out_dir / f"{split.name}_leakage.csv", report.table)
    md_path = write_text(out_dir / f"{split.name}_leakage.md",
                         report_markdown(report, split, threshold))

    wide = wide_table(report, only_leaks=len(split.folds) > s["MAX_FOLDS_SHOWN"])
    print(f"{split.csv_path}: {split.settings.get('dataset')}, method "
          f"{split.settings.get('method')}, {len(split.folds)} fold(s), {report.n_images} images "
          f"hashed, threshold {threshold} bits")
    if len(wide):
        with pd.option_context("display.width", 200, "display.max_colwidth", 90):
            print(wide.to_string(index=False))
    totals = report.totals().set_index("roles")
    for roles, row in totals.iterrows():
        found = ", ".join(f"{kind} {int(n)}" for kind, n in row.items() if n)
        print(f"{roles}: {found or 'clean'}")
    print(calibration_line(report))
    print(f"{'LEAKS FOUND' if not report.clean else 'clean'} "
          f"({time.perf_counter() - start:.1f} s); wrote {csv_path}, {md_path.name} and "
          f"{sheet_path.name}")
    return report


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: sys.exit(0 if main(parse_args()).clean else 1))
