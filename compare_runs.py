"""Put finished runs side by side: one table and one figure, with intervals and paired tests.

Give it run folders (any script's ``results/<run>``, e.g. the main job with two seeds, or a
run against a baseline) or study folders (each setting becomes an entry). For every entry the
table shows pooled test accuracy, ROC-AUC and ECE with 95 % bootstrap intervals, and for every
entry but the best its difference to the best one, with a 95 % interval and a paired test on
the same test images (exact McNemar for accuracy, DeLong for a binary ROC-AUC, a paired
bootstrap for a multiclass one and for the expected calibration error (ECE, top-label, 15
bins); a paired t-test over seeds for studies whose entries share trial seeds). Where test
images share groups (C-NMC patients, ALL-IDB1 smears), a second table compares the
group-level accuracy (each group's prediction is the mean of its images' probabilities),
bootstrapped over whole groups and paired by McNemar on the same groups. Runs made from
other images (another dataset hash) are compared unpaired: intervals only, no test. Reads
only ``settings.json`` and ``fold_XX/predictions.csv``.

    python compare_runs.py results/seed0/linear_cnn_binary_synthetic_all_idb2_quick \\
        results/seed1/linear_cnn_binary_synthetic_all_idb2_quick
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

METRICS = ("accuracy", "roc_auc", "ece")  # compared metrics; the first one picks the best entry
OUT_DIR = "results/comparisons"     # where a comparison folder goes unless --out says
LABELS = {"accuracy": "accuracy", "roc_auc": "ROC-AUC",  # metric names in tables and figures
          "ece": "ECE (lower is better)"}
GROUP_METRICS = ("accuracy",)       # compared per group (patient, smear) where groups repeat


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (or study folders) to compare")
    parser.add_argument("--out", default=None,
                        help=f"folder for comparison.csv/.md/.png and report.html (default "
                             f"{OUT_DIR}/<names of the runs>)")
    parser.add_argument("--names", default=None,
                        help="comma-separated names of the entries, in order (default: the "
                             "shortest distinct ends of the folder paths)")
    return parser.parse_args(argv)


def distinct_names(paths: list[Path]) -> list[str]:
    """The shortest path ends that tell the folders apart (``seed0/run``, ``seed1/run``)."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def entries_of(run: Path, name: str) -> list:
    """(name, folder, predictions) of a run folder, or one per setting of a study folder."""
    import pandas as pd

    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.run_folder import PREDICTIONS, load_predictions
    from leukocyte_cnn.reporting.comparisons import trial_predictions

    if list(run.glob(f"fold_*/{PREDICTIONS}")):
        return [(name, run, load_predictions(run))]
    settings = sorted({p.parents[2].name for p in run.glob(f"*/trial_*/fold_*/{PREDICTIONS}")})
    if not settings:
        raise InputError(f"{run}: no finished folds (no fold_*/{PREDICTIONS} and no study "
                         "settings with finished trials)")
    found = []
    for setting in settings:
        table = trial_predictions(run, setting)
        if isinstance(table, pd.DataFrame):
            found.append((f"{name}/{setting}", run, table))
    return found


def main(args: argparse.Namespace):
    import pandas as pd

    from leukocyte_cnn.base.errors import InputError
    from leukocyte_cnn.base.io import write_csv, write_text
    from leukocyte_cnn.base.knobs import resolve_settings
    from leukocyte_cnn.base.run_folder import read_settings
    from leukocyte_cnn.reporting.calibration import expected_calibration_error
    from leukocyte_cnn.reporting.html_report import (
        esc,
        read_split_settings,
        split_protocol,
        table_html,
        write_report,
    )
    from leukocyte_cnn.reporting.stats import N_BOOTSTRAP, compare_to_best, shown_comparison
    from leukocyte_cnn.reporting.summary import LEAKY_TEXT, markdown_table

    s = resolve_settings(sys.modules[__name__], args, quick=False)
    metrics, labels = tuple(s["METRICS"]), s["LABELS"]
    # 1. The runs, their class lists and images.
    runs = [Path(r) for r in args.runs]
    names = args.names.split(",") if args.names else distinct_names(runs)
    if len(names) != len(runs):
        raise InputError(f"--names {args.names}: {len(names)} names for {len(runs)} runs")
    configs = [read_settings(run)["config"] for run in runs]
    class_lists = {tuple(c["class_names"]) for c in configs}
    if len(class_lists) > 1:
        raise InputError(f"{runs[1]}: classes {list(configs[1]['class_names'])} differ from "
                         f"{runs[0]}'s {list(configs[0]['class_names'])}; nothing to compare")
    class_names = list(configs[0]["class_names"])
    entries = [e for run, name in zip(runs, names, strict=True) for e in entries_of(run, name)]
    tables = {name: table for name, _, table in entries}
    paired = len({c.get("dataset_hash") for c in configs}) == 1
    all_trials = all("trial" in t for t in tables.values())
    if not all_trials:  # a study setting among plain runs: its first trial stands for it
        tables = {n: (t[t["trial"] == t["trial"].min()].drop(columns="trial")
                      if "trial" in t else t) for n, t in tables.items()}

    # 2. Intervals, differences to the best entry, paired tests.
    functions = {"ece": expected_calibration_error}
    if paired:
        numbers = compare_to_best(tables, class_names, metrics, pair_on=("image",),
                                  seeds_column="trial" if all_trials else None,
                                  functions=functions)
    else:  # other images under the same names: no pairing, intervals only
        numbers = pd.concat([compare_to_best({n: t}, class_names, metrics, functions=functions)
                             for n, t in tables.items()], ignore_index=True)
        for m in metrics:
            numbers[f"{m}_test"] = "not paired: runs of different images"
        numbers["best"] = numbers[metrics[0]] == numbers[metrics[0]].max()
    folders = {name: str(folder) for name, folder, _ in entries}
    numbers.insert(1, "run_dir", numbers["name"].map(folders))
    numbers.insert(2, "leaky", [bool(read_settings(folders[n])["config"].get("leaky"))
                                for n in numbers["name"]])
    shown = shown_comparison(numbers, metrics, labels)
    shown.insert(1, "test images", numbers["n_images"])
    if not paired:
        shown = shown[[c for c in shown.columns if not c.startswith(("Δ", "p ("))]]

    # 3. Table, figure, report.
    out = Path(args.out) if args.out else Path(s["OUT_DIR"]) / default_folder_name(names)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "comparison.csv", numbers)
    figure = plot_comparison(numbers, metrics, labels, out / "comparison.png")
    note = (f"Pooled test predictions of each run; 95 % intervals by a seeded percentile "
            f"bootstrap over test images ({N_BOOTSTRAP:,} replicates). "
            + (f"Δ vs best: difference to the run with the highest {labels[metrics[0]]}, "
               "paired on the same test images (same file names and dataset hash); "
               "p from the test named beside it; p ≥ 0.05: the runs cannot be told apart."
               if paired else "The runs were made from different images (dataset hashes "
               "differ), so they are not paired and no difference is tested."))
    leaky = bool(numbers["leaky"].any())
    lines = [f"# Comparison of {len(tables)} runs", ""]
    if leaky:
        lines += [f"> **Some runs used a {LEAKY_TEXT}** (column `leaky`)", ""]
    lines += [*[f"- `{n}`: `{f}`" for n, f in folders.items()], "", note, "",
              markdown_table(shown), "", f"![comparison]({figure.name})", ""]
    sections = [("Comparison", table_html(shown) + f"<p class=note>{esc(note)}</p>")]
    groups = compare_groups(tables, class_names, s["GROUP_METRICS"], labels, paired)
    if groups is not None:
        group_note = ("Per group (patient, smear or source cell: each group's prediction is "
                      "the mean of its test images' probabilities); intervals by a bootstrap "
                      "over groups, differences paired on the same groups (exact McNemar).")
        write_csv(out / "comparison_groups.csv", groups[0])
        lines += ["## Per group", "", group_note, "", markdown_table(groups[1]), ""]
        sections.append(("Per group", table_html(groups[1])
                         + f"<p class=note>{esc(group_note)}</p>"))
    write_text(out / "comparison.md", "\n".join(lines))
    write_report(out, title=f"Comparison of {len(tables)} runs",
                 subtitle=", ".join(tables), banner=LEAKY_TEXT if leaky else "",
                 facts=[(n, f"<code>{esc(f)}</code> — "
                            + esc(split_protocol(c, read_split_settings(c, f))))
                        for (n, f), c in zip(folders.items(), _configs_of(folders), strict=True)],
                 sections=sections,
                 figures=[figure], figure_captions={"_wide": (figure.name,)})
    print(f"\n{out / 'comparison.md'}:\n\n{markdown_table(shown)}\nfigure: {figure}\n"
          f"report: {out / 'report.html'}")
    return numbers


def compare_groups(tables: dict, class_names: list, metrics, labels: dict, paired: bool):
    """(numbers, shown) of the group-level comparison, or None when no entry's test images
    share groups: each entry's per-group predictions (``group_metrics.group_predictions``)
    compared as the images are, paired on the same groups."""
    import pandas as pd

    from leukocyte_cnn.reporting.group_metrics import group_predictions, has_shared_groups
    from leukocyte_cnn.reporting.stats import compare_to_best, shown_comparison

    if not all(has_shared_groups(t) for t in tables.values()):
        return None
    grouped = {n: group_predictions(t, class_names) for n, t in tables.items()}
    if paired:
        numbers = compare_to_best(grouped, class_names, metrics, pair_on=("group",))
    else:
        numbers = pd.concat([compare_to_best({n: t}, class_names, metrics, pair_on=("group",))
                             for n, t in grouped.items()], ignore_index=True)
        numbers["best"] = numbers[metrics[0]] == numbers[metrics[0]].max()
    shown = shown_comparison(numbers, metrics, {m: f"group {labels.get(m, m)}" for m in metrics})
    shown.insert(1, "test groups", numbers["n_images"])
    if not paired:
        shown = shown[[c for c in shown.columns if not c.startswith(("Δ", "p ("))]]
    return numbers, shown


def _configs_of(folders: dict) -> list[dict]:
    from leukocyte_cnn.base.run_folder import read_settings

    return [read_settings(f)["config"] for f in folders.values()]


def default_folder_name(names: list[str]) -> str:
    text = "_vs_".join(n.replace("/", "-") for n in names)
    if len(text) <= 100:
        return text
    return text[:80] + "_" + hashlib.sha256(text.encode()).hexdigest()[:10]


def plot_comparison(numbers, metrics, labels: dict, path: Path) -> Path:
    """One panel per metric: each run's value with its 95 % interval, the best one filled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from leukocyte_cnn.reporting.summary import save_figure

    n = len(numbers)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.55 * n + 1.6),
                             squeeze=False, sharey=True)
    rows = np.arange(n)[::-1]
    for ax, metric in zip(axes[0], metrics, strict=True):
        value = numbers[metric].to_numpy(dtype=float)
        low = numbers[f"{metric}_ci_low"].to_numpy(dtype=float)
        high = numbers[f"{metric}_ci_high"].to_numpy(dtype=float)
        errors = np.vstack([np.nan_to_num(value - low), np.nan_to_num(high - value)])
        for i in range(n):
            best = bool(numbers["best"].iloc[i])
            ax.errorbar(value[i], rows[i], xerr=errors[:, i:i + 1], fmt="o", capsize=4,
                        color="C3" if best else "C0", mfc="C3" if best else "white", ms=7)
            ax.annotate(f"{value[i]:.3f}", (value[i], rows[i]), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=8)
        ax.set_title(f"{labels.get(metric, metric)} (95 % CI)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.7, n - 0.3)
    axes[0][0].set_yticks(rows, numbers["name"].tolist())
    fig.suptitle("Runs compared on their pooled test images (best in red)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    from leukocyte_cnn.base.cli import run_main

    run_main(lambda: main(parse_args()))
