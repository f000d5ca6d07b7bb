"""The BERT text tower: convirt's C core beside transformers + PyTorch, same shapes, same
threads, same run.

Two workloads per model shape, each side in its own subprocess (so that its peak
memory, max RSS, is its own):
  infer  embedding extraction: forward + max-pool + projection head, eval mode
         (PyTorch under torch.inference_mode()).
  train  one training step with the embeddings and the lower half of the layers frozen:
         forward, max-pool, projection head, backward into every trainable tensor.
         PyTorch runs with dropout 0 (convirt has no dropout), so both compute the
         same function.
Models: MiniLM-L6 (6 x 384, 12 heads, 1536) and BERT-base (12 x 768, 12 heads, 3072),
random weights, random token ids; every sequence is --tokens long unless --varied, which
draws lengths uniformly in [8, tokens] (padding in the batch; convirt skips it).

Achieved GFLOP/s counts the GEMMs and attention products (2 per multiply-add); a
training step counts the forward of every layer plus twice the forward of the trainable
layers. 'peak' is convirt._core.fma_peak() measured in this run, just before each pair
of rows, and '%peak' the best step against it. '%same' (convirt's side) reads the peak in
the worker itself just before every timed step and is the median over the steps of each
step against its own reading (benchmarks.common.peak_pairs): on a shared host whose speed
drifts within minutes, the figure that compares like with like. The machine may be
shared: compare the two sides of a pair, not numbers from different runs (and a %peak
above 100 means the load changed between the peak and the timing).

    python benchmarks/bench_bert.py                      # the full table
    python benchmarks/bench_bert.py --models minilm --batch 8 --repeats 2   # quick
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODELS = {"minilm": (6, 384, 12, 1536), "base": (12, 768, 12, 3072)}
VOCAB, PROJ = 30522, 512


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs(args):
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, VOCAB, (args.batch, args.tokens)).astype(np.int32)
    if args.varied:
        lengths = rng.integers(8, args.tokens + 1, args.batch)
        lengths[0] = args.tokens
    else:
        lengths = np.full(args.batch, args.tokens)
    mask = (np.arange(args.tokens)[None] < lengths[:, None]).astype(np.int32)
    return ids, mask, int(lengths.sum())


def timed(step, warmup, repeats):
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def worker_convirt(args):
    import numpy as np

    import convirt

    convirt.set_num_threads(args.threads)
    base_rss = rss_mib()
    layers, hidden, heads, inter = MODELS[args.model]
    encoder = convirt.Encoder.bert(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        freeze_layers=layers // 2,
        proj_dim=PROJ,
        proj_hidden=PROJ,
    )
    ids, mask, _ = inputs(args)
    d_embeddings = np.full((args.batch, PROJ), 1.0 / args.batch, np.float32)
    if args.mode == "infer":
        encoder.eval()

        def step():
            encoder.forward(ids, mask, features=False)
    else:
        encoder.train()

        def step():
            encoder.zero_grad()
            encoder.forward(ids, mask, features=False)
            encoder.backward(d_embeddings)

    from benchmarks.common import peak_pairs

    pairs = peak_pairs(step, args.threads, args.repeats, warmup=args.warmup)
    return [seconds for seconds, _ in pairs], base_rss, pairs


def worker_torch(args):
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    base_rss = rss_mib()
    layers, hidden, heads, inter = MODELS[args.model]
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = transformers.BertModel(config, add_pooling_layer=False)
    head = torch.nn.Sequential(
        torch.nn.Linear(hidden, PROJ), torch.nn.ReLU(), torch.nn.Linear(PROJ, PROJ)
    )
    ids_np, mask_np, _ = inputs(args)
    ids, mask = torch.tensor(ids_np).long(), torch.tensor(mask_np).long()
    valid = mask[..., None].bool()

    def embed():
        hidden_states = model(ids, attention_mask=mask).last_hidden_state
        pooled = hidden_states.masked_fill(~valid, float("-inf")).max(1).values
        return head(pooled)

    if args.mode == "infer":
        model.eval()

        def step():
            with torch.inference_mode():
                embed()
    else:
        model.train()
        for parameter in model.embeddings.parameters():
            parameter.requires_grad_(False)
        for layer in model.encoder.layer[: layers // 2]:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)
        weight = torch.full((args.batch, PROJ), 1.0 / args.batch)

        def step():
            model.zero_grad(set_to_none=True)
            head.zero_grad(set_to_none=True)
            (embed() * weight).sum().backward()

    return timed(step, args.warmup, args.repeats), base_rss, None


def flops(model, mode, tokens_per_seq, batch):
    """Multiply-adds x 2 of one step over the padded batch (with --varied both sides are
    credited with the same, padded, work)."""
    layers, hidden, _, inter = MODELS[model]
    tokens = batch * tokens_per_seq
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * inter)
    per_layer += 2 * 2 * batch * tokens_per_seq * tokens_per_seq * hidden  # QK^T and PV
    head = 2 * batch * (hidden * PROJ + PROJ * PROJ)
    forward = layers * per_layer + head
    if mode == "infer":
        return forward
    trainable = layers - layers // 2
    return forward + 2 * (trainable * per_layer + head)


def run_worker(side, model, mode, args):
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        side,
        "--model",
        model,
        "--mode",
        mode,
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--tokens",
        str(args.tokens),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
    ] + (["--varied"] if args.varied else [])
    env = dict(
        os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads)
    )
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{side} {model} {mode} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="minilm,base", help="minilm,base")
    parser.add_argument("--modes", default="infer,train", help="infer,train")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="default: all cores")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (best counts)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternating runs of each side (best step over all counts)",
    )
    parser.add_argument(
        "--varied",
        action="store_true",
        help="sequence lengths uniform in [8, tokens] (padded batch)",
    )
    parser.add_argument("--worker", choices=["convirt", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.worker:
        times, base_rss, pairs = (
            worker_convirt if args.worker == "convirt" else worker_torch
        )(args)
        print(
            json.dumps(
                {
                    "times": times,
                    "max_rss": max_rss_mib(),
                    "base_rss": base_rss,
                    "pairs": pairs,
                }
            )
        )
        return

    import convirt

    if args.threads <= 0:
        args.threads = convirt.get_num_threads()
    peak, bits = convirt._core.fma_peak(args.threads, 1.0)
    from benchmarks.common import cpu_model, fraction_of_peak

    print(f"CPU: {cpu_model()}")
    print(
        f"convirt {convirt.__version__}, BLIS {convirt.config()['blis_arch']}, "
        f"{args.threads} thread(s); FP32 FMA peak {peak:.0f} GFLOP/s ({bits}-bit) now, "
        "and again before each pair of rows ('peak')"
    )
    print(
        f"batch {args.batch} x {args.tokens} tokens"
        f"{' (varied lengths, padded)' if args.varied else ''}, lower half frozen for "
        f"train, best of {args.rounds} x {args.repeats} after {args.warmup} warm-up step(s), "
        "sides alternating\n"
    )
    header = (
        f"{'model':7} {'mode':5} {'side':8} {'seq/s':>8} {'ms/step':>9} "
        f"{'GFLOP/s':>8} {'peak':>5} {'%peak':>6} {'%same':>6} {'maxRSS MiB':>10} "
        f"{'(model+act)':>11} {'speed-up':>8}"
    )
    print(header)
    print("-" * len(header))
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            # The peak again for each pair of rows: on a shared machine it moves.
            peak = max(convirt._core.fma_peak(args.threads, 0.5)[0], 1e-9)
            rows = {"convirt": None, "torch": None}
            for round_ in range(args.rounds):  # alternate, so that both meet the same load
                for side in (
                    ("convirt", "torch") if round_ % 2 == 0 else ("torch", "convirt")
                ):
                    result = run_worker(side, model, mode, args)
                    if rows[side] is None:
                        rows[side] = result
                    else:
                        rows[side]["times"] += result["times"]
                        rows[side]["pairs"] = (rows[side]["pairs"] or []) + (
                            result["pairs"] or []
                        )
                        rows[side]["max_rss"] = max(
                            rows[side]["max_rss"], result["max_rss"]
                        )
            work = flops(model, mode, args.tokens, args.batch)
            for side in ("convirt", "torch"):
                r = rows[side]
                best = min(r["times"])
                rate = work / best / 1e9
                speedup = min(rows["torch"]["times"]) / best if side == "convirt" else 1.0
                same = (
                    f"{100 * fraction_of_peak(work / 1e9, r['pairs']):5.0f}%"
                    if r["pairs"]
                    else f"{'-':>6}"
                )
                print(
                    f"{model:7} {mode:5} {side:8} {args.batch / best:8.2f} "
                    f"{best * 1e3:9.1f} {rate:8.1f} {peak:5.0f} {100 * rate / peak:5.0f}% {same} "
                    f"{r['max_rss']:10.0f} {r['max_rss'] - r['base_rss']:11.0f} "
                    f"{speedup:7.2f}x"
                )
            sys.stdout.flush()
    peak_after, _ = convirt._core.fma_peak(args.threads, 1.0)
    print(
        f"\nFMA peak at the end of the run: {peak_after:.0f} GFLOP/s (a drop means other "
        "work shared the cores)"
    )


if __name__ == "__main__":
    main()
