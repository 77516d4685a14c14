"""Training throughput and the data-loading share of a fine-tune's wall time.

    python benchmarks/train_throughput.py [--threads 2] [--steps 30] [--quick]
    python benchmarks/train_throughput.py --folder DIR [--steps 5] [--batch 32] [--device auto] [--precision fp32]

For each preset/width/resolution: images per second of `netadapt.train.train`
steps at batch 128 on the embedded Fashion-MNIST subset, holdout-evaluation
images per second, and the share of a fine-tune's wall time spent sampling
and augmenting batches (the issue asks for < 10%). Prints the machine and
command so the table can be compared across machines.

With `--folder` (an image folder, e.g. from `benchmarks/png_folder.py`), it
fine-tunes Large at the folder's resolution with `data.cache=memory` and with
`data.cache=stream` at each `--workers` count, each in its own process, and
reports images/s, the data share and the peak memory of that process and its
decoding workers together, beside the decoded float32 size of the data. The
memory is the summed proportional set size (PSS, /proc/PID/smaps_rollup,
sampled every 20 ms): forked workers share their parent's pages, and PSS
counts a shared page once over the processes that share it, where summed
RSS would count it in each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from mobilenetv3 import build, preset
from netadapt.config import DataConfig, TrainConfig
from netadapt.data import load_dataset
from netadapt.train import evaluate, finetune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed fine-tune steps per model (default 30; 5 with --folder)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 128; 32 with --folder)")
    parser.add_argument("--quick", action="store_true", help="only small-0.5 and large-1.0 at 28")
    parser.add_argument("--folder", type=Path, help="an image folder: compare data.cache=memory and stream on it")
    parser.add_argument("--resolution", type=int, default=224, help="with --folder: the data.resolution (default 224)")
    parser.add_argument("--holdout", type=int, help="with --folder: data.holdout (default: the automatic size)")
    parser.add_argument("--workers", default="0,2", help="with --folder: data.workers counts to stream with (default 0,2)")
    parser.add_argument("--device", default="auto", help="with --folder: train.device (default auto)")
    parser.add_argument("--precision", default="fp32", help="with --folder: train.precision (default fp32)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one folder mode, print JSON
    args = parser.parse_args()
    if args.folder is not None:
        args.steps, args.batch = args.steps or 5, args.batch or 32
        (folder_mode if args.one else folder_main)(args)
        return
    args.steps, args.batch = args.steps or 30, args.batch or 128

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


# ------------------------------------------------------------ --folder modes
def folder_main(args: argparse.Namespace) -> None:
    """Run each mode in its own process and report its figures and peak memory side by side."""
    # "none": the same fine-tune on one batch of random images held in memory:
    # what the model and its training take without any data set, the floor.
    modes = ["none", "memory", *(f"stream:{workers}" for workers in args.workers.split(","))]
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, {args.steps} timed steps, device {args.device}, "
          f"{args.precision}, load average {os.getloadavg()[0]:.2f} at start")
    header = (f"{'data.cache':<10} {'workers':>7} {'load s':>7} {'train img/s':>11} {'data share':>10} "
              f"{'peak PSS':>9} {'decoded data':>12}")
    print(header)
    print("-" * len(header))
    for mode in modes:
        command = [sys.executable, __file__, *sys.argv[1:], "--one", mode]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        peak = _PeakTreeMemory(child.pid)
        output, _ = child.communicate()
        peak.stop()
        if child.returncode != 0:
            raise SystemExit(f"{mode}: the measuring process failed (exit {child.returncode})")
        result = json.loads(output.strip().splitlines()[-1])
        cache, _, workers = mode.partition(":")
        print(f"{cache:<10} {workers or '-':>7} {result['load_s']:>7.1f} {result['images_per_second']:>11.1f} "
              f"{100 * result['data_share']:>9.1f}% {peak.bytes / 1e9:>7.2f} GB {result['decoded_bytes'] / 1e9:>9.2f} GB",
              flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end. 'load s': reading the folder into splits (memory: decoding "
          "every image). 'peak PSS': the process and its decoding workers together. 'decoded data': the float32 "
          "size of all three splits, what data.cache=memory holds. 'none': one batch of random images, no data set: the model's and "
          "training's own memory, the floor.")


def folder_mode(args: argparse.Namespace) -> None:
    """One mode in this process: load the folder, fine-tune Large, print the figures as one JSON line."""
    from netadapt.devices import resolve_device

    from netadapt.data import Split

    cache, _, workers = args.one.partition(":")
    data_config = DataConfig(dataset="folder", path=str(args.folder), resolution=args.resolution, channels=3,
                             mean=[0.5] * 3, std=[0.5] * 3, cache="memory" if cache == "none" else cache,
                             workers=int(workers or 0), holdout=args.holdout)
    start = time.perf_counter()
    if cache == "none":
        data = load_dataset(replace(data_config, resolution=8))  # only the class count and split sizes
        random = torch.randn(args.batch, 3, args.resolution, args.resolution, generator=torch.Generator().manual_seed(0))
        data = replace(data, train=Split(random, data.train.labels[: args.batch]))
    else:
        data = load_dataset(data_config)
    load_s = time.perf_counter() - start
    config = TrainConfig(batch_size=args.batch, threads=args.threads, bn_recalibration=0, device=args.device,
                         precision=args.precision, crop_padding=8)
    model = build(preset("large", width=1.0, num_classes=data.num_classes, in_channels=3), seed=0)
    resolve_device(config.device)  # a missing device fails here, before the data is read twice
    finetune(model, data.train, 1, config, seed=0)  # warm-up: allocator, kernels, worker start
    stats = finetune(model, data.train, args.steps, config, seed=1)
    sizes = 0 if cache == "none" else sum(len(split) for split in (data.train, data.holdout, data.test))
    print(json.dumps({"load_s": load_s, "images_per_second": stats.images_per_second, "data_share": stats.data_share,
                      "decoded_bytes": sizes * 3 * args.resolution**2 * 4}))


class _PeakTreeMemory:
    """The peak summed PSS of a process and all its descendants, sampled from /proc."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid, self.interval_s, self.bytes = pid, interval_s, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.is_set():
            self.bytes = max(self.bytes, sum(_pss(pid) for pid in _tree(self.pid)))
            self._done.wait(self.interval_s)


def _tree(pid: int) -> list[int]:
    pids, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        pids.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                frontier += [int(child) for child in (task / "children").read_text().split()]
        except OSError:  # the process ended between two reads
            continue
    return pids


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    main()
