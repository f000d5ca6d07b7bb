"""The ``convirt`` command line, the top of the package: it imports the library and the
experiments, and nothing imports it.

Each subcommand is two functions in a module of this package, one module per command
group (:mod:`.prepare`: prepare and synthetic; :mod:`.train`: pretrain and embed;
:mod:`.evaluate`; :mod:`.export`; :mod:`.demo`; :mod:`.zero_shot`): ``add_NAME_command(subparsers)``, which declares the
subcommand's arguments and sets ``run=`` on its parser, and ``run_NAME(args)``, which
does the work and returns an exit code. To add one, write those two functions (import
heavy modules inside ``run_NAME`` so that ``convirt --help`` stays fast) and list the
``add_`` function in COMMANDS below. Shared argument types are in :mod:`.arguments`.

Errors the user can fix (a missing file, a wrong column name, a missing optional
package, a run whose loss diverged, sizes too large for the memory) are printed as one
line, ``convirt NAME: error: ...``, with exit code 1; ``--traceback`` shows the full
traceback instead.
"""

import argparse
import sys

from ..errors import ConvirtError, TrainingDiverged
from .demo import add_demo_command
from .evaluate import add_evaluate_command
from .export import add_export_command
from .prepare import add_prepare_command, add_synthetic_command
from .train import add_embed_command, add_pretrain_command
from .zero_shot import add_zero_shot_command

__all__ = ["COMMANDS", "build_parser", "main"]

# Add a subcommand by listing its add_NAME_command function here.
COMMANDS = [
    add_prepare_command,
    add_synthetic_command,
    add_demo_command,
    add_pretrain_command,
    add_embed_command,
    add_evaluate_command,
    add_export_command,
    add_zero_shot_command,
]


def build_parser():
    """The argparse parser of ``convirt`` with every subcommand in COMMANDS."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="convirt",
        description="ConVIRT: contrastive pretraining of medical image "
        "encoders from paired images and reports. Run `convirt COMMAND --help` for the "
        "options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"convirt {__version__}")
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="show the full traceback when a command fails",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(subparsers)
    return parser


def _end_mpi_job(command):
    """Under mpirun, a rank that failed ends the whole job (MPI_Abort), naming itself,
    rather than leave the other ranks waiting in a collective."""
    from ..distributed import launched_size, world

    if launched_size() > 1:
        world().abort(f"convirt {command} failed on this rank (see above)")


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
    except (ConvirtError, OSError, ValueError, ImportError, MemoryError) as error:
        if args.traceback:
            raise
        message = str(error)
        if isinstance(error, MemoryError):
            detail = f" ({message})" if message else ""
            message = f"out of memory{detail}: {_memory_hint(args)}"
        if isinstance(error, TrainingDiverged):
            message += " Hint: run it again with a lower --lr (e.g. 10 times lower)."
        print(f"convirt {args.command}: error: {message}", file=sys.stderr)
        _end_mpi_job(args.command)
        return 1


# The options whose values set how much memory a command needs, as argparse names them.
_MEMORY_OPTIONS = (
    "n",
    "synthetic",
    "size",
    "image_size",
    "batch_size",
    "pretrain_batch_size",
    "finetune_batch_size",
    "proj_dim",
    "max_length",
)


def _memory_hint(args):
    """What to reduce after a MemoryError: the options of this command that size it."""
    flags = [
        f"--{name.replace('_', '-')}" for name in _MEMORY_OPTIONS if hasattr(args, name)
    ]
    if not flags:
        return "free some memory, or give a smaller input"
    listed = flags[0] if len(flags) == 1 else ", ".join(flags[:-1]) + " or " + flags[-1]
    return f"reduce {listed}, or free some memory"
