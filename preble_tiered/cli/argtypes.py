"""argparse types shared by every `preble` command: a bad value is refused where it is parsed,
naming the option (argparse adds it) and what it expects."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _whole(s: str, scientific: bool = False) -> int:
    try:
        return int(float(s)) if scientific and "e" in s.lower() else int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None


def at_least(least: int, scientific: bool = False) -> Callable[[str], int]:
    """A whole number >= `least` (`scientific`: "1e6" is taken too)."""
    def parse(s: str) -> int:
        v = _whole(s, scientific)
        if v < least:
            raise argparse.ArgumentTypeError(f"expected {'a positive number' if least == 1 else f'{least} or more'}, "
                                             f"got {v}")
        return v
    return parse


positive_int = at_least(1)
nonneg_int = at_least(0, scientific=True)


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def port(s: str) -> int:
    """A TCP port, 0 included (each option says what 0 means)."""
    v = _whole(s)
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {v}")
    return v


def fixed_port(s: str) -> int:
    v = port(s)
    if v == 0:
        raise argparse.ArgumentTypeError("give a fixed port (1-65535): clients and nodes are told this one")
    return v
