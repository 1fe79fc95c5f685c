"""Every engine compiles and runs every kind of graph the tool exports, with torch's answers; when
one engine cannot take a model, `auto` says so in one line and uses the next, and a named engine
is one error line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferlab.engines import EngineError, Features, Probabilities, compile_engine, fallbacks
from transferlab.engines.runtime import TorchEngine
from transferlab.models import build_model

NORMALIZE = {"method": "model", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
# model.json of each kind of model a run holds, and the side of the images it takes
GRAPHS = {
    "plain": ({"model": "test_efficientnet", "classes": ["a", "b", "c"], "normalize": NORMALIZE, "size": 32}, 32),
    # images stored at their own 28 px, the model resizes them to 64 inside its graph
    "stored-smaller": ({"model": "test_efficientnet", "classes": ["a", "b", "c"], "normalize": NORMALIZE,
                        "size": 64}, 28),
    # auto's ensemble: members at their own sizes, two sharing the pretrained backbone, one fine-tuned
    "ensemble": ({"model": "test_efficientnet", "classes": ["a", "b", "c"], "normalize": NORMALIZE, "members": [
        {"size": 48, "weight": 0.5, "backbone": 0}, {"size": 32, "weight": 0.3, "backbone": 0},
        {"size": 40, "weight": 0.2, "backbone": 1}]}, 48),
    # a probe on multi-stage features (model.taps: the last 3 stages pooled too), and the small CNN from scratch
    "taps": ({"model": "test_efficientnet", "classes": ["a", "b", "c"], "normalize": NORMALIZE, "size": 48,
              "taps": 3}, 28),
    "scratch": ({"model": "small_cnn", "classes": ["a", "b", "c"], "normalize": NORMALIZE, "size": 28}, 28),
    "vit": ({"model": "test_vit", "classes": ["a", "b"], "normalize": NORMALIZE, "size": 32}, 32),
    "vit-stored-smaller": ({"model": "test_vit", "classes": ["a", "b"], "normalize": NORMALIZE, "size": 48}, 24),
}


def module_of(kind: str, graph: str) -> tuple[torch.nn.Module, int]:
    """The module the tool compiles for `kind` (probabilities: predict, evaluate, serve, export;
    features: the feature store) of graph `graph`, with random but fixed weights."""
    meta, side = GRAPHS[graph]
    torch.manual_seed(0)
    model = build_model(meta, side)
    for parameter in model.parameters():  # the heads and random backbones are far from uniform outputs
        parameter.data.normal_(0, 0.2)
    model.eval()
    if kind == "features":
        classifier = getattr(model, "members", [model])[0]
        return Features(classifier).eval(), side
    return Probabilities(model).eval(), side


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One engine cache for the module: the engines of one graph share its ONNX export, as in a run."""
    return tmp_path_factory.mktemp("engines")


# the feature store's graphs beyond the in-graph resize repeat what the probabilities cover: make test-slow
CASES = [pytest.param(kind, graph, marks=[] if kind == "probabilities" or graph == "stored-smaller"
                      else pytest.mark.slow) for graph in GRAPHS for kind in ("probabilities", "features")
         if kind == "probabilities" or graph != "ensemble"]


@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "openvino"])
@pytest.mark.parametrize(("kind", "graph"), CASES)
def test_every_engine_runs_every_graph_with_torchs_answers(engine, kind, graph, exports):
    module, side = module_of(kind, graph)
    images = np.random.default_rng(1).integers(0, 256, (3, 3, side, side), dtype=np.uint8)
    reference = TorchEngine(module, channels_last=False)(images)
    compiled = compile_engine(engine, module, side, exports / kind / graph, channels_last=False)
    assert compiled.name == engine
    answers = compiled(images)
    assert answers.shape == reference.shape
    assert np.abs(answers - reference).max() <= 1e-4 * max(1.0, float(np.abs(reference).max()))


def test_auto_falls_back_in_one_line_and_a_named_engine_is_one_error(exports, monkeypatch, capsys):
    """When OpenVINO (auto's pick for one image at a time) refuses a model, auto says so and runs it on
    onnxruntime; asked for by name, the refusal is an EngineError (one line from the CLI)."""
    import transferlab.engines.runtime as runtime

    def refuses(self, xml):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:112:\nCheck 'data.size() == OC' failed")

    monkeypatch.setattr(runtime.OpenVinoEngine, "__init__", refuses)
    module, side = module_of("probabilities", "plain")
    images = np.zeros((1, 3, side, side), np.uint8)
    assert fallbacks("auto", "openvino") == ["openvino", "onnxruntime", "torch"]
    compiled = compile_engine(fallbacks("auto", "openvino"), module, side, exports / "fallback",
                              channels_last=False)
    assert compiled.name == "onnxruntime" and compiled(images).shape == (1, 3)
    warned = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warned) == 1 and "openvino engine cannot run this model" in warned[0] and "onnxruntime" in warned[0]
    with pytest.raises(EngineError, match="the openvino engine cannot run this model .*Check 'data.size"):
        compile_engine(fallbacks("openvino", "openvino"), module, side, exports / "fallback", channels_last=False)


def test_a_fresh_cache_is_not_called_damaged(tmp_path, capsys):
    """The first OpenVINO compile of a model exports ONNX, then the IR: neither is a rebuild."""
    module, side = module_of("probabilities", "plain")
    compile_engine("openvino", module, side, tmp_path / "key", channels_last=False)
    compile_engine("openvino", module, side, tmp_path / "key", channels_last=False)
    assert "rebuilding" not in capsys.readouterr().err


def test_the_cache_folder_keeps_to_its_disk_limit_when_images_are_held_in_memory(tmp_path, monkeypatch):
    """data.cache auto keeps a small set's decoded images in memory, but its features and the engine
    exports of predict, evaluate and serve go to the cache folder: they were never trimmed to
    data.disk_limit_gb (142 MB against 20 MB)."""
    from conftest import TINY, colour_images
    from transferlab.cli import main
    from transferlab.config import load_config
    from transferlab.rundir import RUN_DIR_ENV
    from transferlab.run import run_training

    cache = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERLAB_CACHE", str(cache))
    data = colour_images(tmp_path / "data")
    image = str(next((data / "red").iterdir()))

    def entries() -> dict:
        return {p: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
                for p in cache.glob("*/*")}

    seen = []
    for k, size in enumerate((32, 40)):
        monkeypatch.delenv(RUN_DIR_ENV, raising=False)
        config = load_config(overrides=[*TINY, "strategy.name=feature-extraction", "train.epochs=1", "data.cache=auto",
                                        "train.engine=onnxruntime", f"preprocess.size={size}",
                                        "data.disk_limit_gb=0.00002"])
        run_training(str(data), config, out=tmp_path / f"run{k}", progress=False)
        assert main(["predict", str(tmp_path / f"run{k}"), image, "--engine", "onnxruntime"]) == 0
        seen.append(entries())
    assert any(p.parent.name == "engines" for p in seen[0]), seen[0]  # predict's export was written ...
    assert not set(seen[0]) & set(seen[1]), seen  # ... and the second run's writes trimmed the first's away
    assert sum(seen[1].values()) <= 20_000 + max(seen[1].values()), seen[1]  # the limit, and what is in use
