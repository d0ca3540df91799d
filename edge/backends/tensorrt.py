"""GPU backend: TensorRT runs a frame's masked variants (12 by default) as one batch; our kernels do the rest.

Per frame: one upload (the frame), the variants expanded on the device straight into
the engine's input buffer, execute_async_v3 on the same stream, then recombination,
the map, the Gaussian and the max on the device; only the map and the score come
back. Every buffer and tensor address is set once, at load.

Importing this module without TensorRT raises ImportError saying what to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.backends.base import Backend, FrameScore
from edge.backends.engine_check import EngineMismatchError, check_engine
from edge.backends.gpu_available import GpuUnavailable, cuda_device, import_tensorrt
from edge.backends.gpu_map import GpuAnomalyMap
from edge.manifest import Manifest

try:
    import_tensorrt()
except GpuUnavailable as missing:
    raise ImportError(f"the TensorRT backend cannot load: {missing}") from None
import tensorrt as trt


class TensorRTBackend(Backend):
    name = "gpu (tensorrt)"

    def __init__(self, engine_path: str | Path):
        # for_model checks the engine's sha256 against its manifest.
        super().__init__(Manifest.for_model(engine_path))
        m = self.manifest
        check_engine(m, engine_path, trt.__version__, cuda_device())
        self.gpu = GpuAnomalyMap.for_manifest(m, folder=Path(engine_path).parent)  # and the kernels' cubin
        try:
            self._load(Path(engine_path))
        except BaseException:
            self.gpu.close()
            raise

    def _load(self, engine_path: Path) -> None:
        self.gpu.device.push()
        try:
            self.logger = trt.Logger(trt.Logger.WARNING)
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self.engine is None:
                raise EngineMismatchError(
                    f"TensorRT could not load {engine_path} (see its messages above); rebuild it on this "
                    "device with 'riad-trainer build-engine'"
                )
            self.context = self.engine.create_execution_context()
            self._bind(self.manifest)
        finally:
            self.gpu.device.pop()

    def _bind(self, m: Manifest) -> None:
        """Check the engine's I/O against the manifest and point it at our buffers, once."""
        tensors = {
            self.engine.get_tensor_name(i): self.engine.get_tensor_mode(
                self.engine.get_tensor_name(i)
            )
            for i in range(self.engine.num_io_tensors)
        }
        expected = {
            m.input_name: trt.TensorIOMode.INPUT,
            m.output_name: trt.TensorIOMode.OUTPUT,
        }
        if tensors != expected:
            names = ", ".join(
                f"{n} ({mode.name.lower()})" for n, mode in tensors.items()
            )
            raise EngineMismatchError(
                f"the engine's tensors are {names}; the manifest expects input {m.input_name} "
                f"and output {m.output_name}"
            )
        for tensor in expected:
            if self.engine.get_tensor_dtype(tensor) != trt.DataType.FLOAT:
                raise EngineMismatchError(
                    f"engine tensor {tensor} is not float32; rebuild it with build-engine"
                )
        batch = (self.gpu.num_variants, 3, m.input_height, m.input_width)
        if not self.context.set_input_shape(m.input_name, batch):
            raise EngineMismatchError(
                f"the engine does not accept a batch of {batch}; it was built for another input size "
                "or mask count - rebuild it from this model"
            )
        self.context.set_tensor_address(m.input_name, self.gpu.variants_address)
        self.context.set_tensor_address(m.output_name, self.gpu.outputs_address)

    def score(self, image: np.ndarray) -> FrameScore:
        self.gpu.variants(image)
        self.gpu.device.push()
        try:
            if not self.context.execute_async_v3(self.gpu.stream_handle):
                raise RuntimeError(
                    "TensorRT failed to run the engine (see its messages above)"
                )
        finally:
            self.gpu.device.pop()
        amap, score = self.gpu.score()
        return FrameScore(amap, score)

    def close(self) -> None:
        self.gpu.device.push()
        try:
            # The context and engine must go before the memory they point at.
            del self.context, self.engine, self.runtime
        finally:
            self.gpu.device.pop()
        self.gpu.close()
