"""ConVIRT pretraining steps: convirt beside an equivalent PyTorch loop, same threads,
same run.

    python benchmarks/bench_train.py [--config paper small] [--steps 3] [--same-process]

paper: ResNet-50 at 224 px (from 256 px images) + BERT-base (12 x 768, 6 layers frozen),
       batch 32, projection 512.
small: ResNet-18 at 128 px (from 144 px) + all-MiniLM-L6-v2 (3 of 6 layers frozen).
Both loops do the same work per step: the paper's random transforms, both towers, the
loss (tau 0.1, lambda 0.75), backward and Adam (lr 1e-4, weight decay 1e-6). Texts are
one sentence per report, tokenized beforehand for both (the trainer tokenizes in a
prefetch thread). Each side runs in its own process: pairs/s, the share of the step in
each stage, and peak memory (max RSS). --same-process adds a run of both sides in one
process with their steps alternating (what a Jupyter user who imported both gets: two
OpenMP runtimes, one after the other; peak memory is then the pair's)."""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from benchmarks.common import header, measure_peak, peak_line, print_table

CONFIGS = {
    "paper": {
        "depth": 50,
        "image_size": 224,
        "stored": 256,
        "text": "bert-base",
        "freeze": 6,
        "batch": 32,
        "proj": 512,
    },
    "small": {
        "depth": 18,
        "image_size": 128,
        "stored": 144,
        "text": "minilm",
        "freeze": 3,
        "batch": 32,
        "proj": 512,
    },
}
BERT_BASE = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
STAGES = ["transforms", "image tower", "text tower", "loss", "backward", "optimiser"]


def batch_data(cfg):
    """uint8 images, int32 token ids and mask, like a training batch."""
    import numpy as np

    from convirt.datasets import synthetic_cxr
    from convirt.text import load_tokenizer, minilm_path, sample_sentences, tokenize

    data = synthetic_cxr(cfg["batch"], size=cfg["stored"], seed=0)
    sentences = sample_sentences(data.reports, seed=0, step=0)
    ids, mask = tokenize(load_tokenizer(minilm_path()), sentences, max_length=128)
    return np.ascontiguousarray(data.images), ids, mask


def build_convirt(config, threads):
    """(step, totals): one pretraining step of convirt, and its stage times."""
    import numpy as np

    import convirt
    from convirt.text import minilm_path

    cfg = CONFIGS[config]
    convirt.set_num_threads(threads)
    images, ids, mask = batch_data(cfg)
    image = getattr(convirt.Encoder, f"resnet{cfg['depth']}")(1, proj_dim=cfg["proj"])
    if cfg["text"] == "minilm":
        text = convirt.Encoder.from_pretrained(
            minilm_path(), freeze_layers=cfg["freeze"], proj_dim=cfg["proj"]
        )
    else:
        text = convirt.Encoder.bert(
            **BERT_BASE, freeze_layers=cfg["freeze"], proj_dim=cfg["proj"]
        )
    image.train()
    text.train()
    augment = convirt.ImageAugment(cfg["image_size"])
    loss = convirt.ContrastiveLoss()
    adam = convirt.Adam(
        [image.flat_parameters, text.flat_parameters[text.trainable_offset :]],
        [image.flat_gradients, text.flat_gradients[text.trainable_offset :]],
    )
    views = np.empty((cfg["batch"], cfg["image_size"], cfg["image_size"]), np.float32)
    totals = dict.fromkeys(STAGES, 0.0)

    def step(record):
        marks = [time.perf_counter()]
        augment(images, step=0, out=views)
        marks.append(time.perf_counter())
        _, v = image.forward(views, features=False)
        marks.append(time.perf_counter())
        _, u = text.forward(ids, mask, features=False)
        marks.append(time.perf_counter())
        r = loss(v, u)
        marks.append(time.perf_counter())
        image.zero_grad()
        text.zero_grad()
        image.backward(r.grad_v)
        text.backward(r.grad_u)
        marks.append(time.perf_counter())
        adam.step()
        marks.append(time.perf_counter())
        if record:
            for name, a, b in zip(STAGES, marks, marks[1:]):
                totals[name] += b - a

    return step, totals


def run_convirt(config, steps, threads):
    return timed(*build_convirt(config, threads), steps)


def timed(step, totals, steps):
    step(False)
    for _ in range(steps):
        step(True)
    return {"stages": {k: v / steps for k, v in totals.items()}}


def build_torch(config, threads):
    """(step, totals): the same step in PyTorch."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from bench_augment import torch_augment
    from bench_resnet import torch_resnet
    from transformers import BertConfig, BertModel

    import convirt
    from convirt.text import minilm_path

    cfg = CONFIGS[config]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images, ids, mask = batch_data(cfg)
    image = torch_resnet(cfg["depth"], 1).to(memory_format=torch.channels_last).train()
    if cfg["text"] == "minilm":
        text = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False)
    else:
        text = BertModel(
            BertConfig(
                **BERT_BASE, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
            ),
            add_pooling_layer=False,
        )
    text.train()
    for p in text.embeddings.parameters():
        p.requires_grad_(False)
    for layer in text.encoder.layer[: cfg["freeze"]]:
        for p in layer.parameters():
            p.requires_grad_(False)
    width = 2048 if cfg["depth"] == 50 else 512
    image_head = torch.nn.Sequential(
        torch.nn.Linear(width, 512), torch.nn.ReLU(), torch.nn.Linear(512, cfg["proj"])
    )
    text_head = torch.nn.Sequential(
        torch.nn.Linear(text.config.hidden_size, 512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, cfg["proj"]),
    )
    params = [
        p
        for m in (image, text, image_head, text_head)
        for p in m.parameters()
        if p.requires_grad
    ]
    adam = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-6)
    aug_params = convirt.ImageAugment(cfg["image_size"]).sample_parameters(len(images))
    ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    target = torch.arange(len(images))
    mean, std = 0.449, 0.226
    totals = dict.fromkeys(STAGES, 0.0)

    def step(record):
        marks = [time.perf_counter()]
        views = torch_augment(torch, images, aug_params, cfg["image_size"])  # (N, S, S)
        x = ((views[:, None] - mean) / std).contiguous(memory_format=torch.channels_last)
        marks.append(time.perf_counter())
        v = image_head(image(x))
        marks.append(time.perf_counter())
        hidden = text(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        pooled = hidden.masked_fill(mask_t[..., None] == 0, -torch.inf).amax(1)
        u = text_head(pooled)
        marks.append(time.perf_counter())
        logits = F.normalize(v, dim=1) @ F.normalize(u, dim=1).T / 0.1
        loss = 0.75 * F.cross_entropy(logits, target) + 0.25 * F.cross_entropy(
            logits.T, target
        )
        marks.append(time.perf_counter())
        adam.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        adam.step()
        marks.append(time.perf_counter())
        if record:
            for name, a, b in zip(STAGES, marks, marks[1:]):
                totals[name] += b - a

    del np
    return step, totals


def run_torch(config, steps, threads):
    return timed(*build_torch(config, threads), steps)


def run_same(config, steps, threads):
    """Both sides in one process, steps alternating (convirt, PyTorch, convirt, ...):
    what a Jupyter user who imported both sees, two OpenMP runtimes included."""
    ours, theirs = build_convirt(config, threads), build_torch(config, threads)
    for step, _ in (ours, theirs):
        step(False)
    for _ in range(steps):
        ours[0](True)
        theirs[0](True)
    return [{"stages": {k: v / steps for k, v in t.items()}} for _, t in (ours, theirs)]


def isolated(side, config, steps, threads):
    code = (
        f"import json, resource, sys; sys.path.insert(0, {HERE!r}); "
        f"sys.path.insert(0, {os.path.dirname(HERE)!r}); import bench_train as b; "
        f"r = b.run_{side}({config!r}, {steps}, {threads}); "
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
        "[x.update(max_rss_mib=rss) for x in (r if isinstance(r, list) else [r])]; "
        "print(json.dumps(r))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{side} {config} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", nargs="+", default=["small", "paper"], choices=sorted(CONFIGS)
    )
    parser.add_argument(
        "--steps", type=int, default=3, help="timed steps (after 1 warm-up)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="also run both sides in one process, steps alternating",
    )
    args = parser.parse_args()

    import convirt

    threads = args.threads or convirt.get_num_threads()
    header("bench_train: ConVIRT pretraining step", threads)
    peak, bits = measure_peak(threads)
    print(peak_line(peak, bits, threads))
    rows, shares = [], []
    runs = [(config, "separate") for config in args.config]
    if args.same_process:
        runs += [(config, "same, alternating") for config in args.config]
    for config, processes in runs:
        cfg = CONFIGS[config]
        if processes == "separate":
            ours = isolated("convirt", config, args.steps, threads)
            theirs = isolated("torch", config, args.steps, threads)
        else:
            ours, theirs = isolated("same", config, args.steps, threads)
        a, b = sum(ours["stages"].values()), sum(theirs["stages"].values())
        rows.append(
            [
                config,
                processes,
                f"ResNet-{cfg['depth']} {cfg['image_size']}px + {cfg['text']}",
                cfg["batch"],
                f"{cfg['batch'] / a:.2f}",
                f"{cfg['batch'] / b:.2f}",
                f"{b / a:.2f}x",
                f"{ours['max_rss_mib']:.0f}",
                f"{theirs['max_rss_mib']:.0f}",
            ]
        )
        for side, r, total in (("convirt", ours, a), ("PyTorch", theirs, b)):
            shares.append(
                [config, processes, side, f"{total:.2f}"]
                + [f"{100 * r['stages'][s] / total:.1f}%" for s in STAGES]
            )
    print_table(
        [
            "config",
            "processes",
            "model",
            "batch",
            "convirt pairs/s",
            "PyTorch pairs/s",
            "speed-up",
            "convirt peak MiB",
            "PyTorch peak MiB",
        ],
        rows,
        title=f"pretraining step, {threads} threads",
    )
    print_table(
        ["config", "processes", "side", "s/step"] + STAGES,
        shares,
        title="share of the step (PyTorch's backward covers both towers and the "
        "loss; convirt's backward the towers)",
    )


if __name__ == "__main__":
    main()
