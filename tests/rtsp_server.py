"""A real RTSP camera for tests: GStreamer's RTSP server streaming H.264 test video.

    /usr/bin/python3 tests/rtsp_server.py PORT

Serves rtsp://127.0.0.1:PORT/line: videotestsrc (a moving ball, 160 x 120, 15 frames/s)
encoded by x264 with a key frame every second, as an IP camera would send it. Prints
"ready" once it listens, and "setup <Transport header>" for every client's SETUP, so a
test can see whether the client asked for TCP or UDP. Runs until killed.

Needs the system Python with python3-gi, gir1.2-gst-rtsp-server-1.0 and the GStreamer
plugins named in tests/system_gstreamer.py (not the project's venv: PyGObject is a system package).
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

CAMERA = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw, width=160, height=120, framerate=15/1 ! "
    "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def on_setup(_client, context) -> None:
    _, transport = context.request.get_header(GstRtsp.RTSPHeaderField.TRANSPORT, 0)
    print(f"setup {transport}", flush=True)


def on_client(_server, client) -> None:
    client.connect("pre-setup-request", lambda c, ctx: on_setup(c, ctx) or GstRtsp.RTSPStatusCode.OK)


def main() -> None:
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(sys.argv[1])
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(CAMERA)
    factory.set_shared(True)  # one encoder for all clients, as a camera has
    server.get_mount_points().add_factory("/line", factory)
    server.connect("client-connected", on_client)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{sys.argv[1]}")
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
