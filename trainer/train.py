"""RIAD training: teach the U-Net to inpaint hidden cells of defect-free images.

The network input keeps the training images' aspect ratio (trainer.data.input_shape).
Each step takes a batch of whole images (or, with crop_size, a random crop of each: the net is
fully convolutional, so it learns at the full input resolution for the price of a smaller image), picks a cell
size k at random, hides the cells of one of n disjoint sets in n copies of every crop
(edge.method.masks draws them, fresh every step), runs the net on all copies, and takes every
pixel back from the copy in which it was hidden. The loss compares that recombined
image with the original. The learning rate follows a cosine from `lr` down to 0 over the
epochs, or over `minutes` of training where a time budget is set, whichever ends first.
Progress is checkpointed every epoch to `<out>/last.pt`, which `--resume` continues and
`export` turns into a model. The weights are channels-last, the layout the CPU's oneDNN
and a GPU's tensor cores convolve fastest (1.3 times faster steps on the EPYC, the same
float32 arithmetic); on a CUDA GPU, or with `bf16` set, the network also runs in bfloat16
autocast (the loss stays float32, and the exported model is float32 as always).
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from edge.method.masks import (
    DEFAULT_CELL_SIZES,
    DEFAULT_NUM_SETS,
    MaskSpec,
    check_input_size,
    make_masks,
)
from edge.method.anomaly_map import GMS_C, MapSpec, gms_constant, map_channels_for
from edge.method.roi import Roi
from edge.paths import make_folder
from edge.method.preprocess import FULL_SCALE_16
from trainer.data import HOLDOUT_FRACTION, MIN_HELD_OUT, GoodImages, find_training_set, input_shape, load_images, pixel_white
from trainer.losses import RiadLoss
from trainer.model import UNet

CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = 1
# What a resumed run may change; anything else would make it a different model.
RESUMABLE_FIELDS = {"epochs", "device", "minutes", "max_images_seen", "bf16"}
# The epoch cap of a run given only a time budget (train --minutes without --epochs).
UNLIMITED_EPOCHS = 1_000_000
UNET_DEPTH = 4  # the paper's four poolings; fixed, so a checkpoint needs only its width


class TrainError(Exception):
    """Training cannot start or continue; the message says why and what to do."""


# What the loss's GMS term compares (TrainConfig.loss_gms). "paper" stays the recipes': the
# other two were measured and not adopted (docs/benchmarks.md, "The loss's GMS term").
LOSS_GMS = ("paper", "channels", "map")


@dataclass(frozen=True)
class TrainConfig:
    recipe: str = "cpu"
    # The input has about input_size x input_size pixels, in the images' aspect ratio, never more than they have.
    input_size: int = 160
    # Training crops' side (0: whole images, as the paper trains); inference always sees the
    # whole input. 128 px crops trained in 60 % of the time, but scored lower on both shared sets
    # (docs/benchmarks.md, "Whole images instead of 128 px crops").
    crop_size: int = 0
    base_width: int = 16
    epochs: int = 40
    # A time budget: stop at the end of the first epoch past this many minutes of training
    # (resumed runs count their earlier minutes), the learning rate's cosine spanning it. 0: none.
    minutes: float = 0.0
    # A work budget: at most this many training images seen (epochs x images), so a larger
    # set trains fewer epochs of the same number of steps instead of for longer. 0: none.
    max_images_seen: int = 0
    batch_size: int = 4
    lr: float = 1e-3
    cell_sizes: tuple[int, ...] = DEFAULT_CELL_SIZES
    num_sets: int = DEFAULT_NUM_SETS
    w_l2: float = 1.0
    w_gms: float = 1.0
    w_ssim: float = 1.0
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    holdout_fraction: float = HOLDOUT_FRACTION
    # Images held out to set the threshold; 0: holdout_fraction of them, 4 to 20.
    held_out: int = 0
    roi: str = ""  # x,y,width,height[,rotation]: every image cropped as the edge crops it (edge/method/roi.py); "" for whole images
    # The net in bfloat16 autocast (the loss stays float32). None: on a CUDA GPU only. On a CPU
    # with bfloat16 instructions, 1.6 times faster trainings at the same accuracy
    # (docs/benchmarks.md, "Training steps"); a CPU without them emulates it, 3 to 8 times slower.
    bf16: bool | None = None
    # The loss's MSGMS term: "paper", GMSD's c on the grey image; "channels", GMSD's c on each
    # colour channel of a colour part, as the map compares it; "map", that with the map's c
    # measured on the training images.
    loss_gms: str = "paper"

    @property
    def mask_spec(self) -> MaskSpec:
        return MaskSpec(tuple(self.cell_sizes), self.num_sets)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["cell_sizes"] = list(self.cell_sizes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in known})
        return replace(config, cell_sizes=tuple(config.cell_sizes))


# The cpu recipe's time budget. A line is promised a model within an hour on two cores; its
# trainings take 13 minutes on the EPYC Zen 5 and would take about 60 on an older AVX2 CPU, so
# on a slow machine time ends the run (the learning rate's cosine spread over the minutes, a few
# epochs short) rather than the hour running out. Ten minutes are left for reading the images and export.
CPU_RECIPE_MINUTES = 50.0

RECIPES = {
    # Two CPU cores, 13 minutes for bottle's 189 training images on the EPYC Zen 5, at most
    # CPU_RECIPE_MINUTES anywhere (docs/benchmarks.md): a 16-wide net (1.2 M weights, 1/16 of
    # the paper's) whose input has about 160 x 160 pixels (INT8 on a 2-core AVX2 CPU: 5
    # frames/s; 192 px, the default until the map's c was measured per part, detects no
    # better at 4), trained on whole images. The small net tolerates lr 1e-3, ten times the
    # paper's, which it needs to converge in so few steps.
    # Its 40 epochs stop at 8,000 images seen: a set of 400 images trains 20 epochs, in
    # the time of bottle's 40, not twice as long (the same number of steps).
    "cpu": TrainConfig(max_images_seen=8000, minutes=CPU_RECIPE_MINUTES),
    # The paper's set-up: 256 px, the 64-wide U-Net, whole images, Adam at 1e-4 for 300 epochs.
    "gpu": TrainConfig(recipe="gpu", input_size=256, crop_size=0, base_width=64, epochs=300, batch_size=8, lr=1e-4),
}


def recipe(name: str, **overrides) -> TrainConfig:
    """A named recipe with the given fields changed; None means keep the recipe's value."""
    if name not in RECIPES:
        raise TrainError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})


def masked_inputs(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(len(K)*n*B, C, H, W): every image of a (B, C, H, W) batch with each set hidden.

    The batch version of edge.method.masks.masked_variants, in its order (cell size, then set),
    with the batch index innermost.
    """
    keep = 1.0 - masks.reshape(-1, 1, 1, *masks.shape[-2:])
    return (images[None] * keep).flatten(0, 1)


def recombine(outputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(len(K), ..., C, H, W): each pixel from the variant that hid it.

    The torch twin of edge.method.masks.recombine; `outputs` is (len(K)*n, ..., C, H, W), where
    `...` may hold a batch axis.
    """
    num_sizes, num_sets = masks.shape[:2]
    outputs = outputs.reshape(num_sizes, num_sets, *outputs.shape[1:])
    weights = masks.reshape(num_sizes, num_sets, *[1] * (outputs.dim() - 4), *masks.shape[-2:])
    return (outputs * weights).sum(dim=1)


def inpaint(model: UNet, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(len(K), B, C, H, W) reconstructions of a batch, one per cell size in `masks`."""
    outputs = model(masked_inputs(images, masks))
    return recombine(outputs.reshape(masks.shape[0] * masks.shape[1], *images.shape), masks)


def training_step(
    model: UNet, optimizer: torch.optim.Optimizer, loss_fn: RiadLoss, batch: torch.Tensor, masks: torch.Tensor, bf16: bool
) -> float:
    """One step on a batch with one set of masks; the loss. `bf16`: the net in bfloat16 autocast."""
    with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16):
        reconstruction = inpaint(model, batch, masks)[0]
    loss = loss_fn(reconstruction.float(), batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()  # on a GPU, each item() waits for the step: once per step


def random_crops(images: torch.Tensor, height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """(B, C, height, width): a crop of each image at its own random place."""
    full_height, full_width = images.shape[-2:]
    tops = rng.integers(0, full_height - height + 1, len(images))
    lefts = rng.integers(0, full_width - width + 1, len(images))
    return torch.stack([image[:, t : t + height, x : x + width] for image, t, x in zip(images, tops, lefts)])


def crop_shape(shape: tuple[int, int], crop_size: int) -> tuple[int, int]:
    """The training crop for an input shape: crop_size a side where the input is larger."""
    if crop_size <= 0:
        return shape
    return min(shape[0], crop_size), min(shape[1], crop_size)


def cosine_lr(base: float, progress: float) -> float:
    """From `base` at the start (progress 0) down to 0 at the end (progress 1)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise TrainError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def cpu_has_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU has bfloat16 instructions (x86 AVX512_BF16 or AMX, Arm BF16); None where
    /proc/cpuinfo cannot tell. Without them bfloat16 training is emulated, several times slower."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def checkpoint_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / CHECKPOINT_NAME


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file can raise almost anything from the unpickler
        raise TrainError(f"cannot read checkpoint {path}: damaged or not a torch file ({type(exc).__name__})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a riad-trainer checkpoint (format {CHECKPOINT_FORMAT})")
    return checkpoint


def resume_config(out_dir: str | Path, **overrides) -> TrainConfig:
    """The config a run in `out_dir` was started with, with resumable fields changed."""
    changed = {k for k, v in overrides.items() if v is not None}
    if changed - RESUMABLE_FIELDS:
        raise TrainError(
            f"cannot change {', '.join(sorted(changed - RESUMABLE_FIELDS))} when resuming; "
            f"only {', '.join(sorted(RESUMABLE_FIELDS))} may change (start a new run for the rest)"
        )
    saved = TrainConfig.from_dict(load_checkpoint(checkpoint_path(out_dir))["config"])
    return replace(saved, **{k: overrides[k] for k in changed})


def build_model(config: TrainConfig) -> UNet:
    return UNet(base_width=config.base_width, depth=UNET_DEPTH)


def build_loss(config: TrainConfig, images: np.ndarray | None = None) -> RiadLoss:
    """The loss of a run; with config.loss_gms "map", its GMS term compares what the map will on
    the part seen in `images` (N, 3, H, W), the training images."""
    if config.loss_gms == "paper":
        return RiadLoss(w_gms=config.w_gms, w_ssim=config.w_ssim, w_l2=config.w_l2)
    spec = MapSpec(per_channel=map_channels_for(images) == "rgb")
    c = gms_constant(images, spec) if config.loss_gms == "map" else GMS_C
    return RiadLoss(w_gms=config.w_gms, w_ssim=config.w_ssim, w_l2=config.w_l2, gms_c=c, per_channel=spec.per_channel)


@contextmanager
def _ctrl_c_held():
    """Hold a Ctrl-C until the block is done, then deliver it.

    torch turns a KeyboardInterrupt raised inside its writer into a RuntimeError, which would
    read as a failed write. Only the main thread receives signals; elsewhere there is nothing to hold.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            signal.raise_signal(signal.SIGINT)  # to the usual handler: KeyboardInterrupt


def _save_atomically(state: dict, path: Path) -> None:
    # A Ctrl-C or a full disk mid-write must not destroy the previous checkpoint.
    partial = path.with_name(path.name + ".partial")
    with _ctrl_c_held():
        try:
            with open(partial, "wb") as file:  # closed even when the write fails
                torch.save(state, file)
            os.replace(partial, path)
        except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
            partial.unlink(missing_ok=True)
            kept = f"the previous checkpoint {path.name} is intact" if path.is_file() else "nothing was saved yet"
            raise TrainError(
                f"cannot write the checkpoint {path}: {exc}; {kept}. Free space, then continue with --resume"
            ) from None


def check_config(config: TrainConfig) -> None:
    try:
        check_input_size(config.input_size, config.input_size, config.mask_spec)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if config.roi:
        try:
            Roi.parse(config.roi)
        except ValueError as exc:
            raise TrainError(str(exc)) from None
    if config.loss_gms not in LOSS_GMS:
        raise TrainError(f"loss_gms must be one of {', '.join(LOSS_GMS)}, not {config.loss_gms!r}")
    if config.crop_size < 0:
        raise TrainError(f"crop_size must be 0 (whole images) or a positive multiple of {2**UNET_DEPTH}, not {config.crop_size}")
    for name in ("input_size", "crop_size"):
        if getattr(config, name) % 2**UNET_DEPTH:
            raise TrainError(f"{name} {getattr(config, name)} is not a multiple of {2**UNET_DEPTH}, as the U-Net needs")
    for name in ("epochs", "batch_size", "base_width"):
        if getattr(config, name) < 1:
            raise TrainError(f"{name} must be at least 1, not {getattr(config, name)}")
    if config.held_out != 0 and config.held_out < MIN_HELD_OUT:
        raise TrainError(
            f"held_out must be 0 (about 10 % of the images) or at least {MIN_HELD_OUT}, whose spread sets the threshold; "
            f"not {config.held_out}"
        )
    if config.max_images_seen < 0:
        raise TrainError(f"max_images_seen must be 0 (no budget) or positive, not {config.max_images_seen}")
    if not (config.minutes >= 0 and math.isfinite(config.minutes)):
        raise TrainError(f"minutes must be 0 (no time budget) or a positive number, not {config.minutes}")
    if config.minutes == 0 and config.epochs >= UNLIMITED_EPOCHS:
        raise TrainError("this run has neither a time budget nor an epoch count and would never end; give --minutes or --epochs")


def planned_epochs(config: TrainConfig, images: int) -> int:
    """The epochs a run on `images` training images trains: config.epochs, fewer where
    config.max_images_seen runs out first (rounded up to whole epochs)."""
    if config.max_images_seen == 0 or images == 0:
        return config.epochs
    return max(1, min(config.epochs, math.ceil(config.max_images_seen / images)))


def time_budget_note(config: TrainConfig, epochs: int, epochs_done: int, seconds: float) -> str | None:
    """After `epochs_done` epochs in `seconds`: a line saying the time budget will end the run
    before its `epochs` planned epochs, at this pace; None where it will not."""
    if config.minutes <= 0 or epochs >= UNLIMITED_EPOCHS or epochs_done == 0:
        return None
    per_epoch, budget = seconds / epochs_done, 60 * config.minutes
    if per_epoch * epochs <= budget:
        return None
    expected = min(epochs, math.ceil(budget / per_epoch))
    return (
        f"at {per_epoch / 60:.1f} min an epoch, {epochs} epochs would take {per_epoch * epochs / 60:.0f} min: the time budget "
        f"of {config.minutes:g} min ends training after about {expected} epoch{'s' if expected != 1 else ''}, the learning "
        f"rate's schedule spread over the minutes (--minutes 0 trains them all)"
    )


class Schedule:
    """Where training stands: the share of its epochs or of its time budget spent, whichever is more.

    `epochs` is planned_epochs'; `seconds` the training time of earlier runs of the same checkpoint (resume).
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int, epochs: int, seconds: float = 0.0):
        self.config, self.steps_per_epoch, self.epochs = config, steps_per_epoch, epochs
        self.started = time.monotonic() - seconds

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def progress(self, epoch: int, step: int = 0) -> float:
        done = (epoch + step / self.steps_per_epoch) / self.epochs
        if self.config.minutes > 0:
            done = max(done, self.seconds / (60 * self.config.minutes))
        return done

    def finished(self, epoch: int) -> bool:
        return self.progress(epoch) >= 1.0


def train(data_dir: str | Path, out_dir: str | Path, config: TrainConfig, resume: bool = False) -> Path:
    """Train (or continue training) and return the checkpoint's path.

    On Ctrl-C the checkpoint is saved with the current weights and the interrupted
    epoch counted as not done, then KeyboardInterrupt propagates.
    """
    check_config(config)
    out_dir = Path(out_dir)
    data = find_training_set(data_dir, config.holdout_fraction, config.seed, config.held_out)
    fingerprint = data.fingerprint()
    device = resolve_device(config.device)

    torch.manual_seed(config.seed)  # the initial weights; masks and shuffling have their own
    model = build_model(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    mask_rng = np.random.default_rng(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    epoch, losses, seconds = 0, [], 0.0
    # Channels-last: the same float32 arithmetic, faster convolutions on CPU and GPU alike.
    # bfloat16 autocast is what a GPU's tensor cores want; a CPU keeps float32 unless asked.
    model = model.to(memory_format=torch.channels_last)
    on_gpu = device.type == "cuda"
    bf16 = on_gpu if config.bf16 is None else config.bf16
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # one input shape for the whole run

    path = checkpoint_path(out_dir)
    if resume:
        checkpoint = load_checkpoint(path)
        saved = TrainConfig.from_dict(checkpoint["config"])
        differing = [
            f.name
            for f in fields(TrainConfig)
            if f.name not in RESUMABLE_FIELDS and getattr(saved, f.name) != getattr(config, f.name)
        ]
        if differing:
            raise TrainError(f"{path} was trained with different {', '.join(differing)}; start a new run")
        if checkpoint["fingerprint"] != fingerprint:
            raise TrainError(
                f"the images in {data.root} changed since {path} was written; "
                "resume needs the same training images (or start a new run)"
            )
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        mask_rng.bit_generator.state = checkpoint["rng"]["masks"]
        shuffle.set_state(checkpoint["rng"]["shuffle"])
        epoch, losses = checkpoint["epoch"], checkpoint["losses"]
        seconds = checkpoint.get("train_seconds", 0.0)
    elif path.exists():
        raise TrainError(f"{path} already exists; use --resume to continue it or choose another --out")
    try:  # before the minutes of reading images, not after
        make_folder(out_dir)
    except OSError as exc:
        raise TrainError(f"cannot write the run into {out_dir}: {exc.strerror or exc}") from None

    def save() -> None:
        _save_atomically(
            {
                "format": CHECKPOINT_FORMAT,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "losses": losses,
                "train_seconds": schedule.seconds,
                "precision": "bfloat16 autocast" if bf16 else "float32",
                "config": config.to_dict(),
                "input_shape": list(shape),
                "pixel_white": white,
                "category": data.category,
                "data_root": str(data.root),
                "train_images": [str(p) for p in data.train],
                "held_out_images": [str(p) for p in data.held_out],
                "fingerprint": fingerprint,
                "rng": {"masks": mask_rng.bit_generator.state, "shuffle": shuffle.get_state()},
            },
            path,
        )

    shape = input_shape(data.train, config.input_size, max(2**UNET_DEPTH, max(config.cell_sizes)), config.roi)
    white = pixel_white(data.train, config.roi)
    if white != FULL_SCALE_16:
        tqdm.write(f"16-bit images with values up to {white}: read with {white} as white, here and at the edge")
    images = GoodImages(data.train, shape, config.roi, white)
    load_images(data.held_out, shape, config.roi, white)  # a damaged held-out file fails now, not at export
    loader = DataLoader(images, batch_size=config.batch_size, shuffle=True, generator=shuffle)
    loss_fn = build_loss(config, images.images.numpy())
    if config.loss_gms != "paper":
        tqdm.write(f"loss: GMS c {loss_fn.gms_c:.2e}, {'per channel' if loss_fn.per_channel else 'grey'}")
    crop, spec = crop_shape(shape, config.crop_size), config.mask_spec
    epochs = planned_epochs(config, len(images))
    if epochs < config.epochs:
        tqdm.write(f"{len(images)} training images: {epochs} epochs, the recipe's budget of "
                   f"{config.max_images_seen} images seen (--epochs sets the count instead)")
    schedule = Schedule(config, len(loader), epochs, seconds)
    first_epoch = epoch  # of this run: the pace is known once it is done
    model.train()
    try:
        while not schedule.finished(epoch):
            total, count = 0.0, 0
            of = f"/{epochs}" if epochs < UNLIMITED_EPOCHS else f" of {config.minutes:g} min"
            bar = tqdm(loader, desc=f"epoch {epoch + 1}{of}", unit="batch", leave=False)
            for step, batch in enumerate(bar):
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(config.lr, schedule.progress(epoch, step))
                batch = random_crops(batch, *crop, mask_rng).to(device)
                k = spec.cell_sizes[mask_rng.integers(len(spec.cell_sizes))]
                masks = make_masks(*crop, MaskSpec((k,), spec.num_sets), mask_rng)
                value = training_step(model, optimizer, loss_fn, batch, torch.from_numpy(masks).to(device), bf16=bf16)
                total, count = total + value * len(batch), count + len(batch)
                bar.set_postfix(loss=f"{value:.4f}")
            epoch += 1
            losses.append(total / count)
            save()
            tqdm.write(f"epoch {epoch}{of}  loss {losses[-1]:.4f}  {schedule.seconds / 60:.1f} min  saved {path}")
            if epoch == first_epoch + 1 and (note := time_budget_note(config, epochs, epoch, schedule.seconds)):
                tqdm.write(note)
    except KeyboardInterrupt:
        save()
        raise
    if epoch < epochs < UNLIMITED_EPOCHS:
        tqdm.write(f"the time budget of {config.minutes:g} min ended training after {epoch} of {epochs} epochs "
                   "(--resume with a larger --minutes, or --minutes 0 for every epoch, trains on)")
    return path
