"""docs/reference/config.md is what docs/reference/generate_config.py makes of conf/ now: a key, option or
comment added to conf/ without regenerating the page fails here, with the command that regenerates it."""

from __future__ import annotations

import difflib
import runpy

from loaderlab import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "docs" / "reference" / "generate_config.py"


def test_the_config_reference_is_generated_from_conf_as_it_is() -> None:
    generator = runpy.run_path(str(SCRIPT), run_name="config_reference")
    page, command = generator["PAGE"], generator["COMMAND"]
    expected = generator["generate"]()
    committed = page.read_text() if page.exists() else ""
    diff = "".join(
        list(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "committed",
                "generated now",
                n=1,
            )
        )[:40]
    )
    assert committed == expected, (
        f"{page.relative_to(PROJECT_ROOT)} differs from what conf/ gives now. Regenerate it with\n"
        f"    {command}\nand commit it. First lines of the difference:\n{diff}"
    )


def test_every_option_file_of_every_group_is_on_the_page() -> None:
    text = (PROJECT_ROOT / "docs" / "reference" / "config.md").read_text()
    conf = PROJECT_ROOT / "conf"
    missing = [
        str(path.relative_to(conf))
        for path in sorted(conf.rglob("*.yaml"))
        if len(path.relative_to(conf).parts) > 1
        and f"### {'/'.join(path.relative_to(conf).parts[:-1])}={path.stem}\n" not in text
    ]
    assert not missing, f"options with no section on the page: {missing}"
