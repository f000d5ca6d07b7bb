"""``convirt prepare`` (a dataset into the memmap cache) and ``convirt synthetic`` (the
synthetic chest X-rays as PNG files and a CSV)."""

import argparse
import os
import sys

from .arguments import comma_list, non_negative_int, positive_int

__all__ = ["add_prepare_command", "add_synthetic_command", "save_contact_sheet"]


def add_prepare_command(subparsers):
    parser = subparsers.add_parser(
        "prepare",
        help="decode and resize a dataset once into a memmap cache",
        description="Decode every image of a paired image-report dataset once, resize it\n"
        "(shorter side to --size, centre crop) to grayscale uint8, and write a cache\n"
        "that training reads in place: OUT_DIR/images.u8 (a uint8 memmap),\n"
        "reports.jsonl and index.json. Re-running resumes; missing or corrupt images\n"
        "and empty reports are reported, skipped and counted, and the command fails\n"
        "(exit code 1) when no pair is left to prepare.",
        epilog="examples:\n"
        "  convirt prepare --csv pairs.csv --image-column path --report-column text cache/\n"
        "  convirt prepare --folder scans/ cache/\n"
        "  convirt prepare --mimic /data/mimic-cxr-jpg/2.0.0 --split train mimic-train/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_argument_group("source (choose one)")
    choice = source.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--csv",
        metavar="FILE",
        help="a CSV or TSV (comma or tab detected) with an image-path "
        "column and a report column",
    )
    choice.add_argument(
        "--folder",
        metavar="DIR",
        help="a folder of images, each with a report .txt of the same stem beside it",
    )
    choice.add_argument(
        "--mimic",
        metavar="DIR",
        help="a MIMIC-CXR-JPG folder (metadata and split CSVs, files/ tree)",
    )
    csv_group = parser.add_argument_group("CSV options")
    csv_group.add_argument(
        "--image-column",
        default="image",
        metavar="NAME",
        help="column holding image paths (default: image)",
    )
    csv_group.add_argument(
        "--report-column",
        default="report",
        metavar="NAME",
        help="column holding report text (default: report)",
    )
    csv_group.add_argument(
        "--label-columns",
        type=comma_list,
        metavar="A,B,...",
        help="numeric columns to keep as labels",
    )
    csv_group.add_argument(
        "--root",
        metavar="DIR",
        help="folder relative image paths are resolved against (default: the CSV's folder)",
    )
    folder_group = parser.add_argument_group("folder options")
    folder_group.add_argument(
        "--skip-missing-reports",
        action="store_true",
        help="leave out images without a report file (default: error)",
    )
    mimic_group = parser.add_argument_group("MIMIC-CXR options")
    mimic_group.add_argument(
        "--split",
        default="train",
        choices=["train", "validate", "test", "all"],
        help="official split to prepare (default: train)",
    )
    mimic_group.add_argument(
        "--views",
        type=comma_list,
        default=["PA", "AP"],
        metavar="V,W",
        help="ViewPosition values kept (default: PA,AP; 'all' for every view)",
    )
    mimic_group.add_argument(
        "--reports-root",
        metavar="DIR",
        help="where the files/pXX/.../sZZZ.txt reports tree lives "
        "(default: the MIMIC folder, then its mimic-cxr-reports/)",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    parser.add_argument(
        "--size",
        type=positive_int,
        default=256,
        help="output side in pixels (default: 256)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="decoding threads (default: min(4, CPUs))",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="discard what OUT_DIR holds instead of resuming",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_prepare)


def _dataset_from_args(args):
    from .. import datasets

    if args.csv:
        return datasets.CSVDataset(
            args.csv,
            image_column=args.image_column,
            report_column=args.report_column,
            root=args.root,
            label_columns=args.label_columns,
        )
    if args.folder:
        # The library's error names its keyword (missing_reports='skip'); the command
        # names its flag, so it asks for the skip and decides here.
        dataset = datasets.FolderDataset(args.folder, missing_reports="skip")
        if dataset.skipped and not args.skip_missing_reports:
            found = len(dataset) + len(dataset.skipped)
            examples = ", ".join(
                os.path.relpath(path, dataset.folder) for path in dataset.skipped[:3]
            )
            raise ValueError(
                f"{len(dataset.skipped)} of {found} images in {dataset.folder} have no "
                f".txt report beside them (e.g. {examples}); pass --skip-missing-reports "
                "to leave them out"
            )
        return dataset
    views = None if [v.lower() for v in args.views] == ["all"] else args.views
    return datasets.MIMICCXRDataset(
        args.mimic,
        split=None if args.split == "all" else args.split,
        views=views,
        reports_root=args.reports_root,
    )


def run_prepare(args):
    import warnings

    from .. import prepared

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = _dataset_from_args(args)
    for warning in caught:
        print(f"convirt prepare: warning: {warning.message}", file=sys.stderr)
    print(
        f"convirt prepare: {len(dataset)} image-report pairs from {dataset!r}",
        file=sys.stderr,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the summary below says the same
        summary = prepared.prepare(
            dataset,
            args.out_dir,
            size=args.size,
            workers=args.workers,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
    index = os.path.join(args.out_dir, "index.json")
    if not summary.prepared:
        raise ValueError(
            f"nothing was prepared: {summary}"
            + (f" (the reasons are listed in {index})" if summary.skipped else "")
        )
    print(summary)
    if summary.skipped:
        print(f"skipped entries are listed with their reason in {index}")
    return 0


# ------------------------------------------------------------------------------------
# convirt synthetic
# ------------------------------------------------------------------------------------


def add_synthetic_command(subparsers):
    parser = subparsers.add_parser(
        "synthetic",
        help="write a synthetic chest X-ray set as PNGs and a CSV",
        description="Write synthetic chest radiographs with reports\n"
        "(convirt.datasets.synthetic_cxr) to OUT_DIR: images/NNNNNN.png, and\n"
        "reports.csv with the columns image, report and one 0/1 column per label.\n"
        "The CSV is ready for `convirt prepare --csv OUT_DIR/reports.csv`.",
        epilog="example:\n  convirt synthetic --n 500 --size 256 synth/\n"
        "  convirt prepare --csv synth/reports.csv synth-cache/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    parser.add_argument(
        "--n", type=positive_int, default=200, help="number of images (default: 200)"
    )
    parser.add_argument(
        "--size", type=positive_int, default=128, help="image side in pixels (default: 128)"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed (default: 0)"
    )
    parser.add_argument(
        "--difficulty",
        type=float,
        default=1.0,
        help="nuisance variation up and findings fainter above 1, the "
        "reverse below (default: 1.0)",
    )
    parser.add_argument(
        "--report-files",
        action="store_true",
        help="also write each report as images/NNNNNN.txt beside its PNG "
        "(the layout `convirt prepare --folder` reads)",
    )
    parser.add_argument(
        "--contact-sheet",
        metavar="PNG",
        help="also save a grid of the first 16 images with their labels",
    )
    parser.set_defaults(run=run_synthetic)


def run_synthetic(args):
    import csv
    import io

    from PIL import Image

    from ..synthetic import synthetic_cxr

    if args.size < 16:
        raise ValueError(f"--size must be at least 16; got {args.size}")
    result = synthetic_cxr(
        args.n, size=args.size, seed=args.seed, difficulty=args.difficulty
    )
    images_dir = os.path.join(args.out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    rows = []
    for k in range(args.n):
        name = f"{k:06d}"
        Image.fromarray(result.images[k]).save(os.path.join(images_dir, name + ".png"))
        if args.report_files:
            with open(os.path.join(images_dir, name + ".txt"), "w", encoding="utf-8") as f:
                f.write(result.reports[k] + "\n")
        rows.append(
            [f"images/{name}.png", result.reports[k]]
            + [str(int(v)) for v in result.labels[k]]
        )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image", "report"] + list(result.label_names))
    writer.writerows(rows)
    from .._io import atomic_write

    csv_path = os.path.join(args.out_dir, "reports.csv")
    atomic_write(csv_path, text.getvalue().encode("utf-8"))
    if args.contact_sheet:
        save_contact_sheet(
            result.images, result.labels, result.label_names, args.contact_sheet
        )
    print(
        f"wrote {args.n} synthetic chest X-rays ({args.size}x{args.size}) to "
        f"{images_dir} and {csv_path}"
    )
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
