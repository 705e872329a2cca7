"""MkDocs hooks: pages generated from the code at build time (nothing generated is committed).

* ``reference/configuration.md`` from the pydantic schema (``medclf.docgen.config_reference``),
* ``reference/cli.md`` from the argparse parser (``medclf.docgen.cli_reference``),
* ``reference/api/<module>.md``: one mkdocstrings page per top-level module or subpackage of
  ``src/medclf`` (a subpackage's page holds its modules and nested subpackages, e.g.
  ``medclf.data.formats``), added to the navigation under "Reference > Python API", so a new
  module appears without editing ``mkdocs.yml``; ``reference/architecture.md`` (written by
  hand) is put in the navigation before them,
* ``{{ config train.lr }}`` in any page is replaced by that key's type, default, allowed
  values and description; an unknown key fails the build,
* ``{{ import-contracts }}`` is replaced by the import-linter contracts of ``pyproject.toml``
  (``medclf.docgen.import_contracts_markdown``), so the layers shown are the ones enforced.
"""
from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))  # document this checkout, not an installed copy

from medclf import docgen  # noqa: E402

PLACEHOLDER = re.compile(r"\{\{\s*config\s+([A-Za-z0-9_.]+)\s*\}\}")
CONTRACTS = re.compile(r"\{\{\s*import-contracts\s*\}\}")
ARCHITECTURE = "reference/architecture.md"


def _package_modules(path: Path, name: str) -> list[str]:
    """``name`` (when its ``__init__.py`` holds more than a docstring line or two), its modules,
    then each nested subpackage the same way."""
    modules = [name] if (path / "__init__.py").read_text().strip().count("\n") > 2 else []
    modules += [f"{name}.{p.stem}" for p in sorted(path.glob("*.py")) if not p.name.startswith("_")]
    for sub in sorted(path.iterdir()):
        if sub.is_dir() and not sub.name.startswith(("_", ".")) and (sub / "__init__.py").is_file():
            modules += _package_modules(sub, f"{name}.{sub.name}")
    return modules


def api_pages() -> dict[str, list[str]]:
    """``{page path: [module, ...]}``: one page per top-level module or subpackage."""
    package = SRC / "medclf"
    pages = {"reference/api/medclf.md": ["medclf"]}
    for path in sorted(package.iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.suffix == ".py":
            pages[f"reference/api/{path.stem}.md"] = [f"medclf.{path.stem}"]
        elif path.is_dir() and (path / "__init__.py").is_file():
            pages[f"reference/api/{path.name}.md"] = _package_modules(path, f"medclf.{path.name}")
    return pages


def on_config(config):
    """Put the architecture page and the generated API pages into the navigation, under
    Reference > Architecture and Reference > Python API."""
    entries = [{modules[0] if len(modules) == 1 else f"medclf.{Path(page).stem}": page}
               for page, modules in api_pages().items()]
    for item in config.nav or []:
        if isinstance(item, dict) and "Reference" in item:
            item["Reference"] += [{"Architecture": ARCHITECTURE}, {"Python API": entries}]
            break
    else:
        raise PluginError("mkdocs.yml: the nav needs a 'Reference' section for the API pages")
    return config


def on_files(files, config):
    """Add the pages generated from the schema, the parser and the package."""
    generated = {"reference/configuration.md": docgen.config_reference(),
                 "reference/cli.md": docgen.cli_reference()}
    for page, modules in api_pages().items():
        title = modules[0] if len(modules) == 1 else f"medclf.{Path(page).stem}"
        body = [f"# `{title}`", ""]
        for module in modules:
            body += [f"::: {module}", ""]
        generated[page] = "\n".join(body)
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    """Expand ``{{ config KEY }}`` placeholders from the schema and ``{{ import-contracts }}``
    from ``pyproject.toml``."""
    if CONTRACTS.search(markdown):
        contracts = docgen.import_contracts_markdown(ROOT / "pyproject.toml")
        markdown = CONTRACTS.sub(lambda _: contracts, markdown)
    def expand(match):
        try:
            entry = docgen.config_key(match.group(1))
        except KeyError as err:
            raise PluginError(f"{page.file.src_uri}: {err.args[0]}") from None
        target = posixpath.relpath("reference/configuration.md", posixpath.dirname(page.file.src_uri) or ".")
        link = f"[`{entry.key}`]({target}#{docgen.config_anchor(entry.key)})"
        return f"{link}<br>\n" + docgen.config_key_markdown(entry, heading=None).strip()
    return PLACEHOLDER.sub(expand, markdown)
