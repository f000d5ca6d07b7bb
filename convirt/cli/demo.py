"""``convirt demo``: the main job on built-in synthetic radiographs
(:func:`convirt.experiments.demo.run_demo`)."""

import argparse

from .arguments import non_negative_int, positive_int

__all__ = ["QUICK", "add_demo_command"]

# What --quick is, said the same way here and in README.md (tests/test_cli_messages.py
# checks): the preset of convirt.experiments.demo.PRESETS["quick"], timed in
# docs/LEARNING.md, section 5 (2.5 minutes in all on one Zen 5 thread, 2.2 of them
# pretraining).
QUICK = "a smaller preset: 2000 pairs, 620 steps, about 2.5 minutes on one core"


def add_demo_command(subparsers):
    parser = subparsers.add_parser(
        "demo",
        help="the main job: pretrain on built-in synthetic radiographs, evaluate",
        description="Build synthetic chest radiographs with reports, pretrain a ResNet-18\n"
        "image tower with ConVIRT against the real all-MiniLM-L6-v2 text tower (frozen,\n"
        "its head set to the training sentences' principal directions), then compare the\n"
        "pretrained image encoder with a randomly initialised one and a supervised\n"
        "ceiling: linear-probe AUC per finding with 1/10/100% of the labels, and\n"
        "image->image and text->image Precision@5/10 per category.\n"
        "Prints the table, writes results.md/json, the loss and probe curves (PNG) and\n"
        "the checkpoint to OUT_DIR.",
        epilog="examples:\n  convirt demo\n  convirt demo --quick demo-quick/\n"
        "  convirt demo --epochs 8 --train 8000 longer-demo/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "out_dir",
        nargs="?",
        default="convirt-demo",
        metavar="OUT_DIR",
        help="output folder (default: convirt-demo)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=QUICK,
    )
    parser.add_argument("--train", type=positive_int, help="training pairs")
    parser.add_argument("--val", type=positive_int, help="validation pairs")
    parser.add_argument("--test", type=positive_int, help="test images")
    parser.add_argument("--image-size", type=positive_int, help="image side in pixels")
    parser.add_argument("--epochs", type=positive_int, help="pretraining epochs")
    parser.add_argument("--batch-size", type=positive_int, help="pairs per step")
    parser.add_argument("--lr", type=float, help="Adam learning rate")
    parser.add_argument(
        "--text",
        choices=["impression", "report"],
        help="pair each image with its IMPRESSION section (default) or the "
        "whole report (the paper; slower to learn)",
    )
    parser.add_argument(
        "--augment", choices=["mild", "paper"], help="image transforms (default: mild)"
    )
    parser.add_argument("--freeze-layers", type=int, help="frozen MiniLM layers (of 6)")
    parser.add_argument(
        "--freeze-text",
        action=argparse.BooleanOptionalAction,
        help="keep the whole text tower (and its head) fixed",
    )
    parser.add_argument(
        "--pooling", choices=["max", "mean", "cls"], help="text pooling (paper: max)"
    )
    parser.add_argument(
        "--text-head",
        choices=["random", "principal"],
        help="the text tower's projection head: as initialised (the paper) or set to "
        "the training sentences' principal directions (default)",
    )
    parser.add_argument(
        "--schedule",
        choices=["plateau", "cosine"],
        help="learning-rate schedule: halve on a validation plateau, or linear warm-up "
        "then cosine decay to 0 over the planned steps",
    )
    parser.add_argument(
        "--warmup-steps", type=int, help="linear warm-up steps of the cosine schedule"
    )
    parser.add_argument("--temperature", type=float, help="loss temperature (paper: 0.1)")
    parser.add_argument(
        "--learnable-temperature",
        action=argparse.BooleanOptionalAction,
        help="learn the temperature (its log) with the encoders",
    )
    parser.add_argument(
        "--supervised-epochs",
        type=int,
        help="epochs of the supervised ceiling row (0: leave it out)",
    )
    parser.add_argument("--difficulty", type=float, help="synthetic findings' subtlety")
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed (default: 0)"
    )
    parser.add_argument("--threads", type=positive_int, help="threads (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_demo_command)


def run_demo_command(args):
    import convirt

    from ..experiments.demo import run_demo

    if args.threads:
        convirt.set_num_threads(args.threads)
    run_demo(
        args.out_dir,
        "quick" if args.quick else "default",
        progress=not args.no_progress,
        train=args.train,
        val=args.val,
        test=args.test,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        text=args.text,
        augment=args.augment,
        freeze_layers=args.freeze_layers,
        freeze_text=args.freeze_text,
        pooling=args.pooling,
        text_head=args.text_head,
        temperature=args.temperature,
        learnable_temperature=args.learnable_temperature,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        supervised_epochs=args.supervised_epochs,
        difficulty=args.difficulty,
    )
    return 0
