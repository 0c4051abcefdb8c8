"""``report.html``: one self-contained page per run folder, to open in any browser.

Everything is inside the file: the figures as base64 PNG ``data:`` URIs, the tables, the
settings, the provenance (commit, libraries, machine, command) and the split protocol in
words, so the page can be mailed or attached to a lab notebook without its folder. It is
rebuilt from the run folder's files, like ``summary.md``, whenever the summary is.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from leukocyte_cnn.base.io import write_text

REPORT = "report.html"

STYLE = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 48px; background: #fff;
       box-shadow: 0 0 0 1px #d0d7de; min-height: 100vh; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #d8dee4; }
.subtitle { color: #57606a; margin: 0 0 16px; }
.banner { border: 2px solid #cf222e; background: #ffebe9; color: #82071e; padding: 10px 14px;
          border-radius: 6px; font-weight: 600; margin: 12px 0; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 12px 0; }
.facts dt { color: #57606a; } .facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 14px; }
th, td { padding: 5px 10px; border-bottom: 1px solid #d8dee4; text-align: right; }
th { background: #f6f8fa; font-weight: 600; }
th:first-child, td:first-child, th.text { text-align: left; }
td { white-space: nowrap; }
td.text { text-align: left; } td.long { white-space: normal; max-width: 560px; }
tr:hover td { background: #f6f8fa; }
.note { color: #57606a; font-size: 13.5px; max-width: 900px; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 18px; }
figure { margin: 0; border: 1px solid #d8dee4; border-radius: 6px; padding: 8px; background: #fff; }
figure.wide { grid-column: 1 / -1; justify-self: center; max-width: 900px; width: 100%; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: #57606a; font-size: 13px; margin-top: 4px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 13px;
       background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
details { margin: 6px 0; } summary { cursor: pointer; color: #0969da; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0 4px; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 16px; min-width: 170px;
        background: #f6f8fa; }
.card .label { color: #57606a; font-size: 13px; }
.card .value { font-size: 24px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .sub { color: #57606a; font-size: 12.5px; font-variant-numeric: tabular-nums; }
footer { margin-top: 40px; color: #8c959f; font-size: 12.5px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def png_data_uri(path: str | os.PathLike) -> str:
    """``data:image/png;base64,...`` of a PNG file (refuses anything that is not a PNG)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_html(path: str | os.PathLike, caption: str = "", wide: bool = False) -> str:
    path = Path(path)
    caption = caption or path.stem.replace("_", " ")
    return (f'<figure{" class=wide" if wide else ""}><img src="{png_data_uri(path)}" '
            f'alt="{esc(caption)}"><figcaption>{esc(caption)} '
            f'(<code>{esc(path.name)}</code>)</figcaption></figure>')


def _cell(value, digits: int) -> tuple[str, bool]:
    """(text, is_text) of one table cell."""
    if isinstance(value, (bool, np.bool_)):
        return ("yes" if value else "no"), True
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}", False
    if isinstance(value, (float, np.floating)):
        return ("n/a" if math.isnan(value) else f"{value:.{digits}f}"), False
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str), True
    return str(value), True


def table_html(frame: pd.DataFrame, digits: int = 3) -> str:
    """A plain HTML table; numbers right-aligned, text left-aligned."""
    text_columns = [all(_cell(v, digits)[1] for v in frame[c]) and len(frame)
                    for c in frame.columns]
    head = "".join(f"<th{' class=text' if t else ''}>{esc(c)}</th>"
                   for c, t in zip(frame.columns, text_columns, strict=True))
    rows = []
    for row in frame.itertuples(index=False):
        cells = []
        for value in row:
            text, is_text = _cell(value, digits)
            kind = (" class='text long'" if len(text) > 40 else " class=text") if is_text else ""
            cells.append(f"<td{kind}>{esc(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def facts_html(facts: Sequence[tuple[str, str]]) -> str:
    """A definition list; values are HTML already (escape them with :func:`esc`)."""
    return ("<dl class=facts>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in facts)
            + "</dl>")


def read_split_settings(config: dict, run_dir: str | os.PathLike | None = None) -> dict:
    """The split's JSON beside its CSV (as recorded in ``config``), or {} when it is gone.

    A relative split path is looked up from the working directory, the repository and the
    folders above ``run_dir`` (the run may have started elsewhere); a JSON whose
    ``split_sha256`` differs from the run's is another split and is skipped."""
    split_file = config.get("split_file")
    if not split_file:
        return {}
    from leukocyte_cnn.base.provenance import REPO_ROOT

    above = list(Path(run_dir).resolve().parents) if run_dir else []
    wanted = config.get("split_sha256")
    for base in (Path.cwd(), REPO_ROOT, *above):
        candidate = (base / split_file).with_suffix(".json")
        try:
            found = json.loads(candidate.read_text()) if candidate.is_file() else None
        except (OSError, ValueError):
            found = None
        # another split under the same relative name is not this run's: keep looking
        if found is not None and (not wanted or found.get("split_sha256") in (None, wanted)):
            return found
    return {}


def split_protocol(config: dict, split: dict | None = None) -> str:
    """The split in words: what was tested, what trained, what chose the epoch, what is kept
    apart. ``split`` is the split's JSON (:func:`read_split_settings`), ``config`` the run's."""
    split = split or {}
    method = split.get("method") or config.get("split_method") or "?"
    k, p = split.get("k"), split.get("p")
    seed = split.get("seed", config.get("seed"))
    n_folds = split.get("n_folds") or config.get("n_folds")
    words = {
        "kfold": f"{k or n_folds}-fold stratified cross-validation: every image is a test image "
                 "in exactly one fold, predicted by a model that never saw it",
        "group_kfold": f"{k or n_folds}-fold cross-validation by group (patient or source cell): "
                       "all images of a group fall in one fold",
        "lpo": f"leave-{p}-out cross-validation ({n_folds} folds of {p} test images): every "
               "image is a test image once, predicted by a model that never saw it",
        "predefined": "the dataset's own training/test split: models learn from the owner's "
                      "training images and are tested once on its test images",
        "random": "one random image-level re-split of all images (training and test drawn "
                  "from the same pool, ignoring groups)",
    }
    text = words.get(method, f"method {method}, {n_folds} fold(s)")
    sentences = [text[0].upper() + text[1:] + (f" (split seed {seed})." if seed is not None
                                               else ".")]
    val = split.get("val_fraction")
    sentences.append("Early stopping and the kept checkpoint are chosen on validation images"
                     + (f" ({val:.0%} of each fold's non-test images)" if val else "")
                     + ", never on test images.")
    if split.get("grouped"):
        sentences.append("Images of one group (patient, subject or source cell) never sit on "
                         "both sides of a fold.")
    near = split.get("near_duplicate_groups")
    if isinstance(near, dict) and near.get("images_joined"):
        sentences.append(f"Identical and near-duplicate files ({near['images_joined']} images) "
                         f"were first joined into {near.get('groups_joined', 'their')} groups "
                         "by a perceptual hash, so no copy of a training cell validates or tests.")
    aside = split.get("set_aside")
    if aside:
        sentences.append(f"{len(aside)} training images that are verified copies of test images "
                         "in the owner's split were set aside, so no copy of a test cell trains "
                         "or validates.")
    excluded = split.get("excluded_classes") or config.get("excluded_classes")
    if excluded:
        names = ", ".join(excluded) if not isinstance(excluded, dict) else ", ".join(
            f"{c} ({n})" for c, n in excluded.items())
        sentences.append(f"Set aside (never trained or tested): {names}.")
    if split.get("leaky") or config.get("leaky"):
        sentences.append("LEAKY: copies of one source cell or images of one patient can sit in "
                         "both training and test, so these numbers overstate accuracy.")
    return " ".join(sentences)


def settings_table(config: dict, overrides: dict | None = None) -> pd.DataFrame:
    """Knobs (as they ran; ``set by`` names what changed one from the script's block: the
    ``overrides`` of ``settings.json``) and the other recorded settings as rows."""
    overrides = overrides or {}
    rows = [{"setting": k, "value": _short(v),
             "set by": (f"{overrides[k]['by']} (script: {_short(overrides[k].get('default'))})"
                        if k in overrides else "")}
            for k, v in sorted(config.get("knobs", {}).items()) if k != "QUICK"]
    skip = {"knobs", "class_names", "title"}
    rows += [{"setting": k, "value": _short(v), "set by": ""} for k, v in sorted(config.items())
             if k not in skip]
    return pd.DataFrame(rows, columns=["setting", "value", "set by"])


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def provenance_table(provenance: dict) -> pd.DataFrame:
    git = provenance.get("git", {})
    machine = provenance.get("machine", {})
    rows = [("commit", f"{git.get('commit', '?')}" + (" (uncommitted changes)"
                                                      if git.get("dirty") else "")),
            ("command", provenance.get("command", "")), ("started", provenance.get("time", "")),
            ("machine", f"{machine.get('host', '')}, {machine.get('platform', '')}, "
                        f"{machine.get('cpus', '?')} CPUs"),
            *[(name, version) for name, version in provenance.get("versions", {}).items()]]
    return pd.DataFrame(rows, columns=["what", "value"])


def figures_in(folder: str | os.PathLike, first: Iterable[str] = ()) -> list[Path]:
    """The PNGs of a folder (not of its subfolders): ``first`` in that order, then the rest.
    Hidden files (another job's temporary ``.<name>.<random>.tmp``) are never among them."""
    folder = Path(folder)
    found = sorted(p for p in folder.glob("*.png") if p.is_file() and not p.name.startswith("."))
    ordered = [folder / name for name in first if (folder / name) in found]
    return ordered + [p for p in found if p not in ordered]


def cards_html(cards: Sequence[tuple[str, str, str]]) -> str:
    """Headline numbers: (label, value, small print) boxes."""
    return "<div class=cards>" + "".join(
        f"<div class=card><div class=label>{esc(label)}</div><div class=value>{esc(value)}"
        f"</div><div class=sub>{esc(sub)}</div></div>" for label, value, sub in cards) + "</div>"


def write_report(folder: str | os.PathLike, *, title: str, subtitle: str = "",
                 banner: str = "", cards: Sequence[tuple[str, str, str]] = (),
                 facts: Sequence[tuple[str, str]] = (),
                 sections: Sequence[tuple[str, str]] = (), figures: Sequence = (),
                 figure_captions: dict | None = None) -> Path:
    """Write ``<folder>/report.html``. ``cards`` are headline numbers under the title;
    ``sections`` are (heading, HTML body) pairs, the figures (PNG paths; ``figure_captions``
    maps file names to captions) come after the first."""
    captions = figure_captions or {}
    parts = [f"<h1>{esc(title)}</h1>"]
    if subtitle:
        parts.append(f"<p class=subtitle>{esc(subtitle)}</p>")
    if banner:
        parts.append(f"<div class=banner>{esc(banner)}</div>")
    if cards:
        parts.append(cards_html(cards))
    if facts:
        parts.append(facts_html(facts))
    body_sections = list(sections)
    if figures:
        grid = "".join(figure_html(p, captions.get(Path(p).name, ""),
                                   wide=Path(p).name in captions.get("_wide", ()))
                       for p in figures)
        body_sections.insert(min(1, len(body_sections)),
                             ("Figures", f"<div class=figures>{grid}</div>"))
    for heading, body in body_sections:
        parts.append(f"<h2>{esc(heading)}</h2>{body}")
    parts.append("<footer>Written by leukocyte-cnn from the files of this run folder; figures "
                 "are embedded, so this page stands alone. Research use only.</footer>")
    page = ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")
    return write_text(Path(folder) / REPORT, page)
