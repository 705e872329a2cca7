"""Reference documentation generated from the code itself, so that it cannot disagree with it.

* :func:`config_keys` walks the pydantic configuration schema (:class:`medclf.config.Config`),
  recursively through every section, and :func:`config_reference` renders every key with
  its type, default, allowed values and description as Markdown.
* :func:`cli_commands` walks the ``argparse`` parser of :func:`medclf.cli.build_parser`,
  recursively through every subcommand, and :func:`cli_reference` renders every command and
  option with its help.
* :func:`missing_config_descriptions` and :func:`missing_cli_help` list what has no
  description; the test suite fails when either is not empty.
* :func:`import_contracts_markdown` renders the import-linter contracts of ``pyproject.toml``
  (the package's layers) for the architecture page.

The documentation site (``mkdocs.yml``, hook ``scripts/mkdocs_hooks.py``) calls these at
build time; nothing generated is stored in the repository.
"""
from __future__ import annotations

import argparse
import html
import json
import pkgutil
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

__all__ = ["ConfigKey", "CliCommand", "config_keys", "config_key", "config_reference",
           "config_key_markdown", "config_anchor", "subcommand_names", "missing_config_descriptions", "cli_commands",
           "cli_reference", "missing_cli_help", "import_contracts", "import_contracts_markdown"]


# --------------------------------------------------------------------------- configuration
REQUIRED = "(required)"
"""The ``default`` of a :class:`ConfigKey` that must be given (e.g. a step's ``name``)."""

@dataclass
class ConfigKey:
    """One key of the configuration tree.

    Attributes:
        key: dotted path, e.g. ``"train.early_stopping.patience"``.
        type: the annotation in words, e.g. ``"float"``, ``"list[int]"``, ``"str or null"``.
        default: the schema's default as plain Python (what ``Config().to_dict()`` holds).
        allowed: allowed values and bounds in words (``["> 0", "<= 10"]``,
            ``["'adam'", "'sgd'"]``); empty when anything of the type is accepted.
        description: the field's ``description=`` (for a section: the field's description
            or the section class's docstring); empty when missing.
        section: the section's pydantic class when the key is a section, else None.
    """

    key: str
    type: str
    default: Any
    allowed: list[str]
    description: str
    section: type[BaseModel] | None = None
    children: list["ConfigKey"] = field(default_factory=list)


def _literal_values(annotation) -> list:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    values = []
    for arg in typing.get_args(annotation):
        values += _literal_values(arg)
    return values


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (``Model``, ``Optional[Model]``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _models_in(annotation) -> list[type[BaseModel]]:
    """Every pydantic model class inside an annotation, in order (``list[Union[A, B]]`` -> [A, B])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in _models_in(arg):
            if model not in found:
                found.append(model)
    return found


def _variant_label(model: type[BaseModel]) -> str:
    """The tag of a model in a discriminated union (its one-value Literal ``name``/``type``/``kind``)."""
    for tag in ("name", "type", "kind"):
        info = model.model_fields.get(tag)
        if info is not None and typing.get_origin(info.annotation) is Literal and len(typing.get_args(info.annotation)) == 1:
            return str(typing.get_args(info.annotation)[0])
    return model.__name__


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if annotation is type(None):
        return "null"
    if origin is Literal:
        kinds = sorted({type(v).__name__ for v in typing.get_args(annotation)})
        return " or ".join(kinds)
    if origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return " or ".join(dict.fromkeys(_type_name(a) for a in typing.get_args(annotation)))
    if origin in (list, tuple, dict, set):
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]" if args else origin.__name__
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constraints(info) -> list[str]:
    """The field's bounds and lengths, also those of the ``Annotated`` members of a union
    (``Union[Annotated[float, Gt(0)], Literal["auto"]]``)."""
    words = []
    annotation = info.annotation
    members = typing.get_args(annotation) if typing.get_origin(annotation) is Union else ()
    inner = [m for arg in members if typing.get_origin(arg) is typing.Annotated for m in typing.get_args(arg)[1:]]
    for item in [*info.metadata, *inner]:
        for cls, symbol, attr in ((Gt, ">", "gt"), (Ge, ">=", "ge"), (Lt, "<", "lt"), (Le, "<=", "le")):
            if isinstance(item, cls):
                words.append(f"{symbol} {getattr(item, attr)}")
        if isinstance(item, MinLen):
            words.append(f"at least {item.min_length} items")
        if isinstance(item, MaxLen):
            words.append(f"at most {item.max_length} items")
    return words


def _own_doc(cls: type) -> str:
    doc = cls.__dict__.get("__doc__") or ""
    return " ".join(line.strip() for line in doc.strip().split("\n\n")[0].splitlines())


def _default(info) -> Any:
    if info.default is not PydanticUndefined:
        value = info.default
    elif info.default_factory is not None:
        value = info.default_factory()
    else:
        return REQUIRED
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))


def config_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[ConfigKey]:
    """Every key of the configuration schema, depth first, sections before their keys.

    Args:
        model: the pydantic model to walk (default :class:`medclf.config.Config`).
        prefix: dotted prefix of ``model``'s keys.

    Returns:
        A flat list of :class:`ConfigKey`; a section's own entry has ``section`` set and
        its keys in ``children`` (they also follow it in the flat list).
    """
    if model is None:
        from .config import Config
        model = Config
    keys: list[ConfigKey] = []
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        section = _model_in(info.annotation)
        description = (info.description or "").strip()
        variants = _models_in(info.annotation)
        if section is not None and (len(variants) > 1 or typing.get_origin(info.annotation) in (list, tuple, dict)):
            # a list (or union) of several kinds of objects, e.g. preprocess.steps: one entry per kind
            labels = [_variant_label(v) for v in variants]
            kind = "list" if typing.get_origin(info.annotation) in (list, tuple) else "one"
            entry = ConfigKey(dotted, f"{kind} of: " + ", ".join(labels), _default(info), [], description)
            keys.append(entry)
            for label, variant in zip(labels, variants):
                child = ConfigKey(f"{dotted}[{label}]", "section", None, [], _own_doc(variant), variant)
                child.children = config_keys(variant, f"{dotted}[{label}].")
                entry.children.append(child)
                keys.append(child)
                keys += child.children
            continue
        if section is not None:
            description = description or _own_doc(section)
            entry = ConfigKey(dotted, "section", None, [], description, section)
            entry.children = config_keys(section, dotted + ".")
            keys.append(entry)
            keys += entry.children
            continue
        allowed = [repr(v) if isinstance(v, str) else json.dumps(v) for v in _literal_values(info.annotation)]
        keys.append(ConfigKey(dotted, _type_name(info.annotation), _default(info),
                              allowed + _constraints(info), description))
    return keys


def config_key(dotted: str) -> ConfigKey:
    """The :class:`ConfigKey` named ``dotted``.

    Raises:
        KeyError: no such key in the schema (the message lists the section's keys).
    """
    keys = {k.key: k for k in config_keys()}
    if dotted not in keys:
        parent = dotted.rpartition(".")[0]
        siblings = [k for k in keys if k.rpartition(".")[0] == parent]
        raise KeyError(f"no configuration key {dotted!r}; keys here: {', '.join(siblings)}")
    return keys[dotted]


def missing_config_descriptions(model: type[BaseModel] | None = None) -> list[str]:
    """Dotted names of configuration keys (and sections) of ``model`` (default: the whole
    :class:`medclf.config.Config`) that have no description."""
    return [k.key for k in config_keys(model) if len(k.description) < 3]


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def config_anchor(dotted: str) -> str:
    return "cfg-" + re.sub(r"[^a-z0-9]+", "-", dotted.lower()).strip("-")


def config_key_markdown(entry: ConfigKey, heading: str | None = "###") -> str:
    """One key as Markdown: heading (optional), type, default, allowed values, description."""
    lines = []
    if heading:
        lines += [f"{heading} `{entry.key}` {{ #{config_anchor(entry.key)} }}", ""]
    default = "**Required**" if entry.default == REQUIRED else f"**Default** `{_yaml_value(entry.default)}`"
    facts = [f"**Type** `{entry.type}`", default]
    if entry.allowed:
        facts.append("**Allowed** " + ", ".join(f"`{a}`" for a in entry.allowed))
    lines += [" · ".join(facts), "", entry.description or "*(no description)*", ""]
    return "\n".join(lines)


def config_reference() -> str:
    """The configuration reference page (Markdown), generated from the schema."""
    from .config import Config
    keys = config_keys()
    out = [
        "# Configuration reference",
        "",
        "This page is generated from the configuration schema (`src/medclf/config.py`) each",
        "time the documentation is built, so it always matches the code. For the ideas behind",
        "the most important settings, read [Settings explained](../guide/settings.md).",
        "",
        "Set any key in a YAML file passed with `--config FILE.yaml`, or on the command line",
        "with `--set section.key=value` (repeatable). Unknown keys and bad values are rejected",
        "with a message naming the key and what is allowed.",
        "",
        "!!! note \"Defaults planned from your data\"",
        "    The defaults below are the schema's. `medclf train` first looks at the dataset",
        "    (2D or 3D, image size, class counts) and adapts a few of them (for example",
        "    `data.image_size` and `train.batch_size`); your `--config` file and `--set`",
        "    overrides go on top. The values a run actually used are in its `config.yaml`.",
        "",
    ]
    top_level = [k for k in keys if "." not in k.key]
    scalars = [k for k in top_level if k.section is None]
    if scalars:
        out += ["## Top level", ""]
        out += [config_key_markdown(k) for k in scalars]

    def section(entry: ConfigKey, depth: int) -> None:
        out.extend([f"{'#' * min(6, depth)} `{entry.key}` {{ #{config_anchor(entry.key)} }}", "", entry.description, ""])
        for child in entry.children:
            if child.section is not None:
                section(child, depth + 1)
            else:
                out.append(config_key_markdown(child, "#" * min(6, depth + 1)))
                for variant in child.children:  # the kinds of entry of a list such as preprocess.steps
                    section(variant, depth + 2)

    for entry in top_level:
        if entry.section is not None:
            section(entry, 2)
    out += ["## Every default in one file", "",
            "The complete default configuration as YAML (a valid `--config` file):", "",
            "```yaml", yaml.safe_dump(Config().to_dict(), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- command line
@dataclass
class CliCommand:
    """One (sub)command of the ``medclf`` parser.

    Attributes:
        name: full command, e.g. ``"medclf train"``.
        help: the one-line help shown in the parent's command list ('' for the root).
        parser: the ``argparse.ArgumentParser`` of the command.
        options: the command's arguments (``argparse.Action``), without ``-h/--help``
            and without the subcommand dispatcher.
    """

    name: str
    help: str
    parser: argparse.ArgumentParser
    options: list[argparse.Action]


def _is_help(action: argparse.Action) -> bool:
    return isinstance(action, argparse._HelpAction)


def cli_commands(parser: argparse.ArgumentParser | None = None, name: str = "medclf",
                 help: str = "") -> list[CliCommand]:
    """Every command of the parser, the root first, then subcommands recursively.

    Args:
        parser: the parser to walk (default :func:`medclf.cli.build_parser`).
        name: the command line that reaches ``parser``.
        help: ``parser``'s help line in its parent's command list.
    """
    if parser is None:
        from .cli import build_parser
        parser = build_parser()
    options = [a for a in parser._actions
               if not _is_help(a) and not isinstance(a, argparse._SubParsersAction)]
    commands = [CliCommand(name, help, parser, options)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for sub_name, sub_parser in action.choices.items():
                commands += cli_commands(sub_parser, f"{name} {sub_name}", helps.get(sub_name, ""))
    return commands


def subcommand_names(parser: argparse.ArgumentParser | None = None) -> set[str]:
    """Names of the top-level subcommands (``{"train", "evaluate", "predict", ...}``)."""
    return {c.name.split()[1] for c in cli_commands(parser) if len(c.name.split()) == 2}


def missing_cli_help(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """``"medclf train --out"``-style names of commands and options of ``parser`` (default:
    :func:`medclf.cli.build_parser`) that have no help."""
    missing = []
    for command in cli_commands(parser):
        if command.name != "medclf" and len(command.help.strip()) < 3:
            missing.append(command.name)
        for action in command.options:
            if action.help == argparse.SUPPRESS:
                continue
            if len((action.help or "").strip()) < 3:
                missing.append(f"{command.name} {_option_label(action)}")
    return missing


def _option_label(action: argparse.Action) -> str:
    if action.option_strings:
        return ", ".join(action.option_strings)
    return action.metavar or action.dest


def _option_row(action: argparse.Action) -> str:
    label = _option_label(action)
    if action.option_strings and action.nargs != 0:
        metavar = action.metavar or action.dest.upper()
        label += f" {metavar}"
    help_text = (action.help or "").replace("%(default)s", str(action.default))
    help_text = html.escape(help_text.replace("%(prog)s", "medclf"), quote=False).replace("|", "\\|")
    notes = []
    if action.choices and not isinstance(action.choices, dict):
        notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.required and action.option_strings:
        notes.append("required")
    if not action.option_strings and action.nargs in ("+", "*"):
        notes.append("one or more" if action.nargs == "+" else "zero or more")
    if isinstance(action, argparse._AppendAction) and "repeatable" not in help_text:
        notes.append("repeatable")
    if (action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS)
            and action.nargs != 0 and "default" not in help_text):
        notes.append(f"default `{action.default}`")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return f"| `{label}` | {help_text}{extra} |"


def cli_reference() -> str:
    """The command-line reference page (Markdown), generated from the argparse parser."""
    commands = cli_commands()
    out = ["# Command-line reference", "",
           "This page is generated from the command definitions (`src/medclf/cli.py`) each time",
           "the documentation is built, so it lists exactly the commands and options of this",
           "version. `medclf COMMAND --help` prints the same help in a terminal.", "",
           "User errors (missing files, bad configuration, unreadable images) print one clear",
           "message naming the file or key and exit with status 2, never a traceback.", ""]
    root = commands[0]
    out += ["## Commands", "", "| Command | What it does |", "|---|---|"]
    out += [f"| [`{c.name}`](#{c.name.replace(' ', '-')}) | {c.help} |" for c in commands[1:]]
    out += [""]
    if root.options:
        out += ["Options of `medclf` itself:", "", "| Option | Description |", "|---|---|"]
        out += [_option_row(a) for a in root.options] + [""]
    for command in commands[1:]:
        depth = "#" * min(6, len(command.name.split()))
        out += [f"{depth} `{command.name}` {{ #{command.name.replace(' ', '-')} }}", ""]
        description = command.parser.description or command.help
        out += [html.escape(description, quote=False), ""]
        formatter = argparse.HelpFormatter(command.parser.prog, width=88)
        formatter.add_usage(command.parser.usage, command.parser._actions,
                            command.parser._mutually_exclusive_groups)
        out += ["```text", formatter.format_help().strip(), "```", ""]
        positionals = [a for a in command.options if not a.option_strings]
        optionals = [a for a in command.options if a.option_strings]
        if positionals:
            out += ["| Argument | Description |", "|---|---|"] + [_option_row(a) for a in positionals] + [""]
        if optionals:
            out += ["| Option | Description |", "|---|---|"] + [_option_row(a) for a in optionals] + [""]
        if command.parser.epilog:
            out += [command.parser.epilog, ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- architecture
def import_contracts(pyproject: str | Path) -> list[dict]:
    """The ``[[tool.importlinter.contracts]]`` tables of a ``pyproject.toml``, as written.

    Raises:
        FileNotFoundError: ``pyproject`` does not exist.
        ValueError: the file has no import-linter contracts (its path is named).
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, a dependency of import-linter there
        import tomli as tomllib
    with open(pyproject, "rb") as handle:
        contracts = tomllib.load(handle).get("tool", {}).get("importlinter", {}).get("contracts", [])
    if not contracts:
        raise ValueError(f"{pyproject}: no [[tool.importlinter.contracts]] tables")
    return contracts


def _modules_of_layer(layer: str) -> list[str]:
    """``"a | b"`` (independent siblings) or ``"a : b"`` (siblings that may import each other)."""
    return [m.strip() for m in re.split(r"[|:]", layer) if m.strip()]


def _top_level_modules() -> list[str]:
    import medclf
    return sorted(f"medclf.{m.name}" for m in pkgutil.iter_modules(medclf.__path__) if not m.name.startswith("_"))


def import_contracts_markdown(pyproject: str | Path) -> str:
    """The import-linter contracts as Markdown: one table per ``layers`` contract (top layer
    first), one list per ``forbidden`` contract, and the top-level modules of ``medclf`` that
    no ``layers`` contract places (import-linter checks nothing for them).

    Raises:
        FileNotFoundError, ValueError: see :func:`import_contracts`.
    """
    contracts = import_contracts(pyproject)
    out: list[str] = []
    placed: set[str] = set()
    for contract in contracts:
        kind = contract.get("type", "")
        out += [f"**{html.escape(contract.get('name', contract.get('id', '')), quote=False)}** "
                f"(contract `{contract.get('id', '')}`, type `{kind}`)", ""]
        if kind == "layers":
            siblings = any("|" in layer for layer in contract["layers"])
            out += ["| Layer | Modules |", "|---|---|"]
            for number, layer in enumerate(contract["layers"], 1):
                modules = _modules_of_layer(layer)
                placed.update(modules)
                joiner = r" \| " if "|" in layer else ", "
                out.append(f"| {number} | {joiner.join(f'`{m}`' for m in modules)} |")
            out += ["", "A module imports only from layers with a higher number than its own"
                    + (" (modules separated by `|` share a layer and do not import each other)." if siblings
                       else "."), ""]
        elif kind == "forbidden":
            sources = ", ".join(f"`{m}`" for m in contract.get("source_modules", []))
            forbidden = ", ".join(f"`{m}`" for m in contract.get("forbidden_modules", []))
            out += [f"{sources} imports none of: {forbidden}.", ""]
        else:
            out += ["```toml", *(f"{k} = {json.dumps(v)}" for k, v in contract.items()), "```", ""]
    unplaced = [m for m in _top_level_modules() if m not in placed]
    if unplaced:
        out += ["Not in any layer yet (no contract checks their imports): "
                + ", ".join(f"`{m}`" for m in unplaced) + ".", ""]
    return "\n".join(out)

