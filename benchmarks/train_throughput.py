"""Training throughput and the data-loading share of a fine-tune's wall time.

    python benchmarks/train_throughput.py [--threads 2] [--steps 30] [--quick]

For each preset/width/resolution: images per second of `netadapt.train.train`
steps at batch 128 on the embedded Fashion-MNIST subset, holdout-evaluation
images per second, and the share of a fine-tune's wall time spent sampling
and augmenting batches (the issue asks for < 10%). Prints the machine and
command so the table can be compared across machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

from mobilenetv3 import build, preset
from netadapt.config import DataConfig, TrainConfig
from netadapt.data import load_dataset
from netadapt.train import evaluate, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--steps", type=int, default=30, help="timed fine-tune steps per model")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="only small-0.5 and large-1.0 at 28")
    args = parser.parse_args()

    models = [("small", 0.5), ("large", 1.0)] if args.quick else [
        (name, width) for name in ("small", "large") for width in (1.0, 0.75, 0.5)
    ]
    resolutions = [28] if args.quick else [28, 32]
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads, batch {args.batch}, load average {os.getloadavg()[0]:.2f} at start"
    )
    header = f"{'model':<11} {'res':>3} {'params':>9} {'train img/s':>11} {'eval img/s':>10} {'data share':>10} {'50-step finetune':>16}"
    print(header)
    print("-" * len(header))
    config = TrainConfig(batch_size=args.batch, threads=args.threads, bn_recalibration=0)
    worst_share = 0.0
    for resolution in resolutions:
        data = load_dataset(DataConfig(resolution=resolution))
        for name, width in models:
            model = build(preset(name, width=width, num_classes=10, in_channels=1))
            finetune(model, data.train, 3, config, seed=0)  # warm-up: allocator, kernels
            stats = finetune(model, data.train, args.steps, config, seed=1)
            torch.set_num_threads(args.threads)
            start = time.perf_counter()
            evaluate(model, data.holdout, batch_size=512)
            eval_rate = len(data.holdout) / (time.perf_counter() - start)
            worst_share = max(worst_share, stats.data_share)
            finetune_50 = 50 * args.batch / stats.images_per_second + len(data.holdout) / eval_rate
            print(
                f"{name}-{width:<5} {resolution:>3} {model.num_params():>9,} {stats.images_per_second:>11.0f} "
                f"{eval_rate:>10.0f} {100 * stats.data_share:>9.1f}% {finetune_50:>14.1f} s",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.2f} at end; worst data-loading share {100 * worst_share:.1f}% (target < 10%)")
    print("'50-step finetune' = 50 steps at this batch + one holdout evaluation: one NetAdapt candidate.")


if __name__ == "__main__":
    main()
