"""Write the resource reference pages (docs/reference/<kind>.md) from the CRDs' schemas.

``python hack/crdref.py`` (``make reference``) writes one page per CustomResourceDefinition
found under manifests/ (``manifests/crds/*.yaml`` or ``manifests/crd.yaml``; samples and
monitoring excluded); ``--check`` writes nothing and exits 1 naming the pages that differ
from what the schemas give (``make docs`` and tests/unit/test_docs.py run it), so the
reference never drifts from the schema the API server enforces.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
REFERENCE = ROOT / "docs" / "reference"
SKIP_DIRS = ("samples", "monitoring")

Schema = Mapping[str, Any]


def find_crds(manifests: Path = MANIFESTS) -> list[tuple[Path, dict[str, Any]]]:
    """Every CRD under ``manifests`` (one per name; ``crds/`` wins over a stray copy)."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    files = sorted(manifests.rglob("*.yaml"), key=lambda p: ("crds" not in p.parts, str(p)))
    for path in files:
        if any(part in SKIP_DIRS for part in path.relative_to(manifests).parts):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                found.setdefault(doc["metadata"]["name"], (path, doc))
    return sorted(found.values(), key=lambda item: item[1]["spec"]["names"]["kind"])


def _cell(text: object) -> str:
    """Text safe inside a Markdown table cell (one line, pipes escaped)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: object) -> str:
    """A code span for a table cell. With a pipe in it, an HTML ``<code>`` element whose
    special characters are entities (Markdown would split the cell at the pipe, and a
    backslash escape inside a code span is shown as typed)."""
    value = " ".join(str(text).split())
    if "|" in value:
        entities = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "\\": "&#92;"}
        entities.update({c: f"&#{ord(c)};" for c in "*_`[]"})
        return "<code>" + "".join(entities.get(c, c) for c in value) + "</code>"
    tick = "``" if "`" in value else "`"
    pad = " " if tick == "``" else ""
    return f"{tick}{pad}{value}{pad}{tick}"


def _type(schema: Schema) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema and "properties" not in schema:
        return f"map of {_type(schema['additionalProperties'])}"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return kind


def _constraints(schema: Schema) -> list[str]:
    parts: list[str] = []
    if "default" in schema:
        parts.append(f"default {_code(json.dumps(schema['default']))}")
    if "enum" in schema:
        parts.append("one of " + ", ".join(_code(v) for v in schema["enum"]))
    for key, label in (
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min entries"),
        ("maxProperties", "max entries"),
    ):
        if key in schema:
            parts.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        parts.append(f"pattern {_code(schema['pattern'])}")
    if schema.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(schema.get("x-kubernetes-list-map-keys", []))
        parts.append(f"list keyed by {keys}")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        parts.append("other fields kept as given")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and "properties" not in extra:
        values = _constraints(extra)
        if values:
            parts.append("values: " + ", ".join(values))
    for rule in schema.get("x-kubernetes-validations", []):
        parts.append(f"rule: {_cell(rule.get('message', rule['rule']))}")
    return parts


def _details(schema: Schema, required: bool) -> str:
    words: list[str] = ["**Required.**"] if required else []
    if "description" in schema:
        text = _cell(schema["description"])
        words.append(text if text.endswith(".") else text + ".")
    constraints = _constraints(schema)
    if constraints:
        words.append("; ".join(constraints) + ".")
    return " ".join(words)


def _fields(schema: Schema, path: str) -> Iterator[tuple[str, Schema, bool]]:
    """(path, schema, required) of every field below ``schema``, depth first."""
    required = set(schema.get("required", []))
    for name, child in schema.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        yield child_path, child, name in required
        yield from _below(child, child_path)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _below(schema["additionalProperties"], f"{path}.*")


def _below(schema: Schema, path: str) -> Iterator[tuple[str, Schema, bool]]:
    if schema.get("type") == "array" and "items" in schema:
        yield from _fields(schema["items"], f"{path}[]")
    elif "properties" in schema:
        yield from _fields(schema, path)


def _table(schema: Schema, path: str) -> list[str]:
    lines = ["| field | type | details |", "|---|---|---|"]
    for field_path, child, required in _fields(schema, path):
        lines.append(f"| `{field_path}` | {_type(child)} | {_details(child, required)} |")
    return lines


def render(crd: Mapping[str, Any]) -> str:
    """The reference page of one CRD (Markdown)."""
    spec = crd["spec"]
    names = spec["names"]
    out = [
        f"# {names['kind']} reference",
        "",
        "<!-- Generated by hack/crdref.py from the CRD under manifests/; do not edit: "
        "run `make reference`. -->",
        "",
        f"Generated from the CustomResourceDefinition `{crd['metadata']['name']}` "
        "(under `manifests/`): the schema the API server enforces. A value outside it is "
        "refused at apply with 422 and a message naming the field.",
        "",
        "| | |",
        "|---|---|",
        f"| group | `{spec['group']}` |",
        f"| kind | `{names['kind']}` (list: `{names.get('listKind', names['kind'] + 'List')}`) |",
        f"| plural / singular | `{names['plural']}` / `{names.get('singular', '')}` |",
        f"| short names | {', '.join(f'`{n}`' for n in names.get('shortNames', [])) or '-'} |",
        f"| scope | {spec['scope']} |",
    ]
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        flags = [
            flag
            for flag, on in (
                ("served", version.get("served")),
                ("storage", version.get("storage")),
            )
            if on
        ]
        subresources = ", ".join(sorted(version.get("subresources", {}))) or "none"
        out += [
            "",
            f"## {spec['group']}/{version['name']}",
            "",
            f"{', '.join(flags).capitalize()}; subresources: {subresources}.",
        ]
        if "description" in schema:
            out += ["", _cell(schema["description"])]
        rules = schema.get("x-kubernetes-validations", [])
        if rules:
            out += ["", "Object rules:", ""]
            out += [f"- {_cell(r.get('message', r['rule']))}" for r in rules]
        columns = version.get("additionalPrinterColumns", [])
        if columns:
            out += [
                "",
                "### Printer columns",
                "",
                "`kubectl get` shows the columns of priority 0; `-o wide` adds the others.",
                "",
                "| column | type | priority | JSONPath |",
                "|---|---|---|---|",
            ]
            out += [
                f"| {c['name']} | {c['type']} | {c.get('priority', 0)} | {_code(c['jsonPath'])} |"
                for c in columns
            ]
        for section in ("spec", "status"):
            part = schema.get("properties", {}).get(section)
            if part is None:
                continue
            out += ["", f"### {section}", ""]
            if "description" in part:
                out += [_cell(part["description"]), ""]
            out += _table(part, section)
    return "\n".join(out) + "\n"


def pages(manifests: Path = MANIFESTS, reference: Path = REFERENCE) -> dict[Path, str]:
    """Reference page path -> content, for every CRD."""
    return {
        reference / f"{crd['spec']['names']['kind'].lower()}.md": render(crd)
        for _, crd in find_crds(manifests)
    }


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main(
    argv: list[str] | None = None, manifests: Path = MANIFESTS, reference: Path = REFERENCE
) -> int:
    parser = argparse.ArgumentParser(prog="python hack/crdref.py", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is stale")
    args = parser.parse_args(argv)
    wanted = pages(manifests, reference)
    if not wanted:
        print("crdref: no CustomResourceDefinition under manifests/", file=sys.stderr)
        return 1
    stale = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(
                f"crdref: {_shown(path)} is stale: run `make reference`",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
        print(f"crdref: wrote {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
