"""``convirt zero-shot``: classify images by sentences with a run's two encoders."""

import argparse
import os

from .._io import read_json_object
from ..errors import DataFileError
from .arguments import positive_int

__all__ = ["add_zero_shot_command"]


def add_zero_shot_command(subparsers):
    parser = subparsers.add_parser(
        "zero-shot",
        help="zero-shot classification of images by class sentences (prompts)",
        description="Score every image of a prepared cache (or a folder of images) against\n"
        "classes named by sentences, with the image and text encoders of a pretrain run:\n"
        "no labelled image is needed. PROMPTS.json maps each class to a sentence or a\n"
        "list of sentences (multi-class: a softmax over the classes; a list is averaged,\n"
        'a prompt ensemble), or each finding to {"positive": ..., "negative": ...}\n'
        "(multi-label: each finding scored on its own, positive against negative).\n"
        "Prints one row per class (with the AUC when the cache has label columns named\n"
        "like the classes) and writes the scores per image with --output.",
        epilog="examples:\n"
        '  prompts.json: {"Cardiomegaly": ["The heart is enlarged.", "Cardiomegaly."],\n'
        '                 "No Finding": ["No acute cardiopulmonary process."]}\n'
        '  pairs.json:   {"Edema": {"positive": "There is pulmonary edema.",\n'
        '                           "negative": "There is no pulmonary edema."}}\n'
        "  convirt zero-shot --run run/ --prompts prompts.json cache/ --output scores.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "images", metavar="DATA", help="a prepared cache, or a folder of images"
    )
    parser.add_argument(
        "--run",
        required=True,
        metavar="RUN_DIR",
        dest="run_dir",
        help="a pretrain run (its checkpoint/ folder) or a checkpoint folder itself",
    )
    parser.add_argument(
        "--prompts", required=True, metavar="PROMPTS.json", help="class -> sentence(s)"
    )
    parser.add_argument(
        "--which",
        choices=("BEST", "LAST"),
        default="BEST",
        help="which checkpoint of the run (default: BEST, else LAST)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="view size (default: the run's training image_size)",
    )
    parser.add_argument(
        "--temperature", type=float, default=0.1, help="softmax temperature (default 0.1)"
    )
    parser.add_argument("--output", metavar="SCORES.csv", help="write the scores per image")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--threads", type=positive_int)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(run=run_zero_shot)


def _read_prompts(path):
    """The classes and their sentences in the --prompts file: a regular file (a FIFO
    would block) holding a non-empty JSON object."""
    expected = "a JSON object: class -> sentence(s)"
    prompts = read_json_object(path, DataFileError, expected)
    if not prompts:
        raise DataFileError(f"{path} names no class; expected {expected}")
    # JSON has no tuples: a pair is the {"positive": ..., "negative": ...} object.
    return prompts


def run_zero_shot(args):
    import numpy as np

    import convirt

    from ..evaluation import zero_shot
    from ..images import IMAGE_EXTENSIONS, decode_image
    from ..prepared import PreparedDataset
    from ..runs import load_run

    if args.threads:
        convirt.set_num_threads(args.threads)
    prompts = _read_prompts(args.prompts)
    image, text, config, _, _ = load_run(args.run_dir, args.which)
    if text is None:
        raise ValueError(f"{args.run_dir} is a SimCLR run: it has no text encoder")
    image_size = args.image_size or config.image_size
    labels, names = None, None
    if os.path.exists(os.path.join(args.images, "index.json")):
        data = PreparedDataset(args.images)
        images = data.images  # read in place
        names = [f"{i}" for i in range(len(images))]
        label_names = list(getattr(data, "label_names", None) or [])
        if all(name in label_names for name in prompts):
            columns = [label_names.index(name) for name in prompts]
            labels = data.labels[:, columns]
            if np.isnan(labels).any():
                print("note: some labels are blank; no AUC")
                labels = None
    elif os.path.isdir(args.images):
        files = sorted(
            os.path.join(d, f)
            for d, _, found in os.walk(args.images)
            for f in found
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise FileNotFoundError(f"no images in {args.images}")
        images = np.stack([decode_image(f, max(256, image_size or 0)) for f in files])
        names = files
    else:
        raise FileNotFoundError(f"{args.images} is neither a prepared cache nor a folder")
    result = zero_shot(
        image,
        text,
        images,
        prompts,
        None if labels is None else labels.astype(np.int8),
        temperature=args.temperature,
        image_size=image_size,
        batch_size=args.batch_size,
        progress=False if args.no_progress else None,
    )
    print(result)
    if args.output:
        import csv

        with open(args.output, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", *result.class_names])
            for name, row in zip(names, result.scores):
                writer.writerow([name, *(f"{s:.8g}" for s in row)])
        print(f"wrote the scores of {len(names)} images to {args.output}")
    return 0
