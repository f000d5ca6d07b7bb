"""A trained run in one line: Encoder.from_checkpoint, Trainer.resume and
convirt.load_run take a run folder, a checkpoint directory, one save's folder (or, for
the encoder, its file), with which='best' | 'last' in any case, and say what they
looked for when there is nothing; Trainer.resume changes only what it may."""

import json
import os

import numpy as np
import pytest
import tiny

import convirt
from convirt import Trainer
from convirt.checkpoint import CheckpointDir, find_checkpoint
from convirt.errors import CheckpointError

SETTINGS = {"image_model": "resnet18", "image_size": 32, "epochs": 1}


@pytest.fixture
def run(tmp_path):
    """(run folder, trainer): a folder laid out as `convirt pretrain` lays it out
    (settings.json, checkpoint/), whose BEST (step 0) and LAST (step 1) differ."""
    images, reports = tiny.pairs(8, 32)
    image, text = tiny.towers(str(tmp_path / "vocab"))
    root = tmp_path / "run"
    root.mkdir()
    (root / "settings.json").write_text(json.dumps(SETTINGS))
    trainer = Trainer(
        image, text, image_size=32, progress=False, checkpoint_dir=root / "checkpoint"
    )
    trainer.save_checkpoint(best=True)
    trainer.step(images[:4], reports[:4])
    trainer.save_checkpoint()
    return root, trainer


def saved(root, which, kind="image"):
    """The encoder file of the `which` checkpoint, read the way that always worked."""
    directory = CheckpointDir(root / "checkpoint").pointer(which)
    return convirt.Encoder.from_checkpoint(
        os.path.join(directory, f"{kind}_encoder.safetensors")
    )


def same(a, b):
    np.testing.assert_array_equal(a.flat_parameters, b.flat_parameters)
    np.testing.assert_array_equal(a.flat_buffers, b.flat_buffers)


# ---- Encoder.from_checkpoint ------------------------------------------------------------


@pytest.mark.parametrize(
    "where, which, expected",
    [
        ("run", "best", "BEST"),
        ("run", "LAST", "LAST"),
        ("checkpoint", "Best", "BEST"),
        ("checkpoint", "last", "LAST"),
        ("save", "last", "BEST"),  # one save's folder: `which` is not used
    ],
)
def test_from_checkpoint_reads_a_run_a_checkpoint_dir_or_one_save(
    run, where, which, expected
):
    # Encoder.from_checkpoint("run") said the file was "truncated or corrupt?".
    root, _ = run
    path = {
        "run": root,
        "checkpoint": root / "checkpoint",
        "save": CheckpointDir(root / "checkpoint").pointer("BEST"),
    }[where]
    same(convirt.Encoder.from_checkpoint(path, which=which), saved(root, expected))
    text = convirt.Encoder.from_checkpoint(path, which=which, kind="text")
    assert text.kind == "text"
    same(text, saved(root, expected, "text"))


def test_the_last_and_best_checkpoints_differ(run):
    root, _ = run
    assert not np.array_equal(
        saved(root, "BEST").flat_parameters, saved(root, "LAST").flat_parameters
    )


def test_from_checkpoint_defaults_to_best_and_a_file_still_works(run):
    root, _ = run
    same(convirt.Encoder.from_checkpoint(root), saved(root, "BEST"))
    file = os.path.join(
        CheckpointDir(root / "checkpoint").pointer("LAST"), "image_encoder.safetensors"
    )
    same(convirt.Encoder.from_checkpoint(file), saved(root, "LAST"))
    with pytest.raises(CheckpointError, match="of kind 'image'; expected 'text'"):
        convirt.Encoder.from_checkpoint(file, kind="text")


def test_best_is_last_when_the_run_kept_no_best(tmp_path):
    images, reports = tiny.pairs(8, 32)
    image, text = tiny.towers(str(tmp_path / "vocab"))
    trainer = Trainer(
        image, text, image_size=32, progress=False, checkpoint_dir=tmp_path / "ckpt"
    )
    trainer.fit((images, reports), epochs=1, batch_size=4)  # no validation: no BEST
    assert CheckpointDir(tmp_path / "ckpt").pointer("BEST") is None
    same(convirt.Encoder.from_checkpoint(tmp_path / "ckpt"), trainer.image_encoder)


@pytest.mark.parametrize("which", ["newest", "", None, 1])
def test_which_must_be_best_or_last(run, which):
    root, _ = run
    with pytest.raises(ValueError, match="which must be 'best' or 'last'"):
        convirt.Encoder.from_checkpoint(root, which=which)


def test_a_folder_without_a_checkpoint_says_what_was_looked_for(tmp_path):
    (tmp_path / "empty" / "checkpoint").mkdir(parents=True)
    empty = tmp_path / "empty"
    with pytest.raises(CheckpointError, match="has no checkpoint: looked for") as error:
        convirt.Encoder.from_checkpoint(empty)
    message = str(error.value)
    for looked_for in ("checkpoint/BEST", "checkpoint/LAST", "image_encoder.safetensors"):
        assert os.path.join(str(empty), looked_for) in message
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        Trainer.resume(empty, progress=False)
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        convirt.load_run(empty)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        convirt.Encoder.from_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no checkpoint directory or run folder at"):
        Trainer.resume(tmp_path / "missing", progress=False)


def test_a_save_without_the_tower_asked_for_names_the_file(tmp_path):
    save = tmp_path / "step-00000001"
    save.mkdir()
    convirt.Encoder.resnet18(proj_dim=16).save(save / "image_encoder.safetensors")
    assert find_checkpoint(save) == (str(tmp_path), str(save))
    with pytest.raises(CheckpointError, match="has no text_encoder.safetensors"):
        convirt.Encoder.from_checkpoint(save, kind="text")


# ---- Trainer.resume ---------------------------------------------------------------------


def test_resume_takes_a_run_folder_and_saves_into_its_checkpoint_dir(run):
    # Trainer.resume("run") said there was no checkpoint.
    root, trainer = run
    resumed = Trainer.resume(root, progress=False)
    assert resumed.step_count == 1
    same(resumed.image_encoder, trainer.image_encoder)
    assert resumed.checkpoints.path == str(root / "checkpoint")
    assert Trainer.resume(root, which="BEST", progress=False).step_count == 0
    best = CheckpointDir(root / "checkpoint").pointer("BEST")
    assert Trainer.resume(best, progress=False).step_count == 0
    saved_to = resumed.save_checkpoint()
    assert os.path.dirname(saved_to) == str(root / "checkpoint")


def test_resume_changes_when_to_stop_save_and_lower_the_rate(run):
    root, _ = run
    resumed = Trainer.resume(
        root,
        progress=False,
        plateau_patience=1,
        early_stopping_patience=2,
        checkpoint_every=3,
    )
    assert resumed.config.plateau_patience == 1 and resumed.scheduler.patience == 1
    assert resumed.early_stopping_patience == 2 and resumed.checkpoint_every == 3
    with open(os.path.join(resumed.save_checkpoint(), "trainer.json")) as f:
        config = json.load(f)["config"]
    assert config["early_stopping_patience"] == 2 and config["checkpoint_every"] == 3
    assert Trainer.resume(root, progress=False).checkpoint_every == 3  # kept


def test_resume_refuses_to_change_anything_else(run):
    root, _ = run
    with pytest.raises(TypeError, match=r"may change .* only.*\['image_size', 'lr'\]"):
        Trainer.resume(root, progress=False, lr=1.0, image_size=64)
    with pytest.raises(ValueError, match="early_stopping_patience must be"):
        Trainer.resume(root, progress=False, early_stopping_patience=-1)


# ---- convirt.load_run -------------------------------------------------------------------


def test_load_run_gives_the_encoders_the_config_and_the_settings(run):
    root, _ = run
    loaded = convirt.load_run(root)
    image, text, config, settings, checkpoint = loaded
    same(image, saved(root, "BEST"))
    same(text, saved(root, "BEST", "text"))
    assert config.image_size == 32 and loaded.image_size == 32
    assert settings == SETTINGS
    assert checkpoint == CheckpointDir(root / "checkpoint").pointer("BEST")
    view = loaded.eval_view()
    assert view.size == 32 and view.normalization == loaded.normalization
    assert loaded.eval_view(48).size == 48

    last = convirt.load_run(root, "LAST", load_text=False)
    same(last.image_encoder, saved(root, "LAST"))
    assert last.text_encoder is None
    assert convirt.load_run(root / "checkpoint").settings == SETTINGS  # the run's
    os.remove(root / "settings.json")
    assert convirt.load_run(root).settings == {}


def test_load_run_refuses_a_settings_file_that_is_not_an_object(run):
    root, _ = run
    (root / "settings.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"settings\.json holds a JSON list"):
        convirt.load_run(root)
