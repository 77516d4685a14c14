"""`netadapt model show`, `netadapt model export` and `netadapt model import`."""

from __future__ import annotations

import argparse

from typing import TYPE_CHECKING

from netadapt.cli.common import MAX_SIDE, add_preset_arguments, parse_input_shape, spec_from_preset_arguments
from netadapt.errors import ConfigError
from netadapt.io import load_spec
from netadapt.types import PRESETS

if TYPE_CHECKING:
    from mobilenetv3 import NetSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="inspect or export a MobileNetV3")
    commands = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)

    show = commands.add_parser("show", help="print the block table with parameters and multiply-adds")
    add_preset_arguments(show)
    show.add_argument("--spec", metavar="FILE", help="a spec YAML file instead of a preset")
    show.add_argument("--input", type=int, default=224, metavar="SIZE", help="input side in pixels (default 224)")
    show.add_argument("--in-channels", type=int, default=3, help="image channels (default 3)")
    show.set_defaults(handler=show_command)

    export = commands.add_parser("export", help="export to ONNX (BN folded, eval mode)")
    add_preset_arguments(export)
    export.add_argument("--spec", metavar="FILE", help="a spec YAML file instead of a preset")
    export.add_argument("--out", required=True, metavar="FILE", help="output .onnx path")
    export.add_argument("--input", default="1x3x224x224", metavar="NxCxHxW", help="input shape")
    export.set_defaults(handler=export_command)

    imported = commands.add_parser(
        "import", help="convert a torchvision MobileNetV3 state dict into a netadapt checkpoint",
        description="Convert torch.save(model.state_dict(), FILE) of torchvision's mobilenet_v3_large/small "
                    "into a netadapt checkpoint; start a search from it with --set model.checkpoint=OUT.")
    imported.add_argument("file", metavar="FILE", help="the torchvision state dict (.pt/.pth)")
    imported.add_argument("--preset", choices=PRESETS, required=True, help="the torchvision model: large or small")
    imported.add_argument("--width", type=float, default=1.0, help="torchvision's width_mult (default 1.0)")
    imported.add_argument("--num-classes", type=int, metavar="N",
                          help="classes of the new network; a count other than the file's re-initialises "
                               "the classifier's last layer (default: the file's)")
    imported.add_argument("--seed", type=int, default=0, help="seeds a re-initialised classifier layer (default 0)")
    imported.add_argument("--out", required=True, metavar="FILE", help="the netadapt checkpoint to write (base.pt)")
    imported.set_defaults(handler=import_command)


def _spec(args: argparse.Namespace, in_channels: int) -> NetSpec:
    if args.spec:
        return load_spec(args.spec, "--spec")
    return spec_from_preset_arguments(args, in_channels)


def format_table(spec: NetSpec, input_size: int) -> str:
    """The block table of `netadapt model show`."""
    from mobilenetv3 import count

    header = f"{'unit':<10} {'in':>5} {'k':>2} {'exp':>5} {'out':>5} {'SE':>4} {'act':>4} {'s':>2} {'size':>5} {'params':>10} {'MAdds':>12}"
    lines = [f"{spec.name or 'spec'} at {input_size}x{input_size}, {spec.num_classes} classes", header, "-" * len(header)]
    rows = count(spec, input_size)
    for row in rows:
        if row.name.startswith("block"):
            block = spec.blocks[int(row.name.split()[1])]
            detail = (
                f"{block.kernel:>2} {block.expanded:>5} {row.out_channels:>5} "
                f"{(block.se_squeeze if block.se else '-'):>4} {('RE' if block.activation == 'relu' else 'HS'):>4} {block.stride:>2}"
            )
        else:
            detail = f"{'':>2} {'':>5} {row.out_channels:>5} {'':>4} {'':>4} {'':>2}"
        lines.append(f"{row.name:<10} {row.in_channels:>5} {detail} {row.input_size:>5} {row.params:>10,} {row.macs:>12,}")
    lines.append("-" * len(header))
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.macs for r in rows)
    lines.append(f"{'total':<10} {'':>52} {total_params:>10,} {total_macs:>12,}")
    lines.append(f"{total_params / 1e6:.3f}M parameters, {total_macs / 1e6:.1f}M multiply-adds")
    return "\n".join(lines)


def show_command(args: argparse.Namespace) -> int:
    if not 1 <= args.input <= MAX_SIDE:
        raise ConfigError(f"--input must be a size in pixels in [1, {MAX_SIDE}], got {args.input}")
    print(format_table(_spec(args, args.in_channels), args.input))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from mobilenetv3 import build
    from netadapt.onnx_export import export_onnx

    shape = parse_input_shape(args.input)
    spec = _spec(args, shape[1])
    if spec.in_channels != shape[1]:
        raise ConfigError(f"--input has {shape[1]} channels but the spec expects {spec.in_channels}")
    path = export_onnx(build(spec), args.out, shape)
    print(f"wrote {path} ({spec.name or 'spec'}, input {args.input})")
    return 0


def import_command(args: argparse.Namespace) -> int:
    from netadapt.checkpoint import import_torchvision, save_checkpoint

    model = import_torchvision(args.file, args.preset, width=args.width, num_classes=args.num_classes, seed=args.seed)
    path = save_checkpoint(args.out, model)
    spec = model.spec
    print(f"wrote {path}: {spec.name}, {model.num_params():,} parameters, {spec.in_channels} input channels, "
          f"{spec.num_classes} classes; search from it with --set model.checkpoint={path}")
    return 0
