"""Documented commands stay true: every `python src/train.py` and `python src/eval.py` line in the
README and every page under docs/ (subfolders too) composes, every other `python src/*.py`,
`python docs/**/*.py` or `python -m loaderlab...` line parses its arguments, and every relative link
and #anchor resolves.

A command that cannot be checked here is marked on its line with SKIP_MARK and a reason; the test
lists what it skipped."""

from __future__ import annotations

import argparse
import importlib
import re
import runpy
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from conftest import CONF_DIR
from loaderlab import PROJECT_ROOT

DOC_FILES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
SKIP_MARK = "# not checked here:"
COMMAND = re.compile(r"\bpython ((?:src|docs)/[\w/]+\.py|-m loaderlab[\w.]*)((?:\s|$).*)")
SHELL_OPERATORS = {"&", "&&", ";", "|", "||"}
SUMMARY: dict[str, list[str]] = {}  # each check's lines, printed at the end of the run (conftest)


def documented_lines(text: str) -> list[str]:
    """Lines of shell code blocks (continuations joined) and inline code spans of the prose."""
    lines = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):  # every block, paired in order
        if language in ("", "bash", "sh", "shell", "console"):
            lines += [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return lines


def documented_commands() -> list[tuple[str, str, list[str], str]]:
    """(where, script, its arguments, the line) for each documented python command."""
    found = []
    for file in DOC_FILES:
        for line in documented_lines(file.read_text()):
            match = COMMAND.search(line)
            if not match:
                continue
            where = file.relative_to(PROJECT_ROOT).as_posix()
            text = re.sub(r"<[^<>]+>", "placeholder", match.group(2))  # <run id>, <run folder>
            try:
                tokens = shlex.split(text, comments=True)
            except ValueError:  # an unbalanced quote in a prose fragment
                tokens = text.split()
            args = []
            for token in tokens:
                if token in SHELL_OPERATORS or token.endswith(";"):
                    break
                args.append(token)
            found.append((where, match.group(1), args, line))
    return found


COMMANDS = documented_commands()


def hydra_overrides(args: list[str], folder: Path) -> list[str]:
    """A documented train.py / eval.py command line as the overrides of one job: flags dropped, a sweep's
    first value taken, placeholder paths pointed at a temporary folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    kept, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg == "--cfg":
            skip_next = True
        elif not arg.startswith("-"):
            kept.append(re.sub(r"/path/to/[\w./-]*", str(folder), arg))
    single = []
    for override in OverridesParser.create().parse_overrides(kept):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            single.append(f"{override.get_key_element()}={first}")
        else:
            single.append(override.input_line)
    return single


def test_every_documented_train_and_eval_command_composes(tmp_path: Path) -> None:
    checked, skipped, failures = 0, [], []
    for where, script, args, line in COMMANDS:
        if script not in ("src/train.py", "src/eval.py"):
            continue
        if SKIP_MARK in line:
            skipped.append(f"{where}: {line}")
            continue
        checked += 1
        try:
            overrides = hydra_overrides(args, tmp_path)
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                name = "eval" if script == "src/eval.py" else "config"
                cfg = compose(name, overrides=overrides, return_hydra_config=True)
            with open_dict(cfg):
                del cfg["hydra"]
                cfg.paths.output_dir = str(tmp_path / "run")
            OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # as --cfg job resolves
        except Exception as e:  # noqa: BLE001  each failure is collected and named below
            failures.append(f"{where}: {line}\n    {type(e).__name__}: {str(e).splitlines()[0]}")
    SUMMARY["compose"] = [f"{checked} train.py/eval.py commands composed; {len(skipped)} skipped"]
    SUMMARY["compose"] += [f"  skipped {s}" for s in skipped]
    assert checked >= 20
    assert not failures, "\n".join(failures)


class Parsed(Exception):
    """Raised right after a script's parser accepted its arguments: nothing else runs."""


def test_every_other_documented_command_parses_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    checked, skipped, failures = 0, [], []
    for where, script, args, line in COMMANDS:
        if script in ("src/train.py", "src/eval.py"):
            continue
        if SKIP_MARK in line:
            skipped.append(f"{where}: {line}")
            continue
        checked += 1
        if script.startswith(("src/", "docs/")):
            main = runpy.run_path(str(PROJECT_ROOT / script), run_name="documented")["main"]
        else:
            main = importlib.import_module(script.removeprefix("-m ")).main
        try:
            main(args)
            failures.append(f"{where}: {line}\n    its parser was never called")
        except Parsed:
            pass
        except SystemExit as e:  # argparse's error: the documented arguments are wrong
            failures.append(f"{where}: {line}\n    the parser refused it (exit {e.code})")
    SUMMARY["parse"] = [f"{checked} other commands parsed; {len(skipped)} skipped"]
    SUMMARY["parse"] += [f"  skipped {s}" for s in skipped]
    assert checked >= 8
    assert not failures, "\n".join(failures)


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_and_anchor_resolves() -> None:
    checked, failures = 0, []
    for file in DOC_FILES:
        text = re.sub(r"```.*?```", "", file.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http(s):, mailto:
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            linked = (file.parent / path).resolve() if path else file
            where = f"{file.relative_to(PROJECT_ROOT)}: ({target})"
            if not linked.exists():
                failures.append(f"{where}: no such file")
            elif anchor and anchor not in anchors(linked.read_text()):
                failures.append(f"{where}: no heading #{anchor} in {linked.name}")
    SUMMARY["links"] = [f"{checked} relative links and anchors resolved"]
    assert checked >= 20
    assert not failures, "\n".join(failures)


def test_every_documented_model_server_names_its_store() -> None:
    """`mlflow models serve -m models:/...` reads the registry of MLFLOW_TRACKING_URI; without it, MLflow's
    default store, which holds none of the project's models."""
    unnamed = [
        f"{doc.name}: {line}"
        for doc in DOC_FILES
        for line in documented_lines(doc.read_text())
        if "mlflow models serve" in line and "models:/" in line and "MLFLOW_TRACKING_URI=" not in line
    ]
    assert not unnamed, unnamed
