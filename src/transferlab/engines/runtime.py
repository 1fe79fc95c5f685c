"""The engines themselves: each turns uint8 NCHW numpy images into float32 numpy outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from transferlab.io import signal_stack_kept


def threads() -> int:
    return max(1, torch.get_num_threads())


class TorchEngine:
    """Eager PyTorch (channels-last for convolutional models), the reference every export matches."""

    name = "torch"

    def __init__(self, module: nn.Module, *, device: torch.device | str = "cpu", channels_last: bool = True):
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.module = module.to(self.device).eval()
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.module(batch).float().cpu().numpy()


class OnnxEngine:
    """onnxruntime on the CPU, as many threads as torch uses, without spinning (a spinning pool
    steals the cores a data loader or another process needs)."""

    name = "onnxruntime"

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(images, dtype=np.uint8)})[0]


class OpenVinoEngine:
    """OpenVINO on the CPU in float32 (its default on some CPUs is bf16, which changes answers),
    the latency hint, as many threads as torch uses."""

    name = "openvino"

    def __init__(self, xml: Path):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        with signal_stack_kept():
            self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", {
                hints.performance_mode: hints.PerformanceMode.LATENCY, props.inference_num_threads: threads(),
                hints.inference_precision: ov.Type.f32})
            self.request = self.compiled.create_infer_request()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(images, dtype=np.uint8)})
        return self.request.get_output_tensor(0).data.copy()  # the buffer is reused by the next call

