"""Rebuild the embedded Fashion-MNIST subset shipped in the package.

    python scripts/build_embedded_data.py [--source /usr/share/datasets/fashion-mnist]

Balanced and seeded (800 train + 200 test images per class, seed 0): the same
source files give the same array. Needs the full Fashion-MNIST idx files
(`apt-get install dataset-fashion-mnist`).
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

from netadapt.data import EMBEDDED_PATH, build_embedded_subset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="folder with the idx files")
    parser.add_argument("--out", default=str(EMBEDDED_PATH), help="the .npz to write")
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build_embedded_subset(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)
    with np.load(path) as archive:
        # Digest of the arrays, not the file: zip timestamps make file bytes differ between builds.
        digest = hashlib.sha256(b"".join(archive[k].tobytes() for k in sorted(archive.files))).hexdigest()
        shapes = {key: archive[key].shape for key in archive.files}
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) {shapes}\narrays sha256 {digest}")


if __name__ == "__main__":
    main()
