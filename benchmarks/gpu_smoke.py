"""A tiny NetAdapt search on CUDA, end to end, and where its time went.

    python benchmarks/gpu_smoke.py [--out DIR] [--train 960] [--workers 8] [--executor local|ray]

What a real-scale user runs, shrunk to minutes:
1. an image folder of 224x224 PNGs (Fashion-MNIST upscaled, `png_folder.py`);
2. a random-initialised torchvision MobileNetV3-Large state dict, imported
   with `netadapt model import --num-classes 10` (nothing is downloaded);
3. images/s of base training and of a candidate fine-tune at 224 on the
   streamed folder, fp32 against bf16, with the data share of each;
4. `netadapt search` from those weights: data.cache=stream, train.device=cuda,
   two iterations, latency measured by onnxruntime on this machine's CPU
   (light measuring: the figure of interest is the GPU side);
5. the search's time per phase, from its history.csv.

Needs a CUDA GPU, Pillow and torchvision; without them it says which is
missing and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # png_folder, beside this script
from png_folder import write_png_folder  # noqa: E402

from mobilenetv3 import build, preset  # noqa: E402
from netadapt.config import DataConfig, TrainConfig  # noqa: E402
from netadapt.data import load_dataset  # noqa: E402
from netadapt.rundir import RunDir  # noqa: E402
from netadapt.train import finetune, train  # noqa: E402

PHASES = ["predict_s", "surgery_s", "export_s", "finetune_s", "eval_s", "lut_measure_s", "measure_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--train", type=int, default=960, help="training images in the folder (default 960)")
    parser.add_argument("--workers", type=int, default=8, help="data.workers (default 8)")
    parser.add_argument("--batch", type=int, default=64, help="train.batch_size (default 64)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per throughput figure (default 20)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="where the search's candidates fine-tune (ray: gpus_per_candidate=1)")
    args = parser.parse_args()
    missing = _missing_requirements()
    if missing:
        print(f"gpu_smoke needs {missing}", file=sys.stderr)
        return 2
    work = args.out or Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), {platform.machine()}; work folder {work}")

    folder = work / "images"
    start = time.perf_counter()
    if not folder.exists():
        write_png_folder(folder, args.train, max(100, args.train // 8), 224)
    print(f"\n1. image folder: {folder}, {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    weights, checkpoint = work / "mobilenet_v3_large.pth", work / "base.pt"
    torch.save(_torchvision().models.mobilenet_v3_large(weights=None).state_dict(), weights)
    _netadapt("model", "import", str(weights), "--preset", "large", "--num-classes", "10", "--out", str(checkpoint))
    print(f"2. torchvision weights imported: {checkpoint}, {time.perf_counter() - start:.1f} s")

    print(f"\n3. images/s at 224, batch {args.batch}, streamed with {args.workers} workers ({args.steps} timed steps)")
    data = load_dataset(DataConfig(dataset="folder", path=str(folder), resolution=224, channels=3,
                                   mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], cache="stream",
                                   workers=args.workers, holdout=100))
    print(f"{'precision':<9} {'base train img/s':>16} {'data share':>10} {'fine-tune img/s':>15} {'data share':>10}")
    for precision in ("fp32", "bf16"):
        config = TrainConfig(batch_size=args.batch, device="cuda", precision=precision, bn_recalibration=0,
                             crop_padding=16)
        model = build(preset("large", num_classes=10, in_channels=3), seed=0)
        finetune(model, data.train, 3, config, seed=0)  # warm-up: cuDNN autotuning, allocator, workers
        base = train(model, data.train, config, args.steps, seed=1, progress=False)
        tune = finetune(model, data.train, args.steps, config, seed=2)
        print(f"{precision:<9} {base.images_per_second:>16.0f} {100 * base.data_share:>9.1f}% "
              f"{tune.images_per_second:>15.0f} {100 * tune.data_share:>9.1f}%", flush=True)

    run = work / "run"
    settings = {
        "model.preset": "large", "model.checkpoint": str(checkpoint),
        "data.dataset": "folder", "data.path": str(folder), "data.resolution": 224, "data.channels": 3,
        "data.mean": "[0.485,0.456,0.406]", "data.std": "[0.229,0.224,0.225]", "data.holdout": 100,
        "data.cache": "stream", "data.workers": args.workers,
        "train.device": "cuda", "train.batch_size": args.batch, "train.bn_recalibration": 256,
        "search.max_iterations": 2, "search.finetune_steps": 20, "search.finetune_top": 4,
        "measure.min_seconds": 0.05, "measure.repeats": 2, "lut.correction_samples": 3,
        "lut.entry_passes": 1, "lut.network_passes": 1, "lut.table": str(work / "lut.csv"),
    }
    if args.executor == "ray":
        settings |= {"executor.kind": "ray", "executor.gpus_per_candidate": 1, "executor.cpus_per_candidate": 2}
    start = time.perf_counter()
    _netadapt("search", "--budget-ratio", "0.5", "--no-progress", "--out", str(run),
              *(part for key, value in settings.items() for part in ("--set", f"{key}={value}")))
    wall = time.perf_counter() - start
    history = RunDir(run).read_history()
    iterations = history[history["iteration"] > 0]
    print(f"\n4. search: {iterations['iteration'].nunique()} iterations in {wall:.0f} s wall ({args.executor} executor)")
    print("5. where the iterations' time went (s, summed over candidates):")
    totals = iterations[PHASES].sum()
    for phase in PHASES:
        print(f"   {phase:<14} {totals[phase]:>8.1f}  {100 * totals[phase] / max(totals.sum(), 1e-9):>5.1f}%")
    print(f"   the rest (base, table, start-up) {wall - totals.sum():.1f} s of the wall time")
    return 0


def _missing_requirements() -> str | None:
    if not torch.cuda.is_available():
        found = ("is built without CUDA" if torch.version.cuda is None
                 else f"(CUDA {torch.version.cuda}) sees no GPU: check the driver and CUDA_VISIBLE_DEVICES")
        return f"a CUDA GPU: torch {torch.__version__} {found}"
    try:
        import PIL  # noqa: F401
    except ImportError:
        return "Pillow to decode PNGs: pip install 'netadapt[images]'"
    try:
        _torchvision()
    except ImportError:
        return "torchvision for the weights to import: pip install torchvision"
    return None


def _torchvision():
    import torchvision

    return torchvision


def _netadapt(*arguments: str) -> None:
    """Run the netadapt CLI as a user would; a failure ends the smoke test with its exit status."""
    completed = subprocess.run([sys.executable, "-m", "netadapt.cli.main", *arguments])
    if completed.returncode != 0:
        raise SystemExit(f"netadapt {arguments[0]} failed with exit status {completed.returncode}")


if __name__ == "__main__":
    sys.exit(main())
