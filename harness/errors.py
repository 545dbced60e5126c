"""Errors a user can act on; the CLI prints them without a traceback."""

from __future__ import annotations

from collections.abc import Iterable

from pretrain.registry import closest, unknown_name

__all__ = ["HarnessError", "closest", "unknown"]


class HarnessError(Exception):
    """A problem with the user's input or environment."""


def unknown(what: str, name: str, valid: Iterable[str]) -> HarnessError:
    return HarnessError(unknown_name(what, name, valid))
