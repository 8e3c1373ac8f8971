"""The documentation: the resource reference is what the CRD schemas give, every operator
setting is documented, the README stays short with working links, and MkDocs builds with
``--strict`` (a broken link or anchor fails)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _load(name: str) -> ModuleType:
    """A script of hack/ as a module (hack/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "hack" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


crdref = _load("crdref")
hooks = _load("mkdocs_hooks")


def test_reference_pages_match_the_crd_schemas() -> None:
    pages = crdref.pages()
    assert DOCS / "reference" / "kernelsession.md" in pages
    for path, text in pages.items():
        assert path.exists(), f"{path.relative_to(ROOT)} missing: run `make reference`"
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `make reference`"


def _crd_text() -> str:
    path, _ = next(
        (p, c) for p, c in crdref.find_crds() if c["spec"]["names"]["kind"] == "KernelSession"
    )
    return path.read_text()


def test_reference_lists_every_field_with_its_limits() -> None:
    crd = yaml.safe_load(_crd_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    page = (DOCS / "reference" / "kernelsession.md").read_text()
    for section in ("spec", "status"):
        for name in schema[section]["properties"]:
            assert f"| `{section}.{name}` |" in page, f"{section}.{name}"
    assert re.search(r"\| `spec\.user` \| string \| \*\*Required\.\*\* .*max length 63", page)
    assert "| `spec.home.mountPath` |" in page
    assert "| `spec.env[].valueFrom.secretKeyRef.name` |" in page
    assert "one of `Pending`, `Starting`, `Ready`" in page
    # A pipe inside a pattern must not split the table row.
    for line in page.splitlines():
        if line.startswith("| `spec.resources.requests`"):
            assert line.count(" | ") == 2


def test_reference_finds_the_crd_in_either_layout(tmp_path: Path) -> None:
    text = _crd_text()
    flat = tmp_path / "flat"
    (flat / "samples").mkdir(parents=True)
    (flat / "crd.yaml").write_text(text)
    (flat / "samples" / "copy.yaml").write_text(text.replace("KernelSession\n", "Ignored\n"))
    split = tmp_path / "split"
    (split / "crds").mkdir(parents=True)
    (split / "crds" / "kernelsession.yaml").write_text(text)
    (split / "crd.yaml").write_text(text)  # a stray copy beside crds/: crds/ wins
    for manifests, expected in (
        (flat, flat / "crd.yaml"),
        (split, split / "crds" / "kernelsession.yaml"),
    ):
        found = crdref.find_crds(manifests)
        assert [path for path, _ in found] == [expected]
        # the same page, whatever the layout (the real tree has the LabProfile page too)
        assert crdref.pages(manifests).items() <= crdref.pages().items()


def test_reference_check_fails_on_a_stale_or_missing_page(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert crdref.main(["--check"], reference=reference) == 1  # missing
    assert crdref.main([], reference=reference) == 0  # written
    assert crdref.main(["--check"], reference=reference) == 0
    page = reference / "kernelsession.md"
    page.write_text(page.read_text().replace("**Required.**", "Optional.", 1))
    assert crdref.main(["--check"], reference=reference) == 1


def _operator_settings() -> set[str]:
    """Every KERNELSESSION_* variable the operator's sources read or name."""
    patterns = (
        r'(?:ENV_PREFIX\s*\+\s*|_(?:int|float|bool|json_strings|labels)\(\s*env,\s*)"([A-Z][A-Z0-9_]*)"',
        r"\{ENV_PREFIX\}([A-Z][A-Z0-9_]*)",
        # a quoted name, unless it names an environment variable of the lab pod
        r"(?<![\"']name[\"']: )[\"']KERNELSESSION_([A-Z][A-Z0-9_]*)[\"']",
    )
    names: set[str] = set()
    for source in (ROOT / "operator").rglob("*.py"):
        text = source.read_text()
        for pattern in patterns:
            names.update(re.findall(pattern, text))
    return {f"KERNELSESSION_{n}" for n in names}


def test_every_operator_setting_is_documented() -> None:
    settings = _operator_settings()
    assert {"KERNELSESSION_NAMESPACES", "KERNELSESSION_PROBE_TIMEOUT"} <= settings
    docs = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    missing = sorted(s for s in settings if f"`{s}`" not in docs)
    assert missing == [], f"not in docs/ (docs/configuration.md): {missing}"


def test_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert readme.index("make run") < readme.index("## Headline figures")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert "docs/configuration.md" in links
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), link


TOP_DIRS = "operator|client|localcluster|manifests|tests|bench|hack|docs"
REPO_PATH = re.compile(rf"`((?:{TOP_DIRS})/[^`\s]*)`")


def test_source_paths_named_in_the_docs_exist() -> None:
    """A module moved or renamed leaves no stale path behind in the docs."""
    stale = []
    for page in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for path in REPO_PATH.findall(page.read_text()):
            if "..." in path or any(c in path for c in "{}<>*"):
                continue  # an abbreviation or a pattern, not a path
            path = path.split("::")[0]
            top, _, rest = path.partition("/")
            # `localcluster/host/` may also name the package's folder (its src/ layout)
            package = ROOT / top / "src" / "kernelsession" / top / rest
            if not (ROOT / path).exists() and not package.exists():
                stale.append(f"{page.relative_to(ROOT)}: {path}")
    assert stale == []


def test_unlisted_pages_join_the_nav(tmp_path: Path) -> None:
    (tmp_path / "guide").mkdir()
    for page in ("index.md", "a.md", "new.md", "guide/b.md", "guide/c.md"):
        (tmp_path / page).write_text("# x\n")
    nav = ["index.md", {"A": "a.md"}, {"Guide": [{"B": "guide/b.md"}]}]
    assert hooks.unlisted(tmp_path, nav) == ["guide/c.md", "new.md"]
    config = {"nav": nav, "docs_dir": str(tmp_path)}
    assert hooks.on_config(config)["nav"][-1] == {"More": ["guide/c.md", "new.md"]}


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    assert mkdocs, "mkdocs not installed: `make setup` (dev group)"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "kernelsession.html").exists()
