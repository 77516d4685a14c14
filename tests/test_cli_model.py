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


def _netadapt(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netadapt.cli.main", *arguments], capture_output=True, text=True,
                          timeout=300)


def test_absurd_specs_are_refused_by_show_and_export_naming_the_field(tmp_path, tiny_spec):
    # Once: `model show` printed them and `model export` died allocating gigabytes.
    for field, value, message in (("expanded: 32", "expanded: 1000000000", "block 1: expanded must be <= 16384"),
                                  ("kernel: 5", "kernel: 1000001", "block 2: kernel must be <= 15")):
        path = tmp_path / "absurd.yaml"
        path.write_text(tiny_spec.to_yaml().replace(field, value))
        for command in (["show", "--input", "32"], ["export", "--out", str(tmp_path / "m.onnx"), "--input", "1x1x32x32"]):
            done = _netadapt("model", *command, "--spec", str(path))
            assert done.returncode == 2 and f"{path}: {message}" in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_absurd_presets_and_inputs_are_refused(tmp_path, capsys):
    assert main(["model", "show", "--preset", "large", "--width", "40"]) == 2
    err = capsys.readouterr().err
    assert "--preset large --width 40" in err and "must be <= 16384 channels" in err
    assert main(["model", "show", "--in-channels", "0"]) == 2
    assert "in_channels must be >= 1" in capsys.readouterr().err
    assert main(["model", "export", "--out", str(tmp_path / "x.onnx"), "--input", "1x3x100000x100000"]) == 2
    assert "the height must be <= 4096, got 100000" in capsys.readouterr().err
    # Every size within its bound, but together far past memory: refused before the export allocates it.
    assert main(["model", "export", "--preset", "small", "--out", str(tmp_path / "x.onnx"),
                 "--input", "1024x3x4096x4096"]) == 2
    err = capsys.readouterr().err
    assert "at input 1024x3x4096x4096 needs about" in err and "GiB to export" in err and "smaller input" in err
    assert not (tmp_path / "x.onnx").exists()
    assert main(["model", "show", "--input", "1000000000"]) == 2
    assert r"--input must be a size in pixels in [1, 4096]" in capsys.readouterr().err
    assert main(["model", "show", "--width", "nan"]) == 2
    assert "--width must be a finite number > 0, got nan" in capsys.readouterr().err


def test_spec_files_a_person_should_not_have_written_are_refused_briefly(tmp_path, tiny_spec):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
                    + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
                    + tiny_spec.to_yaml().replace("name: tiny", "name: *a9"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    for path, message in ((bomb, "its aliases expand to more than"), (binary, "not UTF-8 text")):
        done = _netadapt("model", "show", "--spec", str(path))
        assert done.returncode == 2 and f"{path}: {message}" in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr) < 500, "the value is never echoed whole"


def test_outputs_follow_the_umask(tmp_path):
    # Once every output was 0600 (mkstemp's mode), whatever the umask: now as any other new file.
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        out = tmp_path / f"m-{umask:o}.onnx"
        done = subprocess.run([sys.executable, "-m", "netadapt.cli.main", "model", "export", "--preset", "small",
                               "--width", "0.35", "--input", "1x1x32x32", "--out", str(out)],
                              capture_output=True, text=True, timeout=300, umask=umask)
        assert done.returncode == 0, done.stderr
        assert out.stat().st_mode & 0o777 == mode
