"""Every shell command of the getting-started page and the tutorials is executed.

Each fenced block marked ```bash in ``docs/getting-started.md`` and ``docs/tutorials/*.md``
runs, in page order, as one ``bash`` script (``set -euo pipefail``) in a scratch project
folder laid out like the repository root: ``../shared/data`` beside it, ``medclf`` and
``python`` on the PATH are this checkout. Blocks marked ```python run too, in the same
order and folder, as ``python -`` scripts. Blocks marked ```text or ```yaml are not run. So that the whole file takes about a minute, the test changes the commands in
these documented ways, and no other:

* ``medclf``: a wrapper appends, to every subcommand that has the option, ``--set`` with
  :data:`FAST_SET` and the page's own ``<!-- docs-test: set KEY=VALUE ... -->`` overrides
  (later ``--set`` values win), ``--no-progress``, and the small budgets of
  :data:`FAST_OPTIONS` (e.g. ``--trials 2``);
* ``../shared/data/covid19-xray`` is a subset of the real dataset: the first
  :data:`COVID_SUBSET` images (sorted by name) of each class folder, as symbolic links;
  each ``../shared/data/medmnist/*.npz`` is a subset too: about :data:`MEDMNIST_SUBSET`
  images of each split, the first of each class in the split's class proportions (at least
  3 a class); every other entry of ``../shared/data`` is the real one;
* ``bash scripts/setup.sh`` is only syntax-checked (``bash -n``): CI runs the real set-up
  before the tests (``.ci/run`` -> ``scripts/test.sh`` -> ``scripts/setup.sh``);
  ``source .venv/bin/activate`` puts the wrapper on the PATH;
* the wrapper runs its command in a fork of a server that has imported medclf once for the
  session (tests/warm_medclf.py, conftest's ``warm_medclf``; ``MEDCLF_TESTS_COLD=1`` turns it
  off): the same command, without its 12 s of imports.

A block is skipped while it needs something that does not exist yet: a ``medclf``
subcommand, an option of it, or a ``--set`` key (checked against ``build_parser()`` and the
configuration schema), or a page-level ``<!-- docs-test: requires FEATURE -->`` whose
probe in :data:`PROBES` fails. Every later block of the same page is skipped with it
(it may use its outputs). The skip goes away by itself when the feature lands. Under
``CI=true`` (``.ci/run``) such a block fails instead (and the page's later blocks are skipped
after it): documentation naming what does not exist is an error there. Without
``../shared/data`` the blocks fail under ``CI=true`` too and are skipped otherwise.

:func:`test_every_documented_command_exists` checks, without running anything, the same for
every command line of README.md and docs/**/*.md: ```bash/sh/shell/console blocks and
unmarked blocks (the README's synopses, ``[--option VALUE]`` and ``a|b`` read as options).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from medclf import docgen
from medclf.cli import build_parser
from medclf.errors import MedclfError

from conftest import ROOT, SHARED_DATA, free_port, missing, require_data, strict

DOCS = ROOT / "docs"
TESTS = Path(__file__).resolve().parent
PAGES = [DOCS / "getting-started.md", *sorted((DOCS / "tutorials").glob("*.md"))]
FAST_SET = ["train.max_epochs=1"]
FAST_OPTIONS = {"--trials": "2", "--n-trials": "2"}
COVID_SUBSET = {"train": 6, "val": 2, "test": 3}
MEDMNIST_SUBSET = {"train": 300, "val": 60, "test": 90}
SUBSTITUTIONS = [(re.compile(r"^bash scripts/setup\.sh\b.*$", re.M), "bash -n scripts/setup.sh")]
BLOCK_TIMEOUT_S = 300

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                   re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*([\w-]+)\s*(.*?)\s*-->", re.S)
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}
PLACEHOLDER_KEY = re.compile(r"^(key|\.\.\.|[A-Z][A-Z_.]*)$")  # in synopses: --set key=value, KEY=VALUE, ...


# ---------------------------------------------------------------------------- probes
def _probe_npz() -> bool:
    """medclf can read a MedMNIST .npz file (issue 3)."""
    from medclf.config import Config
    from medclf.data.sources import discover_source
    try:
        discover_source(SHARED_DATA / "medmnist" / "pneumoniamnist_reduced.npz", Config().data, 0)
    except MedclfError:
        return False
    return True


def _probe_nifti() -> bool:
    """medclf finds NIfTI volumes in class folders (issue 3)."""
    import tempfile

    import nibabel as nib
    import numpy as np

    from medclf.data.sources.folder import discover
    with tempfile.TemporaryDirectory() as tmp:
        for split, n in (("train", 6), ("test", 2)):
            for label in ("a", "b"):
                folder = Path(tmp, split, label)
                folder.mkdir(parents=True)
                for i in range(n):
                    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), folder / f"{i}.nii.gz")
        try:
            discover(Path(tmp), 0.15, 0.15, 0)
        except MedclfError:
            return False
    return True


PROBES = {"npz": _probe_npz, "nifti": _probe_nifti}


# ---------------------------------------------------------------------------- parsing
@dataclass
class Page:
    path: Path
    blocks: list[str]
    overrides: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)


def parse_page(path: Path) -> Page:
    """The ```bash blocks and docs-test directives of a Markdown page."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        if m["lang"] not in ("bash", "python"):
            continue
        body = textwrap.dedent("\n".join(line[len(m["indent"]):] for line in m["body"].splitlines()))
        if m["lang"] == "python":  # Python examples run too, as a script, in the same folder
            body = f"python - <<'MEDCLF_DOCS_PY'\n{body.rstrip()}\nMEDCLF_DOCS_PY\n"
        blocks.append(body)
    page = Page(path, blocks)
    for name, value in DIRECTIVE.findall(text):
        if name == "set":
            page.overrides += value.split()
        elif name == "requires":
            page.requires += value.split()
        else:
            raise ValueError(f"{path.name}: unknown docs-test directive {name!r}")
    return page


def shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a bash block, as token lists (comments and operators removed)."""
    joined = re.sub(r"\\\n", " ", block)
    commands = []
    for line in joined.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current: list[str] = []
        try:
            tokens = list(lexer)
        except ValueError:  # a line of a here-document, e.g. YAML with an apostrophe
            continue
        for token in tokens:
            if token in OPERATORS:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


def _subparsers(parser):
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def missing_features(block: str) -> str | None:
    """Why a block cannot run yet (a subcommand, option or config key that does not exist), or None."""
    parser = build_parser()
    commands = _subparsers(parser)
    config_keys = {k.key for k in docgen.config_keys()}
    for tokens in shell_commands(block):
        while tokens and re.match(r"^\w+=", tokens[0]):  # VAR=value medclf ...
            tokens = tokens[1:]
        if not tokens or Path(tokens[0]).name != "medclf" or len(tokens) < 2 or tokens[1].startswith("-"):
            continue
        name = tokens[1]
        if name not in commands:
            return f"`medclf {name}` does not exist yet"
        sub = commands[name]
        options = {o for a in sub._actions for o in a.option_strings}
        for i, token in enumerate(tokens[2:], start=2):
            if token.startswith("--"):
                option = token.split("=", 1)[0]
                if option not in options:
                    return f"`medclf {name}` has no option {option} yet"
                if option == "--set":
                    pair = token.split("=", 1)[1] if "=" in token else (tokens[i + 1] if i + 1 < len(tokens) else "")
                    key = pair.split("=", 1)[0]
                    if key not in config_keys and not PLACEHOLDER_KEY.match(key):
                        return f"configuration key {key} does not exist yet"
    return None


# ---------------------------------------------------------------------------- workspace
WRAPPER = '''#!{python}
"""medclf with the docs test's small budgets (see tests/test_docs_commands.py)."""
import json, os, sys
sys.path.insert(0, {src!r})
sys.path.insert(0, {tests!r})
from warm_medclf import run_warm
from medclf.cli import build_parser, main


def with_docs_settings(argv):
    parser = build_parser()
    subs = {{}}
    for action in parser._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            subs = action.choices
    if argv and argv[0] in subs:
        options = {{o for a in subs[argv[0]]._actions for o in a.option_strings}}
        if "--set" in options:
            for pair in json.loads(os.environ.get("MEDCLF_DOCS_SET", "[]")):
                argv += ["--set", pair]
        if "--no-progress" in options and "--no-progress" not in argv:
            argv.append("--no-progress")
        for option, value in json.loads(os.environ.get("MEDCLF_DOCS_OPTIONS", "{{}}")).items():
            if option in options:
                argv += [option, value]
    return argv


if __name__ == "__main__":  # the k-fold protocol's fold processes import this file again (spawn)
    argv = with_docs_settings(sys.argv[1:])
    code = run_warm(argv)  # in a fork of the warm server (tests/warm_medclf.py), if there is one
    sys.exit(main(argv) if code is None else code)
'''


_SUBSETS: dict[Path, Path] = {}


def _medmnist_subset(path: Path) -> Path:
    """A copy of a MedMNIST ``.npz`` with about :data:`MEDMNIST_SUBSET` images a split (made once
    a session, in a temporary folder): per class, the first ones, in the split's proportions."""
    import atexit
    import shutil
    import tempfile

    import numpy as np
    if path not in _SUBSETS:
        folder = Path(tempfile.mkdtemp(prefix="medclf-docs-medmnist-"))
        atexit.register(shutil.rmtree, folder, True)
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files}
        for split, n in MEDMNIST_SUBSET.items():
            if f"{split}_labels" not in arrays:
                continue
            labels = arrays[f"{split}_labels"].reshape(len(arrays[f"{split}_labels"]), -1)[:, 0]
            classes, counts = np.unique(labels, return_counts=True)
            keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:max(3, round(n * k / len(labels)))]
                                           for c, k in zip(classes, counts)]))
            for key in (f"{split}_images", f"{split}_labels"):
                arrays[key] = arrays[key][keep]
        np.savez_compressed(folder / path.name, **arrays)
        _SUBSETS[path] = folder / path.name
    return _SUBSETS[path]


def make_workspace(root: Path) -> Path:
    """``root/project`` (the working directory) and ``root/shared/data`` beside it."""
    project = root / "project"
    project.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name not in {".venv", "runs", "site", ".git", ".pytest_cache"}:
            (project / entry.name).symlink_to(entry)
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "medclf").write_text(WRAPPER.format(python=sys.executable, src=str(ROOT / "src"), tests=str(TESTS)))
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for tool in ("medclf", "python", "python3"):
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')

    data = root / "shared" / "data"
    data.mkdir(parents=True)
    if SHARED_DATA.is_dir():
        for entry in SHARED_DATA.iterdir():
            if entry.name == "medmnist" and entry.is_dir():
                (data / entry.name).mkdir()
                for item in entry.iterdir():
                    target = _medmnist_subset(item) if item.suffix == ".npz" else item
                    (data / entry.name / item.name).symlink_to(target)
            elif entry.name != "covid19-xray":
                (data / entry.name).symlink_to(entry)
    covid = SHARED_DATA / "covid19-xray"
    if covid.is_dir():
        for split_dir in sorted(p for p in covid.iterdir() if p.is_dir()):
            for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                target = data / "covid19-xray" / split_dir.name / class_dir.name
                target.mkdir(parents=True)
                for image in sorted(class_dir.iterdir())[:COVID_SUBSET.get(split_dir.name, 3)]:
                    (target / image.name).symlink_to(image)
    return project


@pytest.fixture
def warm_server(warm_medclf) -> str | None:
    """The socket of the session's warm medclf (tests/warm_medclf.py; conftest's ``warm_medclf``),
    or None: each ``medclf`` of a block then imports medclf itself, as in a user's shell."""
    return warm_medclf.socket


def run_block(block: str, project: Path, page: Page, warm: str | None = None) -> subprocess.CompletedProcess:
    """Run ``block`` with ``bash -c`` in ``project``; ``warm``: the socket of a warm medclf server."""
    for pattern, replacement in SUBSTITUTIONS:
        block = pattern.sub(replacement, block)
    bin_dir = project / ".venv" / "bin"
    env = {**os.environ,
           # PYTHONPATH and MPLBACKEND as the warm server (conftest's warm_medclf) has them
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "MPLBACKEND": "Agg", "COLUMNS": "120",
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "MEDCLF_DOCS_SET": json.dumps(FAST_SET + page.overrides),
           "MEDCLF_DOCS_OPTIONS": json.dumps(FAST_OPTIONS)}
    if warm:
        env["MEDCLF_DOCS_WARM"] = warm
    process = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + block], cwd=project, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # a process outside the block's group holds its output open
            process.stdout.close()
            process.wait()
            output = ""
        output += f"\n[docs test: block killed after {BLOCK_TIMEOUT_S} s]"
    finally:
        try:  # background servers started by the block (medclf serve ... &)
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(block, process.returncode, output)


def _pending(state: dict):
    """Skip a block that needs a missing feature; under ``CI=true`` fail it (once per page: the
    page's later blocks are then skipped as after any failed block)."""
    if strict():
        state["failed"] = True
    missing(state["pending"])


# ---------------------------------------------------------------------------- all docs, not run
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}


def documented_command_blocks(path: Path) -> list[tuple[int, str]]:
    """The shell command blocks of a Markdown page as ``(line, text)``: fenced blocks marked
    bash/sh/shell/console, and unmarked ones (synopses such as ``medclf train DATA [--out DIR]``).

    In unmarked blocks ``[``, ``]`` and ``|`` (optional parts and alternatives) become spaces, so
    ``[--tta | --no-tta]`` names two options; a console prompt ``$ `` is removed.
    """
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        if m["lang"] not in SHELL_LANGS:
            continue
        body = textwrap.dedent("\n".join(line[len(m["indent"]):] for line in m["body"].splitlines()))
        body = re.sub(r"^\$ ", "", body, flags=re.M)
        if not m["lang"]:
            body = re.sub(r"[\[\]|]", " ", body)
        blocks.append((text.count("\n", 0, m.start()) + 1, body))
    return blocks


def documented_problems(paths) -> list[str]:
    """``"FILE:LINE: reason"`` for every documented command line naming a ``medclf`` subcommand,
    option or ``--set`` key that does not exist (see :func:`missing_features`), placeholders
    such as ``--set key=value`` excepted."""
    problems = []
    for path in paths:
        for line, block in documented_command_blocks(path):
            for tokens in shell_commands(block):
                if tokens and Path(tokens[0]).name == "medclf":
                    reason = missing_features(shlex.join(tokens))
                    if reason:
                        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                        problems.append(f"{name}:{line}: {reason} ({shlex.join(tokens)})")
    return problems


# ---------------------------------------------------------------------------- tests
CASES = [(page, i) for page in PAGES for i in range(len(parse_page(page).blocks))]
_STATE: dict[Path, dict] = {}


def test_pages_have_commands_and_valid_directives():
    assert (DOCS / "getting-started.md") in PAGES and len(PAGES) >= 5
    for path in PAGES:
        page = parse_page(path)
        assert page.blocks, f"{path.name} has no ```bash block"
        for feature in page.requires:
            assert feature in PROBES, f"{path.name}: unknown feature {feature!r}; known: {sorted(PROBES)}"


def test_block_analysis_finds_what_does_not_exist():
    assert missing_features("medclf train DATA --set train.lr=1e-3 --name x") is None
    assert missing_features("medclf predict runs/x a.png --csv p.csv | tail -1") is None
    assert "medclf nosuchcommand" in missing_features("ls && medclf nosuchcommand runs/x")
    assert "--nosuchoption" in missing_features("medclf train DATA \\\n  --nosuchoption 3")
    assert "train.nosuchkey" in missing_features("medclf train DATA --set train.nosuchkey=1")
    assert "model.nosuchkey" in missing_features("medclf train DATA --set=model.nosuchkey=1")
    assert missing_features("echo medclf nosuchcommand  # medclf nosuchcommand") is None


def test_every_documented_command_exists():
    """README.md and docs/**/*.md name only subcommands, options and --set keys that exist
    (a failure under CI=true, a skip otherwise: docs may be written before the feature)."""
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    commands = [tokens for page in pages for _, block in documented_command_blocks(page)
                for tokens in shell_commands(block) if tokens and Path(tokens[0]).name == "medclf"]
    assert len(commands) >= 30  # the check does look at the documentation
    problems = documented_problems(pages)
    if problems:
        missing("documented commands that do not exist:\n" + "\n".join(problems))


def test_documented_command_check_catches_unknown_options_and_keys(tmp_path):
    """A crafted page naming a non-existent option, --set key and synopsis option is caught, with
    the line of its block; placeholders and existing ones are not."""
    assert "--no-such-option" in missing_features("medclf train DATA --no-such-option")
    assert "train.no_such_key" in missing_features("medclf train DATA --set train.no_such_key=1")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n```bash\nmedclf train DATA --no-such-option\n```\n\n"
                    "```console\n$ medclf train DATA --set train.no_such_key=1 --set train.lr=1e-3\n```\n\n"
                    "```\nmedclf predict runs/<name> a.png [--csv out.csv] [--tta | --no-such-flag]\n"
                    "medclf train DATA [--set key=value ...] [--set KEY=VALUE] [--out runs/]\n```\n\n"
                    "```text\nmedclf train DATA --not-checked-in-text\n```\n", encoding="utf-8")
    problems = documented_problems([page])
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{page}:3: `medclf train` has no option --no-such-option")
    assert problems[1].startswith(f"{page}:7: configuration key train.no_such_key does not exist")
    assert problems[2].startswith(f"{page}:11: `medclf predict` has no option --no-such-flag")


def test_a_block_naming_what_does_not_exist_fails_under_ci(monkeypatch):
    state = {"pending": "page.md block 0 and later: `medclf train` has no option --no-such-option yet"}
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-option"):
        _pending(dict(state))
    monkeypatch.setenv("CI", "true")
    failed = dict(state)
    with pytest.raises(pytest.fail.Exception, match="no-such-option"):
        _pending(failed)
    assert failed["failed"]  # the page's later blocks are skipped after it, not failed again


@pytest.mark.parametrize("path, index", CASES, ids=[f"{p.stem}-{i}" for p, i in CASES])
def test_doc_command_block(path, index, tmp_path_factory, warm_server):
    require_data(SHARED_DATA)
    page = parse_page(path)
    state = _STATE.setdefault(path, {})
    if "project" not in state:
        state["project"] = make_workspace(tmp_path_factory.mktemp(path.stem))
        for feature in page.requires:
            if not PROBES[feature]():
                state["pending"] = f"{path.name} requires {feature!r}: {PROBES[feature].__doc__.strip()}"
                break
    if state.get("failed"):
        pytest.skip(f"an earlier block of {path.name} failed")
    if state.get("pending"):
        _pending(state)
    block = page.blocks[index]
    reason = missing_features(block)
    if reason:
        state["pending"] = f"{path.name} block {index} and later: {reason}"
        _pending(state)
    done = run_block(block, state["project"], page, warm_server)
    if done.returncode != 0:
        state["failed"] = True
    assert done.returncode == 0, (f"{path.name}, block {index} failed with status {done.returncode}:\n"
                                  f"{block}\n--- output (tail) ---\n{done.stdout[-4000:]}")


def test_the_warm_medclf_runs_commands_as_a_shell_would(tmp_path, warm_server, capfd, monkeypatch):
    """Through the warm server (tests/warm_medclf.py) a command's output and exit status come back,
    a SIGTERM to the command reaches it, and killing the command with SIGKILL (as the block
    timeout does) ends the work it started."""
    from warm_medclf import run_warm
    if os.environ.get("MEDCLF_TESTS_COLD") == "1":
        pytest.skip("MEDCLF_TESTS_COLD=1: no warm server")
    assert warm_server is not None, "the warm medclf server did not start"
    monkeypatch.setenv("MEDCLF_DOCS_WARM", warm_server)
    capfd.readouterr()
    assert run_warm(["nosuchcommand"]) == 2  # argparse's status, from the fork
    assert "invalid choice: 'nosuchcommand'" in capfd.readouterr().err
    monkeypatch.setenv("MEDCLF_DOCS_WARM", str(tmp_path / "no-server"))
    assert run_warm(["nosuchcommand"]) is None  # no server: the wrapper runs medclf itself

    project = make_workspace(tmp_path / "ws")
    page = Page(tmp_path / "page.md", [])
    port = free_port()
    for name in ("TERM", "KILL"):
        block = (f"mkdir -p served\nmedclf serve served --port {port} &\n"
                 f"curl -sf --retry 90 --retry-connrefused --retry-delay 1 http://127.0.0.1:{port}/api/health\n"
                 f"echo; echo up\nkill -{name} $!\nwait $! || true\n"
                 f"for i in $(seq 100); do curl -s http://127.0.0.1:{port}/api/health >/dev/null || "
                 f"{{ echo down; exit 0; }}; sleep 0.2; done\necho still up\n")
        done = run_block(block, project, page, warm_server)
        assert "\nup\n" in done.stdout and "down" in done.stdout, (name, done.stdout[-2000:])


def test_a_failing_command_fails_its_block(tmp_path):
    """The harness reports failures: set -e stops at the first failing line; medclf's exit status counts."""
    project = make_workspace(tmp_path)
    page = Page(tmp_path / "page.md", [])
    done = run_block("false\necho after\n", project, page)
    assert done.returncode != 0 and "after" not in done.stdout
    done = run_block("medclf nosuchcommand\n", project, page)  # argparse exits with 2
    assert done.returncode == 2 and "invalid choice" in done.stdout
    done = run_block("source .venv/bin/activate\ncommand -v medclf\nls ../shared/data\n", project, page)
    assert done.returncode == 0 and str(project / ".venv" / "bin" / "medclf") in done.stdout
    assert "covid19-xray" in done.stdout
