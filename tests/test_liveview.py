"""The live view, served to a real browser (headless Chromium over the DevTools protocol)
and to plain HTTP clients, fed with real bottle frames."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.sinks.liveview import LiveView, LiveViewError
from edge.method.preprocess import read_image
from edge.method.regions import defect_boxes
from edge.results import DefectTracker, FrameResult

THRESHOLD = 0.5


class FrameFeed:
    """Real bottle frames as FrameResults. The anomaly maps are synthetic: low noise for
    good frames; for the broken bottle, its ground-truth mask, so the boxes land on the break."""

    def __init__(self, bottle_dir: Path):
        self.goods = [read_image(p) for p in sorted((bottle_dir / "test" / "good").glob("*.png"))[:4]]
        self.broken = read_image(bottle_dir / "test" / "broken_large" / "000.png")
        self.broken_mask = read_image(bottle_dir / "ground_truth" / "broken_large" / "000_mask.png")
        small = cv2.resize(self.broken_mask, (64, 64), interpolation=cv2.INTER_AREA)
        self.broken_map = (0.15 + 0.75 * small / 255).astype(np.float32)
        self.rng = np.random.default_rng(0)
        self.index = 0
        self.defects = DefectTracker()  # as the pipeline does for every sink

    def _result(self, frame: np.ndarray, amap: np.ndarray) -> FrameResult:
        result = FrameResult(self.index, time.time(), frame, amap, float(amap.max()), THRESHOLD,
                             defect_boxes(amap, float(amap.max()), THRESHOLD, frame.shape), latency_s=0.012)
        self.defects.assign(result)
        self.index += 1
        return result

    def good(self) -> FrameResult:
        amap = self.rng.uniform(0.1, 0.35) * self.rng.random((64, 64), dtype=np.float32)
        return self._result(self.goods[self.index % len(self.goods)], amap)

    def defective(self) -> FrameResult:
        return self._result(self.broken, self.broken_map)


@pytest.fixture
def feed(bottle_dir) -> FrameFeed:
    return FrameFeed(bottle_dir)


@pytest.fixture
def view():
    live = LiveView(port=0)
    yield live
    live.close()


def get(view: LiveView, path: str, headers: dict | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{view.port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], b""


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def sse_events(response) -> Iterator[tuple[str, dict]]:
    """The server-sent events of an open /events response, as they come."""
    name = None
    for line in response:
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: "):])


def read_sse(view: LiveView, count: int) -> list[tuple[str, dict]]:
    """The first `count` server-sent events from /events."""
    with urllib.request.urlopen(f"http://127.0.0.1:{view.port}/events", timeout=10) as r:
        return list(itertools.islice(sse_events(r), count))


def test_state_events_and_defect_grouping(view, feed):
    for _ in range(5):
        view.handle(feed.good())
    defective = [feed.defective() for _ in range(3)]
    for result in defective:
        view.handle(result)
    view.handle(feed.good())

    status, content_type, body = get(view, "/api/state")
    assert status == 200 and content_type == "application/json"
    state = json.loads(body)
    assert state["frames"] == 9 and state["threshold"] == THRESHOLD and state["history"] == 300
    assert [s["index"] for s in state["scores"]] == list(range(9))
    # Three consecutive defective frames are one defect of three frames.
    assert state["defects"] == 1
    (defect,) = state["last_defects"]
    assert defect["frame_index"] == 5 and defect["last_frame_index"] == 7 and defect["frames"] == 3
    assert defect["defect_id"] == defective[0].defect_id  # the id the MQTT events carry
    assert defect["score"] == pytest.approx(0.9, abs=0.01)
    assert defect["frame_size"] == [900, 900]
    # The box is the ground-truth region, to within a map cell (900 / 64 pixels).
    (box,) = defect["boxes"]
    truth = cv2.boundingRect((feed.broken_mask > 127).astype(np.uint8))
    assert [box["x"], box["y"], box["width"], box["height"]] == pytest.approx(truth, abs=2 * 900 / 64)
    assert box["peak"] == pytest.approx(defect["score"])

    status, content_type, jpeg = get(view, defect["thumbnail"])
    assert status == 200 and content_type == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 240, 3)
    assert get(view, "/defects/99.jpg")[0] == 404
    assert get(view, "/nothing-here")[0] == 404

    # A new client gets the state first, then every frame (and defect) as it happens.
    view.handle(feed.defective())
    (name, snapshot), = read_sse(view, 1)
    assert name == "state" and snapshot["frames"] == 10 and snapshot["defects"] == 2


def test_events_arrive_live(view, feed):
    view.handle(feed.good())
    with urllib.request.urlopen(f"http://127.0.0.1:{view.port}/events", timeout=10) as r:
        events = sse_events(r)
        assert next(events)[0] == "state"  # the client is connected; what happens from now on reaches it
        view.handle(feed.good())
        view.handle(feed.defective())
        received = list(itertools.islice(events, 3))
    assert [name for name, _ in received] == ["frame", "frame", "defect"]
    assert received[0][1]["index"] == 1 and received[0][1]["is_defect"] is False
    assert received[1][1]["is_defect"] is True and received[1][1]["latency_ms"] == 12.0
    assert received[2][1]["id"] == 1 and received[2][1]["frame_index"] == 2


def test_mjpeg_stream_serves_the_overlaid_frame(view, feed):
    view.handle(feed.defective())
    with urllib.request.urlopen(f"http://127.0.0.1:{view.port}/stream.mjpg", timeout=10) as r:
        assert r.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
        part_start = b"--frame\r\nContent-Type: image/jpeg\r\n\r\n"
        assert r.read(len(part_start)) == part_start
        data = b""
        while b"\r\n" + part_start not in data:  # a part ends where the next begins
            data += r.read1(65536)
        jpeg = data[: data.index(b"\r\n" + part_start)]
    frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert frame.shape == (900, 900, 3)
    # The heatmap makes the break warm (red) and leaves the far side of the bottle cool.
    b, _, r_ = frame[:, 600:800].reshape(-1, 3).astype(int).T
    assert ((r_ > 180) & (b < 100)).mean() > 0.02
    b, _, r_ = frame[400:500, 100:250].reshape(-1, 3).astype(int).T
    assert ((r_ > 180) & (b < 100)).mean() == 0


def test_slow_client_does_not_slow_the_pipeline(view, feed):
    # A client that opens the stream and never reads: the server's writes to it block.
    stalled = socket.create_connection(("127.0.0.1", view.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    results = [feed.good() for _ in range(40)]
    handling = threading.Thread(target=lambda: [view.handle(result) for result in results], daemon=True)
    handling.start()
    handling.join(timeout=30)  # a handle() that waited on the stalled client would wait for ever
    finished = not handling.is_alive()
    stalled.close()
    assert finished
    assert json.loads(get(view, "/api/state")[2])["frames"] == 40


def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LiveViewError, match=f"127.0.0.1:{port}: the port is already in use"):
            LiveView(port=port)


def test_a_password_guards_every_path(feed):
    live = LiveView(port=0, password="s3cret-ü")
    try:
        live.handle(feed.defective())
        live.handle(feed.good())
        _, _, state = get(live, "/api/state", basic("riad", "s3cret-ü"))
        thumbnail = json.loads(state)["last_defects"][0]["thumbnail"]
        paths = ["/", "/app.js", "/api/state", "/stream.mjpg", "/events", thumbnail]
        wrong = [None, basic("riad", "nope"), basic("riad", "s3cret"), {"Authorization": "Basic !!notbase64"},
                 {"Authorization": "Bearer s3cret-ü"}]  # fmt: skip
        for path, headers in itertools.product(paths, wrong):
            status, content_type, _ = get(live, path, headers)
            assert status == 401 and content_type.startswith("text/plain"), (path, headers)
        request = urllib.request.Request(f"http://127.0.0.1:{live.port}/")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.headers["WWW-Authenticate"].startswith('Basic realm="riad-edge live view"')

        for user in ("riad", "operator"):  # any user name: the password is the secret
            status, content_type, body = get(live, "/api/state", basic(user, "s3cret-ü"))
            assert status == 200 and json.loads(body)["defects"] == 1
        assert get(live, "/", basic("riad", "s3cret-ü"))[0] == 200
        assert get(live, thumbnail, basic("riad", "s3cret-ü"))[:2] == (200, "image/jpeg")
        stream = urllib.request.Request(f"http://127.0.0.1:{live.port}/stream.mjpg", headers=basic("x", "s3cret-ü"))
        with urllib.request.urlopen(stream, timeout=10) as r:
            assert r.status == 200 and r.read(9) == b"--frame\r\n"
    finally:
        live.close()


def test_an_empty_password_is_refused():
    with pytest.raises(LiveViewError, match="password is empty"):
        LiveView(port=0, password="")


def test_close_stops_serving(feed):
    live = LiveView(port=0)
    live.handle(feed.good())
    assert get(live, "/api/state")[0] == 200
    live.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{live.port}/api/state", timeout=2)


# ---- a real browser ----------------------------------------------------------------------


class HeadlessChromium:
    """Chromium driven over the DevTools protocol: evaluate JavaScript, take screenshots."""

    def __init__(self, profile: Path, width: int, height: int):
        from websockets.sync.client import connect

        self.process = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None)
        self.ids = itertools.count(1)
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        request_id = next(self.ids)
        self.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == request_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15.0):
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.1)
        return value

    def screenshot(self) -> np.ndarray:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)

    def close(self) -> None:
        if hasattr(self, "ws"):
            self.ws.close()
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("websockets.sync.client")
    chromium = HeadlessChromium(tmp_path / "profile", 1280, 860)
    yield chromium
    chromium.close()


# Pixels of the chart canvas in a colour, as a fraction of the canvas.
CANVAS_COLOUR_SHARE = """(() => {
  const c = document.getElementById('chart'), g = c.getContext('2d');
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4)
    if (Math.abs(d[i] - %d) < 40 && Math.abs(d[i+1] - %d) < 40 && Math.abs(d[i+2] - %d) < 40 && d[i+3] > 128) n++;
  return n / (c.width * c.height);
})()"""
SCORE_BLUE, DEFECT_RED = (108, 182, 255), (255, 93, 93)


def test_browser_shows_frame_chart_and_defects(view, feed, browser, tmp_path):
    for _ in range(20):
        view.handle(feed.good())
    browser.call("Page.enable")
    browser.call("Page.navigate", url=view.url)

    # The frame arrives over MJPEG at its real size; the chart draws the 20 scores.
    assert browser.wait_for("document.getElementById('frame').naturalWidth") == 900
    browser.wait_for("document.getElementById('chart-count').textContent === '20 frames'")
    assert browser.evaluate(CANVAS_COLOUR_SHARE % SCORE_BLUE) > 0.002
    assert browser.evaluate(CANVAS_COLOUR_SHARE % DEFECT_RED) == 0
    assert browser.evaluate("document.querySelectorAll('#defect-list li').length") == 0
    assert browser.evaluate("document.getElementById('connection-text').textContent") == "live"

    # While the page is open: a defect passes by (three frames), then good frames again.
    for result in [feed.defective() for _ in range(3)] + [feed.good() for _ in range(5)]:
        view.handle(result)
        time.sleep(0.05)
    browser.wait_for("document.getElementById('chart-count').textContent === '28 frames'")
    browser.wait_for("document.querySelector('#defect-list li img')?.naturalWidth === 240")
    item = browser.evaluate("document.querySelector('#defect-list li').innerText")
    assert "0.900" in item and "frame 20" in item and "3 frames" in item
    assert browser.evaluate("document.querySelectorAll('#defect-list li').length") == 1
    assert browser.evaluate(CANVAS_COLOUR_SHARE % DEFECT_RED) > 0
    assert browser.evaluate("document.getElementById('stat-defects').textContent") == "1"
    browser.wait_for("document.getElementById('frame-caption').textContent.startsWith('frame 27 · 900×900')")

    shot = browser.screenshot()
    cv2.imwrite(str(tmp_path / "liveview.png"), shot)
    assert shot.shape == (860, 1280, 3)
    assert shot.std() > 20  # a page with a frame, a chart and a list, not a blank one


# ---- riad-edge run --view-port -----------------------------------------------------------


def run_with_view(folder: Path, model: Path, port: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from edge.cli import app; app()", "run", "--source", str(folder),
         "--model", str(model), "--view-port", str(port)],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_run_serves_the_live_view_and_says_where(bottle_dir, tmp_path, tiny_onnx_model):
    folder = tmp_path / "parts"
    folder.mkdir()
    for path in sorted((bottle_dir / "test" / "good").glob("*.png"))[:2]:
        shutil.copy(path, folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run_with_view(folder, tiny_onnx_model, port)
    assert done.returncode == 0, done.stderr
    assert f"live view: http://127.0.0.1:{port}/" in done.stdout
    assert "password" not in done.stdout

    guarded = run_with_view(folder, tiny_onnx_model, port, {"RIAD_VIEW_PASSWORD": "s3cret"})
    assert guarded.returncode == 0, guarded.stderr
    assert f"live view: http://127.0.0.1:{port}/ (password required)" in guarded.stdout

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = run_with_view(folder, tiny_onnx_model, taken.getsockname()[1])
    assert done.returncode == 2
    assert "the port is already in use" in done.stderr and "Traceback" not in done.stderr


def test_browser_behind_the_password(feed, browser):
    live = LiveView(port=0, password="s3cret")
    try:
        for _ in range(3):
            live.handle(feed.good())
        # As a browser does once the operator typed the password: every request carries it,
        # the MJPEG image and the event stream included. (Without it, headless Chromium
        # cancels the login prompt; test_a_password_guards_every_path covers refusals.)
        browser.call("Page.enable")
        browser.call("Network.enable")
        browser.call("Network.setExtraHTTPHeaders", headers=basic("operator", "s3cret"))
        browser.call("Page.navigate", url=live.url)
        assert browser.wait_for("document.getElementById('frame')?.naturalWidth") == 900
        browser.wait_for("document.getElementById('chart-count')?.textContent === '3 frames'")
        browser.wait_for("document.getElementById('connection-text')?.textContent === 'live'")
    finally:
        live.close()
