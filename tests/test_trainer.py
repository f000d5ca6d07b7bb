"""Trainer: parity with a PyTorch training loop, exact resume, crash safety, divergence,
schedules, SimCLR, bad arguments."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import convirt
from convirt.checkpoint import CheckpointDir, CheckpointError
from convirt.trainer import Trainer, TrainingDiverged

sys.path.insert(0, os.path.dirname(__file__))
import tiny

torch = pytest.importorskip("torch")
F = torch.nn.functional


def identity_augment(size):
    return convirt.ImageAugment(
        size,
        crop_scale=None,
        flip=None,
        degrees=None,
        translate=None,
        scale=None,
        brightness=None,
        contrast=None,
        blur_sigma=None,
    )


def make_trainer(tmp_path, *, seed=0, augment=None, **kwargs):
    image, text = tiny.towers(str(tmp_path / "vocab"), seed=seed)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("image_size", 32)
    return Trainer(image, text, augment=augment, seed=seed, **kwargs)


# ---- parity with PyTorch ------------------------------------------------------------------


def torch_towers(image, text):
    """The same two towers in PyTorch, on copies of convirt's weights."""
    import torch_resnet
    from transformers import BertConfig, BertModel

    image_params = {
        k: torch.tensor(v, requires_grad=not k.endswith(("running_mean", "running_var")))
        for k, v in image.state_dict().items()
    }
    cfg = text._spec["config"]
    model = BertModel(
        BertConfig(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            max_position_embeddings=cfg["max_position_embeddings"],
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            hidden_act="gelu",
        ),
        add_pooling_layer=False,
    )
    text_state = text.state_dict()
    bert_state = {
        k: torch.tensor(v) for k, v in text_state.items() if not k.startswith("projection.")
    }
    missing, unexpected = model.load_state_dict(bert_state, strict=False)
    assert not [m for m in missing if "position_ids" not in m] and not unexpected
    model.train()
    text_head = {
        k: torch.tensor(v, requires_grad=True)
        for k, v in text_state.items()
        if k.startswith("projection.")
    }
    for row in text.tensor_table:
        name, is_frozen = row[0], row[5]
        if name.startswith("projection."):
            continue
        param = dict(model.named_parameters())[name]
        param.requires_grad_(not is_frozen)
    return torch_resnet, image_params, model, text_head


def head(x, p):
    return F.linear(
        F.relu(F.linear(x, p["projection.0.weight"], p["projection.0.bias"])),
        p["projection.2.weight"],
        p["projection.2.bias"],
    )


def torch_loop(
    image, text, batches, lr, eps, dtype=torch.float32, channels_last=False, perturb=None
):
    """Ten Adam steps of the same model in PyTorch; returns the losses and the final
    tensors (named as convirt's, prefixed image. / text.). The variants compute the same
    math with other rounding: dtype float64 (the center the others are measured from);
    channels_last stores the convolution weights in another memory layout; perturb (a
    seed) moves every initial weight of both towers by one float32 ulp up or down."""
    torch_resnet, image_params, bert, text_head = torch_towers(image, text)
    generator = torch.Generator().manual_seed(perturb or 0)
    with torch.no_grad():
        for group in (image_params, text_head, dict(bert.named_parameters())):
            for name, p in group.items():
                if perturb is not None:
                    up = torch.rand(p.shape, generator=generator) < 0.5
                    p.copy_(torch.nextafter(p, torch.where(up, torch.inf, -torch.inf)))
                if channels_last and p.ndim == 4:
                    group[name] = p.contiguous(memory_format=torch.channels_last)
        image_params = {
            k: v.to(dtype).requires_grad_(not k.endswith(("running_mean", "running_var")))
            for k, v in image_params.items()
        }
        text_head = {k: v.to(dtype).requires_grad_() for k, v in text_head.items()}
    bert.to(dtype)
    trainable = (
        [p for p in image_params.values() if p.requires_grad]
        + [p for p in bert.parameters() if p.requires_grad]
        + list(text_head.values())
    )
    optimizer = torch.optim.Adam(trainable, lr=lr, eps=eps, weight_decay=1e-4)
    mean, std = image.normalization
    losses = []
    for batch, texts in batches:
        x = torch.tensor((batch.astype(np.float32) / 255 - mean[0]) / std[0])[:, None]
        v = head(
            torch_resnet.forward(image_params, x.to(dtype), 18, training=True), image_params
        )
        ids, mask = convirt.text.tokenize(text.tokenizer, texts, max_length=32)
        hidden = bert(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).last_hidden_state
        pooled = hidden.masked_fill(torch.tensor(mask)[..., None] == 0, -torch.inf).amax(1)
        u = head(pooled, text_head)
        logits = F.normalize(v, dim=1) @ F.normalize(u, dim=1).T / 0.1
        target = torch.arange(len(texts))
        loss = 0.75 * F.cross_entropy(logits, target) + 0.25 * F.cross_entropy(
            logits.T, target
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    tensors = {f"image.{k}": v.detach().double().numpy() for k, v in image_params.items()}
    tensors.update(
        {f"text.{k}": v.detach().double().numpy() for k, v in bert.state_dict().items()}
    )
    tensors.update({f"text.{k}": v.detach().double().numpy() for k, v in text_head.items()})
    return np.array(losses), tensors


def test_ten_steps_match_a_pytorch_training_loop(tmp_path):
    # Two correct float32 implementations drift apart over training: rounding noise in
    # near-zero gradients is amplified by Adam's per-element normalisation, and a value
    # that rounding puts on the other side of a ReLU's kink moves the batch-norm
    # gradients around it by percents. So the bound is the reference's own float32
    # spread: PyTorch in float64 is the center, and four float32 PyTorch runs that differ
    # only in rounding (contiguous and channels_last convolution weights, every initial
    # weight moved by one float32 ulp with two seeds) show how far float32 may wander
    # from it. convirt must stay within 3x the farthest of them, step by step and tensor
    # by tensor. (One channels_last run alone measured only the convolutions' rounding,
    # not the text tower's: on an AVX-512 machine convirt's loss at step 5 was 2.7e-4
    # from it, against a band of 8.9e-5.)
    size, lr, eps = 96, 1e-4, 1e-6
    trainer = make_trainer(
        tmp_path,
        augment=identity_augment(size),
        lr=lr,
        eps=eps,
        weight_decay=1e-4,
        schedule=None,
        image_size=size,
    )
    image, text = trainer.image_encoder, trainer.text_encoder
    images, reports = tiny.pairs(16, size, seed=1)
    sentences = [r.split(".")[0] + "." for r in reports]
    batches = [
        (images[s % 2 * 8 : s % 2 * 8 + 8], sentences[s % 2 * 8 : s % 2 * 8 + 8])
        for s in range(10)
    ]
    center, center_tensors = torch_loop(image, text, batches, lr, eps, dtype=torch.float64)
    variants = [
        torch_loop(image, text, batches, lr, eps, **kw)
        for kw in ({}, {"channels_last": True}, {"perturb": 1}, {"perturb": 2})
    ]
    ours = np.array([trainer.step(b, t, sample_sentence=False)["loss"] for b, t in batches])

    spread = np.maximum.accumulate(
        np.max([np.abs(losses - center) for losses, _ in variants], axis=0)
    )
    assert np.abs(ours[0] - center[0]) <= 1e-5 * center[0]
    np.testing.assert_array_less(np.abs(ours - center), 3 * spread + 2e-5 * center)
    assert np.all(np.abs(ours - center) < 1e-2 * center)  # and no gross drift

    mine = {f"image.{k}": v for k, v in image.state_dict().items()}
    mine.update({f"text.{k}": v for k, v in text.state_dict().items()})
    assert set(mine) == set(center_tensors)
    for name, ref in center_tensors.items():
        ours_diff = np.abs(mine[name] - ref)
        torch_diffs = [np.abs(tensors[name] - ref) for _, tensors in variants]
        if not name.endswith(("running_mean", "running_var")):
            # Adam moves an element at most ~lr a step: a hard bound for each element.
            assert ours_diff.max() <= 2 * lr * 10 + 1e-6 * np.abs(ref).max(), name
        for q in (0.5, 0.99):
            torch_q = max(np.quantile(d, q) for d in torch_diffs)
            assert (
                np.quantile(ours_diff, q) <= 3 * torch_q + 1e-7 + 1e-6 * np.abs(ref).max()
            ), f"{name}: quantile {q}"


# ---- resume, checkpoints, crashes ---------------------------------------------------------


def test_resume_is_exact(tmp_path):
    images, reports = tiny.pairs(16, 32, seed=2)
    straight = make_trainer(tmp_path / "a", checkpoint_dir=tmp_path / "a" / "ckpt")
    straight.fit((images, reports), epochs=2, batch_size=4, max_steps=6)

    first = make_trainer(
        tmp_path / "b", checkpoint_dir=tmp_path / "b" / "ckpt", checkpoint_every=1
    )
    first.fit((images, reports), epochs=2, batch_size=4, max_steps=3)
    del first
    resumed = Trainer.resume(tmp_path / "b" / "ckpt", progress=False)
    assert resumed.step_count == 3 and resumed.position == 3
    resumed.fit((images, reports), epochs=2, batch_size=4, max_steps=6)
    assert resumed.step_count == 6
    for a, b in (
        (straight.image_encoder, resumed.image_encoder),
        (straight.text_encoder, resumed.text_encoder),
    ):
        np.testing.assert_array_equal(a.flat_parameters, b.flat_parameters)
        np.testing.assert_array_equal(a.flat_buffers, b.flat_buffers)
    assert [s["loss"] for s in straight.steps] == [s["loss"] for s in resumed.steps]


def test_checkpoint_keeps_last_and_best(tmp_path):
    images, reports = tiny.pairs(12, 32, seed=3)
    trainer = make_trainer(tmp_path, checkpoint_dir=tmp_path / "ckpt")
    trainer.fit((images, reports), val=(images[:8], reports[:8]), epochs=3, batch_size=4)
    ckpt = CheckpointDir(tmp_path / "ckpt")
    last, best = ckpt.pointer("LAST"), ckpt.pointer("BEST")
    assert os.path.basename(last).startswith(f"step-{trainer.step_count:08d}")
    assert best is not None
    kept = sorted(e for e in os.listdir(tmp_path / "ckpt") if e.startswith("step-"))
    assert len(kept) == len({last, best})
    with open(os.path.join(last, "trainer.json")) as f:
        state = json.load(f)
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert {"train_loss", "val_loss", "lr"} <= set(state["history"][0])


def test_failed_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    images, reports = tiny.pairs(8, 32, seed=4)
    trainer = make_trainer(tmp_path, checkpoint_dir=tmp_path / "ckpt")
    trainer.fit((images, reports), epochs=1, batch_size=4)
    before = CheckpointDir(tmp_path / "ckpt").pointer("LAST")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.image_encoder.__class__, "save", full_disk)
    trainer.step(images[:4], reports[:4])
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint()
    assert CheckpointDir(tmp_path / "ckpt").pointer("LAST") == before
    assert not [e for e in os.listdir(tmp_path / "ckpt") if e.startswith(".staging")]
    monkeypatch.undo()
    restored = Trainer.resume(tmp_path / "ckpt", progress=False)
    assert restored.step_count == 2


def test_unwritable_checkpoint_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the directory should be")
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, checkpoint_dir=blocker)
    with pytest.raises(OSError):
        trainer.fit((images, reports), epochs=1, batch_size=4)


def test_resume_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        Trainer.resume(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"has no checkpoint: looked for .*LAST"):
        Trainer.resume(tmp_path / "empty")
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, checkpoint_dir=tmp_path / "ckpt")
    trainer.fit((images, reports), epochs=1, batch_size=4)
    last = CheckpointDir(tmp_path / "ckpt").pointer("LAST")
    with open(os.path.join(last, "image_encoder.safetensors"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="incomplete or corrupt"):
        Trainer.resume(tmp_path / "ckpt")


CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import tiny
    from convirt.trainer import Trainer
    ckpt = {ckpt!r}
    images, reports = tiny.pairs(16, 32, seed=5)
    if os.path.exists(os.path.join(ckpt, "LAST")):
        trainer = Trainer.resume(ckpt, progress=False)
    else:
        image, text = tiny.towers({vocab!r})
        trainer = Trainer(image, text, image_size=32, checkpoint_dir=ckpt,
                          checkpoint_every=1, progress=False)
    print("ready", flush=True)
    trainer.fit((images, reports), epochs=1000, batch_size=4)
""")


def test_killed_at_random_moments_the_checkpoint_survives(tmp_path):
    """20 times: a child trains with a checkpoint every step (resuming from the last one)
    and is killed with SIGKILL at a random moment of its step-and-save cycle; every time
    the surviving checkpoint loads and resumes."""
    ckpt = str(tmp_path / "ckpt")
    last = os.path.join(ckpt, "LAST")
    code = CHILD.format(
        tests=os.path.dirname(__file__), ckpt=ckpt, vocab=str(tmp_path / "vocab")
    )
    rng = random.Random(0)

    def read_last():
        try:
            with open(last) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def wait_for_change(child, before, deadline=180):
        end = time.time() + deadline
        while read_last() == before:
            assert time.time() < end and child.poll() is None, child.stderr.read()
            time.sleep(0.01)
        return time.time()

    period = None
    steps_seen = []
    for kill in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        first = wait_for_change(child, read_last())  # progress since the last kill
        if period is None:  # one step-and-save cycle, measured
            period = wait_for_change(child, read_last()) - first
        time.sleep(rng.uniform(0.0, 1.5 * period))
        child.send_signal(signal.SIGKILL)
        child.wait()
        _directory, state = CheckpointDir(ckpt).load_state()
        steps_seen.append(state["step"])
        trainer = Trainer.resume(ckpt, progress=False)  # every file loads
        assert trainer.step_count == state["step"]
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] >= 20
    trainer.step(*tiny.pairs(4, 32, seed=9))  # and it trains on


# ---- divergence, schedules, early stopping, SimCLR ------------------------------------------


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, checkpoint_dir=tmp_path / "ckpt")
    trainer.fit((images, reports), epochs=1, batch_size=4)
    last = CheckpointDir(tmp_path / "ckpt").pointer("LAST")
    trainer.image_encoder.parameters()["projection.2.bias"][0] = np.nan
    with pytest.raises(TrainingDiverged, match="last good checkpoint is .*step-00000002"):
        trainer.fit((images, reports), epochs=2, batch_size=4)
    assert CheckpointDir(tmp_path / "ckpt").pointer("LAST") == last
    assert Trainer.resume(tmp_path / "ckpt", progress=False).step_count == 2


def test_plateau_schedule_halves_the_learning_rate(tmp_path, monkeypatch):
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, plateau_patience=1)
    losses = iter([1.0, 0.9, 0.95, 0.96, 0.97, 0.5])
    monkeypatch.setattr(
        trainer, "validate", lambda data, batch_size: {"val_loss": next(losses)}
    )
    trainer.fit((images, reports), val=(images, reports), epochs=6, batch_size=4)
    lrs = [r["lr_after"] for r in trainer.history]
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4, 5e-5, 5e-5, 5e-5])


def test_early_stopping(tmp_path, monkeypatch):
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, early_stopping_patience=2, schedule=None)
    losses = iter([1.0, 1.1, 1.2, 0.1, 0.1])
    monkeypatch.setattr(
        trainer, "validate", lambda data, batch_size: {"val_loss": next(losses)}
    )
    trainer.fit((images, reports), val=(images, reports), epochs=5, batch_size=4)
    assert len(trainer.history) == 3 and trainer.history[-1]["early_stop"]


def test_cosine_schedule_warms_up_then_decays(tmp_path):
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, schedule="cosine", warmup_steps=2, lr=1e-3)
    trainer.fit((images, reports), epochs=4, batch_size=4)
    lrs = [s["lr"] for s in trainer.steps]
    assert lrs[0] < lrs[1] and max(lrs) == pytest.approx(1e-3, rel=1e-6)
    assert lrs[-1] < lrs[2]


def test_simclr_baseline_trains_the_image_encoder_alone(tiny_towers):
    image, _ = tiny_towers
    images, _ = tiny.pairs(8, 32)
    before = image.flat_parameters.copy()
    trainer = Trainer(image, method="simclr", image_size=32, progress=False)
    history = trainer.fit((images, None), epochs=2, batch_size=4)
    assert len(history) == 2 and np.isfinite(history[-1]["train_loss"])
    assert not np.array_equal(before, image.flat_parameters)


def test_frozen_text_tower_is_not_updated(tmp_path):
    images, reports = tiny.pairs(8, 32)
    trainer = make_trainer(tmp_path, freeze_text=True)
    text_before = trainer.text_encoder.flat_parameters.copy()
    image_before = trainer.image_encoder.flat_parameters.copy()
    trainer.fit((images, reports), epochs=1, batch_size=4)
    np.testing.assert_array_equal(text_before, trainer.text_encoder.flat_parameters)
    assert not np.array_equal(image_before, trainer.image_encoder.flat_parameters)


def test_frozen_text_cache_changes_no_bit_of_training(tmp_path, monkeypatch):
    """With freeze_text, fit() embeds each distinct sentence once; the same run with the
    cache off (limit 0: every sentence embedded each step) ends bit for bit the same."""
    from convirt import train_step

    images, reports = tiny.pairs(8, 32)
    runs = []
    for limit in (train_step.TEXT_CACHE_LIMIT, 0):
        monkeypatch.setattr(train_step, "TEXT_CACHE_LIMIT", limit)
        cached = []
        trainer = make_trainer(
            tmp_path / str(limit),
            freeze_text=True,
            callbacks=[lambda t, m, sizes=cached: sizes.append(len(t._runner.text_cache))],
        )
        trainer.fit((images, reports), epochs=3, batch_size=4)
        assert trainer._runner.text_cache is None  # dropped when fit returns
        runs.append((trainer.image_encoder.flat_parameters.copy(), trainer.steps, cached))
    (cached_params, cached_steps, sizes), (plain_params, plain_steps, none) = runs
    np.testing.assert_array_equal(cached_params, plain_params)
    assert [s["loss"] for s in cached_steps] == [s["loss"] for s in plain_steps]
    assert none == [0] * 6 and 0 < sizes[0] <= sizes[-1] <= 16  # 2 sentences a report


def test_history_callbacks_and_plot(tmp_path):
    images, reports = tiny.pairs(8, 32)
    seen = []
    trainer = make_trainer(tmp_path, callbacks=[lambda t, m: seen.append(m["step"])])
    trainer.fit((images, reports), val=(images, reports), epochs=2, batch_size=4)
    assert seen == [1, 2, 3, 4]
    assert {"loss", "lr", "pairs_per_s", "accuracy_image_to_text"} <= set(trainer.steps[0])
    fig = trainer.plot()
    assert fig.axes[0].get_xlabel() == "step"
    assert "Trainer(method='convirt'" in repr(trainer)


# ---- bad arguments --------------------------------------------------------------------------


def test_bad_arguments(tiny_towers):
    image, text = tiny_towers
    with pytest.raises(ValueError, match="method must be"):
        Trainer(image, text, method="clip")
    with pytest.raises(TypeError, match="needs a text convirt.Encoder"):
        Trainer(image, None)
    with pytest.raises(TypeError, match="image_encoder must be an image"):
        Trainer(text, text)
    with pytest.raises(ValueError, match="nothing would be trained"):
        Trainer(image, text, freeze_image=True, freeze_text=True)
    with pytest.raises(ValueError, match="schedule must be"):
        Trainer(image, text, schedule="step")
    with pytest.raises(ValueError, match="image_size must be >= 32"):
        Trainer(image, text, image_size=16)
    # loss="x" and augment=5 failed later with AttributeError ('str' object has no
    # attribute 'temperature', 'int' object has no attribute 'size')
    with pytest.raises(TypeError, match="loss must be a ContrastiveLoss, got str"):
        Trainer(image, text, loss="x")
    with pytest.raises(TypeError, match="augment must be an ImageAugment, got int"):
        Trainer(image, text, augment=5)
    with pytest.raises(TypeError, match="batch_size must be an integer, got None"):
        image.encode(np.zeros((2, 32, 32), np.uint8), batch_size=None)
    trainer = Trainer(image, text, image_size=32, progress=False)
    images, reports = tiny.pairs(8, 32)
    with pytest.raises(ValueError, match="batch_size must be in"):
        trainer.fit((images, reports), batch_size=9)
    with pytest.raises(ValueError, match="8 images but 7 reports"):
        trainer.fit((images, reports[:7]), batch_size=4)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        trainer.step(images[:1], reports[:1])
    with pytest.raises(TypeError, match="must be \\(images, reports\\)"):
        trainer.fit([images, reports], batch_size=4)


def test_validation_batches_of_one_pair_are_refused(tiny_towers):
    # validate((x, reports), batch_size=1) skipped every batch (a batch of 1 has no
    # contrastive loss) and returned NaN for every metric with a RuntimeWarning.
    image, text = tiny_towers
    trainer = Trainer(image, text, image_size=32, progress=False)
    pairs = tiny.pairs(4, 32)
    for size in (1, 0, True, 2.0):
        with pytest.raises(ValueError, match=r"batch_size must be an integer >= 2"):
            trainer.validate(pairs, batch_size=size)
    with pytest.raises(ValueError, match=r"val_batch_size must be an integer >= 2"):
        trainer.fit(pairs, val=pairs, epochs=1, batch_size=2, val_batch_size=1)
    assert trainer.step_count == 0  # refused before training
    assert np.isfinite(trainer.validate(pairs, batch_size=3)["val_loss"])


def test_a_position_past_the_data_names_it(tiny_towers):
    # A resumed trainer whose position is past the batches of the data it is given.
    image, text = tiny_towers
    trainer = Trainer(image, text, image_size=32, progress=False)
    trainer.position = 3
    with pytest.raises(ValueError, match=r"stopped at batch 3 of epoch 1 \(its position\)"):
        trainer.fit(tiny.pairs(8, 32), epochs=1, batch_size=4)


def test_default_augment_is_the_papers_with_the_blur_scaled_to_the_view(tiny_towers):
    image, text = tiny_towers
    trainer = convirt.Trainer(image, text, image_size=64, progress=False)
    assert trainer.augment.size == 64
    assert trainer.augment.blur_sigma == pytest.approx((0.1, 3.0 * 64 / 224))
    assert trainer.augment.degrees == pytest.approx((-20.0, 20.0))
