"""Builds samples/bottle-line.mp4: a short clip of real good and defective bottles.

    python scripts/make_sample.py [--data ../shared/data/mvtec/bottle]

It stands in for a camera over a conveyor: mostly good parts, a defective one now
and then, one part per frame. The frames are MVTec AD test images (never used in
training), so the bundled model has not seen them. MVTec AD is CC BY-NC-SA 4.0:
samples/README.md carries the attribution.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from edge.method.preprocess import read_image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mvtec" / "bottle"
# Which test images, in order: good parts with a defect of each kind in between.
SEQUENCE = [
    ("good", "000"), ("good", "001"), ("good", "002"), ("broken_large", "000"),
    ("good", "003"), ("good", "004"), ("good", "005"), ("contamination", "000"),
    ("good", "006"), ("good", "007"), ("broken_small", "000"), ("good", "008"),
    ("good", "009"), ("good", "010"), ("broken_large", "001"), ("good", "011"),
    ("good", "012"), ("contamination", "001"), ("good", "013"), ("good", "014"),
]
SIZE = 256
FPS = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "samples" / "bottle-line.mp4")
    args = parser.parse_args()

    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (SIZE, SIZE))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {args.out}")
    for defect, stem in SEQUENCE:
        frame = read_image(args.data / "test" / defect / f"{stem}.png")
        writer.write(cv2.resize(frame, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    writer.release()
    labels = args.out.with_suffix(".labels.txt")
    labels.write_text("".join(f"{i} {defect}/{stem}.png\n" for i, (defect, stem) in enumerate(SEQUENCE)))
    print(f"wrote {args.out} ({len(SEQUENCE)} frames) and {labels}")


if __name__ == "__main__":
    main()
