"""The convirt command line: --help everywhere, `convirt synthetic` and `convirt
prepare` from a CSV, a folder and the MIMIC-CXR layout, resume, and clear errors."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from convirt import cli
from convirt.data import PreparedDataset, decode_image


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_on_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "prepare" in out and "synthetic" in out
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(commands) >= {"prepare", "synthetic"}
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: convirt {name}" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    code, _, err = run([], capsys)
    assert code == 2 and "usage: convirt" in err


@pytest.mark.parametrize("module", ["convirt.cli", "convirt"])
def test_console_script_module_runs(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert result.returncode == 0 and result.stdout.startswith("convirt ")


def test_synthetic_then_prepare_from_csv(tmp_path, capsys):
    code, out, _ = run(
        [
            "synthetic",
            str(tmp_path / "s"),
            "--n",
            "10",
            "--size",
            "32",
            "--seed",
            "3",
            "--report-files",
            "--contact-sheet",
            str(tmp_path / "sheet.png"),
        ],
        capsys,
    )
    assert code == 0 and "wrote 10 synthetic chest X-rays" in out
    with open(tmp_path / "s" / "reports.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["image", "report", "Atelectasis"] and len(rows) == 11
    assert rows[1][0] == "images/000000.png" and rows[1][1].startswith("FINDINGS: ")
    assert decode_image(tmp_path / "s" / "images" / "000009.png").shape == (32, 32)
    assert (tmp_path / "s" / "images" / "000000.txt").read_text().strip() == rows[1][1]
    assert Image.open(tmp_path / "sheet.png").size[0] > 100

    code, out, err = run(
        [
            "prepare",
            "--csv",
            str(tmp_path / "s" / "reports.csv"),
            "--label-columns",
            "Cardiomegaly,No Finding",
            "--size",
            "16",
            "--no-progress",
            str(tmp_path / "cache"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "10 of 10 pairs prepared" in out
    cache = PreparedDataset(tmp_path / "cache")
    assert cache.images.shape == (10, 16, 16)
    assert cache.label_names == ["Cardiomegaly", "No Finding"]
    expected = np.array([[float(r[3]), float(r[9])] for r in rows[1:]])
    np.testing.assert_array_equal(cache.labels, expected)

    code, out, _ = run(
        [
            "prepare",
            "--csv",
            str(tmp_path / "s" / "reports.csv"),
            "--size",
            "16",
            "--no-progress",
            str(tmp_path / "cache2"),
        ],
        capsys,
    )
    code, out, _ = run(
        [
            "prepare",
            "--csv",
            str(tmp_path / "s" / "reports.csv"),
            "--size",
            "16",
            "--no-progress",
            str(tmp_path / "cache2"),
        ],
        capsys,
    )
    assert code == 0 and "10 kept from before, 0 new" in out


def test_prepare_from_folder(tmp_path, capsys):
    run(
        ["synthetic", str(tmp_path / "s"), "--n", "4", "--size", "24", "--report-files"],
        capsys,
    )
    code, out, err = run(
        [
            "prepare",
            "--folder",
            str(tmp_path / "s" / "images"),
            "--size",
            "12",
            "--no-progress",
            str(tmp_path / "cache"),
        ],
        capsys,
    )
    assert code == 0, err
    assert len(PreparedDataset(tmp_path / "cache")) == 4
    os.remove(tmp_path / "s" / "images" / "000002.txt")
    code, _, err = run(
        ["prepare", "--folder", str(tmp_path / "s" / "images"), str(tmp_path / "c2")],
        capsys,
    )
    # The command names its flag, not the Python keyword (missing_reports='skip').
    assert code == 1 and "1 of 4 images" in err and "000002.png" in err
    assert "pass --skip-missing-reports to leave them out" in err
    assert "missing_reports=" not in err and len(err.strip().splitlines()) == 1
    code, out, err = run(
        [
            "prepare",
            "--folder",
            str(tmp_path / "s" / "images"),
            "--skip-missing-reports",
            "--size",
            "12",
            "--no-progress",
            str(tmp_path / "c3"),
        ],
        capsys,
    )
    assert code == 0 and "3 of 3 pairs prepared" in out
    assert "warning: 1 of 4 images" in err and "left out" in err


def test_prepare_from_mimic(tmp_path, capsys, mimic_tree):
    root = mimic_tree
    code, out, err = run(
        [
            "prepare",
            "--mimic",
            root,
            "--size",
            "16",
            "--no-progress",
            str(tmp_path / "train"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "3 of 3 pairs prepared" in out
    code, out, err = run(
        [
            "prepare",
            "--mimic",
            root,
            "--split",
            "validate",
            "--size",
            "16",
            "--no-progress",
            str(tmp_path / "val"),
        ],
        capsys,
    )
    # The one validation study has no report: skipped, counted, and since nothing was
    # prepared, an error.
    assert code == 1 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("convirt prepare: error: nothing was prepared: 0 of 1 pairs")
    assert "1 empty reports" in last and "index.json" in last
    code, out, _ = run(
        [
            "prepare",
            "--mimic",
            root,
            "--split",
            "all",
            "--views",
            "all",
            "--size",
            "16",
            "--no-progress",
            str(tmp_path / "all"),
        ],
        capsys,
    )
    assert code == 0 and "5 of 7 pairs prepared" in out


def test_prepare_reports_skipped_images(tmp_path, capsys):
    run(["synthetic", str(tmp_path / "s"), "--n", "5", "--size", "24"], capsys)
    os.remove(tmp_path / "s" / "images" / "000001.png")
    (tmp_path / "s" / "images" / "000003.png").write_bytes(b"garbage")
    code, out, err = run(
        [
            "prepare",
            "--csv",
            str(tmp_path / "s" / "reports.csv"),
            "--size",
            "12",
            str(tmp_path / "cache"),
        ],
        capsys,
    )
    assert code == 0
    assert "3 of 5 pairs prepared" in out and "1 missing, 1 corrupt" in out
    assert "000001.png" in err and "000003.png" in err  # reported as they happen


def test_prepare_that_prepares_nothing_fails(tmp_path, capsys):
    run(["synthetic", str(tmp_path / "s"), "--n", "3", "--size", "24"], capsys)
    for name in os.listdir(tmp_path / "s" / "images"):
        os.remove(tmp_path / "s" / "images" / name)
    code, out, err = run(
        ["prepare", "--csv", str(tmp_path / "s" / "reports.csv"), "--no-progress"]
        + [str(tmp_path / "cache")],
        capsys,
    )
    assert code == 1 and "pairs prepared" not in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("convirt prepare: error: nothing was prepared: 0 of 3 pairs")
    assert "3 missing" in last and "index.json" in last
    (tmp_path / "empty").mkdir()
    code, _, err = run(
        ["prepare", "--folder", str(tmp_path / "empty"), str(tmp_path / "c2")], capsys
    )
    assert code == 1 and "nothing was prepared: 0 of 0 pairs" in err


def test_prepare_errors_are_one_clear_line(tmp_path, capsys):
    path = tmp_path / "p.csv"
    path.write_text("path,text\na.png,hello\n")
    code, _, err = run(["prepare", "--csv", str(path), str(tmp_path / "c")], capsys)
    assert code == 1
    assert err.startswith("convirt prepare: error: image column 'image' not found")
    assert "columns found: 'path', 'text'" in err and "Traceback" not in err
    code, _, err = run(
        ["prepare", "--csv", str(tmp_path / "nope.csv"), str(tmp_path / "c")], capsys
    )
    assert code == 1 and "CSV file not found" in err
    with pytest.raises(ValueError, match="not found"):
        cli.main(["--traceback", "prepare", "--csv", str(path), str(tmp_path / "c")])


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "out"],  # no source
        ["prepare", "--csv", "a.csv", "--folder", "b", "out"],  # two sources
        ["prepare", "--csv", "a.csv", "--size", "0", "out"],
        ["prepare", "--mimic", "m", "--split", "dev", "out"],
        ["synthetic", "out", "--n", "-3"],
    ],
)
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_commands_list_is_extensible(capsys):
    def add_hello_command(subparsers):
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(run=lambda args: print(f"hello {args.name}") or 0)

    cli.COMMANDS.append(add_hello_command)
    try:
        code, out, _ = run(["hello", "--name", "convirt"], capsys)
    finally:
        cli.COMMANDS.remove(add_hello_command)
    assert code == 0 and out == "hello convirt\n"
