"""`netadapt search`: shrink the base network to a latency budget."""

from __future__ import annotations

import argparse

from netadapt.cli.common import add_config_arguments
from netadapt.config import load_config
from netadapt.types import EXECUTOR_KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="run NetAdapt to a latency budget",
        description="Shrink the base network until its measured latency meets the budget. With no config, "
        "runs on the embedded Fashion-MNIST subset, training (and caching) the base network on first use.",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-ms", type=float, metavar="MS", help="latency budget in milliseconds")
    budget.add_argument("--budget-ratio", type=float, metavar="R", help="budget as a fraction of the base latency")
    add_config_arguments(parser)
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/search-<time>)")
    parser.add_argument("--seed", type=int, help="seed for every random choice (default: config seed, 0)")
    parser.add_argument("--resume", metavar="RUN", help="continue a killed run from its last completed iteration")
    parser.add_argument("--executor", choices=EXECUTOR_KINDS, help="where candidates are fine-tuned (executor.kind)")
    parser.add_argument("--ray-address", metavar="ADDR", help="a running Ray cluster (default: start a local one)")
    parser.add_argument("--target", metavar="DEVICE",
                        help="'local' or remote://HOST:PORT (target.device); with --resume, confirms the run's remote device")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines only)")
    parser.set_defaults(handler=search_command)


def search_command(args: argparse.Namespace) -> int:
    from netadapt.search import run_search  # heavy imports only when the command runs

    if args.resume:
        if args.config or args.overrides or args.budget_ms or args.budget_ratio or args.seed is not None or args.out \
                or args.executor:
            print("note: --resume uses the run's own config.yaml; other options than --target are ignored")
        result = run_search(resume=args.resume, progress=not args.no_progress, confirm_target=args.target)
    else:
        overrides = list(args.overrides)
        if args.budget_ms is not None:
            overrides += [f"search.budget_ms={args.budget_ms}", "search.budget_ratio=null"]
        if args.budget_ratio is not None:
            overrides += [f"search.budget_ratio={args.budget_ratio}", "search.budget_ms=null"]
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.executor:
            overrides.append(f"executor.kind={args.executor}")
        if args.ray_address:
            overrides.append(f"executor.ray_address={args.ray_address}")
        if args.target:
            overrides.append(f"target.device={args.target}")
        config = load_config(args.config, overrides)
        result = run_search(config, out=args.out, progress=not args.no_progress)
    print(
        f"{result.run_dir}: {result.iterations} iteration(s), {result.base_ms:.3f} ms -> {result.final_ms:.3f} ms "
        f"measured (budget {result.budget_ms:.3f} ms), holdout {result.final_holdout_acc:.2%}; {result.stop_reason}"
    )
    return 0
