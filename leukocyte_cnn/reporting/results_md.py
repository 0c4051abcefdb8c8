"""RESULTS.md: tables regenerated from the run folders that the commands above them write.

RESULTS.md is prose a person writes (what was run, the split protocol in words, the exact
command) around tables that are never typed by hand. Each table sits between two markers::

    <!-- results: results/allidb2_linear_k5 -->
    ...regenerated...
    <!-- /results -->

and ``summarize_results.py --results-md RESULTS.md`` rewrites what is between them from the
run folder(s) named in the opening marker: a run's ``summary.csv`` (pooled metric with its 95 %
bootstrap interval, mean ± std over folds), a learning curve's ``learning_curve.csv``, a
study's ``comparison.csv``, or source checkpoints (``results/checkpoints/<name>.keras``: the
held-out accuracy of each, from its sidecar); under each table one line says which commit made
it, on what machine, and how long it took (wall and CPU, summed over folds). A block whose run
folders are not on this machine is left as it is, so a fresh checkout regenerates nothing
wrongly.

:func:`check_tables` is what a test runs: every table must have a command (a fenced block
starting with ``python``) and a ``Protocol:`` line above it in its section.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from leukocyte_cnn.base.errors import InputError

BLOCK = re.compile(r"(<!-- results: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /results -->)",
                   re.S)
METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "macro_f1")
TABLES = ("learning_curve.csv", "comparison.csv", "summary.csv")  # what a block can show


def regenerate(markdown_path: str | os.PathLike, base: str | os.PathLike = ".") -> list[str]:
    """Rewrite every results block of ``markdown_path`` whose run folders exist under
    ``base``; return one line per block saying what happened."""
    from leukocyte_cnn.base.io import write_text

    markdown_path = Path(markdown_path)
    text = markdown_path.read_text(encoding="utf-8")
    notes: list[str] = []

    def replace(match: re.Match) -> str:
        runs = [Path(base) / r for r in match.group("spec").split()]
        if all(r.suffix == ".keras" for r in runs):  # source checkpoints of transfer learning
            missing = [str(r) for r in runs if not sidecar_of(r).is_file()]
            if missing:
                notes.append(f"kept (checkpoint not here): {', '.join(missing)}")
                return match.group(0)
            notes.append(f"regenerated from {', '.join(str(r) for r in runs)}")
            return f"{match.group(1)}{source_table(runs)}\n{match.group(4)}"
        missing = [str(r) for r in runs if not r.is_dir()]
        if missing:
            notes.append(f"kept (run folder not here): {', '.join(missing)}")
            return match.group(0)
        unfinished = [str(r) for r in runs if not any((r / f).is_file() for f in TABLES)]
        if unfinished:
            notes.append(f"kept (run not summarized yet): {', '.join(unfinished)}")
            return match.group(0)
        body = "\n\n".join(run_table(r) for r in runs)
        notes.append(f"regenerated from {', '.join(str(r) for r in runs)}")
        return f"{match.group(1)}{body}\n{match.group(4)}"

    new = BLOCK.sub(replace, text)
    if new != text:
        write_text(markdown_path, new)
    return notes


def run_table(run_dir: Path) -> str:
    """One run's markdown table and its provenance line."""
    from leukocyte_cnn.reporting.summary import markdown_table

    if (run_dir / "learning_curve.md").is_file():
        # the curve's own table: mean ± std per size and arm, Δ vs scratch, McNemar p
        lines = (run_dir / "learning_curve.md").read_text(encoding="utf-8").splitlines()
        rows = [line for line in lines if line.startswith("|")]
        missing = [line for line in lines if line.startswith("Test folds") and
                   "Not finished" in line]
        note = ("\n\n" + missing[0][missing[0].index("Not finished"):]) if missing else ""
        return "\n".join(rows) + note + "\n\n" + provenance_line(run_dir)
    if (run_dir / "learning_curve.csv").is_file():
        table = pd.read_csv(run_dir / "learning_curve.csv")
    elif (run_dir / "comparison.csv").is_file():
        table = pd.read_csv(run_dir / "comparison.csv")
    elif (run_dir / "summary.csv").is_file():
        table = summary_rows(pd.read_csv(run_dir / "summary.csv"))
    else:
        raise InputError(f"{run_dir}: no summary.csv, comparison.csv or learning_curve.csv; "
                         "run summarize_results.py on it first")
    return markdown_table(table).rstrip() + "\n\n" + provenance_line(run_dir)


def sidecar_of(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def source_table(checkpoints: list[Path]) -> str:
    """Source checkpoints (``resnext_transfer_learning.py --pretrain``): one row each, the
    held-out accuracy with its interval, from the sidecar and the training's own files."""
    from leukocyte_cnn.reporting.summary import markdown_table

    rows, notes = [], []
    for checkpoint in checkpoints:
        meta = json.loads(sidecar_of(checkpoint).read_text())
        training = checkpoint.with_name(f"{checkpoint.stem}_training")
        epochs = pd.read_csv(training / "epochs.csv") if (training / "epochs.csv").is_file() \
            else pd.DataFrame()
        timing = json.loads((training / "timing.json").read_text()) \
            if (training / "timing.json").is_file() else {}
        low, high = meta.get("held_out_accuracy_ci") or (float("nan"), float("nan"))
        arch = meta.get("architecture", {})
        rows.append({
            "checkpoint": checkpoint.stem, "source": meta.get("source_dataset"),
            "classes": len(meta.get("class_names", [])),
            "network": f"{arch.get('variant')} {arch.get('image_size')} px",
            "train / val / held-out": f"{meta.get('n_train')} / {meta.get('n_val')} / "
                                      f"{meta.get('n_held_out', '?')}",
            "epochs (best)": (f"{len(epochs)} ({int(epochs['val_loss'].idxmin()) + 1})"
                              if "val_loss" in epochs else "?"),
            "held-out accuracy [95 % CI]": f"{meta.get('held_out_accuracy', float('nan')):.3f} "
                                           f"[{low:.3f}, {high:.3f}]"})
        machine = (meta.get("provenance") or {}).get("machine", {})
        commit = ((meta.get("provenance") or {}).get("git") or {}).get("commit", "?")[:10]
        notes.append(f"`{checkpoint.stem}`: commit {commit} · wall "
                     f"{_duration(timing.get('fold_wall_seconds', timing.get('train_seconds', 0)))}"
                     f" · {machine.get('cpus', '?')} CPUs ({machine.get('platform', '?')})")
    return (markdown_table(pd.DataFrame(rows)).rstrip() + "\n\n<sub>" + "; ".join(notes)
            + "</sub>")


def summary_rows(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in summary.itertuples(index=False):
        if row.metric not in METRICS:
            continue
        ci = (f" [{row.ci95_low:.3f}, {row.ci95_high:.3f}]"
              if "ci95_low" in summary and pd.notna(row.ci95_low) else "")
        rows.append({"metric": row.metric, "pooled [95 % CI]": f"{row.pooled:.3f}{ci}",
                     "per fold (mean ± std)": f"{row.fold_mean:.3f} ± {row.fold_std:.3f}",
                     "folds": int(row.n_folds)})
    return pd.DataFrame(rows)


def provenance_line(run_dir: Path) -> str:
    """``commit …, N folds, wall …, CPU …, machine …`` from the run's fold records (for a
    comparison folder of ``compare_runs.py``: the runs it compares)."""
    if not (run_dir / "settings.json").is_file():
        return f"<sub>comparison `{run_dir.name}` (compare_runs.py): paired on the same test " \
               "images; the runs' own tables above say what made them</sub>"
    settings = json.loads((run_dir / "settings.json").read_text())
    timings = [json.loads(p.read_text()) for p in sorted(run_dir.rglob("timing.json"))]
    commits = sorted({(t.get("provenance") or {}).get("git", {}).get("commit", "?")[:10]
                      for t in timings}) or [settings["provenance"]["git"]["commit"][:10]]
    wall = sum(t.get("fold_wall_seconds", t.get("train_seconds", 0)) for t in timings)
    cpu = sum(t.get("fold_cpu_seconds", 0) for t in timings)
    machine = settings["provenance"].get("machine", {})
    leaky = " · **LEAKY split**" if settings["config"].get("leaky") else ""
    return (f"<sub>commit {', '.join(commits)} · {len(timings)} trained folds · wall "
            f"{_duration(wall)}, CPU {_duration(cpu)} · {machine.get('cpus', '?')} CPUs "
            f"({machine.get('platform', '?')}) · run `{run_dir.name}`{leaky}</sub>")


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def check_tables(markdown: str) -> list[str]:
    """Problems of RESULTS.md: tables (markdown pipes) without a command or a protocol line
    above them in their section. Empty when every table is documented."""
    problems = []
    for section in re.split(r"\n(?=## )", markdown):
        title = section.splitlines()[0] if section.strip() else ""
        lines = section.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("|") or (i and lines[i - 1].startswith("|")):
                continue
            above = "\n".join(lines[:i])
            if not re.search(r"```(bash|sh)?\n(\.venv/bin/)?python3? ", above):
                problems.append(f"{title}: table at line {i + 1} has no command above it")
            if "Protocol:" not in above:
                problems.append(f"{title}: table at line {i + 1} has no 'Protocol:' line")
    return problems
