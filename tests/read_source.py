"""Reads a source through edge.sources.cameras and prints one JSON line per frame, for tests.

    PYTHONPATH=<repo> /usr/bin/python3 tests/read_source.py URI [FRAMES]

Runs under the system Python, whose OpenCV (Debian's python3-opencv) has GStreamer; the
venv's pip OpenCV has not. Each line: the frame's index, shape, mean BGR colour and the
source's counters at that moment. Stops after FRAMES frames (default: never), when the
source ends, or when killed. The source's log lines go to stderr; a SourceError is
printed there as `SourceError: <message>` with exit code 3, as riad-edge run does.
"""

import json
import logging
import sys

from edge.sources.cameras import SourceError, open_source


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    uri, limit = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None
    try:
        source = open_source(uri)
    except SourceError as exc:
        print(f"SourceError: {exc}", file=sys.stderr)
        return 3
    read = 0
    with source:
        print(json.dumps({"opened": source.description, "camera_id": source.camera_id, "live": source.is_live}), flush=True)
        while (limit is None or read < limit) and (frame := source.read()) is not None:
            read += 1
            line = {
                "index": frame.index,
                "shape": list(frame.image.shape),
                "mean_bgr": [round(float(v), 1) for v in frame.image.reshape(-1, frame.image.shape[-1]).mean(axis=0)],
                "counters": source.counters(),
            }
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
