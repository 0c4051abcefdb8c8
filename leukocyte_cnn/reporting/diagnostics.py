"""What a run's summary shows beyond its metrics: calibration, group-level results, errors.

:func:`run_diagnostics` is called by ``summary.summarize_run`` for every cross-validation run
and returns what ``summary.md`` and ``report.html`` add:

- **Calibration** (:mod:`leukocyte_cnn.reporting.calibration`): the expected calibration
  error (15 equal-width bins, top label), the Brier score and the NLL of the pooled test
  predictions with bootstrap intervals, raw and, where every fold has a temperature fitted on
  its validation images (``fold_XX/temperature.json``), temperature-scaled side by side;
  ``calibration.csv`` and the reliability diagram ``reliability.png``.
- **Per group** (:mod:`leukocyte_cnn.reporting.group_metrics`), where test images share a
  group (C-NMC patients, ALL-IDB1 smears, Kaggle copies of one cell): each group's prediction
  is the mean of its images' probabilities; accuracy, balanced accuracy and ROC-AUC per image
  and per group with intervals bootstrapped over whole groups (``group_metrics.csv``), and
  every group's row (``per_group.csv``; shown in full for C-NMC, per patient).
- **Errors** (:mod:`leukocyte_cnn.reporting.gallery`): the misclassified test cells, most
  confident first, and a few correct ones per class, each with its Grad-CAM heatmap
  (``errors_gallery.png``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from leukocyte_cnn.base.errors import InputError
from leukocyte_cnn.base.io import write_csv

RELIABILITY = "reliability.png"
GALLERY = "errors_gallery.png"
PATIENT_DATASETS = ("cnmc",)  # datasets whose groups are patients: the per-patient table


@dataclasses.dataclass
class Diagnostics:
    """``summary.md`` lines, ``report.html`` sections (heading, HTML) and figures with
    captions, in the order they are shown."""

    lines: list[str] = dataclasses.field(default_factory=list)
    sections: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    figures: list[Path] = dataclasses.field(default_factory=list)
    captions: dict[str, str] = dataclasses.field(default_factory=dict)


def run_diagnostics(run_dir: Path, predictions: pd.DataFrame, class_names: Sequence[str],
                    config: dict, *, title_suffix: str = "",
                    markdown_table: Callable[[pd.DataFrame], str],
                    gallery: bool = True) -> Diagnostics:
    """Calibration, group-level results and the error gallery of a run (see the module)."""
    from leukocyte_cnn.reporting.html_report import esc, table_html

    out = Diagnostics()
    for part in (_calibration, _groups):
        lines, sections, figures = part(run_dir, predictions, list(class_names), config,
                                        title_suffix, markdown_table)
        out.lines += lines
        out.sections += [(h, table_html(t) + (f"<p class=note>{esc(n)}</p>" if n else ""))
                         for h, t, n in sections]
        out.figures += [path for path, _ in figures]
        out.captions.update({path.name: caption for path, caption in figures})
    if gallery:
        try:
            path = _gallery(run_dir)
        except InputError as problem:  # images or models moved away: the summary still stands
            print(f"note: errors gallery not drawn: {problem}", flush=True)
            out.lines += ["## Errors", "", f"Not drawn: {problem}", ""]
            path = None
        if path is None:  # an older gallery would be embedded as this run's: never reused
            (run_dir / GALLERY).unlink(missing_ok=True)
        else:
            out.lines += ["## Errors", "", "The misclassified test cells, most confident first, "
                          "and a few correct ones per class, each with its Grad-CAM heatmap "
                          f"(the last convolutional block of its fold's network): `{path.name}`, "
                          "under Figures.", ""]
            out.figures.append(path)
            out.captions[path.name] = ("Misclassified test cells, most confident first, then "
                                       "correct ones; Grad-CAM over each cell")
    return out


def _calibration(run_dir, predictions, class_names, config, suffix, markdown_table):
    from leukocyte_cnn.reporting.calibration import (
        calibration_table,
        plot_reliability_diagram,
        read_temperatures,
        shown_calibration_table,
    )

    temperatures = read_temperatures(run_dir)
    folds = {int(f) for f in predictions["fold"].unique()}
    scaled = temperatures if folds <= set(temperatures) else None
    table = calibration_table(predictions, class_names, scaled)
    write_csv(run_dir / "calibration.csv", table)
    shown = shown_calibration_table(table)
    note = ("Do the probabilities mean what they say? Expected calibration error (top-label "
            "probability in 15 equal-width bins: the mean gap between confidence and accuracy, "
            "weighted by the bin's images), Brier score (sum over classes of the squared "
            "error, 0-2) and negative log-likelihood, lower is better; 95 % bootstrap "
            "intervals as the metrics'. ")
    if scaled is not None:
        values = ", ".join(f"fold {f}: {scaled[f]:.2f}" for f in sorted(folds))
        note += ("Temperature-scaled: each fold's probabilities divided in the logit by the "
                 "temperature fitted on that fold's validation images (never its test "
                 f"images): {values}.")
    else:
        note += ("No temperature-scaled column: not every fold has a temperature fitted on "
                 "its validation images.")
    figure = plot_reliability_diagram(predictions, class_names, run_dir / RELIABILITY,
                                      scaled, title_suffix=suffix)
    lines = ["## Calibration", "", note, "", markdown_table(shown), ""]
    return (lines, [("Calibration", shown, note)],
            [(figure, "Reliability diagram: accuracy against confidence, pooled test folds")])


def _groups(run_dir, predictions, class_names, config, suffix, markdown_table):
    from leukocyte_cnn.reporting.group_metrics import (
        group_metrics_table,
        has_shared_groups,
        per_group_table,
        shown_group_metrics,
    )

    if not has_shared_groups(predictions):
        return [], [], []
    table = group_metrics_table(predictions, class_names)
    per_group = per_group_table(predictions, class_names)
    write_csv(run_dir / "group_metrics.csv", table)
    write_csv(run_dir / "per_group.csv", per_group)
    shown = shown_group_metrics(table)
    mixed = int(table["n_mixed_groups"].iloc[0])
    note = (f"{int(table['n_groups'].iloc[0])} groups (patients, smears or source cells) hold "
            f"the {int(table['n_images'].iloc[0])} test images; a group's prediction is the "
            "mean of its images' probabilities. Intervals resample whole groups."
            + (f" {mixed} groups hold images of several classes; their group label is the "
               "majority of their images' labels." if mixed else ""))
    lines = ["## Per group", "", note, "", markdown_table(shown), "",
             "Every group's prediction: `per_group.csv`.", ""]
    sections = [("Per group", shown, note)]
    if any(name in str(config.get("dataset", "")) for name in PATIENT_DATASETS):
        patients = per_group.rename(columns={"group": "patient"})
        lines += ["### Per patient", "", markdown_table(patients), ""]
        sections.append(("Per patient", patients, ""))
    return lines, sections, []


def _gallery(run_dir: Path) -> Path | None:
    from leukocyte_cnn.reporting.gallery import error_gallery

    return error_gallery(run_dir, run_dir / GALLERY)
