"""The documentation: every key and option described, references generated, strict offline build."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from typing import Literal, Optional

import pytest
from pydantic import BaseModel, Field

from medclf import docgen
from medclf.config import Config

from conftest import ROOT, needs_chromium


def test_every_configuration_key_has_a_description():
    missing = docgen.missing_config_descriptions()
    assert not missing, ("configuration keys without a description (add description= to the Field, "
                         "or a docstring to the section class): " + ", ".join(missing))


def test_every_cli_command_and_option_has_help():
    missing = docgen.missing_cli_help()
    assert not missing, "commands or options without help=: " + ", ".join(missing)


def test_description_check_finds_missing_ones_at_any_depth():
    class Inner(BaseModel):
        described: int = Field(1, description="Has one.")
        bare: int = 2

    class Undocumented(BaseModel):
        value: int = Field(0, description="Described.")

    class Outer(BaseModel):
        """Outer section."""
        inner: Inner = Field(default_factory=Inner, description="A nested section.")
        other: Optional[Undocumented] = None
        mode: Literal["a", "b"] = Field("a", description="A mode.")

    assert docgen.missing_config_descriptions(Outer) == ["inner.bare", "other"]
    keys = {k.key: k for k in docgen.config_keys(Outer)}
    assert keys["mode"].allowed == ["'a'", "'b'"] and keys["mode"].default == "a"
    assert keys["inner"].section is Inner and keys["inner.described"].default == 1


def test_lists_of_several_kinds_of_objects_are_walked():
    from typing import Annotated, Union

    class Blur(BaseModel):
        """Blur the image."""
        name: Literal["blur"] = Field(description="Gaussian blur.")
        sigma: float = Field(1.0, gt=0, description="Standard deviation, pixels.")

    class Crop(BaseModel):
        name: Literal["crop"] = Field(description="Crop.")
        size: int = 10

    class Section(BaseModel):
        steps: list[Annotated[Union[Blur, Crop], Field(discriminator="name")]] = Field([], description="Steps.")

    keys = {k.key: k for k in docgen.config_keys(Section)}
    assert keys["steps"].type == "list of: blur, crop" and keys["steps"].default == []
    assert keys["steps[blur].sigma"].allowed == ["> 0"] and keys["steps[blur].name"].default == docgen.REQUIRED
    assert docgen.missing_config_descriptions(Section) == ["steps[crop]", "steps[crop].size"]


def test_help_check_finds_missing_ones_in_subcommands():
    parser = argparse.ArgumentParser(prog="medclf")
    parser.add_argument("--quiet", action="store_true", help="say less")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("train", help="train a model")
    p.add_argument("data", help="dataset folder")
    p.add_argument("--epochs", type=int)
    sub.add_parser("explain")
    assert docgen.missing_cli_help(parser) == ["medclf train --epochs", "medclf explain"]


def test_configuration_reference_lists_every_key_with_type_default_and_allowed_values():
    page = docgen.config_reference()
    for entry in docgen.config_keys():
        assert f"`{entry.key}` {{ #{docgen.config_anchor(entry.key)} }}" in page, entry.key
        assert entry.description in page, entry.key
    block = page.split("### `train.optimizer`")[1].split("###")[0]
    assert "**Type** `str`" in block and "**Default** `adamw`" in block
    assert "`'sgd'`" in block and "Optimiser" in block
    block = page.split("### `train.lr`")[1].split("###")[0]
    assert "`> 0`" in block and "`<= 10`" in block
    # the YAML at the end is the complete default configuration and validates
    import yaml
    defaults = yaml.safe_load(page.split("```yaml")[1].split("```")[0])
    assert Config.model_validate(defaults) == Config()


def test_cli_reference_lists_every_command_and_option():
    page = docgen.cli_reference()
    commands = docgen.cli_commands()
    assert {c.name for c in commands} >= {"medclf", "medclf train", "medclf evaluate", "medclf predict"}
    for command in commands[1:]:
        assert f"## `{command.name}`" in page
        for action in command.options:
            label = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
            assert f"`{label}" in page, f"{command.name} {label}"
    assert "<data>" not in page  # help text is escaped, not read as HTML tags


def _load_hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_placeholders_expand_and_unknown_keys_fail():
    pytest.importorskip("mkdocs")
    from mkdocs.exceptions import PluginError
    hooks = _load_hooks()

    class FakePage:
        class file:
            src_uri = "guide/settings.md"

    text = hooks.on_page_markdown("See {{ config train.lr }} here.", FakePage, None, None)
    assert "[`train.lr`](../reference/configuration.md#cfg-train-lr)" in text
    assert docgen.config_key("train.lr").description in text
    with pytest.raises(PluginError, match="train.lrr"):
        hooks.on_page_markdown("{{ config train.lrr }}", FakePage, None, None)
    pages = hooks.api_pages()
    assert pages["reference/api/config.md"] == ["medclf.config"]
    assert "medclf.data.sources" in pages["reference/api/data.md"]


EXTERNAL = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.I)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory):
    """The site built by ``bash scripts/docs.sh`` (``mkdocs build --strict``) into a temporary folder."""
    pytest.importorskip("mkdocs")
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "docs.sh"), "--site-dir", str(site)],
                          capture_output=True, text=True, env=env, cwd=site.parent, timeout=300)
    return site, done


def test_site_builds_strictly_offline(built_site):
    """Warnings (broken links, missing pages, bad docstrings) are errors."""
    site, done = built_site
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "WARNING" not in done.stderr

    for page in ("index.html", "getting-started.html", "reference/configuration.html",
                 "reference/cli.html", "reference/api/config.html", "reference/api/data.html",
                 "tutorials/xray-2d.html", "concepts/auc-vs-accuracy.html", "search/search_index.js"):
        assert (site / page).is_file(), page
    configuration = (site / "reference" / "configuration.html").read_text()
    assert 'id="cfg-train-early-stopping-patience"' in configuration
    cli = (site / "reference" / "cli.html").read_text()
    for name in docgen.subcommand_names():
        assert f'id="medclf-{name}"' in cli
    api = (site / "reference" / "api" / "commands.html").read_text()
    assert "medclf.commands.train.train" in api and "Raises" in api  # docstrings rendered
    settings = (site / "guide" / "settings.html").read_text()
    assert "{{ config" not in settings and "Peak learning rate" in settings

    # nothing is loaded from the network when a page is viewed (fonts, scripts, styles)
    for html in site.rglob("*.html"):
        found = EXTERNAL.findall(html.read_text(encoding="utf-8"))
        assert not found, f"{html.relative_to(site)} loads {found}"


@needs_chromium  # scripts/docs_screenshot.sh runs Debian's chromium
def test_home_page_renders_in_headless_chromium(built_site, tmp_path):
    site, done = built_site
    assert done.returncode == 0
    shot = tmp_path / "home.png"
    subprocess.run(["bash", str(ROOT / "scripts" / "docs_screenshot.sh"), str(site), str(shot),
                    "index.html", "1280x900"], check=True, timeout=120, capture_output=True)
    from PIL import Image
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 900)
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 100  # text, header and navigation drawn, not a blank or error page
    # the Material header (indigo) is drawn: the theme's CSS loaded from the site itself
    header = image.crop((0, 0, 1280, 40)).getcolors(maxcolors=1 << 20)
    r, g, b = max(header)[1]
    assert b > r and b > g


def test_configuration_examples_in_the_docs_are_valid():
    """Every ```yaml block of the docs that looks like a configuration validates against the schema."""
    import yaml

    from medclf.config import validate
    sections = set(Config.model_fields)
    checked = 0
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for block in re.findall(r"^```yaml[^\n]*\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S):
            tree = yaml.safe_load(block)
            if isinstance(tree, dict) and set(tree) <= sections:
                validate(tree)  # raises ConfigError naming the key
                checked += 1
    assert checked >= 2
