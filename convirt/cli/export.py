"""``convirt export``: a pretraining run's encoders as Hugging Face-style folders (and the
image encoder as ONNX), through :mod:`convirt.export`."""

import argparse
import os

from .arguments import positive_int, requires

__all__ = ["add_export_command"]


def add_export_command(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="a run's encoders -> Hugging Face-style folders (and ONNX)",
        description="Write the encoders of a `convirt pretrain` run as Hugging Face-style\n"
        "folders, OUT_DIR/image_encoder/ and OUT_DIR/text_encoder/: config.json,\n"
        "model.safetensors, the tokenizer files and a README.md model card with the run's\n"
        "settings and data size. Encoder.from_pretrained reads them back exactly;\n"
        "transformers.BertModel reads the text folder. --onnx also writes\n"
        "OUT_DIR/image_encoder.onnx (needs torch and onnx).",
        epilog="examples:\n  convirt export run/ exported/\n"
        "  convirt export run/ exported/ --which last --onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a `convirt pretrain` folder")
    parser.add_argument("out_dir", metavar="OUT_DIR")
    parser.add_argument(
        "--which",
        choices=["best", "last"],
        default="best",
        help="which checkpoint (default: best, else last)",
    )
    parser.add_argument(
        "--onnx",
        action=requires("torch", "onnx", install="'convirt[onnx]'"),
        help="also the image encoder as ONNX (needs torch and onnx)",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        help="the side the ONNX graph is traced at (default: the run's)",
    )
    parser.set_defaults(run=run_export)


def run_export(args):
    from ..encoder import Encoder
    from ..export import run_summary

    summary = run_summary(args.run_dir, which=args.which)
    checkpoint = summary.get("checkpoint")
    if checkpoint is None:
        raise FileNotFoundError(
            f"{args.run_dir} has no checkpoint (looked for "
            f"{os.path.join(args.run_dir, 'checkpoint', args.which.upper())})"
        )
    written = []
    for tower in ("image", "text"):
        path = os.path.join(checkpoint, f"{tower}_encoder.safetensors")
        if not os.path.exists(path):
            continue  # a SimCLR run has no text tower
        encoder = Encoder.from_checkpoint(path)
        folder = os.path.join(args.out_dir, f"{tower}_encoder")
        written.append(encoder.save_pretrained(folder, run=args.run_dir))
        if tower == "image" and args.onnx:
            size = args.image_size or (summary.get("settings") or {}).get("image_size", 224)
            written.append(
                encoder.to_onnx(
                    os.path.join(args.out_dir, "image_encoder.onnx"), image_size=size
                )
            )
    print(
        f"exported {os.path.basename(checkpoint)} of {args.run_dir}: {', '.join(written)}"
    )
    return 0
