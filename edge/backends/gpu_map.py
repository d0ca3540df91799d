"""The RIAD method on the GPU: one frame up, the masked variants (12 by default) made on the device,
and only the anomaly map and its score back down.

`GpuAnomalyMap` loads edge/kernels/riad_kernels.cu as build-engine compiled it for this
GPU (edge/backends/kernel_binary.py) and owns every device buffer for one input size, allocated once. Per frame it uploads the image
through a pinned buffer, expands the variants into the network's input buffer and,
once the network has written its output buffer, runs recombination, the multi-scale
GMS map, the Gaussian, the subtraction of the manifest's reference map (where it has one)
and the max on the same stream. The kernels share their
arithmetic with the host build that tests them (tests/test_kernels_host.py), and that
arithmetic mirrors edge/method/anomaly_map.py, the reference.

It launches through pycuda (what JetPack offers) or, where only CuPy is installed,
through cupy.RawModule, which compiles with NVRTC at start (CuPy brings it; no toolkit
needed); neither is imported until a map is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge.method.anomaly_map import MapSpec, gaussian_kernel, image_score, scored_part
from edge.backends import kernel_binary
from edge.backends.gpu_available import GpuUnavailable
from edge.backends.kernel_binary import COMPILE_OPTIONS, KernelCompileError, compile_failure
from edge.manifest import Manifest
from edge.method.masks import fixed_masks

THREADS = (
    256  # threads per block; max_value's shared array in riad_kernels.cu has this size
)

# Kernel name -> argument types (P pointer, i int32, f float32), as riad_kernels.cu declares them.
KERNEL_SIGNATURES = {
    "expand_variants": "PPiiiiP",
    "frame_gray": "PiiiiP",
    "recombined_gray": "PPiiiiiiP",
    "pool_level": "Piiiii",
    "gms_level": "PiiiiiifP",
    "raw_anomaly": "PiiiiiP",
    "gaussian_pass": "PPiiiiP",
    "subtract_reference": "PPi",
    "max_value": "PiP",
}


class KernelDevice(Protocol):
    """What GpuAnomalyMap needs of a device: memory, copies and launches on one stream."""

    @property
    def stream_handle(self) -> int: ...
    def push(self) -> None: ...
    def pop(self) -> None: ...
    def alloc(self, nbytes: int) -> int: ...
    def pinned(self, shape: Sequence[int], dtype: Any) -> np.ndarray: ...
    def to_device(self, address: int, host: np.ndarray) -> None: ...
    def to_host(self, host: np.ndarray, address: int) -> None: ...
    def launch(self, name: str, count: int, *args: Any) -> None: ...
    def synchronize(self) -> None: ...
    def close(self) -> None: ...


def pixel_sets(masks: np.ndarray) -> np.ndarray:
    """(K, H, W) uint8: which set hides each pixel, from (K, n, H, W) disjoint masks."""
    if not np.array_equal(
        masks.sum(axis=1), np.ones(masks.shape[:1] + masks.shape[2:], masks.dtype)
    ):
        raise ValueError("masks must hide every pixel in exactly one set per cell size")
    return masks.argmax(axis=1).astype(np.uint8)


def smoothing_taps(sigma: float) -> np.ndarray:
    """The Gaussian's taps; a single tap of 1 (an exact copy) when sigma <= 0, as smooth() does."""
    return gaussian_kernel(sigma) if sigma > 0 else np.ones(1, np.float32)


def blocks_for(count: int) -> tuple[int, int, int]:
    return ((count + THREADS - 1) // THREADS, 1, 1)


class _PyCudaDevice:
    """Device 0's primary context (shared with TensorRT), one stream, the kernels' cubin.

    `recorded`: the engine manifest's `kernels` section, the cubin in `folder`; compiled
    with nvcc here instead when that does not fit (kernel_binary.find_kernels says why).
    """

    def __init__(self, recorded: dict, folder: Path | None) -> None:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count() == 0:
            raise GpuUnavailable("pycuda found no CUDA GPU")
        self.cuda = cuda
        self.device = cuda.Device(0)
        arch = kernel_binary.arch_for("%d.%d" % self.device.compute_capability())
        compiled = kernel_binary.find_kernels(recorded, folder, arch)
        self.context = self.device.retain_primary_context()
        self.context.push()
        try:
            self.stream = cuda.Stream()
            try:
                module = cuda.module_from_buffer(compiled.cubin)
            except cuda.Error as exc:  # a driver older than the nvcc that compiled it
                raise KernelCompileError(
                    f"the CUDA driver cannot load the kernels {compiled.compiler} compiled for {arch}: {exc}"
                ) from None
            self.kernels = {
                name: module.get_function(name) for name in KERNEL_SIGNATURES
            }
            for name, kernel in self.kernels.items():
                kernel.prepare(KERNEL_SIGNATURES[name])
        finally:
            self.context.pop()
        self.allocations: list[Any] = []

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def push(self) -> None:
        self.context.push()

    def pop(self) -> None:
        self.context.pop()

    def alloc(self, nbytes: int) -> int:
        allocation = self.cuda.mem_alloc(nbytes)
        self.allocations.append(allocation)
        return int(allocation)

    def pinned(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        return self.cuda.pagelocked_empty(tuple(shape), dtype)

    def to_device(self, address: int, host: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(address, host, self.stream)

    def to_host(self, host: np.ndarray, address: int) -> None:
        self.cuda.memcpy_dtoh_async(host, address, self.stream)

    def launch(self, name: str, count: int, *args: Any) -> None:
        self.kernels[name].prepared_async_call(
            blocks_for(count), (THREADS, 1, 1), self.stream, *args
        )

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.context.push()
        try:
            for allocation in self.allocations:
                allocation.free()
            self.allocations.clear()
        finally:
            self.context.pop()
            self.context.detach()


class _CupyDevice:
    """The same through CuPy (NVRTC), for machines with CuPy and no pycuda."""

    def __init__(self) -> None:
        import cupy
        import cupyx
        from cupy.cuda.compiler import CompileException

        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise GpuUnavailable("CuPy found no CUDA GPU")
        self.cupy, self.cupyx = cupy, cupyx
        self.device = cupy.cuda.Device(0)
        with self.device:
            self.stream = cupy.cuda.Stream(non_blocking=True)
            kernels_dir = kernel_binary.KERNELS_DIR
            module = cupy.RawModule(
                code=(kernels_dir / kernel_binary.KERNEL_SOURCE).read_text("utf-8"),
                options=(*COMPILE_OPTIONS, f"-I{kernels_dir}"),
            )
            try:  # RawModule compiles at the first get_function
                self.kernels = {
                    name: module.get_function(name) for name in KERNEL_SIGNATURES
                }
            except CompileException as exc:
                raise compile_failure("NVRTC (CuPy)", str(exc)) from None
        self.allocations: list[Any] = []
        self.runtime = cupy.cuda.runtime

    @property
    def stream_handle(self) -> int:
        return int(self.stream.ptr)

    def push(self) -> None:
        self.device.use()

    def pop(self) -> None:
        """CuPy works in the runtime's current device; nothing to undo."""

    def alloc(self, nbytes: int) -> int:
        with self.device:
            allocation = self.cupy.cuda.alloc(nbytes)
        self.allocations.append(allocation)
        return int(allocation.ptr)

    def pinned(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        return self.cupyx.empty_pinned(tuple(shape), dtype)

    def to_device(self, address: int, host: np.ndarray) -> None:
        self.runtime.memcpyAsync(
            address,
            host.ctypes.data,
            host.nbytes,
            self.runtime.memcpyHostToDevice,
            self.stream.ptr,
        )

    def to_host(self, host: np.ndarray, address: int) -> None:
        self.runtime.memcpyAsync(
            host.ctypes.data,
            address,
            host.nbytes,
            self.runtime.memcpyDeviceToHost,
            self.stream.ptr,
        )

    def launch(self, name: str, count: int, *args: Any) -> None:
        # CuPy passes a Python int as 8 bytes: give every argument its C type.
        typed = [
            np.uint64(a) if t == "P" else np.int32(a) if t == "i" else np.float32(a)
            for t, a in zip(KERNEL_SIGNATURES[name], args)
        ]
        self.kernels[name](
            blocks_for(count), (THREADS, 1, 1), tuple(typed), stream=self.stream
        )

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.allocations.clear()


def open_device(recorded: dict | None = None, folder: Path | None = None) -> _PyCudaDevice | _CupyDevice:
    """pycuda where installed (JetPack), else CuPy; a clear error when neither can run.

    `recorded` and `folder`: an engine manifest's `kernels` section and the engine's folder.
    """
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        pass
    else:
        return _PyCudaDevice(recorded or {}, folder)
    try:
        import cupy  # noqa: F401
    except ImportError:
        raise GpuUnavailable(
            "neither pycuda nor CuPy is installed; on a Jetson use JetPack's python3-pycuda "
            "(see docs/gpu.md), on x86 'pip install .[gpu]'"
        ) from None
    return _CupyDevice()


class GpuAnomalyMap:
    """Device buffers and kernels for one input shape, mask set and map spec."""

    def __init__(
        self,
        input_shape: tuple[int, int],
        masks: np.ndarray,
        map_spec: MapSpec,
        device: KernelDevice | None = None,
        reference: np.ndarray | None = None,
        score_top_fraction: float | None = None,
        score_margin: np.ndarray | None = None,
        score_weight: np.ndarray | None = None,
    ):
        """`device`: where the kernels run; by default GPU 0 through pycuda or CuPy
        (tests pass one that runs them on the host). `reference`: the manifest's (H, W)
        reference map, subtracted after the Gaussian as excess_over_reference does; None
        leaves the map as it is (no launch at all: max(map - 0, 0) would turn a map's
        rounding-level negatives into 0, which the CPU's map keeps). `score_top_fraction`:
        the manifest's; None scores the map's maximum on the device (max_value), a
        fraction the mean of its highest pixels on the host, from the map that comes back
        anyway (image_score, the CPU's own code: a partial sort of ~25,000 values, well
        under a millisecond). `score_margin`: the manifest's; where there is one, the score
        counts only the map's rise above it; `score_weight`: the manifest's, the share of
        the map the score counts at each pixel (both scored_part, on the host as well)."""
        num_sizes, num_sets, height, width = masks.shape
        if (height, width) != tuple(input_shape):
            raise ValueError(
                f"masks are {height}x{width}, the input is {input_shape[0]}x{input_shape[1]}"
            )
        if height % (1 << (map_spec.levels - 1)) or width % (1 << (map_spec.levels - 1)):
            raise ValueError(
                f"input {height}x{width} cannot be halved {map_spec.levels - 1} times"
            )
        if reference is not None and reference.shape != (height, width):
            raise ValueError(
                f"the reference map is {reference.shape}, the input is {height}x{width}"
            )
        self.height, self.width = height, width
        self.num_sizes, self.num_sets, self.spec = num_sizes, num_sets, map_spec
        for name, plane in (("margin", score_margin), ("weight", score_weight)):
            if plane is not None and plane.shape != (height, width):
                raise ValueError(f"the score's {name} is {plane.shape}, the input is {height}x{width}")
        self.score_top_fraction = score_top_fraction
        self.score_margin, self.score_weight = score_margin, score_weight
        # The device's max_value only where the score is the plain map's maximum.
        self.score_on_device = score_top_fraction is None and score_margin is None and score_weight is None
        self.num_variants = num_sizes * num_sets
        # Planes compared per image: the grey mean, or R, G and B (MapSpec.per_channel);
        # a gray pyramid per plane of the original and of each recombination, a GMS pyramid per pair.
        self.planes = 3 if map_spec.per_channel else 1
        self.pyramids = (1 + num_sizes) * self.planes
        self.pairs = num_sizes * self.planes
        plane = height * width
        self.pyramid_size = sum(
            plane >> (2 * level) for level in range(map_spec.levels)
        )
        taps = smoothing_taps(map_spec.sigma)
        self.radius = len(taps) // 2

        self.device: KernelDevice = device if device is not None else open_device()
        self.device.push()
        try:
            f32 = 4
            self.frame_address = self.device.alloc(3 * plane * f32)
            self.variants_address = self.device.alloc(
                self.num_variants * 3 * plane * f32
            )
            self.outputs_address = self.device.alloc(
                self.num_variants * 3 * plane * f32
            )
            self.pixel_set_address = self.device.alloc(num_sizes * plane)
            self.taps_address = self.device.alloc(len(taps) * f32)
            self.gray_address = self.device.alloc(self.pyramids * self.pyramid_size * f32)
            self.gms_address = self.device.alloc(self.pairs * self.pyramid_size * f32)
            self.raw_map_address = self.device.alloc(plane * f32)
            self.scratch_address = self.device.alloc(plane * f32)
            self.map_address = self.device.alloc(plane * f32)
            self.score_address = self.device.alloc(f32)
            # Pinned host buffers, so uploads and downloads are true async DMA.
            self.frame_host = self.device.pinned((3, height, width), np.float32)
            self.map_host = self.device.pinned((height, width), np.float32)
            self.score_host = self.device.pinned((1,), np.float32)
            # Constants, uploaded once (each upload waits for its copy).
            self._upload_constant(pixel_sets(masks), self.pixel_set_address)
            self._upload_constant(taps, self.taps_address)
            self.reference_address: int | None = None
            if reference is not None:
                self.reference_address = self.device.alloc(plane * f32)
                self._upload_constant(np.ascontiguousarray(reference, np.float32), self.reference_address)
        finally:
            self.device.pop()

    @classmethod
    def for_manifest(
        cls, manifest: Manifest, device: KernelDevice | None = None, folder: Path | None = None
    ) -> GpuAnomalyMap:
        """`folder`: where the model and the kernels build-engine compiled for it are."""
        height, width = manifest.input_shape
        masks = fixed_masks(height, width, manifest.mask_spec, manifest.mask_seed)
        if device is None:
            device = open_device(manifest.kernels, folder)
        return cls((height, width), masks, manifest.map_spec, device, manifest.reference, manifest.score_top_fraction,
                   manifest.score_margin, manifest.score_weight)

    @property
    def stream_handle(self) -> int:
        """The stream every copy and kernel runs on; run the network on it too."""
        return self.device.stream_handle

    def _upload_constant(self, array: np.ndarray, address: int) -> None:
        staging = self.device.pinned(array.shape, array.dtype)
        staging[...] = array
        self.device.to_device(address, staging)
        self.device.synchronize()

    def variants(self, frame: np.ndarray) -> int:
        """Queue the frame's masked variants; returns the batch's device address.

        `frame` is a (3, H, W) float32 RGB image in [0, 1]. The batch is
        (K*n, 3, H, W) float32 at `variants_address`.
        """
        h, w = self.height, self.width
        plane = h * w
        if frame.shape != (3, h, w):
            raise ValueError(f"frame is {frame.shape}, expected (3, {h}, {w})")
        self.device.push()
        try:
            self.frame_host[...] = frame
            self.device.to_device(self.frame_address, self.frame_host)
            self.device.launch(
                "expand_variants", self.num_variants * 3 * plane,
                self.frame_address, self.pixel_set_address,
                self.num_sizes, self.num_sets, h, w, self.variants_address,
            )  # fmt: skip
            self.device.launch(
                "frame_gray", plane, self.frame_address, self.planes, h, w, self.pyramid_size, self.gray_address
            )
        finally:
            self.device.pop()
        return self.variants_address

    def score(self) -> tuple[np.ndarray, float]:
        """The (H, W) anomaly map and its score, from the network's outputs on the device.

        The (K*n, 3, H, W) float32 reconstructions are at `outputs_address`, where the
        engine writes; call after `variants` on this stream.
        """
        h, w, d = self.height, self.width, self.device
        plane = h * w
        levels = self.spec.levels
        d.push()
        try:
            d.launch(
                "recombined_gray", self.num_sizes * plane,
                self.outputs_address, self.pixel_set_address,
                self.num_sizes, self.num_sets, self.planes, h, w, self.pyramid_size, self.gray_address,
            )  # fmt: skip
            for level in range(1, levels):
                d.launch(
                    "pool_level", self.pyramids * (plane >> (2 * level)),
                    self.gray_address, self.pyramids, self.pyramid_size, level, h, w,
                )  # fmt: skip
            for level in range(levels):
                d.launch(
                    "gms_level", self.pairs * (plane >> (2 * level)),
                    self.gray_address, self.pairs, self.planes, self.pyramid_size, level, h, w, self.spec.c,
                    self.gms_address,
                )  # fmt: skip
            d.launch("raw_anomaly", plane, self.gms_address, self.pairs, self.pyramid_size, levels, h, w,
                     self.raw_map_address)  # fmt: skip
            d.launch("gaussian_pass", plane, self.raw_map_address, self.taps_address, self.radius, h, w, 0,
                     self.scratch_address)  # fmt: skip
            d.launch("gaussian_pass", plane, self.scratch_address, self.taps_address, self.radius, h, w, 1,
                     self.map_address)  # fmt: skip
            if self.reference_address is not None:
                d.launch("subtract_reference", plane, self.map_address, self.reference_address, plane)
            if self.score_on_device:
                # One block: max_value reduces the whole map itself.
                d.launch("max_value", 1, self.map_address, plane, self.score_address)
                d.to_host(self.score_host, self.score_address)
            d.to_host(self.map_host, self.map_address)
            d.synchronize()
        finally:
            d.pop()
        amap = self.map_host.copy()
        if self.score_on_device:
            return amap, float(self.score_host[0])
        return amap, image_score(scored_part(amap, self.score_margin, self.score_weight), self.score_top_fraction)

    def download(self, address: int, shape: Sequence[int]) -> np.ndarray:
        """A float32 device buffer as a host array (synchronous; for checks, not per frame)."""
        host = np.empty(tuple(shape), np.float32)
        self.device.push()
        try:
            staging = self.device.pinned(host.shape, np.float32)
            self.device.to_host(staging, address)
            self.device.synchronize()
            host[...] = staging
        finally:
            self.device.pop()
        return host

    def upload(self, array: np.ndarray, address: int) -> None:
        """Copy a float32 host array to a device buffer (synchronous; for checks, not per frame)."""
        self.device.push()
        try:
            self._upload_constant(np.ascontiguousarray(array, np.float32), address)
        finally:
            self.device.pop()

    def close(self) -> None:
        self.device.close()
