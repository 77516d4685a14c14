"""`netadapt export RUN --out DIR` and `netadapt report RUN`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser("export", help="export a run's Pareto family (ONNX, spec, weights, family.csv)")
    export.add_argument("run", metavar="RUN", help="the search's run directory")
    export.add_argument("--out", required=True, metavar="DIR", help="family directory")
    export.add_argument("--long-finetune", type=int, default=0, metavar="STEPS",
                        help="fine-tune each member this many steps before export (default 0)")
    export.add_argument("--target", metavar="DEVICE",
                        help="confirm the run's remote device (needed when its config.yaml measures on remote://HOST:PORT)")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    export.set_defaults(handler=export_command)

    report = subparsers.add_parser("report", help="print a run's family and write pareto.png")
    report.add_argument("run", metavar="RUN", help="the search's run directory")
    report.add_argument("--plot", metavar="FILE", help="plot path (default: RUN/pareto.png)")
    report.set_defaults(handler=report_command)


def export_command(args: argparse.Namespace) -> int:
    from netadapt.errors import ConfigError
    from netadapt.family import export_family

    if args.long_finetune < 0:
        raise ConfigError(f"--long-finetune must be >= 0, got {args.long_finetune}")
    frame = export_family(args.run, args.out, args.long_finetune, progress=not args.no_progress,
                          confirm_target=args.target)
    print(f"{args.out}: {len(frame)} member(s), see family.csv")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from netadapt.report import PLOT_HINT, report

    text, plot = report(args.run, args.plot)
    print(text)
    print(f"\nwrote {plot}" if plot else f"\n{PLOT_HINT}")
    return 0
