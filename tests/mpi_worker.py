"""What tests/test_distributed.py runs on every rank under ``mpirun`` (and, for the
one-process references, in the test's own process). Not a test module.

    python mpi_worker.py SCENARIO OUT_DIR [key=value ...]

Rank 0 writes OUT_DIR/result.npz (or .json); every rank's checksums are gathered."""

import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tiny

import convirt
from convirt.distributed import world

N_PAIRS = 16
# Adam divides by sqrt(v) + eps: with the default eps (1e-8) an element whose true
# gradient is about 0 takes steps of +-lr from float32 rounding alone (measured: one
# ResNet element 2.4e-4 apart between 2 ranks and 1 after 3 steps of lr 1e-4). eps 1e-3
# keeps those steps at the size of the rounding, so parameters compare to float32 noise.
EPS = 1e-3


def make_trainer(
    vocab, method="convirt", distributed=None, checkpoint_dir=None, **settings
):
    image, text = tiny.towers(vocab, seed=0)
    if method == "simclr":
        text = None
    return convirt.Trainer(
        image,
        text,
        method=method,
        image_size=32,
        augment=convirt.mild_augment(32, seed=3),
        progress=False,
        prefetch=False,
        distributed=distributed,
        checkpoint_dir=checkpoint_dir,
        lr=1e-4,
        eps=EPS,
        **settings,
    )


def nudge_parameters(trainer, seed):
    """Every parameter moved by one float32 ulp, up or down as seed draws (None: none),
    the smallest change of the initial state: how far a run moves from that is how far
    float32 rounding alone moves it (a value rounding puts on the other side of a ReLU's
    kink included)."""
    if seed is None:
        return
    rng = np.random.default_rng(seed)
    for e in towers_of(trainer):
        p = e.flat_parameters
        away = np.where(rng.random(p.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
        p[...] = np.nextafter(p, away)  # float32 both: one float32 ulp


def towers_of(trainer):
    return [e for e in (trainer.image_encoder, trainer.text_encoder) if e is not None]


def checksum(trainer):
    digest = hashlib.sha256()
    for e in towers_of(trainer):
        digest.update(e.flat_parameters.tobytes())
    return digest.hexdigest()


def steps(
    vocab, method, sync, micro, count, distributed=None, freeze_image=False, nudge=None
):
    """`count` steps on this rank's share of N_PAIRS pairs; the losses, the gradients
    after the first step, the parameters after the last and the checksum. nudge: a seed
    by which every initial parameter is moved by one float32 ulp, up or down."""
    trainer = make_trainer(
        vocab,
        method,
        distributed,
        sync_batchnorm=sync,
        micro_batch=micro,
        freeze_image=freeze_image,
    )
    nudge_parameters(trainer, nudge)
    group = trainer.world
    images, reports = tiny.pairs(N_PAIRS, 32, seed=1)
    share = N_PAIRS // group.size
    rows = slice(group.rank * share, (group.rank + 1) * share)
    out = {"loss": []}
    for k in range(count):
        metrics = trainer.step(images[rows], reports[rows] if method == "convirt" else None)
        out["loss"].append(metrics["loss"])
        if k == 0:
            for i, e in enumerate(towers_of(trainer)):
                out[f"grad{i}"] = e.flat_gradients.copy()
    for i, e in enumerate(towers_of(trainer)):
        out[f"param{i}"] = e.flat_parameters.copy()
    out["loss"] = np.array(out["loss"])
    out["checksums"] = np.array(group.allgather_object(checksum(trainer)))
    out["threads"] = np.array(group.allgather_object(convirt.get_num_threads()))
    info = convirt.config()  # what show_config() prints
    out["config"] = np.array(
        [info["mpi_rank"], info["mpi_world_size"], info["threads_per_rank"]]
    )
    return group, out


def fit(vocab, checkpoint, max_steps, resume, distributed=None, nudge=None):
    """fit() over 3 epochs of 16 pairs in global batches of 8 (sync batch norm), up to
    max_steps in all; resumed from checkpoint when resume is set."""
    images, reports = tiny.pairs(N_PAIRS, 32, seed=1)
    if resume:
        trainer = convirt.Trainer.resume(checkpoint, progress=False)
    else:
        trainer = make_trainer(
            vocab,
            "convirt",
            distributed,
            checkpoint,
            sync_batchnorm=True,
            checkpoint_every=1,
        )
        nudge_parameters(trainer, nudge)
    trainer.fit((images, reports), epochs=3, batch_size=8, max_steps=max_steps)
    out = {
        "loss": np.array([s["loss"] for s in trainer.steps]),
        "state": np.array([trainer.step_count, trainer.epoch, trainer.position]),
    }
    for i, e in enumerate(towers_of(trainer)):
        out[f"param{i}"] = e.flat_parameters.copy()
    return trainer.world, out


def main():
    scenario, out_dir = sys.argv[1], sys.argv[2]
    args = dict(a.split("=", 1) for a in sys.argv[3:])
    group = world()
    vocab = os.path.join(out_dir, f"vocab{group.rank}")
    result = None
    if scenario == "steps":
        group, result = steps(
            vocab,
            args.get("method", "convirt"),
            args.get("sync") == "1",
            int(args["micro"]) if "micro" in args else None,
            int(args.get("count", 3)),
            freeze_image=args.get("freeze_image") == "1",
        )
    elif scenario == "fit":
        group, result = fit(
            vocab, args["checkpoint"], int(args["max_steps"]), args.get("resume") == "1"
        )
    elif scenario == "raise":
        trainer = make_trainer(vocab)
        images, reports = tiny.pairs(N_PAIRS, 32, seed=1)
        trainer.step(images[:8], reports[:8])
        if group.rank == 1:
            raise RuntimeError("rank one fails on purpose")
        for _ in range(1000):  # rank 0 goes on into the collectives of the next steps
            trainer.step(images[:8], reports[:8])
    elif scenario == "mismatch":
        make_trainer(vocab, weight_decay=1e-6 if group.rank == 0 else 1e-5)
    elif scenario == "batch":
        trainer = make_trainer(vocab)
        trainer.fit(
            tiny.pairs(N_PAIRS, 32, seed=1), epochs=1, batch_size=int(args["batch"])
        )
    if result is not None and group.rank == 0:
        np.savez(os.path.join(out_dir, "result.npz"), **result)


if __name__ == "__main__":
    main()
