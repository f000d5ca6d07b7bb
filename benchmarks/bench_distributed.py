"""Data parallelism on one machine: 1 rank x 2 threads against 2 ranks x 1 thread (MPI,
shared memory), the same global batch of 32 pairs, Trainer.step as training runs it.

    python benchmarks/bench_distributed.py [--config small paper] [--steps 3]

small: ResNet-18 at 128 px + all-MiniLM-L6-v2 (3 of 6 layers frozen).
paper: ResNet-50 at 224 px + BERT-base (12 x 768, 6 layers frozen), projection 512.
Each row runs in its own processes (mpirun for 2 ranks, with
OMPI_MCA_mpi_yield_when_idle=1 so that a waiting rank does not spin on the core the
other one needs). Per step: pairs/s of the global batch, and the share of the step in
collectives (the all-gather of the embeddings and the all-reduce of each gradient
buffer, as rank 0 sees them: on one machine this is mostly waiting for the slower rank,
not moving bytes). Sync batch norm adds one all-reduce per batch norm and per pass
(ResNet-18: 20 forward + 20 backward); its rows show what that costs here.
docs/DISTRIBUTED.md has the cost model for many machines."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from benchmarks.common import header, measure_peak, print_table

CONFIGS = {
    "small": {"depth": 18, "image_size": 128, "stored": 144, "text": "minilm", "freeze": 3},
    "paper": {
        "depth": 50,
        "image_size": 224,
        "stored": 256,
        "text": "bert-base",
        "freeze": 6,
    },
}
BATCH = 32  # global


def worker(config, steps, sync):
    """Runs on every rank: warm-up + `steps` steps; rank 0 prints one JSON line."""
    import numpy as np

    import convirt
    from convirt.datasets import synthetic_cxr
    from convirt.distributed import world
    from convirt.text import load_tokenizer, minilm_path

    cfg = CONFIGS[config]
    group = world()
    data = synthetic_cxr(BATCH, size=cfg["stored"], seed=0)
    share = BATCH // group.size
    rows = slice(group.rank * share, (group.rank + 1) * share)
    images = np.ascontiguousarray(data.images[rows])
    reports = list(data.reports[rows])
    image = getattr(convirt.Encoder, f"resnet{cfg['depth']}")(1, proj_dim=512)
    if cfg["text"] == "minilm":
        text = convirt.Encoder.from_pretrained(
            minilm_path(), freeze_layers=cfg["freeze"], proj_dim=512
        )
    else:
        from bench_train import BERT_BASE

        text = convirt.Encoder.bert(
            **BERT_BASE,
            freeze_layers=cfg["freeze"],
            proj_dim=512,
            tokenizer=load_tokenizer(minilm_path()),
            max_length=128,
        )
    trainer = convirt.Trainer(
        image, text, image_size=cfg["image_size"], progress=False, sync_batchnorm=sync
    )
    trainer.step(images, reports)
    seconds = comm = 0.0
    for _ in range(steps):
        group.barrier()
        t0 = time.perf_counter()
        metrics = trainer.step(images, reports)
        seconds += time.perf_counter() - t0
        comm += metrics["comm_seconds"]
    if group.rank == 0:
        print(
            json.dumps(
                {
                    "pairs_per_s": BATCH * steps / seconds,
                    "comm_share": comm / seconds,
                    "threads": convirt.get_num_threads(),
                }
            )
        )


def launch(config, steps, ranks, sync):
    command = [sys.executable, os.path.abspath(__file__), "--worker", config]
    command += ["--steps", str(steps)] + (["--sync"] if sync else [])
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), HERE])
    if ranks > 1:
        mpirun = [shutil.which("mpirun"), "-np", str(ranks), "--oversubscribe"]
        if os.geteuid() == 0:
            mpirun.append("--allow-run-as-root")
        command = mpirun + command
        env["OMPI_MCA_mpi_yield_when_idle"] = "1"
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", nargs="+", default=["small", "paper"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker")
    parser.add_argument("--sync", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.sync)
    if shutil.which("mpirun") is None:
        sys.exit("needs Open MPI's mpirun and mpi4py (make install-test)")
    header("Data parallelism on one machine: 1 rank x 2 threads vs 2 ranks x 1 thread")
    peak, _ = measure_peak(2)
    rows = []
    for config in args.config:
        variants = [(1, False), (2, False)] + ([(2, True)] if config == "small" else [])
        base = None
        for ranks, sync in variants:
            r = launch(config, args.steps, ranks, sync)
            base = base or r["pairs_per_s"]
            rows.append(
                [
                    config,
                    f"{ranks} x {r['threads']}",
                    "sync" if sync else ("per rank" if ranks > 1 else "-"),
                    f"{r['pairs_per_s']:.2f}",
                    f"{r['pairs_per_s'] / base:.2f}x",
                    f"{100 * r['comm_share']:.1f}%",
                ]
            )
    print_table(
        [
            "config",
            "ranks x threads",
            "batch norm",
            "pairs/s",
            "vs 1 rank",
            "step in collectives",
        ],
        rows,
        title=f"global batch {BATCH}, FMA peak {peak:.0f} GFLOP/s on 2 threads",
    )


if __name__ == "__main__":
    main()
