"""Inference speed of every engine, against eager PyTorch and against today's path (channels_last).

The default backbone with a 10-class head (tf_efficientnet_lite0, bundled weights) at its default
size (224), answering probabilities from uint8 images, as `predict` and `evaluate` run it:
images/s at batch 32 and at batch 1, and p50 / p95 latency at batch 1, for eager torch, torch
channels_last (today's path), torch.compile (where it works; its compile time is excluded and
printed), onnxruntime and OpenVINO (the engines' own settings, exports made by the tool). Every
contender runs the same images, in interleaved repeats (A B C .., .. C B A), and the median is
reported. With a CUDA device: torch eager fp32 and fp16 there too. Target: the engine `auto`
picks on a CPU is >= 2.5x channels_last torch at batch 32 and at batch 1.

    python benchmarks/bench_inference.py [--repeats 5] [--no-compile] [--model NAME]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import report  # noqa: E402

from transferlab.engines import Probabilities, compile_engine, resolve  # noqa: E402
from transferlab.engines.runtime import TorchEngine  # noqa: E402
from transferlab.models.backbone import Classifier, create_backbone  # noqa: E402


def timed(engine, batch: np.ndarray, calls: int) -> list[float]:
    engine(batch)  # warm
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        engine(batch)
        seconds.append(time.perf_counter() - start)
    return seconds


class Compiled:
    name = "torch.compile"

    def __init__(self, module: torch.nn.Module):
        self.module = torch.compile(module.to(memory_format=torch.channels_last), dynamic=False)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images)).contiguous(memory_format=torch.channels_last)
        return self.module(batch).numpy()


class Cuda:
    """torch on the GPU, channels_last, in float32 or under fp16 autocast; synchronised per call."""

    def __init__(self, module: torch.nn.Module, half: bool):
        self.module = module.to("cuda").to(memory_format=torch.channels_last).eval()
        self.half = half

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images)).to("cuda").contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.half):
            out = self.module(batch).float().cpu().numpy()
        torch.cuda.synchronize()
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    args = parser.parse_args()
    torch.manual_seed(0)
    classifier = Classifier(create_backbone(args.model), 10, (0.5,) * 3, (0.5,) * 3).eval()
    size = 224
    rng = np.random.default_rng(0)
    batches = {32: rng.integers(0, 256, (32, 3, size, size), dtype=np.uint8),
               1: rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8)}
    engines = {"eager": TorchEngine(Probabilities(copy.deepcopy(classifier)), channels_last=False),
               "channels_last": TorchEngine(Probabilities(copy.deepcopy(classifier)), channels_last=True)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("onnxruntime", "openvino"):
            start = time.perf_counter()
            engines[name] = compile_engine(name, Probabilities(classifier), size, Path(tmp))
            print(f"  {name}: export and compile {time.perf_counter() - start:.1f} s", flush=True)
        if not args.no_compile:
            try:
                engines["torch.compile"] = Compiled(Probabilities(classifier))
                start = time.perf_counter()
                for batch in batches.values():
                    engines["torch.compile"](batch)
                print(f"  torch.compile: compile {time.perf_counter() - start:.1f} s (both batch sizes)", flush=True)
            except Exception as exc:  # no C++ compiler, an unsupported op
                print(f"  torch.compile does not work here: {type(exc).__name__}: {str(exc)[:120]}")
                engines.pop("torch.compile")
        reference = engines["eager"](batches[32])
        for name, engine in engines.items():
            print(f"  {name}: max |p - eager| {np.abs(engine(batches[32]) - reference).max():.1e}", flush=True)
        if torch.cuda.is_available():
            engines["cuda fp32"] = Cuda(Probabilities(copy.deepcopy(classifier)), half=False)
            engines["cuda fp16"] = Cuda(Probabilities(copy.deepcopy(classifier)), half=True)
        names = list(engines)
        seen = {(name, b): [] for name in names for b in batches}
        for round_ in range(args.repeats):
            for name in names if round_ % 2 == 0 else reversed(names):
                for b, batch in batches.items():
                    seen[(name, b)] += timed(engines[name], batch, 3 if b == 32 else 20)
    rate = {key: key[1] / statistics.median(values) for key, values in seen.items()}
    print(f"\n{args.model}, {size} px, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats:\n")
    print("| engine | batch 32 img/s | batch 1 img/s | batch 1 p50 ms | batch 1 p95 ms | x eager (b32 / b1) | "
          "x channels_last (b32 / b1) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        latencies = np.array(seen[(name, 1)]) * 1000
        print(f"| {name} | {rate[(name, 32)]:.1f} | {rate[(name, 1)]:.1f} | {np.percentile(latencies, 50):.1f} | "
              f"{np.percentile(latencies, 95):.1f} | {rate[(name, 32)] / rate[('eager', 32)]:.2f} / "
              f"{rate[(name, 1)] / rate[('eager', 1)]:.2f} | {rate[(name, 32)] / rate[('channels_last', 32)]:.2f} / "
              f"{rate[(name, 1)] / rate[('channels_last', 1)]:.2f} |")
    for b in (32, 1):
        picked = resolve("auto", device=torch.device("cpu"), images=10**6, cached=True, batch=b)
        report(f"bench_inference[{picked}, b{b}]", f"{rate[(picked, b)]:.1f} img/s",
               f"torch channels_last {rate[('channels_last', b)]:.1f} img/s",
               rate[(picked, b)] / rate[("channels_last", b)], target=2.5)


if __name__ == "__main__":
    main()
