"""`transferlab serve`: a real server in a thread, called over HTTP (JSON API and Gradio's own API
through gradio_client) and driven in headless Chromium; the console script end to end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import interactive_sigint, post_image
from transferlab.config import load_config
from transferlab.run import run_training

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SCRIPT = Path(sys.executable).with_name("transferlab")
PREDICTED = "(predicted class)"
JSON = {"Content-Type": "application/json"}


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
        "superscript top_k": post_image(server.url, "image", "chelsea.jpg", photo.read_bytes(), {"top_k": "\u00b2"}),
        "huge top_k": post_image(server.url, "image", "chelsea.jpg", photo.read_bytes(), {"top_k": "9" * 5000}),
    }
    assert refusals["text"][0] == 415 and "not an image" in refusals["text"][1]["error"]
    assert refusals["bomb"][0] == 413 and "decompression bomb" in refusals["bomb"][1]["error"]
    assert refusals["huge body"][0] == 413 and "limit of 1 MB" in refusals["huge body"][1]["error"]
    assert refusals["no field"][0] == 400 and "'image'" in refusals["no field"][1]["error"]
    for bad in ("bad top_k", "superscript top_k", "huge top_k"):  # "²".isdigit() is True, int("²") is not
        assert refusals[bad][0] == 400 and "top_k must be a whole number" in refusals[bad][1]["error"], bad
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
    label, overlay, decision = client.predict(handle_file(str(photo)), "(predicted class)", api_name="/predict")
    status, answer = post_image(server.url, "image", "coffee.jpg", photo.read_bytes())
    assert label["label"] == answer["top"][0]["class"]
    from transferlab.serve.predictor import UNFAMILIAR

    assert decision == (f"predicted {answer['top'][0]['class']} ({answer['top'][0]['probability']:.2f})"
                        + (UNFAMILIAR if answer["unfamiliar"] else ""))
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert confidences[label["label"]] == pytest.approx(answer["top"][0]["probability"], abs=1e-5)
    with Image.open(overlay) as picture:  # the overlay is drawn on the photo as uploaded
        assert picture.size == Image.open(photo).size
    scan = Image.open(photo).convert("L").resize((28, 21))  # a tiny scan is shown by whole pixels, not as a dot
    scan.save(tiny := tmp_path / "scan.png")
    _, overlay, _ = client.predict(handle_file(str(tiny)), "(predicted class)", api_name="/predict")
    with Image.open(overlay) as picture:
        assert picture.size == (280, 210)
    chosen, _, _ = client.predict(handle_file(str(photo)), "blue", api_name="/predict")
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
    """With no flags but the port: the default engine (OpenVINO, one image at a time) on a run whose
    images are stored smaller than the model's input (40 px into 64 px, resized in the graph), which
    OpenVINO's CPU plugin refused at start when the resize fed the normalisation."""
    process = subprocess.Popen([str(SCRIPT), "serve", str(trained["run"]), "--host", "0.0.0.0", "--port", "0"],
                               stderr=subprocess.PIPE, text=True, preexec_fn=interactive_sigint)
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "serving" in line or len(lines) > 50:
                break
        assert any("reachable from other machines" in line for line in lines), lines
        serving = next(line for line in lines if "serving" in line)
        assert " on openvino: " in serving and not any("cannot run" in line for line in lines), lines
        url = serving.split("open ")[1].split(" ")[0]
        with urllib.request.urlopen(url + "api/health", timeout=30) as response:
            assert json.loads(response.read()) == {"status": "ok"}
        status, answer = post_image(url, "image", "chelsea.jpg", trained["photos"]["chelsea"].read_bytes())
        assert status == 200 and answer["engine"] == "openvino", answer
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    assert code == 0


def test_bad_serve_requests_get_one_line(trained, tmp_path, server, capsys):
    from transferlab.cli import main

    result = subprocess.run([str(SCRIPT), "serve", str(tmp_path / "nope")], capture_output=True, text=True,
                            timeout=120)  # the installed console script
    assert result.returncode == 2 and "does not exist" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    capsys.readouterr()
    for args, expected in [([str(trained["run"]), "--port", str(server.port)], "the port is in use"),
                           ([str(trained["run"]), "--port", "70000"], "between 0 and 65535")]:
        assert main(["serve", *args]) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_missing_serve_extra_is_one_line(monkeypatch):
    from transferlab.serve import ServeError, requirements

    monkeypatch.setitem(sys.modules, "gradio", None)  # what an environment without the extra looks like
    with pytest.raises(ServeError, match=r"pip install 'transferlab\[serve\]'"):
        requirements()


def file_data(path: str, **extra) -> dict:
    """A Gradio file payload naming a path on the server (what an attacker sends instead of an upload)."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}, **extra}


def http(url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=JSON,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def gradio_call(url: str, api: str, data: list, timeout: float = 60) -> tuple[bool, str]:
    """POST /gradio_api/call/API, then read its event stream: (completed, the last data line)."""
    _, body = http(f"{url}gradio_api/call/{api}", {"data": data}, timeout)
    _, stream = http(f"{url}gradio_api/call/{api}/{json.loads(body)['event_id']}", timeout=timeout)
    lines = stream.decode().splitlines()
    events, data = ([x for x in lines if x.startswith(field)] for field in ("event:", "data:"))
    return events[-1] == "event: complete", data[-1]


def queue_join(url: str, fn_index: int, data: list) -> tuple[bool, str]:
    """What the page and gradio_client do: join the queue, then read the session's event stream."""
    session = uuid.uuid4().hex
    http(url + "gradio_api/queue/join", {"data": data, "fn_index": fn_index, "session_hash": session,
                                         "event_data": None, "trigger_id": None})
    with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=60) as stream:
        for line in stream:
            message = json.loads(line[5:]) if line.startswith(b"data:") else {}
            if message.get("msg") == "process_completed":
                return bool(message.get("success")), json.dumps(message.get("output"))
    return False, ""


def every_call(url: str, payload: dict) -> dict[str, tuple[bool, str]]:
    """`payload` sent as the file of every function of the app, through every route that runs one."""
    config = json.loads(http(url + "config")[1])
    kinds = {c["id"]: c["type"] for c in config["components"]}
    shaped = {"image": payload, "file": [payload], "dropdown": PREDICTED, "dataset": payload}
    answers = {}
    for fn in config["dependencies"]:
        data = [shaped.get(kinds[i], payload) for i in fn["inputs"]]
        answers[f"queue/join {fn['id']} {fn['api_name']}"] = queue_join(url, fn["id"], data)
        if fn.get("api_visibility") == "public":
            answers[f"call/{fn['api_name']}"] = gradio_call(url, fn["api_name"], data)
            for route in ("run", "api"):
                status, body = http(f"{url}gradio_api/{route}/{fn['api_name']}", {"data": data})
                answers[f"{route}/{fn['api_name']}"] = status == 200, body.decode()
    return answers


def files_under(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in Path(folder).rglob("*") if p.is_file()}


def healthy(url: str, timeout: float = 5) -> bool:
    try:
        return http(url + "api/health", timeout=timeout) == (200, b'{"status":"ok"}')
    except OSError:  # refused, timed out
        return False


def test_the_app_reads_no_file_it_was_not_sent(server, trained, tmp_path):
    """issue 19.1: a server-side path in a Gradio payload is never read, copied or served, through
    any route or function of the app, with or without Gradio's file marker, whatever the path."""
    from gradio.utils import get_upload_folder

    with Image.open(trained["photos"]["coffee"]) as photo:  # a photo nobody uploaded
        photo.save(secret_image := tmp_path / "held-out.jpg", quality=70)
    secret_text = tmp_path / "secret.txt"
    secret_text.write_text(f"the secret {uuid.uuid4().hex}\n")
    (outside_link := tmp_path / "link.png").symlink_to(secret_image)
    planted = Path(get_upload_folder()) / "planted"  # as if a link had got into the app's own folder
    planted.mkdir(parents=True, exist_ok=True)
    (inside_link := planted / "link.png").symlink_to(secret_image)
    dots = f"{get_upload_folder()}/{'../' * 12}{str(secret_image).lstrip('/')}"
    secrets = {p: Path(p).read_bytes() for p in (secret_image, secret_text, "/etc/passwd", "/proc/self/environ")}
    paths = [str(p) for p in secrets] + [str(outside_link), str(inside_link), dots]
    answers = {}
    try:
        for path in paths:
            for variant, payload in (("marked", file_data(path)), ("bare", {"path": path}),
                                     ("stream", file_data(path, is_stream=True))):
                for route, answer in every_call(server.url, payload).items():
                    answers[path, variant, route] = answer
        served = {path: http(f"{server.url}gradio_api/{route}{path}")[0] for path in paths + [str(secret_text)[1:]]
                  for route in ("file=", "file/")}
    finally:
        shutil.rmtree(planted)
    read = [key for key, (ok, _) in answers.items() if ok]
    assert not read, f"{len(read)} calls answered on a file the app was not sent, e.g. {read[:3]}"
    assert len({route for _, _, route in answers}) >= 8  # queue/join x4, call, run and api of both APIs
    assert set(served.values()) == {403}
    assert http(server.url + "gradio_api/process_recording", {})[0] == 404  # a Gradio route the app does not use
    copies = files_under(server.folder, get_upload_folder())
    assert not [p for p, data in copies.items() for secret in secrets.values() if secret.strip() and secret in data]
    # Gradio's own check is on (build_app), ours refuses what it lets through: a bare path, a URL
    assert "reads only images uploaded" in answers[str(secret_image), "marked", "call/predict"][1]
    assert "reads only images uploaded" in answers[str(secret_image), "bare", "call/predict"][1]
    fetched = gradio_call(server.url, "predict", [file_data("https://example.com/photo.jpg"), PREDICTED])
    assert "reads only images uploaded" in fetched[1]
    # the errors are the same whether the file exists or not: nothing to probe the disk with
    missing = str(tmp_path / "missing.png")
    for variant, payload in (("marked", file_data(missing)), ("bare", {"path": missing})):
        gone = gradio_call(server.url, "predict", [payload, PREDICTED])[1].replace(missing, "PATH")
        assert gone == answers[str(secret_image), variant, "call/predict"][1].replace(str(secret_image), "PATH")


INTERNALS = ("Traceback", "object has no attribute", "validation error", "pydantic", "<gradio.", "type=",
             "input_value", "Cannot move", "didn't receive enough")


def test_malformed_api_calls_get_a_plain_line(server, trained):
    """The Gradio API's errors quoted internals ("'ListFiles' object has no attribute 'path'", pydantic's
    dumps of its data models, component reprs); GET /api/predict answered 404 instead of 405."""
    url = server.url
    photo = file_data(uploaded(url, trained["photos"]["chelsea"]))  # uploaded as the page does: only its inputs are odd
    probes = {"image is a number": ("predict", [123, PREDICTED]), "image is a list": ("predict", [[photo], PREDICTED]),
              "a FileData with a number for its meta": ("predict", [{**photo, "meta": 5}, PREDICTED]),
              "one input of two": ("predict", [photo]), "three inputs of two": ("predict", [photo, PREDICTED, 1]),
              "no images at all": ("predict_many", [[]]), "files not a list": ("predict_many", [photo]),
              "the class a number": ("predict", [photo, 123]), "the class not the model's": ("predict", [photo, "cat"])}
    for what, (api, data) in probes.items():
        ok, line = gradio_call(url, api, data)
        assert not ok and not any(word in line for word in INTERNALS), (what, line)
    assert "Choose one or more images first" in gradio_call(url, "predict_many", [[]])[1]
    assert "not a class of this model" in gradio_call(url, "predict", [photo, 123])[1]
    assert "malformed request: predict takes 2 inputs" in gradio_call(url, "predict", [123, PREDICTED])[1]
    status, body = http(f"{url}gradio_api/call/predict", {"not data": 1})
    assert status == 422 and b"malformed request" in body and b"loc" not in body, body
    for method, route, allowed in (("GET", "api/predict", "POST"), ("POST", "api/health", "GET"),
                                   ("DELETE", "api/info", "GET")):
        request = urllib.request.Request(url + route, method=method, data=b"" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 405 and refused.value.headers["Allow"] == allowed
        assert "error" in json.loads(refused.value.read())
    assert http(url + "api/nope")[0] == 404


def uploaded(url: str, path: Path) -> str:
    """Upload a file to the app as the page does (Gradio's upload route): the server-side path."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())[0]


def raw(port: int, data: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(data)
    return connection


def closed_within(connection: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed `connection` within `seconds`, and what it sent before."""
    connection.settimeout(0.2)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_the_server_refuses_a_huge_body_at_once_and_cuts_slow_connections(server, monkeypatch):
    """A body declared over the limit hung until the client gave up, and sockets trickling a byte every
    few seconds stayed open without bound (120 of them past 45 s). The deadlines are shortened here
    (10 s for headers, 30 s for an /api/ body: serve/protocol.py, serve/api.py)."""
    import transferlab.serve.api as api
    import transferlab.serve.protocol as protocol

    monkeypatch.setattr(protocol, "HEADER_TIMEOUT_S", 2.0)
    monkeypatch.setattr(api, "BODY_TIMEOUT_S", 2.0)
    port, started = server.port, time.monotonic()
    huge = raw(port, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 99999999999\r\n\r\n")
    closed, answer = closed_within(huge, 5)
    assert closed and answer.startswith(b"HTTP/1.1 413") and time.monotonic() - started < 5, answer[:200]
    trickling = [raw(port, b"G") for _ in range(40)]
    slow_body = raw(port, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                          b"boundary=b\r\nContent-Length: 1000\r\n\r\n--b")
    idle = raw(port, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    for _ in range(4):  # a byte every half second: each arrives before any deadline, none completes a request
        time.sleep(0.5)
        for connection in [*trickling, slow_body]:
            with contextlib.suppress(OSError):
                connection.sendall(b"E" if connection in trickling else b"x")
        assert healthy(server.url)
    outcomes = [closed_within(connection, 6) for connection in trickling]
    assert all(closed for closed, _ in outcomes) and time.monotonic() - started < 12, outcomes[:3]
    closed, answer = closed_within(slow_body, 4)
    assert closed and answer.startswith(b"HTTP/1.1 408"), answer[:200]
    closed, answer = closed_within(idle, 8)  # the answer, then closed after 5 s of keep-alive
    assert closed and answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert healthy(server.url)


def test_gradio_client_reads_only_its_uploads(server, trained):
    """issue 19.1 through gradio_client: a client that sends a server path instead of uploading
    gets an error; the same file uploaded by the client is classified."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    photo = trained["photos"]["chelsea"]
    label, _, _ = client.predict(handle_file(str(photo)), PREDICTED, api_name="/predict")
    for endpoint in client.endpoints.values():  # send file payloads as they are, as an attacker would
        endpoint._upload_file = lambda payload, data_index: payload
    for path in (str(photo), "/etc/passwd", "/proc/self/environ"):
        with pytest.raises(AppError, match="not uploaded by a user|reads only images uploaded"):
            client.predict(file_data(path), PREDICTED, api_name="/predict")
        with pytest.raises(AppError):
            client.predict([file_data(path)], api_name="/predict_many")
    assert label["label"] in ("red", "green", "blue")


def test_one_request_cannot_stop_the_server(server, trained, monkeypatch):
    """issue 19.2: /dev/zero as the path, and work that outlasts its time: /api/health answers
    during and after, and the late request gets 503."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from transferlab.serve import predictor

    answers = []
    attacks = [lambda: answers.append(gradio_call(server.url, "predict", [file_data("/dev/zero"), PREDICTED])),
               lambda: answers.append(gradio_call(server.url, "predict", [{"path": "/dev/zero"}, PREDICTED])),
               lambda: answers.append(gradio_call(server.url, "predict_many", [[file_data("/dev/zero")]]))]
    threads = [threading.Thread(target=attack, daemon=True) for attack in attacks]
    for thread in threads:
        thread.start()
    assert all(healthy(server.url) for _ in range(5))
    for thread in threads:
        thread.join(60)
    assert len(answers) == 3 and not any(ok for ok, _ in answers) and healthy(server.url)

    monkeypatch.setattr(predictor, "TIMEOUT_S", 1)
    release = threading.Event()
    for _ in range(predictor.WORKERS):  # work that does not finish in time holds every worker
        server.predictor.workers.submit(release.wait, 60)
    photo = trained["photos"]["chelsea"]
    try:
        status, answer = post_image(server.url, "image", "chelsea.jpg", photo.read_bytes())
        with pytest.raises(AppError, match="busy"):
            Client(server.url, verbose=False).predict(handle_file(str(photo)), PREDICTED, api_name="/predict")
        assert healthy(server.url)
    finally:
        release.set()
    assert status == 503 and "busy, try again" in answer["error"]
    assert post_image(server.url, "image", "chelsea.jpg", photo.read_bytes())[0] == 200


def test_the_app_folder_is_swept_while_serving(server, trained, monkeypatch):
    """issue 19.3: what the app writes (uploads of any kind, answers) is deleted once old, and the
    oldest first once the folder is over its size; the examples stay."""
    from gradio_client import Client, handle_file

    examples = {p: data for p, data in files_under(server.folder).items() if str(p) in server.kept}
    assert examples  # the run's held-out images, and Gradio's copies of them
    client = Client(server.url, verbose=False)
    for photo in trained["photos"].values():
        client.predict(handle_file(str(photo)), PREDICTED, api_name="/predict")
    stored = upload(server.url, "notes.txt", uuid.uuid4().bytes)
    assert Path(stored).is_relative_to(server.folder) and http(f"{server.url}gradio_api/file={stored}")[0] == 200
    assert len(files_under(server.folder)) >= len(examples) + 3  # uploads and overlays
    monkeypatch.setattr(server, "keep_s", 1)
    monkeypatch.setattr(server, "every_s", 0.2)
    assert until(lambda: {str(p) for p in server.folder.rglob("*")} == server.kept)  # emptied folders too
    assert files_under(server.folder) == examples and http(f"{server.url}gradio_api/file={stored}")[0] == 403

    monkeypatch.setattr(server, "keep_s", 3600)
    monkeypatch.setattr(server, "max_bytes", 250_000)
    stored = [upload(server.url, f"blob{k}.bin", os.urandom(100_000)) for k in range(6)]
    assert until(lambda: sum(len(d) for p, d in files_under(server.folder).items() if p not in examples) <= 250_000)
    assert [Path(p).exists() for p in stored] == [False] * 4 + [True] * 2  # the newest stay


def upload(url: str, name: str, data: bytes) -> str:
    """POST a file to Gradio's upload route (what the page does first); the path it was stored at."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "gradio_api/upload", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())[0]


def until(condition, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_sigterm_stops_the_console_script_and_leaves_no_files(trained, tmp_path):
    """issue 19.3: SIGTERM (a service manager's stop) is a Ctrl-C: the server stops, says so, exits
    0, and every file it and Gradio wrote (in TMPDIR) is gone."""
    from gradio_client import Client, handle_file

    temp = tmp_path / "tmp"
    temp.mkdir()
    process = subprocess.Popen([str(SCRIPT), "serve", str(trained["run"]), "--port", "0", "--engine", "torch"],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(temp)})
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "serving" in line or len(lines) > 50:
                break
        url = next(line for line in lines if "serving" in line).split("open ")[1].split(" ")[0]
        Client(url, verbose=False).predict(handle_file(str(trained["photos"]["coffee"])), PREDICTED,
                                           api_name="/predict")
        assert [p.name[:18] for p in temp.iterdir()] == ["transferlab-serve-"]
        assert len(files_under(temp)) >= 2  # the upload and the overlay, at least
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    assert code == 0 and "stopped" in process.stderr.read()
    assert not list(temp.iterdir())


def peak_growth_mb(action) -> float:
    """How far this process's resident memory peaks above where it was while `action` runs (the
    server runs in this process); Linux's /proc/self/clear_refs resets the peak."""
    def peak() -> int:
        return int(next(x for x in Path("/proc/self/status").read_text().splitlines()
                        if x.startswith("VmHWM")).split()[1])

    Path("/proc/self/clear_refs").write_text("5")
    before = peak()
    action()
    return (peak() - before) / 1024


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_large_images_are_refused_or_decoded_small(server, trained, tmp_path):
    """issue 19.4: a 9,400 x 9,400 PNG of a few hundred KB is over serve's own pixel limit and
    refused before it is decoded; a 37 Mpx JPEG under it is decoded at reduced scale, with the
    same answer as `predict` on the full image."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from transferlab.predict import predict_files

    Image.new("RGB", (9400, 9400), (200, 40, 30)).save(png := tmp_path / "wide.png")
    assert png.stat().st_size < 400_000
    answers = []
    growth = peak_growth_mb(lambda: answers.append(post_image(server.url, "image", "wide.png", png.read_bytes())))
    assert answers[0][0] == 413 and "exceeds --max-pixels=40000000" in answers[0][1]["error"]
    assert growth < 50, f"refusing the PNG took {growth:.0f} MB"
    with pytest.raises(AppError, match="--max-pixels"):
        Client(server.url, verbose=False).predict(handle_file(str(png)), PREDICTED, api_name="/predict")

    gradient = np.stack([*np.meshgrid(np.linspace(0, 255, 64), np.linspace(255, 0, 64)), np.full((64, 64), 90.0)], -1)
    big = Image.fromarray(gradient.astype(np.uint8)).resize((6200, 6000), Image.BILINEAR)
    big.save(jpeg := tmp_path / "big.jpg", quality=85)
    del big
    growth = peak_growth_mb(lambda: answers.append(post_image(server.url, "image", "big.jpg", jpeg.read_bytes())))
    status, answer = answers[1]
    assert status == 200 and growth < 60, f"the 37 Mpx JPEG took {growth:.0f} MB"  # 110 MB decoded in full
    expected = predict_files(trained["run"], [jpeg], top_k=3, engine="torch")[0]["top"]
    assert [t["class"] for t in answer["top"]] == [t["class"] for t in expected]
    assert np.allclose([t["probability"] for t in answer["top"]], [t["probability"] for t in expected], atol=0.02)


def test_serving_leaves_the_processs_logging_handlers_open(trained):
    """An app that embeds Server keeps its own logging: uvicorn's dictConfig closed every handler of the
    process (in the suite, absl's handler closed pytest's capture file, and every later test failed)."""
    import io
    import logging

    from transferlab.serve import Server

    class Kept(logging.StreamHandler):  # a handler that owns its stream, as absl's and a FileHandler do
        def close(self):
            self.stream.close()
            super().close()

    stream = io.StringIO()
    logger = logging.getLogger("an.embedding.app")
    handler = Kept(stream)
    logger.addHandler(handler)
    try:
        with Server(trained["run"], port=0, engine="torch"):
            logger.warning("still here")
        assert not stream.closed and "still here" in stream.getvalue()
    finally:
        logger.removeHandler(handler)
