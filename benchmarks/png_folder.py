"""Write an image folder of RGB PNGs for the streaming benchmarks: Fashion-MNIST upscaled.

    python benchmarks/png_folder.py OUT [--train 3600] [--test 400] [--resolution 224]

OUT/train/<class>/*.png and OUT/test/<class>/*.png, drawn from the embedded
subset (no download), each 28x28 image resized bilinearly to the resolution and
copied into three channels. Real image files at a real size, so decoding and
resizing cost what they cost on a user's folder. Needs Pillow (`netadapt[images]`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from netadapt.data import EMBEDDED_PATH


def write_png_folder(out: Path, train: int, test: int, resolution: int) -> int:
    """Write `train` + `test` PNGs under `out`; returns the bytes written."""
    from PIL import Image

    written = 0
    with np.load(EMBEDDED_PATH, allow_pickle=False) as archive:
        names = [str(name).replace("/", "-") for name in archive["class_names"]]  # "T-shirt/top" is no folder name
        for split, count in (("train", train), ("test", test)):
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
            if count > len(labels):
                raise SystemExit(f"--{split} {count}: the embedded subset has {len(labels)} {split} images")
            for name in names:
                (out / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                path = out / split / names[labels[i]] / f"{i:05d}.png"
                picture = Image.fromarray(images[i]).resize((resolution, resolution), Image.BILINEAR).convert("RGB")
                picture.save(path)
                written += path.stat().st_size
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write (must not exist)")
    parser.add_argument("--train", type=int, default=3600, help="training images (default 3600)")
    parser.add_argument("--test", type=int, default=400, help="test images (default 400)")
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    if args.out.exists():
        print(f"{args.out}: already exists; choose a new folder", file=sys.stderr)
        return 2
    start = time.perf_counter()
    size = write_png_folder(args.out, args.train, args.test, args.resolution)
    print(f"{args.out}: {args.train + args.test} PNGs at {args.resolution}x{args.resolution}, "
          f"{size / 1e6:.0f} MB on disk, in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
