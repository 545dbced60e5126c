"""Name lookups with loud errors: an unknown name lists the valid ones and the closest match.

The one home of this idea for `pretrain/` and `transfer/` (which may not import `harness/`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def closest(name: str, valid: Iterable[str]) -> str | None:
    """The valid name nearest to `name`, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_name(what: str, name: str, valid: Iterable[str]) -> str:
    """'unknown <what> 'x'. Did you mean 'y'? Valid: a, b, c'."""
    valid = sorted(valid)
    hint = closest(name, valid)
    return f"unknown {what} '{name}'." + (f" Did you mean '{hint}'?" if hint else "") + (
        f" Valid: {', '.join(valid)}"
    )


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """registry[name], or a ValueError naming the valid names and the closest one."""
    if name not in registry:
        raise ValueError(unknown_name(what, name, registry))
    return registry[name]


def fill_from_version(protocol: object, versions: Mapping[str, Mapping[str, object]], what: str) -> None:
    """A protocol's named version (`protocol.version`, a key of `versions`) fills the fields left None; a field set
    explicitly (a spec, a profile) keeps its value. Used by the transfer protocols (lincls, detection, video)."""
    if protocol.version not in versions:
        raise ValueError(f"unknown {what} version '{protocol.version}'; valid: {', '.join(versions)}")
    for key, value in versions[protocol.version].items():
        if getattr(protocol, key) is None:
            setattr(protocol, key, value)
