"""One of each in the Trainer: one configuration (TrainerConfig drives construction, the
saved config, resume and the check of trainer.json), one batching path (fit iterates
convirt.loader.BatchLoader), one optimiser (the learnable temperature is the C Adam on
a one-element buffer), and the augmentation's policy defaults in one place."""

import dataclasses
import inspect
import json
import os
import pickle
import sys

import numpy as np
import pytest

import convirt
from convirt import augment as augment_module
from convirt.checkpoint import CheckpointDir
from convirt.errors import CheckpointError
from convirt.loader import BatchLoader
from convirt.trainer import Trainer, TrainerConfig
from convirt.trainer_config import check_state

sys.path.insert(0, os.path.dirname(__file__))
import tiny


def make(tmp_path, **kwargs):
    image, text = tiny.towers(str(tmp_path / "vocab"))
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("progress", False)
    return Trainer(image, text, **kwargs)


# ---- one configuration ----------------------------------------------------------------


def test_defaults_are_the_papers():
    config = TrainerConfig()
    assert (
        config.lr,
        config.weight_decay,
        config.schedule,
        config.plateau_factor,
        config.plateau_patience,
        config.image_size,
    ) == (1e-4, 1e-6, "plateau", 0.5, 5, 224)
    loss = convirt.ContrastiveLoss()
    assert config.loss_settings() == pytest.approx(
        {
            "temperature": loss.temperature,
            "image_to_text_weight": loss.image_to_text_weight,
            "learnable_temperature": loss.learnable_temperature,
            "max_logit_scale": loss.max_logit_scale,
        }
    )


def test_the_config_drives_the_constructor(tmp_path):
    trainer = make(tmp_path, lr=3e-4, betas=[0.8, 0.99], early_stopping_patience=2)
    assert isinstance(trainer.config, TrainerConfig)
    assert trainer.config.lr == 3e-4 and trainer.config.betas == (0.8, 0.99)
    assert trainer.optimizer.lr == 3e-4 and trainer.optimizer.betas == (0.8, 0.99)
    assert trainer.early_stopping_patience == 2 and trainer.image_size == 32
    assert trainer.config.augment == trainer.augment.config
    assert trainer.config["lr"] == 3e-4  # as when config was a dict
    with pytest.raises(KeyError):
        trainer.config["batch_size"]
    assert trainer.config.temperature == pytest.approx(trainer.loss.temperature)
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument\(s\) \['learning_rate'\]"
    ):
        make(tmp_path, learning_rate=1e-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        trainer.config.lr = 1.0


def test_the_saved_config_is_the_config_and_rebuilds_it(tmp_path):
    images, reports = tiny.pairs(8, 32, seed=1)
    trainer = make(
        tmp_path, checkpoint_dir=tmp_path / "ckpt", weight_decay=1e-5, checkpoint_every=3
    )
    trainer.fit((images, reports), epochs=1, batch_size=4)
    with open(
        os.path.join(CheckpointDir(tmp_path / "ckpt").pointer("LAST"), "trainer.json")
    ) as f:
        saved = json.load(f)["config"]
    assert saved == json.loads(
        json.dumps(
            {
                **trainer.config.to_json(),
                "batch_size": 4,
                "epochs": 1,
                "shuffle": True,
                "max_steps": None,
            }
        )
    )
    rebuilt = TrainerConfig.from_json(saved)  # fit()'s keys are not settings
    assert json.loads(json.dumps(rebuilt.to_json())) == {
        k: v for k, v in saved.items() if k not in trainer.fit_settings
    }
    resumed = Trainer.resume(tmp_path / "ckpt", progress=False)
    assert resumed.config == trainer.config
    assert resumed.fit_settings == trainer.fit_settings


def test_a_checkpoint_without_augment_still_loads(tmp_path):
    # Checkpoints written before the augmentation was saved lack config["augment"].
    images, reports = tiny.pairs(8, 32, seed=1)
    trainer = make(tmp_path, checkpoint_dir=tmp_path / "ckpt")
    trainer.fit((images, reports), epochs=1, batch_size=4)
    path = os.path.join(CheckpointDir(tmp_path / "ckpt").pointer("LAST"), "trainer.json")
    with open(path) as f:
        state = json.load(f)
    del state["config"]["augment"]
    with open(path, "w") as f:
        json.dump(state, f)
    resumed = Trainer.resume(tmp_path / "ckpt", progress=False)
    assert resumed.config.augment == convirt.paper_augment(32).config


def test_every_trainer_keyword_is_a_setting():
    signature = inspect.signature(Trainer)
    objects = {
        "image_encoder",
        "text_encoder",
        "loss",
        "augment",
        "checkpoint_dir",
        "callbacks",
        "metrics_csv",  # where the log goes, as callbacks: not how the run trains
        "progress",
        "prefetch",
        "distributed",  # the process group: a resumed run may have another
        "settings",
    }
    assert set(signature.parameters) == objects
    assert set(TrainerConfig.keywords()) | {
        "temperature",
        "image_to_text_weight",
        "learnable_temperature",
        "max_logit_scale",
        "augment",
    } == {f.name for f in dataclasses.fields(TrainerConfig)}


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    """The trainer.json state of a tiny trainer after one epoch (steps and history)."""
    tmp_path = tmp_path_factory.mktemp("state")
    trainer = make(tmp_path)
    trainer.fit(tiny.pairs(8, 32, seed=1), epochs=1, batch_size=4, val=tiny.pairs(4, 32))
    return json.loads(json.dumps(trainer.state()))


@pytest.mark.parametrize(
    "where, field, value, expected",
    [
        # 2**63 - 1 steps overflowed the core's int64 count: NaN weights two steps on
        ("state", "step", 2**63 - 1, r"in \[0, 2\*\*53\)"),
        ("optimizer", "step", 2**63 - 1, r"in \[0, 2\*\*53\)"),
        ("optimizer", "lr", 1e300, r"in \[0, 1\]"),
        ("config", "lr", 1e300, r"in \(0, 1\]"),
        ("config", "lr", 0.0, r"in \(0, 1\]"),
        ("state", "logit_scale", 1e308, r"in \[-80, 80\]"),  # exp() is Inf
        ("state", "logit_scale", -1e3, r"in \[-80, 80\]"),  # temperature Inf
    ],
)
def test_resumed_counts_lr_and_logit_scale_are_bounded(
    saved_state, where, field, value, expected
):
    state = json.loads(json.dumps(saved_state))
    (state if where == "state" else state[where])[field] = value
    with pytest.raises(
        CheckpointError, match=rf"trainer\.json: field '{field}'.* {expected}"
    ):
        check_state(state, "trainer.json")


@pytest.mark.parametrize(
    "records, k, change, match",
    [
        ("steps", 0, "not a record", r"steps\[0\] must be an object"),
        ("steps", 1, {"step": "2"}, r"'step' of steps\[1\] must be an integer"),
        ("steps", 0, {"loss": "low"}, r"'loss' of steps\[0\] must be a number"),
        (
            "steps",
            0,
            {"batch_size": 1},
            r"'batch_size' of steps\[0\] must be an integer >= 2",
        ),
        ("history", 0, {"val_loss": None}, r"'val_loss' of history\[0\] must be a number"),
    ],
)
def test_resumed_steps_and_history_that_plot_reads_are_checked(
    saved_state, records, k, change, match
):
    # plot() after resuming a trainer.json whose steps held {"loss": "low"} raised a
    # TypeError inside matplotlib's caller.
    state = json.loads(json.dumps(saved_state))
    if isinstance(change, dict):
        state[records][k].update(change)
    else:
        state[records][k] = change
    with pytest.raises(CheckpointError, match=rf"trainer\.json: .*{match}"):
        check_state(state, "trainer.json")


def test_a_saved_state_passes_its_check(saved_state):
    assert saved_state["steps"] and "val_loss" in saved_state["history"][0]
    check_state(saved_state, "trainer.json")


# ---- one batching path ----------------------------------------------------------------


class _Recording(Trainer):
    def step(self, images, reports=None, **kwargs):
        self.seen.append(images.copy())
        return super().step(images, reports, **kwargs)


@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_iterates_the_batch_loader(tmp_path, shuffle):
    image, text = tiny.towers(str(tmp_path / "vocab"))
    images, reports = tiny.pairs(12, 32, seed=2)
    trainer = _Recording(image, text, image_size=32, progress=False, seed=5)
    trainer.seen = []
    trainer.fit((images, reports), epochs=2, batch_size=4, shuffle=shuffle)
    loader = BatchLoader(
        convirt.data.ArrayDataset(images, reports), batch_size=4, shuffle=shuffle, seed=5
    )
    expected = [images[i] for epoch in (0, 1) for i in loader.batch_indices(epoch)]
    assert len(trainer.seen) == len(expected) == 6
    for seen, want in zip(trainer.seen, expected):
        np.testing.assert_array_equal(seen, want)


def test_loader_starts_inside_an_epoch():
    dataset = convirt.data.ArrayDataset(np.zeros((10, 4, 4), np.uint8), ["x."] * 10)
    loader = BatchLoader(dataset, batch_size=3, seed=1)
    whole = list(loader.iterate(2))
    rest = list(loader.iterate(2, start=1))
    assert [b.position for b in whole] == [0, 1, 2] and loader.epoch == 0
    assert [b.indices.tolist() for b in rest] == [b.indices.tolist() for b in whole[1:]]
    assert all(b.epoch == 2 for b in rest)
    with pytest.raises(ValueError, match="start must be in"):
        loader.iterate(0, start=4)


# ---- the learnable temperature: the C Adam ---------------------------------------------


def reference_adam(x, grads, lr, betas, eps):
    """Adam on one scalar in float64, as the Trainer wrote it by hand before."""
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        x -= lr * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
    return x, m, v


class _TemperatureRecording(Trainer):
    def _step_temperature(self, result):
        self.grads.append(result.grad_logit_scale)
        super()._step_temperature(result)


def test_learnable_temperature_is_the_c_adam(tmp_path):
    image, text = tiny.towers(str(tmp_path / "vocab"))
    loss = convirt.ContrastiveLoss(learnable_temperature=True)
    trainer = _TemperatureRecording(
        image, text, loss, image_size=32, progress=False, lr=1e-2, schedule=None
    )
    trainer.grads = []
    start = loss.logit_scale
    images, reports = tiny.pairs(12, 32, seed=3)
    trainer.fit((images, reports), epochs=2, batch_size=4)
    assert len(trainer.grads) == 6 and all(g != 0 for g in trainer.grads)
    x, m, v = reference_adam(start, trainer.grads, 1e-2, (0.9, 0.999), 1e-8)
    assert loss.logit_scale != start
    assert loss.logit_scale == pytest.approx(x, rel=1e-6, abs=1e-6)
    state = trainer.state()["scale_state"]
    assert state["m"] == pytest.approx(m, rel=1e-5) and state["v"] == pytest.approx(
        v, rel=1e-5
    )


def test_learnable_temperature_resumes_exactly(tmp_path):
    images, reports = tiny.pairs(16, 32, seed=6)

    def run(directory, stop=None):
        image, text = tiny.towers(str(tmp_path / "vocab"))
        trainer = Trainer(
            image,
            text,
            convirt.ContrastiveLoss(learnable_temperature=True),
            image_size=32,
            progress=False,
            lr=1e-3,
            checkpoint_dir=directory,
            checkpoint_every=1,
        )
        trainer.fit((images, reports), epochs=2, batch_size=4, max_steps=stop)
        return trainer

    straight = run(tmp_path / "a", stop=6)
    run(tmp_path / "b", stop=3)
    resumed = Trainer.resume(tmp_path / "b", progress=False)
    resumed.fit((images, reports), epochs=2, batch_size=4, max_steps=6)
    assert resumed.loss.logit_scale == straight.loss.logit_scale
    assert [s["temperature"] for s in resumed.steps] == [
        s["temperature"] for s in straight.steps
    ]
    np.testing.assert_array_equal(
        resumed.image_encoder.flat_parameters, straight.image_encoder.flat_parameters
    )


# ---- the augmentation's policy: one place ----------------------------------------------


def test_the_papers_ranges_are_the_python_defaults():
    parameters = inspect.signature(convirt.ImageAugment).parameters
    assert parameters["size"].default == 224
    for name, value in augment_module.PAPER_RANGES.items():
        assert parameters[name].default == value, name
    assert issubclass(convirt.ImageAugment, convirt._core.ImageAugment)
    # The C type holds no policy: it validates ranges it is given and requires each.
    with pytest.raises(TypeError, match="size"):
        convirt._core.ImageAugment()
    with pytest.raises(TypeError, match="crop_scale must be given"):
        convirt._core.ImageAugment(64)
    explicit = convirt._core.ImageAugment(**convirt.ImageAugment(64, seed=5).config)
    assert explicit.config == convirt.ImageAugment(64, seed=5).config
    again = pickle.loads(pickle.dumps(explicit))
    assert type(again) is convirt._core.ImageAugment and again.config == explicit.config
    assert convirt.ImageAugment(64, blur_sigma=True).blur_sigma == (0.1, 3.0)


def test_the_resnet_normalisation_is_defined_once():
    mean, std = convirt.Encoder.resnet18(1, proj_dim=4, proj_hidden=4).normalization
    assert (mean, std) == (
        pytest.approx(augment_module.GRAY_MEAN),
        pytest.approx(augment_module.GRAY_STD),
    )
    mean, std = convirt.Encoder.resnet18(3, proj_dim=4, proj_hidden=4).normalization
    assert mean == pytest.approx(augment_module.IMAGENET_MEAN)
    assert convirt.encoder.IMAGENET_MEAN is augment_module.IMAGENET_MEAN


def test_eval_view_is_a_resize_with_nothing_random(tmp_path):
    view = convirt.eval_augment(32, normalization=(0.5, 0.25))
    x = np.random.default_rng(0).integers(0, 256, (3, 40, 40), np.uint8)
    np.testing.assert_array_equal(view(x, step=0), view(x, step=7))
    assert all(
        view.config[k] is None
        for k in (
            "crop_scale",
            "flip",
            "degrees",
            "translate",
            "scale",
            "brightness",
            "contrast",
            "blur_sigma",
        )
    )
    trainer = make(tmp_path, augment=convirt.mild_augment(32, seed=4))
    assert trainer.eval_augment.config == trainer.augment.eval_view().config
    assert convirt.paper_augment(32).eval_view().normalization is None
