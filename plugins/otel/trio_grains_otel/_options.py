"""What the plugin's option parsers share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_known"]


def check_known(options: Mapping[str, Any], keys: Iterable[str], problems: list[str]) -> None:
    """Add a problem naming the keys of *options* that are not *keys*, and the ones that are."""
    keys = tuple(keys)
    unknown = sorted(set(options) - set(keys))
    if unknown:
        problems.append(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
            f"; the options are {', '.join(keys)}"
        )
