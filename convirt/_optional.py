"""Optional packages: how a missing one is reported (:func:`require`), and the progress
bar, which uses ipywidgets only when it is there.

tqdm.auto draws a widget in Jupyter, but only when ipywidgets is installed; without it,
every bar prints a TqdmWarning ("IProgress not found") and falls back to text. convirt
does not depend on ipywidgets, so :func:`progress_bar` asks for the notebook bar only
when ipywidgets imports, and draws tqdm's text bar otherwise, without the warning.
"""

import importlib
import sys

__all__ = ["interactive", "progress_bar", "require", "tqdm_class"]


def tqdm_class():
    """tqdm.auto's class (a widget in Jupyter) when ipywidgets is importable, else
    tqdm's plain text bar."""
    try:
        import ipywidgets  # noqa: F401 (only asks whether it imports)
    except ImportError:
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar over iterable (or one updated by hand: ``total=``), of
    :func:`tqdm_class`; kwargs go to tqdm."""
    return tqdm_class()(iterable, **kwargs)


def interactive():
    """True when someone is likely watching the output: stderr (where tqdm draws) is a
    terminal, or the code runs in a Jupyter kernel (IPython's shell has a kernel). False
    under pytest, in a pipe or a log file."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if hasattr(ipython, "get_ipython") else None
    if getattr(shell, "kernel", None) is not None:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def require(module, needed_for, install=None):
    """The module `module`, imported; ImportError naming it and how to install it when it
    is missing (``install``: the pip argument, default the module's name)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{needed_for} needs {module}, which convirt does not install: "
            f"pip install {install or module}"
        ) from error
