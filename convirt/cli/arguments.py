"""Argument types the commands share (argparse ``type=`` functions)."""

import argparse

__all__ = ["comma_list", "float_list", "int_list", "positive_int", "share"]


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
