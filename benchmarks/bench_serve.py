"""Does `transferlab serve` hold up under concurrent use? 50 requests to the JSON API from 8
threads (real photos and a broken file among them): every request answered, no answer different
from `predict` on the same file, memory flat (resident size after the load against after a
warm-up of the same size), and the requests/s of the server against the baseline of calling
the server's own predictor called in-process on the same images one at a time (equal work: the
same decode path, model and engine), so the ratio is what HTTP, multipart parsing and the
threads cost or gain.

    python benchmarks/bench_serve.py [RUN]      (default: trains a small run on three photo classes first)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _report import report  # noqa: E402

from transferlab.cli import quiet_lightning  # noqa: E402

REQUESTS, THREADS = 50, 8


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def photos(folder: Path) -> list[Path]:
    """Real photos (scikit-image's) at several sizes and formats, plus one broken file."""
    from skimage import data

    files = []
    for name in ("chelsea", "coffee", "astronaut", "rocket", "cat"):
        picture = Image.fromarray(getattr(data, name)())
        for k, (size, fmt) in enumerate(((None, "JPEG"), (320, "PNG"), (1200, "WEBP"))):
            shown = picture if size is None else picture.resize((size, round(size * picture.height / picture.width)))
            path = folder / f"{name}-{k}.{fmt.lower()}"
            shown.save(path, fmt)
            files.append(path)
    broken = folder / "broken.jpg"
    broken.write_bytes(files[0].read_bytes()[:200])
    return files + [broken]


def train_small(folder: Path) -> Path:
    from transferlab.config import load_config
    from transferlab.run import run_training

    rng = np.random.default_rng(0)
    for k, name in enumerate(("red", "green", "blue")):
        for i in range(12):
            img = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
            img[..., k] = rng.integers(150, 256, (64, 64), dtype=np.uint8)
            (folder / "data" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / "data" / name / f"{i}.png")
    config = load_config(overrides=["preprocess.size=128", "strategy.name=feature-extraction", "train.epochs=5"])
    return run_training(str(folder / "data"), config, out=folder / "run", progress=False)


def post(url: str, path: Path) -> tuple[int, dict]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "api/predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def main() -> None:
    from transferlab.data.decode import BadImage
    from transferlab.predict import predict_files
    from transferlab.serve import Server

    quiet_lightning()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = Path(sys.argv[1]) if len(sys.argv) > 1 else train_small(tmp)
        files = photos(tmp)
        with Server(run, port=0) as server:
            engine = server.predictor.engine_name
            expected = {r["path"]: r for r in predict_files(run, files, top_k=3, engine=engine)}
            load = [files[k % len(files)] for k in range(REQUESTS)]
            with ThreadPoolExecutor(THREADS) as pool:  # warm-up of the same size: every lazy cache is filled
                list(pool.map(lambda f: post(server.url, f), load))
            before = rss_mb()
            started = time.perf_counter()
            with ThreadPoolExecutor(THREADS) as pool:
                answers = list(pool.map(lambda f: post(server.url, f), load))
            served = time.perf_counter() - started
            after = rss_mb()
            started = time.perf_counter()
            for file in load:  # the baseline: the same work in-process (decode, model on the same engine), no HTTP
                try:
                    server.predictor.predict(file.read_bytes(), top_k=3)
                except BadImage:
                    pass
            direct = time.perf_counter() - started
        wrong = 0
        for file, (status, answer) in zip(load, answers):
            want = expected[str(file)]
            if "error" in want:
                wrong += status < 400 or status >= 500
            else:
                got = [(t["class"], t["probability"]) for t in answer.get("top", [])][:3]
                wrong += status != 200 or [c for c, _ in got] != [t["class"] for t in want["top"]] or not np.allclose(
                    [p for _, p in got], [t["probability"] for t in want["top"]], atol=1e-4)
        answered = sum(1 for status, _ in answers if status in (200, 413, 415, 422))
        print(f"{REQUESTS} requests from {THREADS} threads on {engine}: {answered} answered, {wrong} wrong; "
              f"{REQUESTS / served:.1f} req/s served, {REQUESTS / direct:.1f} img/s in-process; "
              f"RSS {before:.0f} -> {after:.0f} MB")
        report("bench_serve[answered]", f"{answered}/{REQUESTS} answered, {wrong} wrong", "every request",
               (answered - wrong) / REQUESTS, target=1.0)
        report("bench_serve[memory]", f"RSS {before:.0f} -> {after:.0f} MB", "RSS after a warm-up of the same load",
               after / before, target=1.1, higher_is_better=False)
        report("bench_serve[throughput]", f"{REQUESTS / served:.1f} req/s over HTTP",
               "the predictor in-process, sequential",
               direct / served)


if __name__ == "__main__":
    main()
