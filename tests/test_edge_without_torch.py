"""A Jetson runs `edge` with TensorRT alone: no torch, nothing of the trainer.

The tests run in a fresh interpreter in which importing torch or trainer fails, as it
would on an edge box where they are not installed.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import edge

REPO = Path(__file__).resolve().parents[1]

# Makes `import torch` and `import trainer` fail, then runs what follows.
FORBID = """
import importlib.abc, sys
class Forbid(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "trainer"):
            raise ImportError(f"{name} is not on an edge box")
sys.meta_path.insert(0, Forbid())
"""


def run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", FORBID + code, *args], check=False, capture_output=True, text=True, timeout=120, cwd=REPO
    )


def test_every_edge_module_imports_without_torch_or_trainer():
    modules = [m.name for m in pkgutil.walk_packages(edge.__path__, "edge.")]
    # The TensorRT backend refuses to import where TensorRT is missing; that is its contract.
    modules = [m for m in modules if m not in ("edge.backends.tensorrt", "edge.__main__")]
    assert "edge.method.anomaly_map" in modules and "edge.pipeline" in modules
    result = run_without_torch(f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\nprint('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_riad_edge_run_works_without_torch(tiny_onnx_model, tmp_path):
    clip = REPO / "samples" / "bottle-line.mp4"
    code = "import sys; from edge.cli import app; sys.argv[0] = 'riad-edge'; app()"
    result = run_without_torch(code, "run", "--source", str(clip), "--model", str(tiny_onnx_model), "--max-frames", "3")
    assert result.returncode == 0, result.stderr
    assert "summary: 3 frames" in result.stdout
