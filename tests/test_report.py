"""The run report: every section from a real tiny run, self-contained, and rendered by a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest

from transferlab.cli import main
from transferlab.config import load_config
from transferlab.run import run_cv
from transferlab.run import run_training
from transferlab.report import SECTIONS, build_report
from transferlab.rundir import RUN_DIR_ENV

TINY = ["model.name=test_efficientnet", "model.pretrained=false", "preprocess.size=32", "train.batch_size=8",
        "train.workers=0", "data.decode_workers=1", "train.early_stopping=null", "train.epochs=2", "cv.folds=3",
        "strategy.name=fine-tune", "strategy.fine_tune.head_warmup_epochs=1"]
# four real runs (train, cv, cv with auto, layer decay) behind every test: ~50 s alone on 2 cores, so the module
# runs in `make test-slow`, which CI runs after the default suite
pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, color_folder_module):
    import os

    tmp = tmp_path_factory.mktemp("report")
    old = os.environ.get("TRANSFERLAB_CACHE")
    os.environ["TRANSFERLAB_CACHE"] = str(tmp / "cache")
    os.environ.pop(RUN_DIR_ENV, None)
    try:
        train = run_training(str(color_folder_module), load_config(overrides=TINY), out=tmp / "train", progress=False)
        os.environ.pop(RUN_DIR_ENV, None)
        cv = run_cv(str(color_folder_module), load_config(overrides=TINY), out=tmp / "cv", progress=False)
        os.environ.pop(RUN_DIR_ENV, None)
        auto = [s for s in TINY if not s.startswith(("strategy.", "cv.folds"))] + [
            "cv.folds=2", "strategy.auto.candidates=[fine-tune-late]"]
        cv_auto = run_cv(str(color_folder_module), load_config(overrides=auto), out=tmp / "cv-auto", progress=False)
        os.environ.pop(RUN_DIR_ENV, None)
        decay = run_training(str(color_folder_module), load_config(overrides=[*TINY, "strategy.layer_decay=0.5"]),
                             out=tmp / "decay", progress=False)
    finally:
        if old is None:
            os.environ.pop("TRANSFERLAB_CACHE", None)
        else:
            os.environ["TRANSFERLAB_CACHE"] = old
    return {"train": train, "cv": cv, "cv_auto": cv_auto, "decay": decay}


@pytest.fixture(scope="module")
def color_folder_module(tmp_path_factory):
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("colors") / "colors"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            img = rng.integers(0, 60, (24, 24, 3), dtype=np.uint8)
            img[..., k] = rng.integers(160, 256, (24, 24), dtype=np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i}.png")
    return root


def section_text(page: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', page, re.S)
    assert match, section_id
    return match.group(1)


@pytest.mark.parametrize("kind", ["train", "cv"])
def test_every_section_is_there_with_real_figures(runs, kind):
    run = runs[kind]
    page = (run / "report.html").read_text(encoding="utf-8")
    for key, title in SECTIONS:
        body = section_text(page, key)
        assert html.escape(title) in body
        assert "could not be built" not in body, (key, body[:500])
    assert page.count('src="data:image/png;base64,') >= 10
    for name in ("class_counts", "samples", "augment_preview", "learning_curves", "learning_rates", "confusion",
                 "confusion_normalized", "roc", "per_class", "calibration", "errors"):
        assert (run / "plots" / f"{name}.png").is_file(), name
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(https?:)?//', page) and "@import" not in page and "url(" not in page
    if kind == "cv":
        assert "95% CI" in section_text(page, "results") and "fold3" in page
        assert (run / "plots" / "fold_metrics.png").is_file()
    else:
        assert "warmup" in section_text(page, "strategy") and "lr-" not in page


def test_missing_inputs_are_said_not_fatal(runs, tmp_path):
    copy = tmp_path / "partial"
    shutil.copytree(runs["train"], copy)
    shutil.rmtree(copy / "logs")
    (copy / "curves.json").unlink()
    (copy / "plots" / "errors.png").unlink()
    (copy / "errors.npz").unlink()  # what the gallery is drawn from
    (copy / "dataset.json").write_text("{not json")
    (copy / "config.yaml").write_text("seed: [unclosed")
    page = build_report(copy).read_text(encoding="utf-8")
    assert "config.yaml could not be read" in section_text(page, "preprocessing")  # not "missing": it is there
    assert "no training logs" in section_text(page, "training")
    assert "no error gallery" in section_text(page, "errors")
    assert "could not be built" in section_text(page, "data") or "missing" in section_text(page, "data")
    assert "confusion" in section_text(page, "results")


def test_report_command_rebuilds_and_rejects_unfinished_runs(runs, tmp_path, capsys):
    report = runs["train"] / "report.html"
    report.unlink()
    assert main(["report", str(runs["train"])]) == 0
    assert report.is_file() and str(report) in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2


CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && (e.target.src || '').slice(0, 60)))), true);
const __origError = console.error;
console.error = (...args) => { window.__errors.push(args.join(' ')); __origError(...args); };
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, alt: i.alt}));
  const headings = [...document.querySelectorAll('section h2')].map(h => h.textContent);
  const out = document.createElement('pre');
  out.id = '__check';
  out.textContent = JSON.stringify({images, headings, errors: window.__errors,
                                    height: document.documentElement.scrollHeight});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
@pytest.mark.parametrize("kind", ["train", "cv"])
def test_report_renders_in_a_real_browser(runs, kind, tmp_path):
    page = (runs[kind] / "report.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + CHECK, 1), encoding="utf-8")
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="__check">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["headings"] == [title for _, title in SECTIONS]
    assert check["images"] and all(image["ok"] for image in check["images"]), check["images"]
    assert check["errors"] == []
    assert not re.search(r"CONSOLE.*(Uncaught|ERROR)", dom.stderr)
    # a full-page screenshot of the untouched report (look at it once; it stays out of git)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size=1280,{check['height']}",
                    f"--screenshot={shot}", (runs[kind] / "report.html").as_uri()], capture_output=True,
                   timeout=120)
    from PIL import Image

    picture = Image.open(shot)
    assert picture.size == (1280, check["height"]) and check["height"] > 3000
    colours = picture.convert("RGB").resize((64, 64)).getcolors(64 * 64)
    assert len(colours) > 50  # figures rendered, not a blank page


def test_the_strategy_section_reads_what_the_record_says_happened(runs):
    """A CV with auto names what the folds chose ("auto -> fine-tune (late, head)"), fold by fold;
    a layer-decay run shows each layer's logged peak rate; galleries say which images they show."""
    cv_auto = (runs["cv_auto"] / "report.html").read_text(encoding="utf-8")
    folds = json.loads((runs["cv_auto"] / "cv_metrics.json").read_text())["folds"]
    assert "auto -&gt; fine-tune (late, head)" in cv_auto and all(f["strategy"] == "fine-tune (late, head)"
                                                                  for f in folds)
    strategy = section_text(cv_auto, "strategy")
    assert "fold1" in strategy and "fold2" in strategy and "what each fold trained" in strategy
    assert "out-of-fold" in section_text(cv_auto, "errors")
    assert "validation" in section_text((runs["train"] / "report.html").read_text(encoding="utf-8"), "errors")
    decay = section_text((runs["decay"] / "report.html").read_text(encoding="utf-8"), "strategy")
    record = json.loads((runs["decay"] / "metrics.json").read_text())["strategy"]["stages"]["main"]["groups"]
    peaks = {k: v for k, v in record["layer_decay"]["peak_lr"].items() if not k.endswith("/no_decay")}
    assert len(peaks) > 4
    for name, rate in peaks.items():  # every layer's own rate, as trained
        assert f"layer group {name}" in decay and f"{rate:.2e}" in decay
