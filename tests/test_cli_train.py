"""`convirt pretrain` and `convirt embed` on a small prepared cache: flags and a config
file, the settings written, resume, checkpoints, features that match the encoder, and
one-line errors."""

import json
import os

import numpy as np
import pytest

import convirt
from convirt import cli
from convirt.data import PreparedDataset

SMALL = [
    "--image-model",
    "resnet18",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--proj-dim",
    "16",
    "--max-length",
    "24",
    "--no-progress",
    "--threads",
    "2",
]


def run(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    assert (
        cli.main(["synthetic", str(root / "s"), "--n", "40", "--size", "48", "--seed", "5"])
        == 0
    )
    assert (
        cli.main(
            [
                "prepare",
                "--csv",
                str(root / "s" / "reports.csv"),
                "--image-column",
                "image",
                "--report-column",
                "report",
                "--size",
                "48",
                str(root / "cache"),
                "--no-progress",
            ]
        )
        == 0
    )
    return str(root / "cache")


def test_pretrain_writes_settings_checkpoints_and_curve_then_resumes(
    cache, tmp_path, capsys
):
    out = str(tmp_path / "run")
    code, text, _ = run(
        ["pretrain", cache, out, "--epochs", "1", "--val-fraction", "0.2", *SMALL], capsys
    )
    assert code == 0, text
    assert "32 training and 8 validation pairs" in text
    with open(os.path.join(out, "settings.json")) as f:
        settings = json.load(f)
    assert settings["image_model"] == "resnet18" and settings["image_size"] == 32
    assert settings["temperature"] == 0.1 and settings["image_to_text_weight"] == 0.75
    assert os.path.getsize(os.path.join(out, "loss_curve.png")) > 1000
    checkpoint = os.path.join(out, "checkpoint")
    assert os.path.exists(os.path.join(checkpoint, "LAST"))

    # resume: one more epoch continues the step count from the checkpoint
    with open(os.path.join(out, "settings.json")) as f:
        settings = json.load(f)
    settings["epochs"] = 2
    with open(os.path.join(out, "settings.json"), "w") as f:
        json.dump(settings, f)
    code, text, _ = run(["pretrain", "--resume", out, "--no-progress"], capsys)
    assert code == 0, text
    assert "resuming at step 4, epoch 1" in text
    assert "done: 8 steps" in text


def test_pretrain_config_file_and_unknown_settings(cache, tmp_path, capsys):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"epochs": 1, "lr": 3e-4, "method": "simclr"}))
    out = str(tmp_path / "run")
    code, text, _ = run(["pretrain", cache, out, "--config", str(config), *SMALL], capsys)
    assert code == 0, text
    with open(os.path.join(out, "settings.json")) as f:
        settings = json.load(f)
    assert settings["lr"] == 3e-4 and settings["method"] == "simclr"

    config.write_text(json.dumps({"learning_rate": 1e-3}))
    code, _, err = run(
        ["pretrain", cache, str(tmp_path / "x"), "--config", str(config)], capsys
    )
    assert code == 1 and "unknown settings ['learning_rate']" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv, match",
    [
        (["pretrain"], "give CACHE and OUT_DIR"),
        (["pretrain", "/nonexistent/cache", "out"], "/nonexistent/cache"),
        (["pretrain", "--resume", "/nonexistent/run"], "not a pretrain run folder"),
        (
            ["embed", "/nonexistent/enc.safetensors", "/nonexistent", "f.npy"],
            "/nonexistent",
        ),
    ],
)
def test_errors_are_one_line(argv, match, capsys):
    code, _, err = run(argv, capsys)
    assert code == 1 and match in err and len(err.strip().splitlines()) == 1


def test_embed_a_cache_and_a_folder_match_the_encoder(cache, tmp_path, capsys):
    encoder = convirt.Encoder.resnet18(proj_dim=16, seed=4)
    path = str(tmp_path / "image.safetensors")
    encoder.save(path)
    images = PreparedDataset(cache).images

    out = str(tmp_path / "features.npy")
    code, text, _ = run(["embed", path, cache, out, "--no-progress"], capsys)
    assert code == 0 and "wrote 40 x 512 float32 features" in text
    np.testing.assert_allclose(
        np.load(out), encoder.encode(images[:]), rtol=1e-4, atol=1e-5
    )

    out = str(tmp_path / "embeddings.npy")
    code, text, _ = run(["embed", path, cache, out, "--projected", "--no-progress"], capsys)
    assert code == 0 and "wrote 40 x 16" in text
    np.testing.assert_allclose(np.load(out), encoder.embed(images[:]), rtol=1e-4, atol=1e-5)

    folder = os.path.join(os.path.dirname(cache), "s", "images")
    out = str(tmp_path / "folder.npy")
    code, text, _ = run(["embed", path, folder, out, "--no-progress"], capsys)
    assert code == 0 and "wrote 40 x 512" in text
    files = (tmp_path / "folder.files.txt").read_text().split()
    assert len(files) == 40 and files[0].endswith("000000.png")


def test_embed_refuses_a_text_encoder(cache, tmp_path, capsys, tiny_towers):
    _, text = tiny_towers
    path = str(tmp_path / "text.safetensors")
    text.save(path)
    code, _, err = run(["embed", path, cache, str(tmp_path / "f.npy")], capsys)
    assert code == 1 and "needs an image one" in err


def test_embed_with_the_best_checkpoint_of_a_run(cache, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run(["pretrain", cache, out, "--epochs", "1", *SMALL], capsys)[0] == 0
    code, text, _ = run(
        ["embed", "--run", out, cache, str(tmp_path / "f.npy"), "--no-progress"], capsys
    )
    assert code == 0 and "wrote 40 x 512" in text
    code, _, err = run(
        ["embed", "--run", str(tmp_path), cache, str(tmp_path / "g.npy")], capsys
    )
    assert code == 1 and "has no checkpoint" in err


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory):
    """A finished 1-epoch run at 32 px on the 48 px cache (4 steps; BEST and LAST)."""
    out = str(tmp_path_factory.mktemp("trained") / "run")
    argv = ["pretrain", cache, out, "--epochs", "1", "--val-fraction", "0.2", *SMALL]
    assert cli.main(argv) == 0
    return out


def copy_of(run_dir, tmp_path):
    import shutil

    return shutil.copytree(run_dir, str(tmp_path / "run"))


def test_embed_run_sees_the_images_as_the_run_did(cache, trained, tmp_path, capsys):
    # convirt embed --run encoded at the cache's 48 px (a folder at 256 px), not at the
    # 32 px the run was trained at: the two feature sets correlated 0.52.
    from convirt.checkpoint import CheckpointDir

    best = CheckpointDir(os.path.join(trained, "checkpoint")).pointer("BEST")
    encoder = convirt.Encoder.from_checkpoint(
        os.path.join(best, "image_encoder.safetensors")
    )
    images = PreparedDataset(cache).images[:]
    assert images.shape[1:] == (48, 48)
    view = convirt.eval_augment(32)  # the run's view: 32 px, no normalisation of its own
    expected = encoder.encode(view(images, out=np.empty((40, 32, 32), np.float32)))
    out = str(tmp_path / "f.npy")
    code, text, err = run(["embed", "--run", trained, cache, out, "--no-progress"], capsys)
    assert code == 0 and "wrote 40 x 512" in text and "warning" not in err
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-4, atol=1e-5)
    # the run folder given as ENCODER is the same
    out = str(tmp_path / "g.npy")
    assert run(["embed", trained, cache, out, "--no-progress"], capsys)[0] == 0
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-4, atol=1e-5)

    # a folder of images: decoded at the run's 32 px, not 256
    from convirt.images import decode_image

    folder = os.path.join(os.path.dirname(cache), "s", "images")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    decoded = np.stack([decode_image(f, 32) for f in files])
    out = str(tmp_path / "folder.npy")
    code, text, _ = run(["embed", "--run", trained, folder, out, "--no-progress"], capsys)
    assert code == 0 and "wrote 40 x 512" in text
    np.testing.assert_allclose(
        np.load(out),
        encoder.encode(view(decoded, out=np.empty((40, 32, 32), np.float32))),
        rtol=1e-4,
        atol=1e-5,
    )


def test_embed_run_warns_when_the_image_size_differs(cache, trained, tmp_path, capsys):
    out = str(tmp_path / "f.npy")
    argv = ["embed", "--run", trained, cache, out, "--image-size", "48", "--no-progress"]
    code, text, err = run(argv, capsys)
    assert code == 0 and "wrote 40 x 512" in text
    assert "warning: --image-size 48 differs from the 32 px the run was trained at" in err
    argv = ["embed", "--run", trained, cache, out, "--which", "LAST", "--image-size", "32"]
    code, _, err = run([*argv, "--no-progress"], capsys)
    assert code == 0 and "warning" not in err


def test_pretrain_resume_extends_a_finished_run(trained, tmp_path, capsys):
    # --resume RUN --epochs 2 ignored --epochs: the finished run could not be extended.
    out = copy_of(trained, tmp_path)
    argv = ["pretrain", "--resume", out, "--epochs", "2", "--no-progress"]
    argv += ["--patience", "2", "--early-stopping", "3", "--checkpoint-every", "100"]
    argv += ["--image-size", "32", "--threads", "2"]  # the run's own size: accepted
    code, text, err = run(argv, capsys)
    assert code == 0, err
    assert "resuming at step 4, epoch 1" in text and "done: 8 steps" in text
    with open(os.path.join(out, "settings.json")) as f:
        settings = json.load(f)
    assert settings["epochs"] == 2 and settings["patience"] == 2
    assert settings["early_stopping"] == 3 and settings["checkpoint_every"] == 100
    with open(os.path.join(convirt.load_run(out, "last").checkpoint, "trainer.json")) as f:
        state = json.load(f)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    config = state["config"]
    assert config["plateau_patience"] == 2 and state["scheduler"]["patience"] == 2
    assert config["early_stopping_patience"] == 3 and config["checkpoint_every"] == 100

    code, _, err = run(["pretrain", "--resume", out, "--epochs", "1"], capsys)
    assert code == 1 and "--epochs 1 counts the epochs in all" in err
    assert "has trained 2" in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--image-size", "64"],
            "--image-size cannot change on --resume: the run was trained with 32",
        ),
        (
            ["--image-model", "resnet50"],
            "--image-model cannot change on --resume: the run was trained with resnet18",
        ),
        (["--lr", "0.001"], "--lr cannot change on --resume: the run was trained with"),
        (["--sync-batchnorm"], "the run was trained without it"),
        (["--text-model", "/x"], "--text-model cannot change on --resume"),
    ],
)
def test_pretrain_resume_refuses_flags_that_change_the_run(trained, flags, message, capsys):
    code, _, err = run(["pretrain", "--resume", trained, *flags], capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert "--epochs" in err  # what may change


def test_pretrain_resume_refuses_config_settings_and_another_out_dir(
    trained, tmp_path, capsys
):
    config = tmp_path / "more.json"
    config.write_text(json.dumps({"epochs": 3, "batch_size": 16}))
    code, _, err = run(["pretrain", "--resume", trained, "--config", str(config)], capsys)
    assert code == 1
    assert f"'batch_size' of {config} cannot change on --resume" in err
    assert "trained with 8" in err
    code, _, err = run(["pretrain", "x", str(tmp_path / "y"), "--resume", trained], capsys)
    assert code == 1 and "OUT_DIR" in err and "cannot be given with --resume" in err
