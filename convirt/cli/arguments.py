"""Argument types the commands share (argparse ``type=`` functions), and the action of
a flag that needs an optional package."""

import argparse
import importlib.util

__all__ = [
    "comma_list",
    "float_list",
    "int_list",
    "non_negative_int",
    "positive_int",
    "requires",
    "share",
]


def _integer_from(least, what):
    """An argparse type: an integer >= least, else a usage error naming `what`."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = _integer_from(1, "a positive integer")
# A seed: NumPy's generators refuse negative ones.
non_negative_int = _integer_from(0, "an integer >= 0")


def comma_list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def _number_list(cast, what):
    def parse(text):
        try:
            return [cast(item) for item in comma_list(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {what} separated by commas, got {text!r}"
            ) from None

    return parse


float_list = _number_list(float, "numbers")
int_list = _number_list(int, "integers")


def share(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a share in (0, 1), got {text!r}"
        ) from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a share in (0, 1), got {value}")
    return value


def requires(*modules, install):
    """The argparse action of a flag (like store_true) whose work needs optional
    packages: giving the flag while one of `modules` is not installed stops the command
    at once, an argparse usage error naming the package and ``pip install {install}``,
    rather than after the work that comes before it. The modules are looked up, not
    imported, so that parsing stays fast."""

    class Requires(argparse.Action):
        def __init__(self, option_strings, dest, **kwargs):
            super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

        def __call__(self, parser, namespace, values, option_string=None):
            missing = [m for m in modules if importlib.util.find_spec(m) is None]
            if missing:
                parser.error(
                    f"{option_string} needs {' and '.join(missing)}, which convirt "
                    f"does not install: pip install {install}"
                )
            setattr(namespace, self.dest, True)

    return Requires
