"""What a training run records about itself: metrics.csv (a row per step and per epoch,
flushed as it goes, appended on resume), the TensorBoard and Weights & Biases loggers
(tensorboardX for real when installed, a stand-in wandb module), and the loss plot,
whose curves are divided by the loss at chance so that batch sizes compare."""

import csv
import math
import os
import struct
import subprocess
import sys
import textwrap
import types

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import tiny

import convirt
from convirt.callbacks import CSVLogger, TensorBoardLogger, WandbLogger
from convirt.loss_curves import chance_loss, normalized_curves
from convirt.trainer import Trainer


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def make_trainer(tmp_path, **kwargs):
    image, text = tiny.towers(str(tmp_path / "vocab"))
    kwargs.setdefault("progress", False)
    return Trainer(image, text, image_size=32, **kwargs)


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- metrics.csv -------------------------------------------------------------------------


def test_metrics_csv_has_a_row_per_step_and_per_epoch_written_as_they_happen(tmp_path):
    path = tmp_path / "ckpt" / "metrics.csv"
    rows_seen = []  # rows in the file when each step's callbacks run: flushed already
    trainer = make_trainer(
        tmp_path,
        checkpoint_dir=tmp_path / "ckpt",
        callbacks=[lambda t, m: rows_seen.append(len(read_rows(path)))],
    )
    images, reports = tiny.pairs(12, 32)
    trainer.fit((images, reports), val=(images[:8], reports[:8]), epochs=2, batch_size=4)
    rows = read_rows(path)
    assert list(rows[0]) == list(CSVLogger.COLUMNS)
    assert [(r["kind"], r["epoch"], r["step"]) for r in rows] == [
        ("step", "1", "1"),
        ("step", "1", "2"),
        ("step", "1", "3"),
        ("epoch", "1", "3"),
        ("step", "2", "4"),
        ("step", "2", "5"),
        ("step", "2", "6"),
        ("epoch", "2", "6"),
    ]
    assert rows_seen == [1, 2, 3, 5, 6, 7]
    steps = [r for r in rows if r["kind"] == "step"]
    for row, metrics in zip(steps, trainer.steps):
        for key in ("loss", "image_to_text", "text_to_image", "lr", "grad_norm"):
            assert float(row[key]) == metrics[key], key
        assert float(row["normalized_loss"]) == pytest.approx(metrics["loss"] / math.log(4))
        assert row["batch_size"] == "4" and row["val_loss"] == ""
    epochs = [r for r in rows if r["kind"] == "epoch"]
    for row, record in zip(epochs, trainer.history):
        for key in ("train_loss", "val_loss", "val_image_to_text", "val_text_to_image"):
            assert float(row[key]) == record[key], key
        assert row["loss"] == ""


def test_metrics_csv_is_appended_on_resume_without_the_rows_trained_again(tmp_path):
    images, reports = tiny.pairs(16, 32, seed=2)
    ckpt = tmp_path / "ckpt"
    first = make_trainer(tmp_path, checkpoint_dir=ckpt, checkpoint_every=1)
    first.fit((images, reports), epochs=2, batch_size=4, max_steps=3)
    path = ckpt / "metrics.csv"
    before = path.read_text(encoding="utf-8")
    # A run killed after step 3's checkpoint, within step 4's row: a row the resumed run
    # trains again and a torn line.
    with open(path, "a", encoding="utf-8") as f:
        f.write(before.splitlines()[-1].replace("step,1,3,", "step,1,4,", 1) + "\n")
        f.write("step,1,5,1.2")
    resumed = Trainer.resume(ckpt, progress=False)
    resumed.fit((images, reports), epochs=2, batch_size=4)
    after = path.read_text(encoding="utf-8")
    assert after.startswith(before)  # appended: the rows of the first run are kept
    rows = read_rows(path)
    assert [(r["kind"], r["step"]) for r in rows] == [
        *[("step", str(s)) for s in (1, 2, 3, 4)],
        ("epoch", "4"),
        *[("step", str(s)) for s in (5, 6, 7, 8)],
        ("epoch", "8"),
    ]
    assert float(rows[3]["loss"]) == resumed.steps[3]["loss"]


def test_metrics_csv_where_and_whether(tmp_path):
    images, reports = tiny.pairs(8, 32)
    make_trainer(tmp_path / "a").fit((images, reports), epochs=1, batch_size=4)
    assert not any(p.name == "metrics.csv" for p in (tmp_path / "a").rglob("*"))
    trainer = make_trainer(
        tmp_path / "b", checkpoint_dir=tmp_path / "b" / "ckpt", metrics_csv=False
    )
    trainer.fit((images, reports), epochs=1, batch_size=4)
    assert not (tmp_path / "b" / "ckpt" / "metrics.csv").exists()
    trainer = make_trainer(tmp_path / "c", metrics_csv=tmp_path / "c" / "run.csv")
    trainer.fit((images, reports), epochs=1, batch_size=4)
    assert len(read_rows(tmp_path / "c" / "run.csv")) == 3
    logger = CSVLogger(tmp_path / "d" / "mine.csv")
    trainer = make_trainer(
        tmp_path / "d", checkpoint_dir=tmp_path / "d" / "ckpt", callbacks=[logger]
    )
    assert [c for c in trainer.callbacks if isinstance(c, CSVLogger)] == [logger]


# ---- TensorBoard -------------------------------------------------------------------------


def read_events(path):
    """The scalars of a TensorBoard event file (TFRecord: length, its CRC, the Event
    proto, its CRC), as {tag: [(step, value)]}."""
    from tensorboardX.proto import event_pb2

    scalars = {}
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_logger_writes_the_scalars_into_an_event_file(tmp_path):
    pytest.importorskip("tensorboardX")
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, callbacks=[TensorBoardLogger(tmp_path / "tb")])
    trainer.fit((images, reports), val=(images, reports), epochs=2, batch_size=4)
    files = [p for p in (tmp_path / "tb").iterdir() if p.name.startswith("events.out")]
    assert len(files) == 1
    scalars = read_events(files[0])
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    np.testing.assert_allclose(
        [v for _, v in scalars["train/loss"]], [s["loss"] for s in trainer.steps], rtol=1e-6
    )
    assert [step for step, _ in scalars["val/loss"]] == [2, 4]
    np.testing.assert_allclose(
        [v for _, v in scalars["val/loss"]],
        [r["val_loss"] for r in trainer.history],
        rtol=1e-6,
    )
    assert {"train/lr", "train/grad_norm", "epoch/train_loss"} <= set(scalars)


def test_tensorboard_logger_needs_no_torch(tmp_path):
    # tensorboardX imports torch when it can (for torch tensors): with torch not
    # importable, the logger still writes its event file.
    pytest.importorskip("tensorboardX")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys, types

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "torch":
                    raise ModuleNotFoundError(name, name=name)

        sys.meta_path.insert(0, NoTorch())
        from convirt.callbacks import TensorBoardLogger

        logger = TensorBoardLogger({str(tmp_path)!r})
        logger.on_train_begin(types.SimpleNamespace(world=types.SimpleNamespace(rank=0)))
        logger.on_step_end(None, {{"step": 1, "epoch": 0, "loss": 2.5}})
        logger.on_train_end(None)
        print("torch" in sys.modules)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(convirt.__file__)))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,  # this checkout's convirt first
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
    (events,) = tmp_path.iterdir()
    assert read_events(events)["train/loss"] == [(1, 2.5)]


def test_tensorboard_logger_without_tensorboardx_says_which_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(
        ImportError, match=r"tensorboardX.*pip install 'convirt\[tensorboard\]'"
    ):
        TensorBoardLogger(tmp_path / "tb")


# ---- Weights & Biases --------------------------------------------------------------------


def fake_wandb():
    """A stand-in wandb module that records its calls."""
    module = types.ModuleType("wandb")
    module.calls = []

    def init(**kwargs):
        module.calls.append(("init", kwargs))
        return types.SimpleNamespace(id="run-1")

    module.init = init
    module.log = lambda data, step=None: module.calls.append(("log", data, step))
    module.finish = lambda: module.calls.append(("finish",))
    return module


def test_wandb_logger_calls_init_log_and_finish_with_the_runs_values(monkeypatch, tmp_path):
    wandb = fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    logger = WandbLogger("convirt-tests", mode="offline", name="tiny")
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, callbacks=[logger], lr=2e-4)
    trainer.fit((images, reports), val=(images, reports), epochs=1, batch_size=4)
    kinds = [call[0] for call in wandb.calls]
    assert kinds == ["init", "log", "log", "log", "finish"]
    init = wandb.calls[0][1]
    assert init["project"] == "convirt-tests" and init["mode"] == "offline"
    assert init["name"] == "tiny"
    assert init["config"]["lr"] == 2e-4 and init["config"]["batch_size"] == 4
    (_, first, step1), (_, second, step2), (_, epoch, epoch_step) = wandb.calls[1:4]
    assert (step1, step2, epoch_step) == (1, 2, 2)
    assert first["train/loss"] == trainer.steps[0]["loss"]
    assert second["train/grad_norm"] == trainer.steps[1]["grad_norm"]
    assert epoch["val/loss"] == trainer.history[0]["val_loss"]
    assert epoch["epoch/train_loss"] == trainer.history[0]["train_loss"]


def test_wandb_logger_without_wandb_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'convirt\[wandb\]'"):
        WandbLogger("p")


# ---- the loss plot -----------------------------------------------------------------------


def test_chance_loss_is_the_loss_of_embeddings_that_tell_nothing_apart():
    loss = convirt.ContrastiveLoss()
    same = np.ones((6, 8), np.float32)
    assert loss(same, same).loss == pytest.approx(chance_loss("convirt", 6), rel=1e-5)
    assert loss.nt_xent(np.ones((12, 8), np.float32)).loss == pytest.approx(
        chance_loss("simclr", 6), rel=1e-5
    )


def test_the_plot_divides_each_loss_by_ln_of_its_batch(tmp_path, monkeypatch):
    images, reports = tiny.pairs(12, 32)
    trainer = make_trainer(tmp_path)

    # Validation batches of 4, 4 and 2 pairs whose losses are 0.5 ln(n): a loss of half
    # the chance level each, whose plain mean is not half of any one ln(n).
    def evaluate(views, ids, mask, loss_call):
        n = len(views)
        return types.SimpleNamespace(
            loss=0.5 * math.log(n),
            image_to_text=0.0,
            text_to_image=0.0,
            accuracy_image_to_text=0.0,
            accuracy_text_to_image=0.0,
        )

    monkeypatch.setattr(trainer._runner, "evaluate", evaluate)
    trainer.fit(
        (images, reports),
        val=(images[:10], reports[:10]),
        epochs=2,
        batch_size=6,
        val_batch_size=4,
    )
    fig = trainer.plot()
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    train = lines["train (batch 6, per step)"]
    val = lines["validation (batch 4, per epoch)"]
    np.testing.assert_allclose(
        train.get_ydata(), [s["loss"] / math.log(6) for s in trainer.steps]
    )
    np.testing.assert_allclose(val.get_ydata(), [0.5, 0.5])
    assert trainer.history[0]["val_loss"] != pytest.approx(0.5 * math.log(4))
    np.testing.assert_allclose(lines["chance"].get_ydata(), [1, 1])
    assert ax.get_ylabel() == "convirt loss / ln(batch)"


def test_normalized_curves_of_records_without_batch_sizes():
    steps = [{"step": 1, "loss": math.log(31)}]  # written before steps had batch_size
    history = [{"step": 1, "val_loss": math.log(31) / 2}]
    curves = normalized_curves("simclr", steps, history, batch_size=16)
    assert curves["train"] == ([1], [pytest.approx(1.0)], [16])
    assert curves["validation"] == ([1], [pytest.approx(0.5)], [16])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        chance_loss("convirt", 1)
