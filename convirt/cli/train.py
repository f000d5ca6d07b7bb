"""``convirt pretrain`` (ConVIRT or SimCLR on a prepared cache, resumable) and
``convirt embed`` (images -> features with a trained encoder)."""

import argparse
import json
import os
import sys

from .._io import read_json_object
from .arguments import non_negative_int, positive_int

__all__ = ["add_embed_command", "add_pretrain_command"]


PRETRAIN_DEFAULTS = {
    "image_model": "resnet50",
    "in_channels": 1,
    "text_model": None,
    "freeze_layers": None,
    "image_size": 224,
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-4,
    "weight_decay": 1e-6,
    "temperature": 0.1,
    "image_to_text_weight": 0.75,
    "proj_dim": 512,
    "schedule": "plateau",
    "patience": 5,
    "early_stopping": None,
    "val_fraction": 0.1,
    "seed": 0,
    "checkpoint_every": None,
    "method": "convirt",
    "max_length": 128,
    "init": None,
    "sync_batchnorm": False,
    "micro_batch": None,
}


def add_pretrain_command(subparsers):
    parser = subparsers.add_parser(
        "pretrain",
        help="ConVIRT (or SimCLR) pretraining on a prepared cache",
        description="Pretrain an image encoder on a cache written by `convirt prepare`,\n"
        "with the paper's defaults (ResNet-50 at 224 px, temperature 0.1, lambda 0.75,\n"
        "Adam lr 1e-4 with weight decay 1e-6, batch 32, the learning rate halved when\n"
        "the validation loss has not improved for 5 epochs). Settings come from flags or\n"
        "a JSON config file (flags win). Checkpoints (last and best) go to OUT_DIR;\n"
        "--resume continues a run exactly where it stopped, with the run's settings:\n"
        "--epochs (in all: --epochs 3 extends a 2-epoch run by one), --patience,\n"
        "--early-stopping, --checkpoint-every, --threads and --no-progress apply to it;\n"
        "a flag that would change any other setting is refused.",
        epilog="examples:\n"
        "  convirt pretrain cache/ run/ --text-model /models/Bio_ClinicalBERT\n"
        "  convirt pretrain cache/ run/ --config run.json\n"
        "  convirt pretrain --resume run/ --epochs 20\n"
        "  convirt pretrain cache/ simclr-run/ --method simclr\n"
        "  mpirun -np 4 convirt pretrain cache/ run/ --batch-size 128 --sync-batchnorm\n"
        "\nUnder mpirun every rank runs this command: --batch-size is the global batch\n"
        "(a multiple of the ranks), rank 0 writes the run folder and prints.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "cache",
        nargs="?",
        metavar="CACHE",
        help="a prepared cache (convirt prepare); with --resume, optional",
    )
    parser.add_argument("out_dir", nargs="?", metavar="OUT_DIR", help="run folder")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR (its checkpoint and config)",
    )
    parser.add_argument("--config", metavar="JSON", help="settings as a JSON object")
    parser.add_argument("--method", choices=["convirt", "simclr"])
    parser.add_argument("--image-model", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--in-channels", type=positive_int)
    parser.add_argument(
        "--init",
        metavar="SAFETENSORS",
        help="initial image weights (e.g. a torchvision ImageNet ResNet "
        "saved as safetensors)",
    )
    parser.add_argument(
        "--text-model",
        metavar="DIR",
        help="a Hugging Face BERT directory (default: the bundled all-MiniLM-L6-v2)",
    )
    parser.add_argument(
        "--freeze-layers",
        type=int,
        help="BERT layers frozen with the embeddings (default: half)",
    )
    parser.add_argument("--image-size", type=positive_int)
    parser.add_argument(
        "--epochs", type=positive_int, help="epochs in all (with --resume too)"
    )
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--image-to-text-weight", type=float, help="the paper's lambda")
    parser.add_argument("--proj-dim", type=positive_int)
    parser.add_argument(
        "--max-length", type=positive_int, help="longest tokenized sentence (default 128)"
    )
    parser.add_argument("--schedule", choices=["plateau", "cosine", "none"])
    parser.add_argument("--patience", type=positive_int, help="plateau patience (epochs)")
    parser.add_argument(
        "--early-stopping",
        type=positive_int,
        help="stop after this many epochs without improvement",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="share of the cache held out for validation (default 0.1)",
    )
    parser.add_argument("--checkpoint-every", type=positive_int, help="steps")
    parser.add_argument(
        "--sync-batchnorm",
        action="store_true",
        default=None,
        help="under mpirun: batch-norm statistics of the global batch, not each rank's",
    )
    parser.add_argument(
        "--micro-batch",
        type=positive_int,
        help="embed and backpropagate in chunks of this many pairs (gradient caching: "
        "activation memory of the chunk; batch norm sees each chunk's statistics)",
    )
    parser.add_argument("--seed", type=non_negative_int)
    parser.add_argument("--threads", type=positive_int)
    parser.add_argument("--no-progress", action="store_true")
    _PRETRAIN_FLAGS.update(
        {a.dest: a for a in parser._actions if a.dest in PRETRAIN_DEFAULTS}
    )
    parser.set_defaults(run=run_pretrain)


def _is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value):
    """A number float64 holds (math.isfinite would raise OverflowError on 10**400)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and abs(value) <= sys.float_info.max


def _setting_rule(action):
    """(what a JSON value must be, its check) for the setting of a pretrain flag: what
    the flag's choices or type would give."""
    if action.choices is not None:
        choices = list(action.choices)
        return f"one of {choices}", lambda value: value in choices
    if isinstance(action, argparse._StoreTrueAction):
        return "true or false", lambda value: isinstance(value, bool)
    if action.type is positive_int:
        return "a positive integer", lambda value: _is_integer(value) and value >= 1
    if action.type is non_negative_int:
        return "an integer >= 0", lambda value: _is_integer(value) and value >= 0
    if action.type is int:
        return "an integer", _is_integer
    if action.type is float:
        return "a finite number", _is_finite_number
    return "a string", lambda value: isinstance(value, str)


# The pretrain flags by setting, filled by add_pretrain_command: a JSON settings file is
# checked against the flags' own choices and types. "schedule": null is no schedule.
_PRETRAIN_FLAGS = {}
_NULLABLE = {"schedule"}


def _check_settings(settings, path):
    """ValueError naming the file and the setting when a setting read from a JSON file
    is not what its flag would give (settings that are not flags, such as a run's
    "cache", are left alone). Ranges are the library's to check, with its messages."""
    for key, value in settings.items():
        if key not in _PRETRAIN_FLAGS:
            continue
        expected, check = _setting_rule(_PRETRAIN_FLAGS[key])
        nullable = PRETRAIN_DEFAULTS[key] is None or key in _NULLABLE
        if not (check(value) or (nullable and value is None)):
            raise ValueError(
                f"{path}: setting {key!r} must be {expected}"
                f"{' or null' if nullable else ''}, got {repr(value)[:60]}"
            )


# What --resume may change (the setting, and the Trainer.resume keyword it is): when to
# stop, to lower the learning rate and to save. Every other setting is the run's own.
RESUME_CHANGES = {
    "epochs": None,  # fit()'s
    "patience": "plateau_patience",
    "early_stopping": "early_stopping_patience",
    "checkpoint_every": "checkpoint_every",
}


def _given(args):
    """{setting: (value, where it was given)} from --config and the flags (flags win),
    without the defaults."""
    given = {}
    if args.config:
        config = read_json_object(args.config, ValueError, "a settings file (JSON)")
        unknown = set(config) - set(PRETRAIN_DEFAULTS)
        if unknown:
            raise ValueError(
                f"{args.config}: unknown settings {sorted(unknown)}; known: "
                f"{sorted(PRETRAIN_DEFAULTS)}"
            )
        _check_settings(config, args.config)
        given.update({key: (value, args.config) for key, value in config.items()})
    for key in PRETRAIN_DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            given[key] = (value, None)
    if given.get("schedule", (None,))[0] == "none":
        given["schedule"] = (None, given["schedule"][1])
    return given


def _settings(args):
    settings = dict(PRETRAIN_DEFAULTS)
    settings.update({key: value for key, (value, _) in _given(args).items()})
    return settings


def _resume_changes(args, settings):
    """The settings that --resume changes ({setting: new value}); a flag (or a --config
    setting) that would change any other setting of the run raises ValueError naming
    it and the run's value."""
    changes = {}
    for key, (value, source) in _given(args).items():
        trained = settings.get(key, PRETRAIN_DEFAULTS[key])
        if value == trained:
            continue
        if key in RESUME_CHANGES:
            changes[key] = value
            continue
        name = f"--{key.replace('_', '-')}" if source is None else f"{key!r} of {source}"
        if isinstance(trained, bool):
            was = "with it" if trained else "without it"
        else:
            was = "with the default" if trained is None else f"with {trained}"
        raise ValueError(
            f"{name} cannot change on --resume: the run was trained {was} (it may "
            f"change {', '.join('--' + k.replace('_', '-') for k in RESUME_CHANGES)})"
        )
    return changes


def _split(n, fraction, seed):
    import numpy as np

    if not 0 <= fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng([seed, 0xDA7A]).permutation(n)
    n_val = round(n * fraction)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class _Subset:
    """Rows of a prepared cache, still read in place (the images are memmap views)."""

    def __init__(self, dataset, index):
        self.images = _IndexedImages(dataset.images, index)
        self.reports = [dataset.reports[i] for i in index]


class _IndexedImages:
    def __init__(self, images, index):
        self._images, self._index = images, index

    def __len__(self):
        return len(self._index)

    def __getitem__(self, i):
        return self._images[self._index[i]]


def run_pretrain(args):
    import convirt

    from ..callbacks import CSVLogger
    from ..distributed import world
    from ..prepared import PreparedDataset

    group = world()  # before --threads, which it must not override
    if args.threads:
        convirt.set_num_threads(args.threads)
    progress = not args.no_progress
    say = print if group.rank == 0 else (lambda *a, **k: None)
    if args.resume:
        settings, trainer = _resume(args, progress, say, group.rank == 0)
        cache, out_dir = args.cache or settings["cache"], args.resume
    else:
        if not args.cache or not args.out_dir:
            raise ValueError("give CACHE and OUT_DIR (or --resume RUN_DIR)")
        settings = _settings(args)
        cache, out_dir = args.cache, args.out_dir
        settings["cache"] = os.path.abspath(cache)
        trainer = None
    dataset = PreparedDataset(cache)
    train_index, val_index = _split(
        len(dataset), settings["val_fraction"], settings["seed"]
    )
    train = _Subset(dataset, train_index)
    val = _Subset(dataset, val_index) if len(val_index) >= 2 else None
    if trainer is None:
        trainer = _new_trainer(settings, out_dir, progress)
        if group.rank == 0:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "settings.json"), "w") as f:
                json.dump(settings, f, indent=2)
    say(f"{trainer!r}\n{len(train_index)} training and {len(val_index)} validation pairs")
    if group.size > 1:
        say(f"{group.size} MPI ranks, {convirt.get_num_threads()} threads each")
    trainer.fit(
        train if settings["method"] == "convirt" else (train.images, None),
        val=val,
        epochs=settings["epochs"],
        batch_size=settings["batch_size"],
    )
    if group.rank != 0:
        return 0
    curve = os.path.join(out_dir, "loss_curve.png")
    trainer.plot().savefig(curve, dpi=120, bbox_inches="tight")
    best = trainer.checkpoints.pointer("BEST") or trainer.checkpoints.pointer("LAST")
    logs = [c.path for c in trainer.callbacks if isinstance(c, CSVLogger)]
    print(
        f"done: {trainer.step_count} steps; best checkpoint {best}; loss curve {curve}"
        + "".join(f"; metrics {path}" for path in logs)
    )
    return 0


def _resume(args, progress, say, writes):
    """(the run's settings, with what the flags change; the resumed Trainer). The
    settings.json of the run is rewritten with the changes (by rank 0: `writes`)."""
    import convirt

    from .._io import atomic_write

    settings_path = os.path.join(args.resume, "settings.json")
    if not os.path.exists(settings_path):
        raise FileNotFoundError(
            f"{args.resume} is not a pretrain run folder (no settings.json)"
        )
    if args.out_dir and os.path.abspath(args.out_dir) != os.path.abspath(args.resume):
        raise ValueError(
            f"OUT_DIR ({args.out_dir}) cannot be given with --resume: the run goes on in "
            f"{args.resume}"
        )
    settings = read_json_object(settings_path, ValueError, "the run's settings.json")
    _check_settings(settings, settings_path)
    changes = _resume_changes(args, settings)
    settings.update(changes)
    trainer = convirt.Trainer.resume(
        os.path.join(args.resume, "checkpoint"),
        progress=progress,
        metrics_csv=os.path.join(args.resume, "metrics.csv"),
        **{
            keyword: settings.get(key, PRETRAIN_DEFAULTS[key])
            for key, keyword in RESUME_CHANGES.items()
            if keyword is not None
        },
    )
    say(f"resuming at step {trainer.step_count}, epoch {trainer.epoch}")
    if "epochs" in changes and changes["epochs"] <= trainer.epoch:
        raise ValueError(
            f"--epochs {changes['epochs']} counts the epochs in all, and the run has "
            f"trained {trainer.epoch}: give more to extend it"
        )
    if changes:
        say("changed on resume: " + ", ".join(f"{k} {v}" for k, v in changes.items()))
        if writes:
            text = json.dumps(settings, indent=2).encode("utf-8")
            atomic_write(settings_path, text)
    return settings, trainer


def _new_trainer(settings, out_dir, progress):
    import convirt

    from ..text import minilm_path

    build = getattr(convirt.Encoder, settings["image_model"])
    image = build(
        settings["in_channels"], proj_dim=settings["proj_dim"], seed=settings["seed"]
    )
    if settings.get("init"):
        image.load(settings["init"], strict=False)
    text = None
    if settings["method"] == "convirt":
        text = convirt.Encoder.from_pretrained(
            settings["text_model"] or minilm_path(),
            freeze_layers=settings["freeze_layers"],
            proj_dim=settings["proj_dim"],
            seed=settings["seed"] + 1,
            max_length=settings["max_length"],
        )
    loss = convirt.ContrastiveLoss(
        temperature=settings["temperature"],
        image_to_text_weight=settings["image_to_text_weight"],
    )
    return convirt.Trainer(
        image,
        text,
        loss,
        method=settings["method"],
        image_size=settings["image_size"],
        lr=settings["lr"],
        weight_decay=settings["weight_decay"],
        schedule=settings["schedule"],
        plateau_patience=settings["patience"],
        early_stopping_patience=settings["early_stopping"],
        seed=settings["seed"],
        checkpoint_dir=os.path.join(out_dir, "checkpoint"),
        metrics_csv=os.path.join(out_dir, "metrics.csv"),
        checkpoint_every=settings["checkpoint_every"],
        sync_batchnorm=bool(settings.get("sync_batchnorm")),
        micro_batch=settings.get("micro_batch"),
        progress=progress,
    )


# ------------------------------------------------------------------------------------
# convirt embed
# ------------------------------------------------------------------------------------


def add_embed_command(subparsers):
    parser = subparsers.add_parser(
        "embed",
        help="images -> features with their ids, with a trained encoder",
        description="Encode every image of a prepared cache (or a folder of images) with an\n"
        "image encoder checkpoint and save the features (N, D) with the id of each\n"
        "image (its source file): OUT.npy is the float32 array and beside it a table\n"
        "of id + features (OUT.parquet when pyarrow is installed, else OUT.csv);\n"
        "OUT.parquet or OUT.csv asks for that table. Backbone features h by default,\n"
        "projected embeddings with --projected.",
        epilog="examples:\n"
        "  convirt embed run/checkpoint/step-00001234/image_encoder.safetensors cache/ "
        "features.npy\n  convirt embed --run run/ cache/ features.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "checkpoint",
        nargs="?",
        metavar="ENCODER",
        help="an image encoder .safetensors file (Encoder.save), or a run folder",
    )
    parser.add_argument(
        "images", metavar="CACHE_OR_FOLDER", help="a prepared cache, or a folder of images"
    )
    parser.add_argument("output", metavar="OUT", help="OUT.npy, OUT.parquet or OUT.csv")
    parser.add_argument(
        "--run",
        metavar="RUN_DIR",
        dest="run_dir",
        help="use a checkpoint of a pretrain run instead of ENCODER, its images seen as "
        "the run saw them (its view size and normalisation)",
    )
    parser.add_argument(
        "--which",
        choices=("BEST", "LAST"),
        default="BEST",
        help="which checkpoint of the run (default: BEST, else LAST)",
    )
    parser.add_argument(
        "--projected",
        action="store_true",
        help="projected embeddings g(h) instead of features h",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="resize to this side first (default: the run's training image_size with "
        "--run; else as stored, 256 for a folder)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--threads", type=positive_int)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run_embed)


def run_embed(args):
    import sys

    import numpy as np

    import convirt

    from ..augment import eval_augment
    from ..embeddings import check_embeddings_path, save_embeddings
    from ..images import IMAGE_EXTENSIONS, decode_image
    from ..prepared import PreparedDataset
    from ..runs import load_run

    check_embeddings_path(args.output)  # before the work
    if args.threads:
        convirt.set_num_threads(args.threads)
    if args.run_dir and args.checkpoint:
        raise ValueError("give ENCODER or --run RUN_DIR, not both")
    source = args.run_dir or args.checkpoint
    if source is None:
        raise ValueError("give ENCODER or --run RUN_DIR")
    image_size, view = args.image_size, None
    files_list = None
    if os.path.isdir(source):  # a run: its encoder, view size and normalisation
        run = load_run(source, args.which, load_text=False)
        encoder = run.image_encoder
        if image_size is not None and image_size != run.image_size:
            print(
                f"convirt embed: warning: --image-size {image_size} differs from the "
                f"{run.image_size} px the run was trained at; leave it out to see the "
                "images as the run did",
                file=sys.stderr,
            )
        image_size = image_size or run.image_size
        view = run.eval_view(image_size)
    else:
        encoder = convirt.Encoder.from_checkpoint(source)
        if encoder.kind != "image":
            raise ValueError(
                f"{source} holds a {encoder.kind} encoder; embed needs an image one"
            )
        if image_size is not None:
            view = eval_augment(image_size)  # resized to the side asked for
    if os.path.exists(os.path.join(args.images, "index.json")):
        cache = PreparedDataset(args.images)
        images, ids = cache.images, cache.sources  # read in place
    elif os.path.isdir(args.images):
        files = sorted(
            os.path.join(d, f)
            for d, _, names in os.walk(args.images)
            for f in names
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise FileNotFoundError(f"no images in {args.images}")
        images = np.stack([decode_image(f, image_size or 256) for f in files])
        ids = files
        files_list = os.path.splitext(args.output)[0] + ".files.txt"
        with open(files_list, "w") as f:
            f.write("\n".join(files) + "\n")
    else:
        raise FileNotFoundError(f"{args.images} is neither a prepared cache nor a folder")
    if view is not None:
        # The evaluation view: resized, normalised as in training, nothing random.
        shape = (len(images), view.size, view.size, *images.shape[3:])
        images = view(images, out=np.empty(shape, np.float32))
    which = encoder.embed if args.projected else encoder.encode
    features = which(
        images, batch_size=args.batch_size, progress=None if not args.no_progress else False
    )
    written = save_embeddings(args.output, ids, features)
    print(
        f"wrote {features.shape[0]} x {features.shape[1]} float32 features to "
        f"{' and '.join(written)} (with the ids)"
    )
    if files_list:
        print(
            f"wrote the image files, one per line in the features' order, to {files_list}"
        )
    return 0
