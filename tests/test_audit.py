"""The data audit as a user meets it: `transferlab audit DATA` (the installed console script) finds planted
label errors and altered copies in real images (scikit-learn's digits), a train run writes audit.json and
keeps near-duplicates in one split with data.dedupe=near, and predict and serve flag an input unlike the
training images."""

from __future__ import annotations

import csv
import io
import json
import subprocess

import numpy as np
import pytest
from conftest import SCRIPT, TINY, post_image
from PIL import Image

from transferlab.config import load_config
from transferlab.data.near import near_pairs
from transferlab.run import run_training

FLIPPED = 8
COPIES = 6


def digits_folder(root, per_class: int = 30, seed: int = 0):
    """Class folders of real 8x8 digits (upscaled to 32 px), `FLIPPED` of them filed under a wrong class, and
    `COPIES` altered copies of others (resized, JPEG quality 60, cropped 5%, grey): (folder, flipped paths,
    (original, copy) paths)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(np.flatnonzero(digits.target == d), per_class, replace=False)
                             for d in range(10)])
    flip = set(rng.choice(chosen, FLIPPED, replace=False).tolist())
    pictures, flipped, planted = {}, [], []
    for i in chosen:
        label = int(digits.target[i])
        if i in flip:
            label = int((label + rng.integers(1, 10)) % 10)
        path = root / str(label) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BICUBIC)
        image.convert("RGB").save(path)
        pictures[path] = image.convert("RGB")
        if i in flip:
            flipped.append(path)
    originals = rng.choice([p for p in pictures if p not in flipped], COPIES, replace=False)
    for k, original in enumerate(originals):
        image = pictures[original]
        if k % 4 == 0:
            image = image.resize((45, 45), Image.BICUBIC)
        elif k % 4 == 1:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=60)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        elif k % 4 == 2:
            image = image.crop((1, 2, 31, 32))
        else:
            image = image.convert("L")
        copy = original.parent / f"copy{k}.png"
        image.save(copy)
        planted.append((original, copy))
    return root, flipped, planted


def test_altered_copies_are_found_and_distinct_images_are_not():
    rng = np.random.default_rng(1)
    base = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(30)]
    smooth = [np.asarray(Image.fromarray(b).resize((6, 6)).resize((24, 24), Image.BICUBIC)) for b in base]
    copy = np.asarray(Image.fromarray(smooth[3]).resize((30, 30)).resize((24, 24)))  # resampled twice
    pairs = near_pairs(smooth + [copy, smooth[7].copy()], similarity=0.995)
    assert {(i, j) for i, j, _ in pairs} == {(3, 30), (7, 31)}


@pytest.mark.slow  # the bundled backbone at 64 px and five probe fits: ~30 s
def test_the_audit_command_finds_planted_label_errors_and_copies(tmp_path):
    data, flipped, planted = digits_folder(tmp_path / "digits")
    out = tmp_path / "audit.json"
    done = subprocess.run([str(SCRIPT), "audit", str(data), "--size", "64", "--out", str(out),
                           "--set", "data.decode_workers=1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    audit = json.loads(out.read_text())
    assert audit == json.loads(out.read_text()) and "likely label errors" in done.stdout
    found = {data / i["path"] for i in audit["label_issues"]["items"]}
    assert len(found & set(flipped)) >= FLIPPED * 3 // 4, (found, flipped)  # most of the flipped labels
    assert audit["label_issues"]["count"] <= audit["images"] // 6  # not every hard image
    grouped = [{data / m["path"] for m in g["members"]} for g in audit["duplicates"]["groups"]]
    for original, copy in planted:
        assert any({original, copy} <= g for g in grouped), (original, copy)
    assert sum(len(g) for g in grouped) <= 2 * COPIES + 2  # few pairs besides the planted ones
    assert len(audit["outliers"]["items"]) == 20
    again = subprocess.run([str(SCRIPT), "audit", str(data), "--size", "64", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwritten


# data.dedupe=near in make test (the default suite's audit of a run); exact in make test-slow
@pytest.mark.parametrize("dedupe", [pytest.param("exact", marks=pytest.mark.slow), "near"])
def test_a_run_audits_its_data_and_near_keeps_copies_in_one_split(dedupe, tmp_path, isolated):
    data, _, planted = digits_folder(tmp_path / "digits", per_class=12)
    config = load_config(overrides=[*TINY, "audit.enabled=true", "strategy.name=linear-probe", f"data.dedupe={dedupe}",
                                    "data.val_fraction=0.3", "data.test_fraction=0.3", "train.report=true"])
    run = run_training(str(data), config, out=tmp_path / "run", progress=False)
    audit = json.loads((run / "audit.json").read_text())
    split = {r["path"]: r["split"] for r in csv.DictReader(open(run / "split.csv", encoding="utf-8"))}
    copies = [(str(o.relative_to(data)), str(c.relative_to(data))) for o, c in planted]
    straddling = sum(split[o] != split[c] for o, c in copies)
    for group in audit["duplicates"]["groups"]:  # each member's split as split.csv has it, leakage where they differ
        assert all(m["split"] == split[m["path"]] for m in group["members"])
        assert group["leak"] == (len({m["split"] for m in group["members"]}) > 1)
    assert audit["duplicates"]["leakage"]["groups"] >= straddling
    if dedupe == "near":
        assert straddling == 0 and audit["duplicates"]["leakage"]["groups"] == 0
    assert audit["label_issues"]["on"].startswith("the final model's val and test predictions")
    assert (run / "model" / "familiar.json").is_file()
    assert "Audit of the data" in (run / "report.html").read_text()


@pytest.mark.slow  # a run, predict, a server and an export: ~30 s
def test_predict_and_serve_flag_an_image_unlike_the_training_set(tmp_path, isolated, capsys):
    from transferlab.cli import main
    from transferlab.serve import Server

    data, _, _ = digits_folder(tmp_path / "digits", per_class=12)
    config = load_config(overrides=[*TINY, "audit.enabled=true", "strategy.name=linear-probe"])
    run = run_training(str(data), config, out=tmp_path / "run", progress=False)
    familiar = json.loads((run / "model" / "familiar.json").read_text())
    assert familiar["false_alarm"] == 0.05 and familiar["threshold"] > 0
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise)
    known = next((data / "3").glob("*.png"))
    capsys.readouterr()
    assert main(["predict", str(run), str(known), str(noise), "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["unfamiliar"] for a in answers] == [False, True]
    assert answers[1]["unfamiliarity"] > familiar["threshold"] >= answers[0]["unfamiliarity"]
    assert main(["predict", str(run), str(noise)]) == 0
    assert "UNFAMILIAR" in capsys.readouterr().out
    with Server(run, port=0, engine="onnxruntime") as server:
        _, served = post_image(server.url, "image", "noise.png", noise.read_bytes())
        assert served["unfamiliar"] is True
        assert served["unfamiliarity"] == pytest.approx(answers[1]["unfamiliarity"], abs=1e-4)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "bundle")]) == 0
    bundle = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    check = bundle["unfamiliar"]  # what a consumer needs, and the parity of its scores
    assert check["graph"] == "features.onnx" and check["parity"]["max_abs_diff"] <= 1e-4
    import onnxruntime

    from transferlab.data.decode import decode_file
    from transferlab.predict import load_model

    model = load_model(run)
    pixels = np.ascontiguousarray(decode_file(noise, model.spec, model.limits)[0][None].transpose(0, 3, 1, 2))
    session = onnxruntime.InferenceSession(str(tmp_path / "bundle" / check["graph"]))
    features = session.run(None, {session.get_inputs()[0].name: pixels})[0][:, -check["features"]:]
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    reference = np.load(tmp_path / "bundle" / check["reference"]).astype(np.float32)
    score = 1 - np.sort(features @ reference.T, axis=1)[:, -check["k"]:].mean()
    assert score == pytest.approx(answers[1]["unfamiliarity"], abs=1e-3) and score > check["threshold"]
