"""The command line's parser class, argument types and value parsers: each bad value is refused with one line
naming the flag, what it allows and an example (the `segxai: error:` line and exit status 2 of `segxai.cli`)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, NoReturn

from segxai.errors import SegxaiError


class Parser(argparse.ArgumentParser):
    """argparse with segxai's one error line: the usage, then `segxai: error: ...`, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.removeprefix("segxai").strip()
        self.exit(2, f"segxai: error: {command + ': ' if command else ''}{message}\n")


def number(kind: type, allowed: str, check: Any) -> Any:
    """An argparse type: `kind(text)` when it passes `check`, else one message saying what is allowed."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not check(value):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}")
        return value

    parse.__name__ = allowed  # argparse names the type in some messages
    return parse


positive = number(int, "a whole number >= 1", lambda v: v >= 1)
natural = number(int, "a whole number >= 0", lambda v: v >= 0)
seed_value = number(int, "a seed, a whole number in [0, 2**63)", lambda v: 0 <= v < 2**63)
margin_value = number(float, "a finite number of voxels >= 0", lambda v: math.isfinite(v) and v >= 0)
unit_value = number(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)


def json_option(text: str | None, flag: str) -> Any:
    try:
        return None if text is None else json.loads(text)
    except ValueError as error:
        example = '{"kind": "window", "low": -200, "high": 700}'
        raise SegxaiError(f"{flag} takes JSON, e.g. '{example}': {error}") from None


def ints(text: str, flag: str, example: str, minimum: float, kind: type = int) -> tuple[Any, ...]:
    """Comma-separated whole numbers (or `kind`) >= `minimum`, e.g. --shape 64,64,32, --labels 0,1,1, --spacing 3,3,3."""
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < minimum:
        what = "whole numbers" if kind is int else "numbers"
        raise SegxaiError(f"{flag} takes comma-separated {what} >= {minimum}, e.g. {example}; got {text!r}")
    return values


def preset_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """`--preset`: one of the reference MONAI U-Nets of `segxai.models.presets`; None picks `default`."""
    from segxai.models.presets import PRESETS

    parser.add_argument("--preset", choices=list(PRESETS), default=None,
                        help=f"the MONAI U-Net (none given: {default})")
