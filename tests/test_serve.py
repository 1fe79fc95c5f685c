"""`transferlab serve`: a real server in a thread, called over HTTP (JSON API and Gradio's own API
through gradio_client) and driven in headless Chromium; the console script end to end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import interactive_sigint
from transferlab.config import load_config
from transferlab.pipeline import run_training

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SCRIPT = Path(sys.executable).with_name("transferlab")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of the bundled backbone on three colour classes, with its report, and real photos."""
    from skimage import data

    tmp = tmp_path_factory.mktemp("serve")
    os.environ.setdefault("TRANSFERLAB_CACHE", str(tmp / "cache"))
    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "green", "blue")):
        for i in range(10):
            img = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            img[..., k] = rng.integers(160, 256, (40, 40), dtype=np.uint8)
            path = tmp / "colors" / name / f"{name}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    config = load_config(overrides=["preprocess.size=64", "strategy.name=feature-extraction", "train.epochs=5",
                                    "train.workers=0", "data.decode_workers=1"])
    run = run_training(str(tmp / "colors"), config, out=tmp / "run", progress=False)
    photos = {}
    for name in ("chelsea", "coffee"):
        photos[name] = tmp / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(photos[name], quality=90)
    text = tmp / "notes.png"
    text.write_text("not an image at all\n")
    bomb = tmp / "bomb.png"  # a tiny file declaring 16000 x 16000 pixels
    Image.new("1", (16000, 16000)).save(bomb, optimize=True)
    return {"run": run, "photos": photos, "text": text, "bomb": bomb}


@pytest.fixture(scope="module")
def server(trained):
    from transferlab.serve import Server

    with Server(trained["run"], port=0, engine="torch", max_upload_mb=1) as running:
        yield running


def post_image(url: str, field: str, name: str, data: bytes, extra: dict | None = None) -> tuple[int, dict]:
    """POST multipart/form-data with the standard library (what curl -F does)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"]
    for key, value in (extra or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "api/predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_json_api_answers_like_predict_and_refuses_bad_files_while_serving_on(server, trained):
    from transferlab.predict import predict_files

    photo = trained["photos"]["chelsea"]
    status, answer = post_image(server.url, "image", "chelsea.jpg", photo.read_bytes(), {"top_k": "2"})
    assert status == 200 and answer["file"] == "chelsea.jpg"
    expected = predict_files(trained["run"], [photo], top_k=2, engine="torch")[0]["top"]
    assert [t["class"] for t in answer["top"]] == [t["class"] for t in expected]
    assert np.allclose([t["probability"] for t in answer["top"]], [t["probability"] for t in expected], atol=1e-5)
    refusals = {
        "text": post_image(server.url, "image", "notes.png", trained["text"].read_bytes()),
        "bomb": post_image(server.url, "image", "bomb.png", trained["bomb"].read_bytes()),
        "huge body": post_image(server.url, "image", "big.png", b"\0" * (2 * 2**20)),  # over --max-upload-mb 1
        "no field": post_image(server.url, "file", "chelsea.jpg", photo.read_bytes()),
        "bad top_k": post_image(server.url, "image", "chelsea.jpg", photo.read_bytes(), {"top_k": "0"}),
    }
    assert refusals["text"][0] == 415 and "not an image" in refusals["text"][1]["error"]
    assert refusals["bomb"][0] == 413 and "decompression bomb" in refusals["bomb"][1]["error"]
    assert refusals["huge body"][0] == 413 and "limit of 1 MB" in refusals["huge body"][1]["error"]
    assert refusals["no field"][0] == 400 and "'image'" in refusals["no field"][1]["error"]
    assert refusals["bad top_k"][0] == 400
    with urllib.request.urlopen(server.url + "api/info", timeout=30) as response:  # still serving
        info = json.loads(response.read())
    assert info["classes"] == ["blue", "green", "red"] and info["card"]["evaluated_on"] == "test"
    with urllib.request.urlopen(server.url + "report", timeout=30) as response:
        assert b"<html" in response.read(2000)


def test_gradio_client_gets_the_label_and_the_overlay(server, trained, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    photo = trained["photos"]["coffee"]
    label, overlay = client.predict(handle_file(str(photo)), "(predicted class)", api_name="/predict")
    status, answer = post_image(server.url, "image", "coffee.jpg", photo.read_bytes())
    assert label["label"] == answer["top"][0]["class"]
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert confidences[label["label"]] == pytest.approx(answer["top"][0]["probability"], abs=1e-5)
    with Image.open(overlay) as picture:  # the overlay is drawn on the photo as uploaded
        assert picture.size == Image.open(photo).size
    scan = Image.open(photo).convert("L").resize((28, 21))  # a tiny scan is shown by whole pixels, not as a dot
    scan.save(tiny := tmp_path / "scan.png")
    _, overlay = client.predict(handle_file(str(tiny)), "(predicted class)", api_name="/predict")
    with Image.open(overlay) as picture:
        assert picture.size == (280, 210)
    chosen, _ = client.predict(handle_file(str(photo)), "blue", api_name="/predict")
    assert chosen["label"] == label["label"]  # explaining another class does not change the prediction
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(str(trained["text"])), "(predicted class)", api_name="/predict")
    gallery, table = client.predict([handle_file(str(photo)), handle_file(str(trained["text"]))],
                                    api_name="/predict_many")
    rows = {row[0]: row for row in table["data"]}
    assert len(gallery) == 1 and rows["coffee.jpg"][1] == label["label"] and "not an image" in rows["notes.png"][3]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium); .ci/run installs it")
def test_the_page_classifies_an_upload_in_a_real_browser(server, trained, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo = trained["photos"]["chelsea"]
    _, answer = post_image(server.url, "image", "chelsea.jpg", photo.read_bytes())
    flags = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
    outside = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=flags,
            viewport={"width": 1280, "height": 1000})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(
                (server.url, "data:", "blob:")) else None)
            page.goto(server.url, wait_until="load")
            expect(page.locator("#model-card")).to_contain_text("Test metrics", timeout=60_000)
            expect(page.locator("#examples")).to_be_visible()  # held-out images of the run
            page.locator("#input-image input[type=file]").set_input_files(str(photo))
            page.wait_for_selector("#input-image img", timeout=30_000)
            page.click("#classify")
            expect(page.locator("#top-classes")).to_contain_text(answer["top"][0]["class"], timeout=60_000)
            page.wait_for_function("() => { const i = document.querySelector('#overlay img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
            width = page.locator("#overlay img").evaluate("i => i.naturalWidth")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            context.close()
    assert width == Image.open(photo).size[0]
    assert not outside, f"the page fetched from outside the server: {outside[:3]}"


def test_the_console_script_serves_warns_on_open_hosts_and_stops_on_ctrl_c(trained):
    process = subprocess.Popen([str(SCRIPT), "serve", str(trained["run"]), "--host", "0.0.0.0", "--port", "0",
                                "--engine", "torch"], stderr=subprocess.PIPE, text=True,
                               preexec_fn=interactive_sigint)
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "serving" in line or len(lines) > 50:
                break
        assert any("reachable from other machines" in line for line in lines), lines
        url = next(line for line in lines if "serving" in line).split("open ")[1].split(" ")[0]
        with urllib.request.urlopen(url + "api/health", timeout=30) as response:
            assert json.loads(response.read()) == {"status": "ok"}
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    assert code == 0


def test_bad_serve_requests_get_one_line(trained, tmp_path, server):
    for args, expected in [([str(tmp_path / "nope")], "does not exist"),
                           ([str(trained["run"]), "--port", str(server.port)], "the port is in use"),
                           ([str(trained["run"]), "--port", "70000"], "between 0 and 65535")]:
        result = subprocess.run([str(SCRIPT), "serve", *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_missing_serve_extra_is_one_line(monkeypatch):
    from transferlab.serve import ServeError, requirements

    monkeypatch.setitem(sys.modules, "gradio", None)  # what an environment without the extra looks like
    with pytest.raises(ServeError, match=r"pip install 'transferlab\[serve\]'"):
        requirements()
