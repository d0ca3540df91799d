"""GPU pipeline vs a torch-on-GPU eager loop, with the compute floor beside them.

    python -m bench.gpu                          # width 64 (the paper's net), 256 px
    python -m bench.gpu --width 16 --size 128    # the CPU recipe's net
    python -m bench.gpu --checkpoint runs/bottle-gpu/last.pt

(`-m` from the repository root: run as a file, bench/edge.py would shadow the edge package.)

Prints, per frame, on real MVTec AD frames:
- ours: TensorRTBackend end to end (upload, variants, TensorRT FP16 batch of 12,
  map kernels, map and score back), latency and frames/s;
- the map kernels and copies alone (GpuAnomalyMap without the network);
- reference: torch eager on the GPU, one masked variant at a time, as the RIAD
  reference code does it, map on the CPU;
- the floor: 12 U-Net passes' FLOPs (counted from the ONNX graph) at the FP16 matmul
  rate torch reaches on this GPU.
Needs a GPU with TensorRT and torch with CUDA; exits with the reason otherwise.
Weights do not change the speed, so without --checkpoint the net is freshly initialised.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge.backends.gpu_available import gpu_status
from edge.preprocess import prepare, read_image

BOTTLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec" / "bottle"


def onnx_flops(model_path: Path) -> float:
    """FLOPs (2 per multiply-add) of one image through the convolutions of an ONNX graph."""
    import onnx
    from onnx import numpy_helper, shape_inference

    graph = shape_inference.infer_shapes(onnx.load(str(model_path))).graph
    shapes = {
        v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
        for v in (*graph.input, *graph.value_info, *graph.output)
    }
    weights = {w.name: numpy_helper.to_array(w).shape for w in graph.initializer}
    total = 0.0
    for node in graph.node:
        if node.op_type == "Conv":
            w = weights[node.input[1]]  # (Cout, Cin/g, kh, kw)
            total += 2 * np.prod(shapes[node.output[0]][1:]) * np.prod(w[1:])
        elif node.op_type == "ConvTranspose":
            w = weights[node.input[1]]  # (Cin, Cout/g, kh, kw)
            total += 2 * np.prod(shapes[node.input[0]][1:]) * np.prod(w[1:])
    return float(total)


def fp16_matmul_rate(torch) -> float:
    """FLOP/s of a large FP16 matmul: the best this GPU does in practice."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    return 10 * 2 * n**3 / (time.perf_counter() - start)


def timed(run, frames: list[np.ndarray], sync=lambda: None) -> list[float]:
    run(frames[0])  # warm-up
    seconds = []
    for frame in frames:
        start = time.perf_counter()
        run(frame)
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument(
        "--checkpoint", type=Path, help="a trained checkpoint (else random weights)"
    )
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--data", type=Path, default=BOTTLE / "test")
    args = parser.parse_args()

    ready, reason = gpu_status()
    if not ready:
        sys.exit(f"bench/gpu.py needs the GPU path: {reason}")
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs torch with CUDA for the eager baseline")

    from edge.anomaly_map import anomaly_map, default_sigma
    from edge.backends.tensorrt import TensorRTBackend
    from edge.manifest import Manifest, file_sha256, manifest_path
    from edge.masks import fixed_masks, masked_variants, recombine
    from trainer.engine import build_engine
    from trainer.export import write_onnx
    from trainer.train import TrainConfig, build_model, load_checkpoint

    paths = sorted(args.data.rglob("*.png"))[: args.frames]
    if not paths:
        sys.exit(f"no PNG frames under {args.data}")
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        config = TrainConfig.from_dict(state["config"])
        model = build_model(config)
        model.load_state_dict(state["model"])
    else:
        config = TrainConfig(input_size=args.size, base_width=args.width)
        model = build_model(config)
    model = model.cuda().eval()
    size = config.input_size
    masks = fixed_masks(size, size, config.mask_spec, config.seed)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "bench.onnx"
        write_onnx(model.cpu(), torch.zeros(2, 3, size, size), onnx_path)
        model.cuda()
        Manifest(
            model_id="bench", category="bench", input_size=size, model_width=config.base_width, threshold=1.0,
            model_file=onnx_path.name, model_sha256=file_sha256(onnx_path), mask_seed=config.seed,
            cell_sizes=list(config.mask_spec.cell_sizes), num_sets=config.mask_spec.num_sets,
            map_sigma=default_sigma(size),
        ).save(manifest_path(onnx_path))  # fmt: skip
        manifest = build_engine(onnx_path, Path(tmp) / "bench.plan")
        frames = [prepare(read_image(p), manifest.input_size) for p in paths]

        with TensorRTBackend(Path(tmp) / "bench.plan") as backend:
            ours = timed(backend.score, frames)

            def map_only(frame: np.ndarray) -> None:
                # The engine's last outputs stay in its buffer: the map runs on them.
                backend.gpu.variants(frame)
                backend.gpu.score()

            kernels = timed(map_only, frames)

        def eager(frame: np.ndarray) -> None:
            with torch.inference_mode():
                outputs = [
                    model(torch.from_numpy(v[None]).cuda()).cpu().numpy()
                    for v in masked_variants(frame, masks)
                ]
            anomaly_map(
                frame, recombine(np.concatenate(outputs), masks), manifest.map_spec
            ).max()

        reference = timed(eager, frames, torch.cuda.synchronize)
        floor = (
            manifest.mask_spec.num_variants
            * onnx_flops(onnx_path)
            / fp16_matmul_rate(torch)
        )

    print(f"GPU: {torch.cuda.get_device_name()}; {reason}")
    print(
        f"model: U-Net width {manifest.model_width}, {manifest.input_size} px, 12 variants per frame, TensorRT FP16"
    )
    print(f"{'':40s} {'frames/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, seconds in (
        ("TensorRTBackend end to end (ours)", ours),
        ("  of which map kernels + copies", kernels),
        ("torch eager loop on GPU (reference)", reference),
    ):
        ms = np.asarray(seconds) * 1000
        print(
            f"{name:40s} {1000 / ms.mean():9.1f} {np.percentile(ms, 50):8.2f} {np.percentile(ms, 99):8.2f}"
        )
    print(
        f"{'FLOP floor of 12 passes at FP16 peak':40s} {1 / floor:9.1f} {floor * 1000:8.2f}"
    )


if __name__ == "__main__":
    main()
