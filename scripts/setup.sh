#!/usr/bin/env bash
# Creates .venv and installs the project into it. Safe to run again.
#   scripts/setup.sh edge     the inspector alone (no torch): what an edge box needs
#   scripts/setup.sh full     trainer and tests too (torch CPU build, onnx)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-full}

echo "setup: installing into .venv ($what)"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
# setuptools warns about every editable install; pip's errors still show.
export PYTHONWARNINGS=ignore
python -m pip install -q --upgrade pip

if [ "$what" = full ]; then
    # This exact pin is the CPU build; a bare 'torch' would pull GBs of CUDA wheels.
    # The [train] extra asks for a range this pin satisfies.
    python -m pip install -q "torch==2.13.0"
    python -m pip install -q -e ".[train,test,kernel-check]" mypy
    # Type information for the TensorRT code, checked by mypy in the tests. --no-deps:
    # its dependency, TensorRT itself, cannot be downloaded off an NVIDIA machine.
    python -m pip install -q --no-deps "tensorrt-stubs==10.13.0.35.1"
else
    python -m pip install -q -e .
fi

unset PYTHONWARNINGS

# System programs: mosquitto is the MQTT broker the demo and the tests start;
# chromium drives the live-view browser test. Both are optional for the edge box itself.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    pkgs="mosquitto mosquitto-clients"
    [ "$what" = full ] && pkgs="$pkgs chromium"
    # The GStreamer tests (tests/system_gstreamer.py) run Debian's OpenCV, which has GStreamer
    # (the pip wheel has not), under /usr/bin/python3, against GStreamer's RTSP server.
    [ "$what" = full ] && pkgs="$pkgs python3-opencv python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav"
    missing=""
    for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
fi
