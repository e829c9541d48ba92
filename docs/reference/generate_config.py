"""The configuration reference, generated from conf/: every group, its options, and each key with its
default and the comment on its yaml line.

python docs/reference/generate_config.py            # writes docs/reference/config.md
python docs/reference/generate_config.py --check    # exit 1 if the committed page differs

tests/test_config_reference.py runs the check: edit conf/, then run the first command and commit the page.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
PAGE = Path(__file__).resolve().parent / "config.md"
COMMAND = "python docs/reference/generate_config.py"
PRIMARY = ("config.yaml", "eval.yaml")  # the configs train.py and eval.py compose; the rest are groups
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[\w.\-/]+):(?:\s+(?P<rest>.*))?$")
ITEM = re.compile(r"^(?P<indent>\s*)-\s+(?P<rest>.*)$")


@dataclass
class Key:
    """One line of a yaml file that sets a key: its dotted path, its value as written, its comment."""

    path: str
    value: str
    comment: str


@dataclass
class YamlFile:
    """What the page says about one yaml file."""

    header: str  # the comment lines above the first key
    package: str  # '_global_' or the group's path, as Hydra places the file
    defaults: list[tuple[str, str]] = field(default_factory=list)  # (entry, comment)
    keys: list[Key] = field(default_factory=list)


def split_comment(text: str) -> tuple[str, str]:
    """A yaml line's value and its comment: a # after whitespace, outside quotes, starts the comment."""
    quote = None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), ""


def parse(path: Path, package: str) -> YamlFile:
    """The file's keys in order, as dotted paths under `package`, from its lines (yaml drops comments)."""
    lines = path.read_text().splitlines()
    header: list[str] = []
    found = YamlFile("", package)
    stack: list[tuple[int, str]] = []  # (indent, key) of the mappings the line is in
    pending: list[str] = []  # comment lines just above a key, at its indent
    last: Key | None = None
    last_indent = -1
    in_defaults = False
    seen_key = False
    opened: Key | None = None  # the key of the line before, when it opened a mapping or a list
    block_indent: int | None = None  # inside a block scalar (key: |) opened at this indent
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block_indent is not None:
            if not stripped or indent > block_indent:
                if stripped and last is not None:
                    last.value = f"(a text of {int(last.value.split()[3]) + 1} lines)"
                continue
            block_indent = None
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if text.startswith("@package"):
                continue
            if not seen_key:
                header.append(text)
            elif last is not None and indent > last_indent:  # a comment continued on the next line
                last.comment = f"{last.comment} {text}".strip()
            else:
                pending.append(text)
            continue
        item = ITEM.match(line)
        if item and in_defaults:
            entry, comment = split_comment(item.group("rest"))
            found.defaults.append((entry, comment))
            continue
        if item and opened is not None:  # a block list: the key just opened holds it
            entry, _ = split_comment(item.group("rest"))
            items = opened.value[1:-1].split(", ") if opened.value else []
            opened.value = "[" + ", ".join([*items, entry]) + "]"
            if not any(k is opened for k in found.keys):
                found.keys.append(opened)
                stack.pop()
            last, last_indent = opened, indent - 1
            continue
        match = KEY.match(line)
        if not match:
            raise ValueError(f"{path}: a line this script does not read: {line!r}")
        seen_key = True
        key = match.group("key")
        value, comment = split_comment(match.group("rest") or "")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        in_defaults = key == "defaults" and not stack
        if in_defaults:
            pending = []
            continue
        comment = comment or " ".join(pending)
        pending = []
        if opened is not None and opened.comment and not any(k is opened for k in found.keys):  # a mapping
            found.keys.append(opened)
        opened = None
        prefix = [k for _, k in stack]
        if value in ("|", ">", "|-", ">-", "|+", ">+"):  # a block scalar: its lines follow, deeper
            value, block_indent = "(a text of 0 lines)", indent
        if value:
            last = Key(
                ".".join([*([] if package == "_global_" else [package]), *prefix, key]), value, comment
            )
            last_indent = indent
            found.keys.append(last)
        else:  # a mapping (or a block list): its keys follow, one level deeper
            stack.append((indent, key))
            last, last_indent = None, -1
            full = ".".join([*([] if package == "_global_" else [package]), *prefix, key])
            opened = Key(full, "", comment)
    found.header = " ".join(header)
    _check_against_yaml(path, found, package)
    return found


def _check_against_yaml(path: Path, found: YamlFile, package: str) -> None:
    """The keys read from the lines are exactly the leaves yaml itself reads: the line parser cannot drift."""
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("defaults", None)
    leaves: list[str] = []
    read = [k.path for k in found.keys if k.value]

    def walk(node: object, prefix: list[str]) -> None:
        if isinstance(node, dict) and node and ".".join(prefix) not in read:  # {a: 1} on one line: one value
            for key, value in node.items():
                walk(value, [*prefix, str(key)])
        else:
            leaves.append(".".join(prefix))

    if data:
        walk(data, [] if package == "_global_" else package.split("."))
    if sorted(read) != sorted(leaves):
        raise ValueError(
            f"{path}: the lines give keys {sorted(set(read) ^ set(leaves))} that yaml does not, or the other "
            "way round; write each key on a line of its own (no flow mappings over several lines)."
        )


def prose(text: str) -> str:
    """A yaml comment as markdown text: <...> and * shown as they are, not read as HTML or emphasis."""
    return text.replace("<", "&lt;").replace("*", "\\*")


def cell(text: str) -> str:
    """Text for a table cell: pipes escaped."""
    return text.replace("|", "\\|")


def code(text: str) -> str:
    """A value in backticks (doubled where it holds one)."""
    return f"``{text}``" if "`" in text else f"`{text}`"


def key_table(keys: list[Key]) -> list[str]:
    rows = ["| key | default | comment |", "|---|---|---|"]
    for key in keys:
        value = code(cell(key.value)) if key.value else "(a group of keys)"
        if key.value.startswith("(a text of"):
            value = key.value.strip("()")
        rows.append(f"| {code(key.path)} | {value} | {cell(prose(key.comment))} |")
    return rows


def package_of(path: Path, group: str) -> str:
    """Where Hydra puts the file's keys: its `# @package` line, else its group (a/b -> a.b)."""
    for line in path.read_text().splitlines()[:3]:
        if line.startswith("# @package"):
            return line.split()[-1]
    return group.replace("/", ".")


def groups() -> dict[str, list[Path]]:
    """Every config group under conf/ (nested ones as a/b) and its option files, sorted."""
    found: dict[str, list[Path]] = {}
    for path in sorted(CONF.rglob("*.yaml")):
        relative = path.relative_to(CONF)
        if len(relative.parts) > 1:
            found.setdefault("/".join(relative.parts[:-1]), []).append(path)
    return found


def generate() -> str:
    """The page, from conf/ as it is now."""
    out = [
        "# Configuration reference",
        "",
        f"Generated from `conf/` by `{COMMAND}`; do not edit it by hand. `tests/test_config_reference.py` "
        "fails when this page differs from what the script makes of `conf/` now: after editing `conf/`, run "
        "the command and commit the page.",
        "",
        "Every key can be set on the command line (`python src/train.py loader.prefetch=4`); "
        "a group's option "
        "is chosen with `group=option` (`python src/train.py loader=packed`). Values are shown as written in "
        "the yaml: `${...}` is an interpolation resolved when the job starts, and `???` a value you must "
        "give. A group whose default is `null` is off unless you name an option. "
        "Hydra's own keys (`hydra.*`) are Hydra's: see "
        "[its documentation](https://hydra.cc/docs/configure_hydra/intro/).",
        "",
    ]
    primary = {name: parse(CONF / name, "_global_") for name in PRIMARY}
    all_groups = groups()
    out += ["## Groups and their defaults", ""]
    out += [
        "| group | options | chosen by default (`conf/config.yaml`) | comment on that line |",
        "|---|---|---|---|",
    ]
    chosen = {}
    for entry, comment in primary["config.yaml"].defaults:
        entry = entry.removeprefix("override ")
        if ":" in entry:
            group, option = (part.strip() for part in entry.split(":", 1))
            chosen[group] = (option, comment)
    for group, paths in all_groups.items():
        option, comment = chosen.get(group, ("", ""))
        options = ", ".join(code(p.stem) for p in paths)
        out.append(
            f"| {code(group)} | {options} | {code(option) if option else '-'} | {cell(prose(comment))} |"
        )
    out += [
        "",
        "`hydra/launcher=isolated`, the default launcher of sweeps, is registered in code "
        "(`src/hydra_plugins/loaderlab_launcher/`), not in a yaml; its keys are Hydra's `hydra.launcher.*`.",
        "",
    ]
    for name, found in primary.items():
        out += [f"## {name.removesuffix('.yaml')}.yaml", "", f"`conf/{name}`: {prose(found.header)}", ""]
        if found.defaults:
            listed = ", ".join(code(e) + (f" ({prose(c)})" if c else "") for e, c in found.defaults)
            out += [f"Defaults list: {listed}.", ""]
        out += [*key_table(found.keys), ""]
    for group, paths in all_groups.items():
        option, _ = chosen.get(group, ("", ""))
        out += [f"## {group}", ""]
        if option and option != "null":
            out += [f"Default: `{group}={option}`.", ""]
        elif option:
            out += ["Default: none; choose one by name.", ""]
        for path in paths:
            found = parse(path, package_of(path, group))
            out += [f"### {group}={path.stem}", ""]
            where = f"`conf/{path.relative_to(CONF).as_posix()}`"
            if found.package != group.replace("/", "."):
                where += f" (package `{found.package}`: its keys are set from the top of the config)"
            out += [f"{where}{': ' + prose(found.header) if found.header else ''}", ""]
            if found.defaults:
                listed = ", ".join(code(e) + (f" ({prose(c)})" if c else "") for e, c in found.defaults)
                out += [f"Defaults list: {listed}.", ""]
            if found.keys:
                out += [*key_table(found.keys), ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="The configuration reference, from conf/.")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page differs")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date with conf/: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
