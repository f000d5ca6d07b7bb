"""What the commands say: `demo --help` as written (no doubled %), --quick described the
same way in the help and the README, paths printed without a doubled slash, every file
`embed` writes named, and the linear probe's progress bar."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import convirt
from convirt import cli
from convirt import evaluation as ev
from convirt.cli.demo import QUICK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line(text):
    return re.sub(r"\s+", " ", text)


def help_text(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["demo", "synthetic", "pretrain", "evaluate"])
def test_a_negative_seed_is_a_usage_error(command, capsys):
    # --seed -1 went through to NumPy: "expected non-negative integer", without a name.
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--seed", "-1"])
    assert stop.value.code == 2
    assert "--seed: expected an integer >= 0, got -1" in capsys.readouterr().err


def test_demo_help_shows_percent_signs_once(capsys):
    text = help_text("demo", capsys)
    assert "%%" not in text
    assert "1/10/100% of the labels" in one_line(text)


def test_every_help_is_free_of_doubled_percent_signs(capsys):
    for add_command in cli.COMMANDS:
        command = add_command.__name__.removeprefix("add_").removesuffix("_command")
        assert "%%" not in help_text(command.replace("_", "-"), capsys), command


def test_quick_is_described_the_same_in_the_help_and_the_readme(capsys):
    assert QUICK in one_line(help_text("demo", capsys))
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert QUICK in one_line(f.read())


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    argv = ["synthetic", str(root / "s"), "--n", "16", "--size", "32", "--seed", "1"]
    assert cli.main(argv) == 0
    prepare = ["prepare", "--csv", str(root / "s" / "reports.csv"), "--size", "32"]
    assert cli.main([*prepare, str(root / "cache"), "--no-progress"]) == 0
    return str(root / "cache")


def test_pretrain_prints_its_files_without_a_doubled_slash(cache, tmp_path, capsys):
    out = str(tmp_path / "run") + "/"
    small = ["--image-model", "resnet18", "--image-size", "32", "--batch-size", "8"]
    code = cli.main(
        ["pretrain", cache, out, "--method", "simclr", "--epochs", "1", *small]
        + ["--proj-dim", "8", "--val-fraction", "0", "--no-progress", "--threads", "2"]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "//" not in text
    curve = os.path.join(tmp_path, "run", "loss_curve.png")
    metrics = os.path.join(tmp_path, "run", "metrics.csv")
    assert f"loss curve {curve}; metrics {metrics}" in text
    assert os.path.exists(curve) and os.path.exists(metrics)


def test_embed_names_the_list_of_image_files_it_writes(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    encoder = tmp_path / "image_encoder.safetensors"
    convirt.Encoder.resnet18(proj_dim=8, proj_hidden=8).save(encoder)
    out = tmp_path / "feats.npy"
    code = cli.main(["embed", str(encoder), str(folder), str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    listed = tmp_path / "feats.files.txt"
    assert f"to {listed}" in text
    assert listed.read_text().split() == [str(folder / f"{i}.png") for i in range(3)]


def test_the_linear_probe_draws_a_bar_when_asked_and_not_under_pytest(capsys):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 4)), np.arange(40) % 2

    def probe(**kwargs):
        return ev.linear_probe(
            x[:20], y[:20], x[20:], y[20:], fractions=(0.5, 1.0), seeds=(0, 1), **kwargs
        )

    probe(progress=True, name="ConVIRT")
    err = capsys.readouterr().err
    assert "linear probe ConVIRT" in err and "4/4" in err
    probe()  # progress=None: stderr is not a terminal here, and no Jupyter kernel runs
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "setting, value, expected",
    [
        ("lr", "x", "must be a finite number, got 'x'"),
        ("epochs", 1.5, "must be a positive integer, got 1.5"),
        ("image_model", 18, "must be one of ['resnet18', 'resnet34', 'resnet50']"),
        ("early_stopping", "3", "must be a positive integer or null, got '3'"),
        ("temperature", 10**400, "must be a finite number, got 1000000"),  # Overflow
        ("seed", -1, "must be an integer >= 0, got -1"),
    ],
)
def test_pretrain_config_value_of_the_wrong_type_is_one_line(
    cache, tmp_path, capsys, setting, value, expected
):
    # {"lr": "x"} in --config went on to a TypeError traceback inside the Trainer.
    config = tmp_path / "run.json"
    config.write_text(json.dumps({setting: value}))
    argv = ["pretrain", cache, str(tmp_path / "run")]
    assert cli.main([*argv, "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{config}: setting {setting!r} {expected}" in err
    assert len(err.strip().splitlines()) == 1


def test_out_of_memory_is_one_line_naming_what_to_reduce(cache, tmp_path, capsys):
    # --proj-dim 10000000000 (an encoder of 5e12 parameters) was a MemoryError
    # traceback; the core refuses it before allocating.
    argv = ["pretrain", cache, str(tmp_path / "run"), "--method", "simclr"]
    argv += ["--image-model", "resnet18", "--proj-dim", "10000000000", "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("convirt pretrain: error: out of memory (")
    assert "reduce --image-size, --batch-size, --proj-dim or --max-length" in err
    assert len(err.strip().splitlines()) == 1
