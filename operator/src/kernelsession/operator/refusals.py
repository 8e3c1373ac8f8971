"""The operator's own checks of a spec, where the CRD schema cannot express them (pure)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from kernelsession.operator import homeclaim, naming


def refusals(spec: Mapping[str, Any]) -> list[str]:
    """What is wrong with ``spec`` in words naming the field; empty when nothing is."""
    problems: list[str] = []
    if spec.get("home") is None:
        return problems
    home = posixpath.normpath(homeclaim.home_mount_path(spec))
    for i, mount in enumerate(spec.get("volumeMounts") or []):
        other = posixpath.normpath(str(mount.get("mountPath") or ""))
        if other == home:
            problems.append(
                f"spec.volumeMounts[{i}].mountPath {other!r} is spec.home.mountPath as well"
            )
    for i, volume in enumerate(spec.get("volumes") or []):
        if volume.get("name") == naming.HOME_VOLUME:
            problems.append(
                f"spec.volumes[{i}].name {naming.HOME_VOLUME!r} is reserved for spec.home"
            )
    return problems
