"""Training, resuming, interrupting and exporting a tiny model on real bottle images."""

from __future__ import annotations

import fcntl
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edge.backends.onnx_cpu import OnnxCpuBackend
from edge.manifest import Manifest, ManifestError, encode_reference, file_sha256, manifest_path
from edge.method.anomaly_map import (
    GMS_C,
    SCORE_TOP_FRACTION,
    anomaly_map,
    excess_over_reference,
    gms_constant,
    image_score,
    raw_anomaly_map,
    score_weight,
    scored_part,
    smooth,
)
from edge.method.masks import MaskSpec, fixed_masks, masked_variants, recombine
from edge.method.preprocess import prepare, read_image
from trainer.cli import app
from edge.method.threshold import DEFAULT_RULE, RATE_RULE, student_t_quantile, threshold_from_scores
from trainer.data import DataError, find_training_set
from trainer.export import ExportError, export_onnx
from trainer.train import (
    TrainConfig,
    TrainError,
    build_model,
    cpu_has_bf16,
    load_checkpoint,
    masked_inputs,
    recipe,
    resume_config,
    train,
    training_step,
)
from trainer.train import recombine as torch_recombine
from tests.conftest import fill, write_tiny_onnx

TINY = {"input_size": 32, "base_width": 4, "batch_size": 2, "epochs": 1}


@pytest.fixture(scope="module")
def parts(bottle_dir, tmp_path_factory) -> Path:
    """Six real good bottles, shrunk to 64 px: 4 held out, 2 to train on."""
    folder = tmp_path_factory.mktemp("data") / "bottle-mini"
    folder.mkdir()
    for source in sorted((bottle_dir / "train" / "good").glob("*.png"))[:6]:
        small = cv2.resize(read_image(source), (64, 64), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / source.name), small)
    return folder


@pytest.fixture(scope="module")
def trained(parts, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    return train(parts, run, recipe("cpu", **TINY | {"epochs": 2}))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> tuple[Path, Manifest]:
    out = tmp_path_factory.mktemp("engines") / "bottle-mini.onnx"
    return out, export_onnx(trained, out)


def test_torch_masking_matches_edge_masks():
    masks = fixed_masks(32, 32, TrainConfig().mask_spec, seed=3)
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    variants = masked_inputs(torch.from_numpy(images), torch.from_numpy(masks))
    variants = variants.reshape(12, 2, 3, 32, 32).numpy()
    outputs = np.random.default_rng(1).random((12, 2, 3, 32, 32), dtype=np.float32)
    recombined = torch_recombine(torch.from_numpy(outputs), torch.from_numpy(masks)).numpy()
    for b in range(2):
        np.testing.assert_array_equal(variants[:, b], masked_variants(images[b], masks))
        np.testing.assert_allclose(recombined[:, b], recombine(outputs[:, b], masks), atol=1e-7)


def test_a_channels_last_step_is_the_same_float32_arithmetic_as_the_default_layout():
    """The trainer keeps its weights channels-last for speed (bench/train_step); the step's
    loss and gradients must be those of PyTorch's default layout, to rounding. (Not Adam's
    weights after it: its first step divides each gradient by its own size, which blows up
    the rounding of the near-zero ones.)"""
    from trainer.losses import RiadLoss

    config = TrainConfig(base_width=8)
    images = torch.from_numpy(np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32))
    masks = torch.from_numpy(fixed_masks(32, 32, MaskSpec((4,), 3), seed=1))
    stepped = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = build_model(config)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss = training_step(model, optimizer, RiadLoss(), images, masks, bf16=False)
        stepped.append((loss, {name: p.grad.contiguous() for name, p in model.named_parameters()}))
    (loss, gradients), (loss_cl, gradients_cl) = stepped
    assert loss_cl == pytest.approx(loss, rel=1e-5)
    for name, value in gradients.items():
        assert value.norm() > 0, name
        # float32 rounding through the net and back: 4e-5 of the gradient's size at most on the EPYC
        assert (gradients_cl[name] - value).norm() <= 2e-4 * value.norm(), name


def test_recipes():
    cpu, gpu = recipe("cpu"), recipe("gpu")
    assert (cpu.input_size, cpu.crop_size, cpu.base_width) == (160, 0, 16)
    assert (gpu.input_size, gpu.crop_size, gpu.base_width, gpu.epochs, gpu.lr) == (256, 0, 64, 300, 1e-4)
    assert recipe("gpu", epochs=5, base_width=None).epochs == 5
    assert (cpu.epochs, cpu.max_images_seen, gpu.max_images_seen) == (40, 8000, 0)
    # The hour on two cores, with time left to read the images and export.
    assert (cpu.minutes, gpu.minutes) == (50, 0)
    with pytest.raises(TrainError, match="unknown recipe 'tpu'"):
        recipe("tpu")


def test_the_cpu_recipe_trains_a_larger_set_fewer_epochs_of_the_same_steps():
    from trainer.train import planned_epochs

    cpu = recipe("cpu")
    assert planned_epochs(cpu, 189) == 40  # bottle: the budget does not bind
    assert planned_epochs(cpu, 400) == 20 and planned_epochs(cpu, 391) == 21  # rounded up to whole epochs
    assert planned_epochs(cpu, 20_000) == 1
    assert planned_epochs(recipe("gpu"), 20_000) == 300  # no budget: the epochs it asks for


def test_an_image_budget_ends_training_with_the_learning_rate_at_zero(parts, tmp_path, monkeypatch, capsys):
    from trainer import train as training

    rates = []
    real_cosine = training.cosine_lr
    monkeypatch.setattr(training, "cosine_lr", lambda base, progress: rates.append(real_cosine(base, progress)) or rates[-1])
    # 2 training images, 1 a step; a budget of 3 images seen ends in the second of 5 epochs.
    state = load_checkpoint(train(parts, tmp_path, recipe("cpu", **TINY | {"epochs": 5, "batch_size": 1, "max_images_seen": 3})))
    assert state["epoch"] == 2 and len(rates) == 4
    # The cosine spans the 2 planned epochs, not the 5: 0, 1/4, 2/4 and 3/4 of the way.
    assert rates == pytest.approx([real_cosine(1e-3, p) for p in (0, 0.25, 0.5, 0.75)])
    assert "2 training images: 2 epochs, the recipe's budget of 3 images seen" in capsys.readouterr().out


def test_an_explicit_epoch_count_replaces_the_recipes_image_budget(parts, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(parts), "--out", str(run), "--input-size", "32", "--width", "4", "--batch-size", "1"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    # The count asked for replaces the recipe's image and time budgets; --minutes as well keeps a time budget.
    assert load_checkpoint(run / "last.pt")["config"]["max_images_seen"] == 0
    assert load_checkpoint(run / "last.pt")["config"]["minutes"] == 0
    result = CliRunner().invoke(app, [*args[:3], str(tmp_path / "both"), *args[4:], "--epochs", "1", "--minutes", "30"])
    assert result.exit_code == 0, result.output
    config = load_checkpoint(tmp_path / "both" / "last.pt")["config"]
    assert (config["epochs"], config["minutes"], config["max_images_seen"]) == (1, 30, 0)
    # --minutes 0 lifts the time budget only: the recipe's epochs and image budget stay.
    result = CliRunner().invoke(app, [*args[:3], str(tmp_path / "untimed"), *args[4:], "--minutes", "0"])
    assert result.exit_code == 0, result.output
    config = load_checkpoint(tmp_path / "untimed" / "last.pt")["config"]
    assert (config["epochs"], config["minutes"], config["max_images_seen"]) == (40, 0, 8000)
    # A budgeted run resumed with more epochs trains them all.
    budgeted = tmp_path / "budgeted"
    state = load_checkpoint(train(parts, budgeted, recipe("cpu", **TINY | {"epochs": 5, "max_images_seen": 2})))
    assert state["epoch"] == 1
    result = CliRunner().invoke(app, ["train", str(parts), "--out", str(budgeted), "--resume", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(budgeted / "last.pt")
    assert state["epoch"] == 3 and state["config"]["max_images_seen"] == 0


@pytest.mark.parametrize("command", ["train", "export", "evaluate"])
def test_a_file_in_the_way_of_the_output_folder_is_named(parts, trained, exported, bottle_dir, tmp_path, command):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    args = {
        "train": ["train", str(parts), "--out", str(blocker / "bottle"), "--input-size", "32", "--width", "4", "--epochs", "1"],
        "export": ["export", str(trained), "--out", str(blocker / "bottle" / "m.onnx")],
        "evaluate": ["evaluate", str(exported[0]), str(bottle_dir), "--out", str(blocker / "eval")],
    }[command]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"{blocker} is a file, not a folder" in result.output and "Traceback" not in result.output
    assert blocker.read_text() == "not a folder"


def test_the_printed_next_step_pastes_into_a_shell(parts, tmp_path):
    run = tmp_path / "line 1's run"
    args = ["train", str(parts), "--out", str(run), "--input-size", "32", "--width", "4", "--batch-size", "1", "--epochs", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    command = next(line for line in result.output.splitlines() if line.startswith("next: "))
    assert shlex.split(command.removeprefix("next: "))[:3] == ["riad-trainer", "export", str(run / "last.pt")]


def test_held_out_sets_how_many_images_set_the_threshold(parts, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(parts), "--out", str(run), "--input-size", "32", "--width", "4", "--batch-size", "1", "--epochs", "1"]
    result = CliRunner().invoke(app, [*args, "--held-out", "5"])  # of the 6 images: 1 left to train on
    assert result.exit_code == 2 and "at least 7 are needed (5 held out" in result.output
    for few in ("3", "0"):  # 0 used to be taken as "the default", 4 held out without a word
        result = CliRunner().invoke(app, [*args, "--held-out", few])
        assert result.exit_code == 2 and "--held-out must be at least 4" in result.output, result.output
    assert not run.exists() or not (run / "last.pt").exists()

    small = tmp_path / "parts"  # the six parts and two more, so 6 can be held out
    shutil.copytree(parts, small)
    for name in ("000.png", "001.png"):
        shutil.copy(parts / name, small / f"copy-{name}")
    result = CliRunner().invoke(app, [*args[:1], str(small), *args[2:], "--held-out", "6"])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(run / "last.pt")
    assert len(state["held_out_images"]) == 6 and len(state["train_images"]) == 2
    result = CliRunner().invoke(app, ["export", str(run / "last.pt"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "of 6 held-out good images" in result.output
    assert Manifest.for_model(tmp_path / "m.onnx").metrics["calibration"]["count"] == 6
    # The split is part of the run: a resume keeps it.
    result = CliRunner().invoke(app, ["train", str(small), "--out", str(run), "--resume", "--held-out", "4", "--epochs", "2"])
    assert result.exit_code == 2 and "cannot change held_out when resuming" in result.output


def test_checkpoint_holds_the_run(trained, parts):
    state = load_checkpoint(trained)
    assert state["epoch"] == 2 and len(state["losses"]) == 2
    assert state["category"] == "bottle-mini"
    assert len(state["train_images"]) == 2 and len(state["held_out_images"]) == 4
    assert TrainConfig.from_dict(state["config"]) == recipe("cpu", **TINY | {"epochs": 2})


def test_bf16_trains_the_net_in_bfloat16_on_the_cpu_and_may_change_on_resume(parts, trained, tmp_path):
    """--bf16 on a CPU: the checkpoint says so, the weights stay float32 and move as float32 training moves them."""
    result = CliRunner().invoke(app, ["train", str(parts), "--out", str(tmp_path), "--input-size", "32", "--width", "4",
                                      "--batch-size", "2", "--epochs", "1", "--bf16", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert ("warning: --bf16 on a CPU without bfloat16 instructions" in result.output) == (cpu_has_bf16() is False)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["precision"] == "bfloat16 autocast" and TrainConfig.from_dict(state["config"]).bf16 is True
    assert all(w.dtype == torch.float32 for w in state["model"].values() if w.is_floating_point())
    first = load_checkpoint(trained)  # the same seed in float32, two epochs; its first epoch's loss is comparable
    assert state["losses"][0] == pytest.approx(first["losses"][0], rel=0.05) and state["losses"][0] != first["losses"][0]
    assert first["precision"] == "float32"  # the CPU's default
    config = resume_config(tmp_path, epochs=2, bf16=False)  # precision is no part of what was learnt
    assert load_checkpoint(train(parts, tmp_path, config, resume=True))["precision"] == "float32"


def test_cpu_has_bf16_reads_the_cpus_flags():
    zen3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    zen5 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
    sapphire_rapids = "flags\t\t: avx512f amx_bf16 amx_tile\n"
    graviton3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"
    orin = "processor\t: 0\nFeatures\t: fp asimd atomics asimddp\n"
    assert [cpu_has_bf16(text) for text in (zen3, zen5, sapphire_rapids, graviton3, orin)] == [False, True, True, True, False]
    assert cpu_has_bf16("") is None  # cannot tell: no warning


def test_resume_continues_exactly_where_it_stopped(parts, trained, tmp_path):
    """One epoch, then a resumed second, gives the very weights of two epochs in one go."""
    first = train(parts, tmp_path, recipe("cpu", **TINY))
    assert load_checkpoint(first)["epoch"] == 1
    config = resume_config(tmp_path, epochs=2)
    assert config.epochs == 2
    resumed = load_checkpoint(train(parts, tmp_path, config, resume=True))
    straight = load_checkpoint(trained)
    assert resumed["epoch"] == 2 and resumed["losses"][0] == straight["losses"][0]
    for name, tensor in straight["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name


def test_resume_refuses_changed_data_and_settings(parts, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for image in parts.iterdir():
        (data / image.name).write_bytes(image.read_bytes())
    run = tmp_path / "run"
    train(data, run, recipe("cpu", **TINY))
    with pytest.raises(TrainError, match="already exists; use --resume"):
        train(data, run, recipe("cpu", **TINY))
    with pytest.raises(TrainError, match="cannot change base_width"):
        resume_config(run, base_width=8)
    with pytest.raises(TrainError, match="trained with different base_width; start a new run"):
        train(data, run, recipe("cpu", **TINY | {"base_width": 8, "epochs": 2}), resume=True)
    (data / "000.png").write_bytes((data / "001.png").read_bytes())
    with pytest.raises(TrainError, match="changed since"):
        train(data, run, resume_config(run, epochs=2), resume=True)


# Hang guards only: a loaded CI machine may take minutes where a desk takes seconds.
PATIENCE_S = 600


@pytest.fixture
def start_endless_training(parts):
    """Starts `riad-trainer train` on the parts for ever; what a failed test leaves running is killed."""
    started: list[subprocess.Popen] = []

    def start(out: Path) -> subprocess.Popen:
        command = [sys.executable, "-c", "from trainer.cli import app; app()", "train", str(parts)]
        command += ["--out", str(out), "--epochs", "100000", "--input-size", "32", "--width", "4"]
        started.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield start
    for process in started:
        process.kill()  # nothing, where it has already ended
        process.wait()


def test_ctrl_c_saves_a_resumable_checkpoint(start_endless_training, tmp_path):
    process = start_endless_training(tmp_path)
    checkpoint = tmp_path / "last.pt"
    deadline = time.monotonic() + PATIENCE_S
    while not checkpoint.exists():  # the first epoch is saved; the Ctrl-C lands in a later one
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the first epoch never ended"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=PATIENCE_S)
    assert process.returncode == 130, err
    assert "interrupted; progress is saved" in err and "Traceback" not in err
    state = load_checkpoint(checkpoint)
    assert state["epoch"] >= 1 and len(state["losses"]) == state["epoch"]


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_write(start_endless_training, tmp_path):
    """A Ctrl-C that lands mid-write is held until the checkpoint is written, then stops the run.

    The first save goes into a named pipe the test reads, so the test knows the write has
    begun, and the writer stays blocked mid-write until the test reads the rest.
    """
    os.mkfifo(tmp_path / "last.pt.partial")
    process = start_endless_training(tmp_path)
    pipe = os.open(tmp_path / "last.pt.partial", os.O_RDONLY | os.O_NONBLOCK)  # does not wait for the writer
    deadline = time.monotonic() + PATIENCE_S
    try:
        while not select.select([pipe], [], [], 1)[0]:  # the first epoch is done and its save has begun
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the first epoch never ended"
        written = os.read(pipe, 1)
        process.send_signal(signal.SIGINT)
        os.set_blocking(pipe, True)
        while chunk := os.read(pipe, 65536):  # lets the blocked writer finish; ends when it closes the file
            written += chunk
        in_flight = fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ) + 1  # the most it could have written by the signal
    finally:
        os.close(pipe)
    _, err = process.communicate(timeout=PATIENCE_S)
    assert len(written) > in_flight  # so the signal came while the write was still going on
    assert process.returncode == 130, err
    assert "interrupted; progress is saved" in err and "Traceback" not in err
    (tmp_path / "first.pt").write_bytes(written)
    assert load_checkpoint(tmp_path / "first.pt")["epoch"] == 1  # the write went on to the end
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.pt", "last.pt"]


def test_damaged_held_out_image_stops_training_at_once(parts, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for image in parts.iterdir():
        (data / image.name).write_bytes(image.read_bytes())
    broken = find_training_set(data).held_out[0]
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match=broken.name):
        train(data, tmp_path / "run", recipe("cpu", **TINY))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_bad_input_size_is_refused(parts, tmp_path):
    with pytest.raises(TrainError, match="40x40 is not a multiple"):
        train(parts, tmp_path, recipe("cpu", **TINY | {"input_size": 40}))


@pytest.mark.parametrize("crop_size, problem", [(40, "crop_size 40 is not a multiple of 16"), (-16, "crop_size must be 0")])
def test_bad_crop_size_is_refused(parts, tmp_path, crop_size, problem):
    with pytest.raises(TrainError, match=problem):
        train(parts, tmp_path, recipe("cpu", **TINY | {"crop_size": crop_size}))


def test_onnx_matches_torch_with_a_dynamic_batch(exported, trained):
    out, manifest = exported
    model = onnx.load(out)
    assert model.opset_import[0].version >= 17
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["reconstructions"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert manifest.metrics["onnx_max_abs_diff"] < 1e-4

    net = build_model(TrainConfig.from_dict(load_checkpoint(trained)["config"]))
    net.load_state_dict(load_checkpoint(trained)["model"])
    net.eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        images = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
        (onnx_out,) = session.run(["reconstructions"], {"images": images})
        with torch.no_grad():
            np.testing.assert_allclose(onnx_out, net(torch.from_numpy(images)).numpy(), atol=1e-4)


def test_manifest_describes_the_model(exported, trained):
    out, manifest = exported
    state = load_checkpoint(trained)
    assert Manifest.for_model(out) == manifest
    assert manifest.model_id == f"bottle-mini-w4-32x32-{file_sha256(out)[:8]}"
    assert (manifest.input_shape, manifest.model_width, manifest.mask_seed) == ((32, 32), 4, 0)
    assert manifest.training_fingerprint == state["fingerprint"]
    assert manifest.map_sigma == pytest.approx(1.0)  # sigma 8 at 256 px, scaled to 32 px
    assert manifest.recipe["epochs"] == 2 and manifest.metrics["epochs_trained"] == 2
    assert manifest.metrics["calibration"]["count"] == 4
    assert manifest.metrics["calibration"]["rule"] == DEFAULT_RULE
    assert manifest.metrics["calibration"]["false_alarm_rate"] is None
    # The threshold passes every held-out good image, scored as the edge box scores them.
    with OnnxCpuBackend(out) as backend:
        for path in state["held_out_images"]:
            assert backend.score(prepare(read_image(path), (32, 32))).score <= manifest.threshold


def test_the_reference_map_is_what_the_training_images_score_and_the_edge_subtracts_it(exported, trained):
    out, manifest = exported
    state = load_checkpoint(trained)
    train_images = [prepare(read_image(p), (32, 32)) for p in state["train_images"]]
    plain = replace(manifest, reference_map={})  # the paper's map: no reference
    with OnnxCpuBackend(out, manifest=plain) as backend:
        plain_maps = [backend.score(image).anomaly_map for image in train_images]
    assert manifest.metrics["reference_images"] == len(train_images) == 2
    assert manifest.metrics["reference_statistic"] == "mean"
    assert manifest.reference_map == encode_reference(np.mean(plain_maps, axis=0, dtype=np.float64).astype(np.float32))
    assert (manifest.reference_map["height"], manifest.reference_map["width"]) == (8, 8)  # a quarter of 32 px
    assert manifest.reference.shape == (32, 32) and manifest.reference.max() > 0
    with OnnxCpuBackend(out) as backend:
        for image, plain_map in zip(train_images, plain_maps):
            scored = backend.score(image)
            np.testing.assert_array_equal(scored.anomaly_map, np.maximum(plain_map - manifest.reference, 0))
            counted = scored_part(scored.anomaly_map, manifest.score_margin, manifest.score_weight)  # test_the_score_... below
            assert scored.score == image_score(counted, manifest.score_top_fraction) < image_score(
                plain_map, manifest.score_top_fraction
            )


def test_export_for_a_false_alarm_rate_records_its_rule(trained, tmp_path):
    out = tmp_path / "bottle-mini.onnx"
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(out), "--false-alarm-rate", "0.2"])
    assert result.exit_code == 0, result.output
    manifest = Manifest.for_model(out)
    calibration = manifest.metrics["calibration"]
    assert calibration["rule"] == RATE_RULE and calibration["false_alarm_rate"] == 0.2
    assert "for 20 % false alarms, a normal fit to 4 held-out good images" in result.output
    # Recomputed from the held-out scores as the edge computes them.
    with OnnxCpuBackend(out) as backend:
        scores = np.array([backend.score(prepare(read_image(p), (32, 32))).score for p in load_checkpoint(trained)["held_out_images"]])
    expected = scores.mean() + student_t_quantile(0.8, 3) * scores.std(ddof=1) * np.sqrt(1 + 1 / 4)
    assert manifest.threshold == pytest.approx(expected, rel=1e-6)
    assert calibration["held_out_above_threshold"] == int((scores > manifest.threshold).sum())


def test_int8_export_is_quantised_calibrated_and_close_to_float(exported, trained, tmp_path):
    float_path, float_manifest = exported
    out = tmp_path / "bottle-mini-int8.onnx"
    manifest = export_onnx(trained, out, int8=True)
    assert manifest.precision == "int8" and float_manifest.precision == "fp32"
    assert manifest.model_id == f"bottle-mini-w4-32x32-int8-{file_sha256(out)[:8]}"
    assert Manifest.for_model(out) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, manifest_path(out).name]  # no temp file left
    nodes = onnx.load(out).graph.node
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in nodes}
    # The first conv reads the float image: int8 it overflows AVX2 (non-VNNI) kernels.
    assert not any(node.op_type == "QuantizeLinear" and "images" in node.input for node in nodes)
    assert 1e-4 < manifest.metrics["onnx_max_abs_diff"] < 0.1  # rounded, but the same net
    # Its own threshold passes its own held-out scores; its maps follow the float model's.
    state = load_checkpoint(trained)
    with OnnxCpuBackend(out) as int8, OnnxCpuBackend(float_path) as fp32:
        for path in state["held_out_images"]:
            image = prepare(read_image(path), (32, 32))
            quantised, exact = int8.score(image), fp32.score(image)
            assert quantised.score <= manifest.threshold
            assert np.corrcoef(quantised.anomaly_map.ravel(), exact.anomaly_map.ravel())[0, 1] > 0.8


def test_int8_may_round_one_value_in_a_million_further_but_not_many():
    """INT8's check: rounding's rare outlier passes (the 0.12 of a 208 x 512 model), a net gone wrong does not."""
    from trainer.export import MAX_ABS_DIFF, MAX_ABS_DIFF_INT8, MAX_ABS_DIFF_INT8_ANY, diff_problem

    rounded = np.random.default_rng(0).uniform(0, 0.03, 1_000_000).astype(np.float32)
    assert diff_problem(rounded, MAX_ABS_DIFF_INT8, MAX_ABS_DIFF_INT8_ANY) is None
    rounded[123] = 0.12
    assert diff_problem(rounded, MAX_ABS_DIFF_INT8, MAX_ABS_DIFF_INT8_ANY) is None
    shifted = rounded.copy()
    shifted[:2000] = 0.2  # 2 values in a thousand: many pixels moved
    assert "on one value in a thousand (limit 1e-01)" in diff_problem(shifted, MAX_ABS_DIFF_INT8, MAX_ABS_DIFF_INT8_ANY)
    rounded[456] = 0.69  # the AVX2 overflow's size (trainer/quantize.py)
    assert diff_problem(rounded, MAX_ABS_DIFF_INT8, MAX_ABS_DIFF_INT8_ANY) == "by 6.90e-01 (limit 5e-01)"
    # float32 has no outliers to forgive: any value beyond the limit is another graph.
    exact = np.full(1000, 1e-7, np.float32)
    exact[7] = 2e-4
    assert diff_problem(exact, MAX_ABS_DIFF) == "by 2.00e-04 (limit 1e-04)"


def test_tampered_model_is_refused(exported, tmp_path):
    out, _ = exported
    copy = tmp_path / out.name
    copy.write_bytes(out.read_bytes()[:-1] + b"\0")
    manifest_path(copy).write_bytes(manifest_path(out).read_bytes())
    with pytest.raises(ManifestError, match="does not match its manifest"):
        Manifest.for_model(copy)


def test_export_errors(trained, tmp_path):
    with pytest.raises(ExportError, match="does not end in .onnx"):
        export_onnx(trained, tmp_path / "model.plan")
    untrained = tmp_path / "untrained.pt"
    torch.save(load_checkpoint(trained) | {"epoch": 0}, untrained)
    with pytest.raises(ExportError, match="no completed epoch"):
        export_onnx(untrained, tmp_path / "m.onnx")
    moved = tmp_path / "moved.pt"
    torch.save(load_checkpoint(trained) | {"held_out_images": ["/nowhere/000.png"]}, moved)
    with pytest.raises(ExportError, match="images that set the threshold and the reference map are gone"):
        export_onnx(moved, tmp_path / "m.onnx")
    moved = tmp_path / "moved-train.pt"
    torch.save(load_checkpoint(trained) | {"train_images": ["/nowhere/001.png"]}, moved)
    with pytest.raises(ExportError, match="/nowhere/001.png"):
        export_onnx(moved, tmp_path / "m.onnx")

    # Held-out images are decoded before any file is written, so a damaged one is named first.
    held_out = [Path(p) for p in load_checkpoint(trained)["held_out_images"]]
    copies = [tmp_path / path.name for path in held_out]
    for path, copy in zip(held_out, copies, strict=True):
        copy.write_bytes(path.read_bytes())
    copies[-1].write_bytes(b"not a png")
    damaged = tmp_path / "damaged.pt"
    torch.save(load_checkpoint(trained) | {"held_out_images": [str(p) for p in copies]}, damaged)
    with pytest.raises(DataError, match=copies[-1].name):
        export_onnx(damaged, tmp_path / "out" / "m.onnx")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("failure", ["check against torch", "ctrl-c while scoring"])
def test_a_failed_re_export_leaves_the_deployed_model_as_it_was(trained, tmp_path, monkeypatch, failure):
    import trainer.export as export

    deployed = tmp_path / "engines" / "part.onnx"
    deployed.parent.mkdir()
    write_tiny_onnx(deployed)  # the model the line runs now
    manifest = Manifest.for_model(deployed)
    before = deployed.read_bytes(), manifest_path(deployed).read_bytes()
    if failure == "check against torch":
        monkeypatch.setattr(export, "diff_problem", lambda *_: "by 1.00e+00 (limit 1e-04)")
        expected = pytest.raises(ExportError, match="nothing was written")
    else:
        def interrupted(*_args, **_kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(export, "calibrate_threshold", interrupted)
        expected = pytest.raises(KeyboardInterrupt)
    with expected:
        export_onnx(trained, deployed)
    assert (deployed.read_bytes(), manifest_path(deployed).read_bytes()) == before
    assert Manifest.for_model(deployed) == manifest  # still a model the edge runs
    assert sorted(p.name for p in deployed.parent.iterdir()) == [deployed.name, manifest_path(deployed).name]


def test_export_with_fewer_cell_sizes_masks_with_those_alone(trained, tmp_path):
    out = tmp_path / "k3.onnx"
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(out), "--cell-sizes", "16, 4,8,4"])
    assert result.exit_code == 0, result.output
    assert "variants:  9 a frame (cell sizes 4, 8, 16, 3 sets each)" in result.output
    manifest = Manifest.for_model(out)
    assert manifest.cell_sizes == [4, 8, 16] and manifest.mask_spec.num_variants == 9
    state = load_checkpoint(trained)
    image = prepare(read_image(state["held_out_images"][0]), (32, 32))
    with OnnxCpuBackend(out) as backend:
        assert backend.masks.shape[:2] == (3, 3)
        reconstructions = backend.reconstruct(image)
        assert reconstructions.shape == (3, 3, 32, 32)
        # The map is the method's over those three sizes, minus a reference measured with them.
        expected = anomaly_map(image, reconstructions, manifest.map_spec, manifest.reference)
        np.testing.assert_allclose(backend.score(image).anomaly_map, expected, atol=1e-6)
        for path in state["held_out_images"]:  # the threshold was calibrated on these very scores
            assert backend.score(prepare(read_image(path), (32, 32))).score <= manifest.threshold


def test_export_with_two_mask_draws_averages_their_maps(trained, tmp_path):
    out = tmp_path / "draws.onnx"
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(out), "--mask-draws", "2", "--cell-sizes", "8,16"])
    assert result.exit_code == 0, result.output
    assert "variants:  12 a frame (cell sizes 8, 16, 3 sets each, 2 draws)" in result.output
    manifest = Manifest.for_model(out)
    assert manifest.cell_sizes == [8, 16, 8, 16]
    single = fixed_masks(32, 32, MaskSpec((8, 16), 3), manifest.mask_seed)
    image = prepare(read_image(load_checkpoint(trained)["held_out_images"][0]), (32, 32))
    with OnnxCpuBackend(out) as backend:
        # The first draw is the one-draw model's masks; the second hides other cells.
        np.testing.assert_array_equal(backend.masks[:2], single)
        assert not np.array_equal(backend.masks[2:], single)
        reconstructions = backend.reconstruct(image)
        draw_maps = [raw_anomaly_map(image, reconstructions[i : i + 2], manifest.map_spec) for i in (0, 2)]
        averaged = smooth(np.mean(draw_maps, axis=0), manifest.map_sigma)
        np.testing.assert_allclose(backend.score(image).anomaly_map, excess_over_reference(averaged, manifest.reference),
                                   atol=1e-6)
    for draws in ("0", "9"):
        result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "m.onnx"), "--mask-draws", draws])
        assert result.exit_code == 2 and f"mask draws must be 1 to 8, not {draws}" in result.output


def test_export_with_another_mask_seed_is_another_draw_of_the_same_model(trained, tmp_path):
    default, other = tmp_path / "seed0.onnx", tmp_path / "seed7.onnx"
    for out, extra, seed in ((default, [], load_checkpoint(trained)["config"]["seed"]), (other, ["--mask-seed", "7"], 7)):
        result = CliRunner().invoke(app, ["export", str(trained), "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        assert f"cells drawn from mask seed {seed}\n" in result.output
    assert Manifest.for_model(other).mask_seed == 7
    assert default.read_bytes() == other.read_bytes()  # the same network
    image = prepare(read_image(load_checkpoint(trained)["held_out_images"][0]), (32, 32))
    with OnnxCpuBackend(default) as first, OnnxCpuBackend(other) as second:
        np.testing.assert_array_equal(second.masks, fixed_masks(32, 32, second.manifest.mask_spec, 7))
        assert not np.array_equal(first.masks, second.masks)
        assert first.score(image).score != second.score(image).score
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "m.onnx"), "--mask-seed", "-1"])
    assert result.exit_code == 2 and "the mask seed must be a whole number, 0 or more, not -1" in result.output
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ("4,32", "cell sizes must be some of those the model was trained with (2, 4, 8, 16), not 32"),
        ("3", "not 3"),
        ("four", "--cell-sizes takes whole numbers separated by commas, e.g. 4,8,16, not 'four'"),
        ("", "not ''"),
        ("-4", "not '-4'"),
        ("4,,8", "not '4,,8'"),
        ("4,8²", "not '4,8²'"),
    ],
)
def test_export_refuses_cell_sizes_the_model_never_inpainted(trained, tmp_path, sizes, message):
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "m.onnx"), "--cell-sizes", sizes])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


def test_the_reference_map_can_be_the_highest_of_the_good_maps(trained, tmp_path):
    by_mean = export_onnx(trained, tmp_path / "mean.onnx", score_reference="mean")
    out = tmp_path / "max.onnx"
    manifest = export_onnx(trained, out, reference_statistic="max", score_reference="mean")
    state = load_checkpoint(trained)
    with OnnxCpuBackend(out, manifest=replace(manifest, reference_map={})) as backend:
        plain_maps = [backend.score(prepare(read_image(p), (32, 32))).anomaly_map for p in state["train_images"]]
    assert not np.array_equal(plain_maps[0], plain_maps[1])  # so max and mean differ
    assert manifest.metrics["reference_statistic"] == "max"
    assert manifest.reference_map == encode_reference(np.max(plain_maps, axis=0))
    # The score counts the map shown (--score-reference mean): no second reference, no margin.
    assert manifest.score_reference_map == {} and manifest.score_margin is None
    assert manifest.metrics["score_reference"] is None
    # More is subtracted, so the held-out good parts score lower and so does the threshold.
    assert manifest.threshold < by_mean.threshold
    # Its score counts what export --score-reference max counts: the rise above the highest
    # good map (the map shown differs), so that threshold is the same, to float rounding.
    counted = export_onnx(trained, tmp_path / "scoremax.onnx", score_reference="max")
    assert counted.threshold == pytest.approx(manifest.threshold, rel=1e-4)


def test_the_maps_gms_constant_is_measured_on_the_held_out_good_images(exported, trained, tmp_path):
    _, measured = exported
    state = load_checkpoint(trained)
    held_out = np.stack([prepare(read_image(p), (32, 32)) for p in state["held_out_images"]])
    assert measured.map_c == gms_constant(held_out, measured.map_spec) != GMS_C
    papers = export_onnx(trained, tmp_path / "papers.onnx", map_c=GMS_C)  # export --map-c 0.0026
    assert Manifest.for_model(tmp_path / "papers.onnx").map_c == GMS_C
    # The same network; another c moves the scores, so the threshold is set again on them.
    assert papers.model_sha256 == measured.model_sha256 and papers.threshold != measured.threshold
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ExportError, match="--map-c must be a number above 0"):
            export_onnx(trained, tmp_path / "bad.onnx", map_c=bad)
    assert not (tmp_path / "bad.onnx").exists()


def test_the_image_score_is_the_mean_of_the_maps_highest_pixels_or_its_maximum(exported, trained, tmp_path):
    out, top = exported
    assert top.score_top_fraction == SCORE_TOP_FRACTION
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "max.onnx"), "--score-top-fraction", "0"])
    assert result.exit_code == 0, result.output
    assert "score:     the maximum of the anomaly map weighted by how little good training maps vary" in result.output
    paper = Manifest.for_model(tmp_path / "max.onnx")
    assert paper.score_top_fraction is None
    # The same maps scored two ways, and each threshold set on its own scores.
    held_out = [prepare(read_image(p), (32, 32)) for p in load_checkpoint(trained)["held_out_images"]]
    with OnnxCpuBackend(out) as by_top, OnnxCpuBackend(tmp_path / "max.onnx") as by_max:
        for image in held_out:
            a, b = by_top.score(image), by_max.score(image)
            np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
            counted = scored_part(a.anomaly_map, top.score_margin, top.score_weight)  # what the score counts
            assert b.score == counted.max() >= a.score == image_score(counted, SCORE_TOP_FRACTION)
    assert paper.threshold >= top.threshold
    for bad in ("-0.5", "1.5", "nan"):
        result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "bad.onnx"), "--score-top-fraction", bad])
        assert result.exit_code == 2 and "the score's top fraction must be above 0 and at most 1" in result.output
    assert not (tmp_path / "bad.onnx").exists()


def test_the_score_can_count_the_maps_rise_above_the_highest_good_map_while_the_map_shows_the_rise_above_their_mean(
        trained, tmp_path):
    out = tmp_path / "mean.onnx"
    shown = export_onnx(trained, out, score_reference="mean")  # the score counts the map shown
    assert shown.score_reference_map == {} and shown.metrics["score_reference"] is None and shown.score_margin is None
    assert shown.score_weight_map == {} and shown.score_weight is None and shown.score_reference == "mean"
    state = load_checkpoint(trained)
    with OnnxCpuBackend(out, manifest=replace(shown, reference_map={})) as backend:
        plain_maps = [backend.score(prepare(read_image(p), (32, 32))).anomaly_map for p in state["train_images"]]
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "max.onnx"), "--score-reference", "max"])
    assert result.exit_code == 0, result.output
    assert ("score:     the mean of the highest 1 % of pixels of the anomaly map's rise above the good training "
            "maps' per-pixel maximum\n") in result.output
    manifest = Manifest.for_model(tmp_path / "max.onnx")
    assert manifest.metrics["score_reference"] == "max"
    assert manifest.score_reference_map == encode_reference(np.max(plain_maps, axis=0))
    assert manifest.reference_map == shown.reference_map  # the mean: the same map shown
    held_out = [prepare(read_image(p), (32, 32)) for p in state["held_out_images"]]
    with OnnxCpuBackend(tmp_path / "max.onnx") as above_max, OnnxCpuBackend(out) as above_mean:
        for image in held_out:
            a, b = above_max.score(image), above_mean.score(image)
            np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)  # the same map shown
            assert a.score == image_score(scored_part(a.anomaly_map, manifest.score_margin), SCORE_TOP_FRACTION) <= b.score
    assert manifest.threshold < shown.threshold  # set on its own, lower, scores
    # With the maximum as the map's own reference there is nothing more to count: one reference.
    both = export_onnx(trained, tmp_path / "refmax.onnx", reference_statistic="max", score_reference="max")
    assert both.score_reference_map == {} and both.reference_map == manifest.score_reference_map
    for args, words in [(["--score-reference", "median"], "--score-reference must be one of mean, max, spread, not 'median'"),
                        (["--score-reference", "max", "--no-reference-map"], "--score-reference max needs the reference map"),
                        (["--score-reference", "spread", "--no-reference-map"], "--score-reference spread needs the reference map")]:
        result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "m.onnx"), *args])
        assert result.exit_code == 2 and words in result.output
        assert not (tmp_path / "m.onnx").exists()


def test_the_score_can_weigh_the_map_by_how_little_the_good_maps_vary(exported, trained, tmp_path):
    """export --score-reference spread: the map shown is the same rise above the good maps'
    mean; the score counts it times score_weight of the same good maps' per-pixel standard
    deviation, and the threshold is set on those scores."""
    out = tmp_path / "mean.onnx"
    shown = export_onnx(trained, out, score_reference="mean")
    state = load_checkpoint(trained)
    with OnnxCpuBackend(out, manifest=replace(shown, reference_map={})) as backend:
        plain_maps = [backend.score(prepare(read_image(p), (32, 32))).anomaly_map for p in state["train_images"]]
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "spread.onnx")])  # the default
    assert result.exit_code == 0, result.output
    assert ("score:     the mean of the highest 1 % of pixels of the anomaly map weighted by how little good "
            "training maps vary at each pixel\n") in result.output
    manifest = Manifest.for_model(tmp_path / "spread.onnx")
    assert manifest.metrics["score_reference"] == manifest.score_reference == "spread"
    assert manifest.score_weight_map == encode_reference(score_weight(np.std(plain_maps, axis=0)))
    assert manifest.reference_map == shown.reference_map and manifest.score_reference_map == {}
    held_out = [prepare(read_image(p), (32, 32)) for p in state["held_out_images"]]
    with OnnxCpuBackend(tmp_path / "spread.onnx") as weighted, OnnxCpuBackend(out) as unweighted:
        scores = []
        for image in held_out:
            a, b = weighted.score(image), unweighted.score(image)
            np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)  # the same map shown
            assert a.score == image_score(a.anomaly_map * manifest.score_weight, SCORE_TOP_FRACTION) < b.score
            scores.append(a.score)
    assert manifest.threshold == pytest.approx(threshold_from_scores(scores)["threshold"], rel=1e-6)  # set on its own scores


def test_cli_refuses_an_unknown_reference_statistic(trained, tmp_path):
    result = CliRunner().invoke(app, ["export", str(trained), "--out", str(tmp_path / "m.onnx"), "--reference-statistic", "median"])
    assert result.exit_code == 2
    assert "--reference-statistic must be one of mean, max, not 'median'" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_cli_train_then_export(parts, tmp_path):
    runner = CliRunner()
    run = tmp_path / "runs" / "mini"
    args = ["train", str(parts), "--out", str(run), "--input-size", "32", "--width", "4", "--epochs", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (run / "last.pt").is_file()
    result = runner.invoke(app, ["export", str(run / "last.pt"), "--out", str(tmp_path / "engines" / "mini.onnx")])
    assert result.exit_code == 0, result.output
    assert "threshold:" in result.output
    # 4 held-out images set it: the user is told to set it on the line before trusting it.
    assert "\nadvice:    a threshold from 4 images is a rough guess; before a line trusts it, set it from good parts " \
           "on the line with `riad-edge calibrate` (or train with --held-out 10 or more)\nreference:" in result.output
    assert "reference: the mean of the anomaly maps of 2 training images" in result.output
    assert "map:       gradients of R, G and B each (the training images have colour), GMS constant c " in result.output
    assert Manifest.for_model(tmp_path / "engines" / "mini.onnx").category == "bottle-mini"
    assert Manifest.for_model(tmp_path / "engines" / "mini.onnx").map_spec.per_channel
    # Parts that lie anywhere in the view: the paper's plain map, and the training images may be gone.
    moved = tmp_path / "moved.pt"
    torch.save(load_checkpoint(run / "last.pt") | {"train_images": ["/nowhere/001.png"]}, moved)
    result = runner.invoke(app, ["export", str(moved), "--out", str(tmp_path / "plain.onnx"), "--no-reference-map"])
    assert result.exit_code == 0, result.output
    assert "reference: none (the plain map)" in result.output
    plain = Manifest.for_model(tmp_path / "plain.onnx")
    assert plain.reference_map == {} and plain.reference is None and plain.metrics["reference_images"] == 0
    # No good maps measured, nothing to weigh the score by: it counts the whole map, unasked.
    assert plain.score_weight_map == {} and plain.score_reference == "mean"
    assert "score:     the mean of the anomaly map's highest 1 % of pixels\n" in result.output


def test_a_threshold_from_ten_held_out_images_comes_without_the_advice(bottle_dir, tmp_path):
    parts = tmp_path / "bottle-twelve"
    parts.mkdir()
    for source in sorted((bottle_dir / "train" / "good").glob("*.png"))[:12]:
        cv2.imwrite(str(parts / source.name), cv2.resize(read_image(source), (32, 32), interpolation=cv2.INTER_AREA))
    runner = CliRunner()
    args = ["train", str(parts), "--out", str(tmp_path / "run"), "--input-size", "32", "--width", "4", "--epochs", "1",
            "--held-out", "10"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["export", str(tmp_path / "run" / "last.pt"), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "10 held-out good images" in result.output and "riad-edge calibrate" not in result.output


@pytest.mark.parametrize("tiny_disk", ["8m"], indirect=True)
def test_a_full_disk_keeps_the_last_checkpoint(parts, tiny_disk):
    run = tiny_disk / "run"
    args = ["train", str(parts), "--out", str(run), "--input-size", "32", "--width", "4", "--epochs", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    fill(tiny_disk)
    result = CliRunner().invoke(app, ["train", str(parts), "--out", str(run), "--resume", "--epochs", "2"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"cannot write the checkpoint {run / 'last.pt'}" in result.output
    assert "the previous checkpoint last.pt is intact. Free space, then continue with --resume" in result.output
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # epoch 1 survived the failed save
    assert sorted(p.name for p in run.iterdir()) == ["last.pt"]  # no partial file left

    (tiny_disk / "filler").unlink()  # space is back: the run goes on from epoch 1
    assert CliRunner().invoke(app, ["train", str(parts), "--out", str(run), "--resume", "--epochs", "2"]).exit_code == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without CUDA")
def test_the_gpu_recipe_on_a_cpu_warns_of_its_time(parts, tmp_path):
    # The paper-size net shrunk to a second's work: only the warning is under test.
    args = ["train", str(parts), "--out", str(tmp_path / "run"), "--recipe", "gpu", "--input-size", "32",
            "--width", "4", "--epochs", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: the gpu recipe (the paper's net, 300 epochs) on the CPU takes days" in result.stderr
    plain = CliRunner().invoke(app, [*args[:3], str(tmp_path / "run2"), *args[6:]])  # the cpu recipe
    assert plain.exit_code == 0 and "warning" not in plain.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{empty}", "--out", "{out}"], "no images in"),
        (["train", "{parts}", "--out", "{out}", "--recipe", "tpu"], "unknown recipe"),
        (["train", "{parts}", "--out", "{out}", "--resume"], "no checkpoint at"),
        (["export", "{out}/last.pt", "--out", "{out}/m.onnx"], "no checkpoint at"),
        # A bad rate is named before the checkpoint is even looked for.
        (["export", "{out}/last.pt", "--out", "{out}/m.onnx", "--false-alarm-rate", "1"], "between 0 and 1"),
        (["export", "{out}/last.pt", "--out", "{out}/m.onnx", "--false-alarm-rate", "5"], "0.01 is 1 %"),
        (["export", "{out}/last.pt", "--out", "{out}/m.onnx", "--false-alarm-rate", "0"], "between 0 and 1"),
        (["export", "{out}/last.pt", "--out", "{out}/m.onnx", "--false-alarm-rate", "nan"], "between 0 and 1"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(parts, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = {"empty": empty, "parts": parts, "out": tmp_path / "run"}
    result = CliRunner().invoke(app, [a.format(**paths) for a in args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_training_crops_come_from_the_images_and_the_learning_rate_falls_to_zero():
    from trainer.train import cosine_lr, crop_shape, random_crops

    images = torch.arange(2 * 3 * 8 * 6, dtype=torch.float32).reshape(2, 3, 8, 6)
    crops = random_crops(images, 4, 4, np.random.default_rng(0))
    assert crops.shape == (2, 3, 4, 4)
    for image, crop in zip(images, crops):  # each crop is a window of its own image
        windows = image.unfold(1, 4, 1).unfold(2, 4, 1).permute(1, 2, 0, 3, 4)
        assert any(torch.equal(w, crop) for row in windows for w in row)
    assert crop_shape((304, 128), 128) == (128, 128) and crop_shape((304, 128), 0) == (304, 128)
    assert crop_shape((64, 48), 128) == (64, 48)  # never larger than the input
    assert cosine_lr(1e-3, 0.0) == 1e-3 and cosine_lr(1e-3, 0.5) == pytest.approx(5e-4) and cosine_lr(1e-3, 1.0) == 0.0


def test_a_time_budget_ends_training_and_spans_the_learning_rate(parts, tmp_path, monkeypatch):
    """--minutes alone: training stops at the first epoch end past the budget, whatever the
    epoch cap, and the learning rate's cosine has run its course by then."""
    from trainer import train as training

    clock = {"now": 1000.0}
    monkeypatch.setattr(training.time, "monotonic", lambda: clock["now"])
    rates = []
    real_cosine = training.cosine_lr

    def cosine(base, progress):
        clock["now"] += 20.0  # every step takes 20 s of the 1-minute budget
        rates.append(real_cosine(base, progress))
        return rates[-1]

    monkeypatch.setattr(training, "cosine_lr", cosine)
    result = CliRunner().invoke(
        app, ["train", str(parts), "--out", str(tmp_path / "run"), "--input-size", "32", "--width", "4", "--batch-size", "1", "--minutes", "1"]
    )
    assert result.exit_code == 0, result.output
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    # 2 training images, 1 a step: 40 s an epoch, so the budget ends in the second epoch.
    assert state["epoch"] == 2 and len(rates) == 4
    assert state["config"]["minutes"] == 1 and state["config"]["epochs"] == training.UNLIMITED_EPOCHS
    assert state["train_seconds"] == pytest.approx(80.0)
    # Each step's rate follows the time spent before it: 0, 20, 40 and 60 s of 60.
    assert rates == pytest.approx([real_cosine(1e-3, p) for p in (0, 1 / 3, 2 / 3, 1)])
    assert rates[-1] == 0.0
    assert "epoch 2 of 1 min" in result.output

    # Resumed with a longer budget, it counts the minutes it already trained.
    result = CliRunner().invoke(app, ["train", str(parts), "--out", str(tmp_path / "run"), "--resume", "--minutes", "2"])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 3 and state["train_seconds"] == pytest.approx(120.0)

    # Resumed with the budget taken away and no epoch count, it would never end: refused.
    result = CliRunner().invoke(app, ["train", str(parts), "--out", str(tmp_path / "run"), "--resume", "--minutes", "0"])
    assert result.exit_code == 2 and "would never end; give --minutes or --epochs" in result.output


def test_the_cpu_recipes_time_budget_ends_a_slow_training_and_says_so_after_its_first_epoch(parts, tmp_path, monkeypatch):
    """On a CPU too slow for the recipe's epochs within the hour, time ends the run, and
    the first epoch's pace tells the user so while there is still time to choose."""
    from trainer import train as training

    clock = {"now": 1000.0}
    monkeypatch.setattr(training.time, "monotonic", lambda: clock["now"])
    real_cosine = training.cosine_lr

    def cosine(base, progress):
        clock["now"] += 20 * 60.0  # every step takes 20 minutes
        return real_cosine(base, progress)

    monkeypatch.setattr(training, "cosine_lr", cosine)
    args = ["train", str(parts), "--out", str(tmp_path / "run"), "--input-size", "32", "--width", "4", "--batch-size", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    # 2 images, 1 a step: 40 minutes an epoch, so the 50-minute budget ends the second of 40.
    assert state["epoch"] == 2 and state["config"]["minutes"] == 50 and state["config"]["epochs"] == 40
    assert ("at 40.0 min an epoch, 40 epochs would take 1600 min: the time budget of 50 min ends training after "
            "about 2 epochs") in result.output
    assert "(--minutes 0 trains them all)" in result.output
    assert "the time budget of 50 min ended training after 2 of 40 epochs" in result.output
    # Resumed with the budget lifted, it trains on (the minutes spent count no more).
    result = CliRunner().invoke(app, ["train", str(parts), "--out", str(tmp_path / "run"), "--resume", "--minutes", "0",
                                      "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 3


def test_the_time_budget_note_speaks_only_when_time_will_end_the_run():
    from trainer.train import UNLIMITED_EPOCHS, time_budget_note

    cpu = recipe("cpu")
    assert time_budget_note(cpu, 40, 1, 20.0) is None  # the EPYC Zen 5's pace: 13 minutes in all
    assert time_budget_note(cpu, 40, 2, 2 * 75.0) is None  # exactly 50 minutes: the epochs end it
    note = time_budget_note(cpu, 40, 2, 2 * 96.0)  # 1.6 minutes an epoch: 64 in all
    assert note.startswith("at 1.6 min an epoch, 40 epochs would take 64 min") and "after about 32 epochs" in note
    assert "after about 1 epoch," in time_budget_note(cpu, 40, 1, 3000.0)
    assert time_budget_note(recipe("cpu", minutes=0.0), 40, 1, 600.0) is None  # no budget
    assert time_budget_note(recipe("cpu", minutes=5.0), UNLIMITED_EPOCHS, 1, 600.0) is None  # time alone ends it anyway


def test_an_epoch_cap_ends_a_budgeted_run_first(parts, tmp_path):
    state = load_checkpoint(train(parts, tmp_path, recipe("cpu", **TINY | {"epochs": 2, "minutes": 60.0})))
    assert state["epoch"] == 2 and 0 < state["train_seconds"] < 60 * 60


@pytest.mark.parametrize("minutes", ["-1", "nan"])
def test_a_bad_time_budget_is_refused(parts, tmp_path, minutes):
    result = CliRunner().invoke(app, ["train", str(parts), "--out", str(tmp_path / "run"), "--minutes", minutes])
    assert result.exit_code == 2
    assert "minutes must be 0 (no time budget) or a positive number" in result.output
