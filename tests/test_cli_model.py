import shutil
import subprocess
import sys
from pathlib import Path

import onnx

from netadapt.cli.main import main


def test_model_show_prints_the_table_with_totals(capsys):
    assert main(["model", "show", "--preset", "large"]) == 0
    out = capsys.readouterr().out
    assert "5,483,032" in out and "216.6M multiply-adds" in out
    assert out.count("block ") == 15


def test_model_show_width_and_input(capsys):
    assert main(["model", "show", "--preset", "small", "--width", "0.5", "--input", "64"]) == 0
    out = capsys.readouterr().out
    assert "small-0.5 at 64x64" in out and out.count("block ") == 11


def test_model_show_a_spec_file(tmp_path, capsys, tiny_spec):
    path = tmp_path / "spec.yaml"
    tiny_spec.save(path)
    assert main(["model", "show", "--spec", str(path), "--input", "32"]) == 0
    assert "tiny at 32x32" in capsys.readouterr().out


def test_model_export(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["model", "export", "--preset", "small", "--width", "0.35", "--out", str(out), "--input", "1x1x32x32"]) == 0
    proto = onnx.load(out)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 32, 32]


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["model", "export", "--out", str(tmp_path / "x.onnx"), "--input", "1x3x224"]) == 2
    assert "--input '1x3x224': expected NxCxHxW" in capsys.readouterr().err
    bad_spec = tmp_path / "spec.yaml"
    bad_spec.write_text("stem: 8\n")
    assert main(["model", "show", "--spec", str(bad_spec)]) == 2
    assert f"{bad_spec}: spec is missing field(s)" in capsys.readouterr().err


def test_console_script_is_installed():
    executable = shutil.which("netadapt") or str(Path(sys.executable).with_name("netadapt"))
    result = subprocess.run([executable, "model", "show", "--preset", "small"], capture_output=True, text=True, check=True)
    assert "2,542,856" in result.stdout
