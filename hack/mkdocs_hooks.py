"""MkDocs hooks (mkdocs.yml ``hooks:``): pages the nav does not list go at its end.

Several people add pages to docs/ at once; a page missing from ``nav`` is still built,
linked and searchable, under "More", until someone gives it its place in mkdocs.yml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _listed(nav: Any) -> set[str]:
    """The page paths a nav (list of dicts, strings and nested lists) names."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(*(_listed(v) for v in nav))
    return set()


def unlisted(docs_dir: Path, nav: Any) -> list[str]:
    """Markdown pages under ``docs_dir`` that ``nav`` does not name, sorted."""
    listed = _listed(nav)
    pages = (p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md"))
    return sorted(p for p in pages if p not in listed)


def on_config(config: Any) -> Any:
    nav = config["nav"]
    if nav:
        extra = unlisted(Path(config["docs_dir"]), nav)
        if extra:
            nav.append({"More": extra})
    return config
