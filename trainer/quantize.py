"""INT8 for CPU edge boxes: the same network with 8-bit weights and activations.

A CPU runs the float32 model at its arithmetic peak already; only fewer or cheaper
operations make it faster. ONNX Runtime's static quantisation (QDQ, per-channel int8
weights, uint8 activations) runs the convolutions on the CPU's 8-bit dot-product
instructions (AVX-512 VNNI, AVX2, Arm dot-product). The ranges of the activations are
measured on the masked variants of good training images, the very batches the edge sends.
This model is for ONNX Runtime; TensorRT builds its FP16 engine from the float32 ONNX.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from edge.method.masks import masked_variants

# Enough good images for stable activation ranges; more only slows export.
CALIBRATION_IMAGES = 16


def first_convolutions(float_model: Path, input_name: str) -> list[str]:
    """The Conv nodes that read the image itself."""
    graph = onnx.load(str(float_model), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type == "Conv" and input_name in node.input]


class MaskedVariantBatches(CalibrationDataReader):
    """Feeds the quantiser one frame's 12 masked variants at a time."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, input_name: str):
        self.batches = (masked_variants(image, masks) for image in images)
        self.input_name = input_name

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_int8(float_model: Path, out_path: Path, images: np.ndarray, masks: np.ndarray, input_name: str) -> None:
    """Write the INT8 version of `float_model`, calibrated on `images` (N, 3, H, W) in [0, 1]."""
    # The quantiser logs every node it cannot quantise (Resize, Sigmoid); that is expected.
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)
    try:
        quantize_static(
            str(float_model),
            str(out_path),
            MaskedVariantBatches(images, masks, input_name),
            quant_format=QuantFormat.QDQ,
            # Each activation's range from the 99.999th percentile of its calibration values,
            # not their extremes: a few outliers stretched a range so far that the rest
            # rounded coarsely (a KolektorSDD net trained 80 epochs: one value in a thousand
            # off by 0.10, refused by export; 0.06 with percentiles, docs/benchmarks.md).
            calibrate_method=CalibrationMethod.Percentile,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # The first conv stays float32. Its input is the image, whose uint8 codes span
            # 0..255; on x86 CPUs without VNNI (AVX2 only, e.g. AMD Zen 3) ONNX Runtime's
            # u8s8 kernels sum pairs of uint8 x int8 products in int16 (vpmaddubsw), and
            # 2 * 255 * 127 overflows it: measured, the bottle net's output moved by 0.69
            # (0.04 with exact integer sums). Deeper layers stay in range. 7-bit weights
            # (reduce_range) avoid the overflow too but cost more accuracy (0.08-0.11),
            # while this first conv is a few percent of the work.
            nodes_to_exclude=first_convolutions(float_model, input_name),
        )
    finally:
        logging.getLogger().setLevel(quiet)
