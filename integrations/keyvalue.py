"""``KEY=VALUE`` options, shared by the command line and the format specs (no heavy imports)."""

from __future__ import annotations

import json
from collections.abc import Iterable


def parse_key_values(items: Iterable[str], what: str) -> dict:
    """``{key: value}`` of ``KEY=VALUE`` strings; a value is JSON where it parses (``3``,
    ``true``, ``0.75``, ``[1, 2]``), else the text. ``what`` names the source in errors."""
    opts = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} expects KEY=VALUE, got {item!r}")
        try:
            opts[key] = json.loads(text)
        except json.JSONDecodeError:
            opts[key] = text
    return opts
