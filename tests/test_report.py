"""report.html, summary intervals and comparison tables, from hand-made run folders (no
training): every figure is embedded as a PNG data URI, the summary links its figures and gives
95 % intervals, study tables give the difference to the best setting with a paired test, and
compare_runs.py writes one table and one figure. A headless Chromium, where installed, opens
the report and finds no missing image."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import compare_runs
from leukocyte_cnn.base.run_folder import prepare_run_dir
from leukocyte_cnn.reporting import comparisons
from leukocyte_cnn.reporting.summary import summarize_run
from leukocyte_cnn.runs import trials

CLASSES = ["other", "blast"]


def _fold(run, fold: int, labels, p_blast, groups=None) -> None:
    folder = run / f"fold_{fold:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    p_blast = np.asarray(p_blast, float)
    n = len(labels)
    pd.DataFrame({"fold": fold, "image": [f"im{fold}_{i:03d}.tif" for i in range(n)],
                  "label": labels, "class_name": [CLASSES[v] for v in labels],
                  "group": (groups if groups is not None
                            else [f"im{fold}_{i:03d}" for i in range(n)]),
                  "prob_other": 1 - p_blast, "prob_blast": p_blast,
                  "pred": (p_blast >= 0.5).astype(int)}).to_csv(folder / "predictions.csv",
                                                                index=False)
    pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.7, 0.5, 0.4], "val_loss": [0.72, 0.6, 0.55],
                  "accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.5, 0.6, 0.7],
                  "monitor": "val_loss"}).to_csv(folder / "epochs.csv", index=False)


def _run(tmp_path, name="run", leaky=False, accuracy=0.8, seed=0, n=60):
    """A finished 2-fold run of ``n`` images per fold whose predictions are right on about
    ``accuracy`` of them."""
    run = tmp_path / name
    prepare_run_dir(run, {"class_names": CLASSES, "n_folds": 2, "seed": seed, "leaky": leaky,
                          "dataset": "synthetic_all_idb2", "title": "Linear CNN test run",
                          "split_method": "kfold", "knobs": {"EPOCHS": 3}})
    rng = np.random.default_rng(seed)
    for fold in (0, 1):
        labels = np.arange(n) % 2
        right = rng.random(n) < accuracy
        p_blast = np.where(right == (labels == 1), 0.6 + 0.3 * rng.random(n),
                           0.4 * rng.random(n))
        _fold(run, fold, labels, p_blast)
    return run


def _image_sources(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


def test_report_embeds_every_figure_and_the_summary_gives_intervals(tmp_path):
    run = _run(tmp_path)
    summary = summarize_run(run, quiet=True).set_index("metric")

    # 95 % intervals around every pooled metric, in summary.csv and summary.md
    for metric, row in summary.iterrows():
        assert row["ci95_low"] <= row["pooled"] <= row["ci95_high"], metric
        assert row["ci95_high"] - row["ci95_low"] > 0.02, metric  # 120 images: not a point
    markdown = (run / "summary.md").read_text()
    assert "pooled [95 % CI]" in markdown and "bootstrap" in markdown
    assert re.search(r"\| accuracy \| 0\.\d{3} \[0\.\d{3}, 0\.\d{3}\] \|", markdown)
    # summary.md links its figures, which exist
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert {"confusion_matrix.png", "roc.png", "learning_curves.png",
            "reliability.png"} <= set(links)
    assert all((run / link).is_file() for link in links)

    # report.html stands alone: every image a PNG data URI that decodes; nothing fetched
    html = (run / "report.html").read_text()
    sources = _image_sources(html)
    assert len(sources) == 4  # no model files here: no error gallery, the reliability diagram
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        image.verify()
        assert image.format == "PNG"
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # no file or web references
    for words in ("Test metrics", "Per class", "Settings", "Provenance", "protocol",
                  "cross-validation", "EPOCHS", "Calibration", "ECE (15 bins, top label)"):
        assert words in html, words
    assert "LEAKY" not in html


def test_leaky_run_report_carries_the_banner(tmp_path):
    run = _run(tmp_path, leaky=True)
    summarize_run(run, quiet=True)
    html = (run / "report.html").read_text()
    assert "class=banner>LEAKY SPLIT" in html


def test_study_table_gives_difference_to_best_with_a_paired_test(tmp_path):
    """Two optimizers x two trials on the same test images; 'sgd' is worse by chance only
    (same quality of predictions), 'bad' is clearly worse."""
    run = tmp_path / "study"
    config = {"class_names": CLASSES, "seed": 0, "dataset": "synthetic_kaggle",
              "title": "ELU CNN optimizers", "split_method": "predefined", "n_folds": 1}
    prepare_run_dir(run, config)
    settings = [comparisons.Setting("adam", {"optimizer": "adam"}),
                comparisons.Setting("sgd", {"optimizer": "sgd"}),
                comparisons.Setting("bad", {"optimizer": "bad"})]
    rng = np.random.default_rng(4)
    labels = np.arange(200) % 2
    quality = {"adam": 0.85, "sgd": 0.85, "bad": 0.6}
    for setting in settings:
        for trial in (0, 1):
            where = trials.trial_dir(run, setting.name, trial)
            prepare_run_dir(where, {**config, "setting": setting.name, "trial": trial,
                                    "seed": trial})
            right = rng.random(200) < quality[setting.name]
            _fold(where, 0, labels, np.where(right == (labels == 1), 0.8, 0.2))
            (where / "fold_00" / "predictions.csv").write_text(
                (where / "fold_00" / "predictions.csv").read_text().replace("im0_", "TEST/"))
    numeric, shown = comparisons.report_trials(run, settings, CLASSES, 0.7)
    comparisons.write_comparison(run, numeric, shown, title="Optimizers", quiet=True)

    table = pd.read_csv(run / "comparison.csv").set_index("setting")
    best = table.index[table["best"]].tolist()
    assert len(best) == 1 and best[0] in ("adam", "sgd")
    other = "sgd" if best[0] == "adam" else "adam"
    assert table.loc[other, "diff_to_best_low"] <= 0 <= table.loc[other, "diff_to_best_high"]
    assert table.loc[other, "p_vs_best"] > 0.05  # chance only: not called different
    assert table.loc["bad", "diff_to_best"] < -0.15
    assert table.loc["bad", "test_vs_best"] == "paired t-test over 2 seeds"
    markdown = (run / "comparison.md").read_text()
    assert "Δ acc vs best [95 % CI]" in markdown and "p ≥ 0.05" in markdown
    html = (run / "report.html").read_text()
    assert "Δ acc vs best" in html and len(_image_sources(html)) >= 2


def test_compare_runs_writes_one_table_and_one_figure(tmp_path):
    first = _run(tmp_path, "seed0", seed=0)
    second = _run(tmp_path, "seed1", seed=1)
    out = tmp_path / "cmp"
    numbers = compare_runs.main(compare_runs.parse_args([str(first), str(second),
                                                         "--out", str(out)]))
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "comparison.md",
                                                      "comparison.png", "report.html"]
    assert list(numbers["name"]) == ["seed0", "seed1"]
    assert numbers["best"].sum() == 1
    worse = numbers[~numbers["best"]].iloc[0]
    assert worse["accuracy_test"] == "exact McNemar" and worse["roc_auc_test"] == "DeLong"
    assert 0 <= worse["accuracy_p"] <= 1
    markdown = (out / "comparison.md").read_text()
    assert "Δ accuracy vs best [95 % CI]" in markdown and "(comparison.png)" in markdown
    assert len(_image_sources((out / "report.html").read_text())) == 1


def test_compare_runs_refuses_to_pair_runs_of_other_images(tmp_path):
    first = _run(tmp_path, "a", seed=0)
    second = _run(tmp_path, "b", seed=1)
    settings = second / "settings.json"
    settings.write_text(settings.read_text().replace('"dataset": "synthetic_all_idb2"',
                                                     '"dataset": "synthetic_all_idb2", '
                                                     '"dataset_hash": "other"'))
    numbers = compare_runs.main(compare_runs.parse_args([str(first), str(second),
                                                         "--out", str(tmp_path / "c")]))
    assert numbers["accuracy_p"].isna().all()
    assert "not paired" in (tmp_path / "c" / "comparison.md").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = ("<script>window.addEventListener('load', () => { const all = [...document.images];"
         " const bad = all.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
         " document.body.setAttribute('data-images', all.length + '/' + bad); });</script>")


def _images_in_browser(page) -> str:
    """``"<images>/<broken>"`` as a headless Chromium sees the page after loading it."""
    probe = page.with_name("probe_" + page.name)
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--no-first-run", "--dump-dom",
                             probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-images="(\d+/\d+)"', result.stdout)
    assert found, result.stderr[-2000:]
    return found.group(1)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                                               "chromium); the report's own test still runs")
def test_report_opens_in_headless_chromium_without_missing_images(tmp_path):
    run = _run(tmp_path)
    summarize_run(run, quiet=True)
    assert _images_in_browser(run / "report.html") == "4/0"
    # the probe can fail: a page with a broken image is caught
    broken = tmp_path / "broken.html"
    broken.write_text((run / "report.html").read_text().replace(
        "data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    assert _images_in_browser(broken) == "4/1"


BLANK_PROBE = (
    "<script>window.addEventListener('load', () => { let blank = 0; const all = "
    "[...document.images]; for (const img of all) { const c = document.createElement('canvas');"
    " c.width = 64; c.height = 64; const g = c.getContext('2d'); g.drawImage(img, 0, 0, 64, 64);"
    " const d = g.getImageData(0, 0, 64, 64).data; let s = 0, s2 = 0; for (let i = 0; "
    "i < d.length; i += 4) { const v = (d[i] + d[i + 1] + d[i + 2]) / 3; s += v; s2 += v * v; }"
    " const n = d.length / 4, sd = Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2));"
    " if (!(img.complete && img.naturalWidth > 0) || sd < 5) blank++; }"
    " document.body.setAttribute('data-blank', all.length + '/' + blank); });</script>")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                                               "chromium); test_helmholtz decodes the same "
                                               "gallery with Pillow")
def test_main_job_report_shows_the_error_gallery_decoded_and_not_blank(tmp_path):
    """Issue 24: the binary script of the main job, quick and small; its report, opened in a
    headless Chromium, holds the error gallery, and no image of it is broken or blank."""
    import linear_cnn_binary_lpocv

    linear_cnn_binary_lpocv.main(linear_cnn_binary_lpocv.parse_args(
        ["--quick", "--results-dir", str(tmp_path / "results"), "--run-name", "main",
         "--epochs", "3", "--folds", "0"]))
    report = tmp_path / "results" / "main" / "report.html"
    assert "errors_gallery.png" in report.read_text()
    probe = report.with_name("blank_probe.html")
    probe.write_text(report.read_text().replace("</body>", BLANK_PROBE + "</body>"))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                             "--no-first-run", "--dump-dom", probe.as_uri()],
                            capture_output=True, text=True, timeout=120)
    found = re.search(r'data-blank="(\d+)/(\d+)"', result.stdout)
    assert found, result.stderr[-2000:]
    assert int(found.group(1)) >= 5 and found.group(2) == "0"


def test_a_stale_error_gallery_is_removed_when_none_can_be_drawn(tmp_path):
    """A gallery left from an earlier summary is not shown as this one's when the run's models
    or images are gone: figures of the folder are embedded by name."""
    run = _run(tmp_path)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(run / "errors_gallery.png")
    summarize_run(run, quiet=True)
    assert not (run / "errors_gallery.png").exists()
    assert "errors_gallery" not in (run / "report.html").read_text()
