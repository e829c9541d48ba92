"""What the benchmark can measure: the decode limit, the peers (benchmark/peers.py), and every loader
in conf/loader/.

An entry is a name, optionally followed by Hydra overrides of that loader's config, e.g.
`tfdata loader.autotune=false`, or a peer's knobs, `grain peer.workers=0`: one invocation can then
compare settings side by side.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from omegaconf import DictConfig

from loaderlab.benchmark.peers import PEERS
from loaderlab.loaders.augment import AUGMENTS
from loaderlab.utils.paths import PROJECT_ROOT

DECODE_LIMIT = "decode_limit"
CONF_DIR = PROJECT_ROOT / "conf"


def split_entry(entry: str) -> tuple[str, list[str]]:
    """'tfdata loader.autotune=false' -> ('tfdata', ['loader.autotune=false'])."""
    name, *overrides = shlex.split(entry)
    return name, overrides


def loader_names(conf_dir: Path = CONF_DIR) -> list[str]:
    """Every loader with a yaml in conf/loader/: a new loader is benchmarked with no edits here."""
    return sorted(p.stem for p in (conf_dir / "loader").glob("*.yaml"))


def default_entries(conf_dir: Path = CONF_DIR) -> list[str]:
    """What runs without --entries: the limit, the peers (those that cannot run here are skipped with
    their reason), and every loader that needs no server."""
    return [
        DECODE_LIMIT,
        *PEERS,
        *(n for n in loader_names(conf_dir) if _self_contained(n, conf_dir)),
    ]


def check_entries(entries: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """The entries to run: the decode limit first, then the rest as given; a ValueError names unknown ones."""
    known = [DECODE_LIMIT, *PEERS, *loader_names(conf_dir)]
    unknown = sorted({split_entry(e)[0] for e in entries} - set(known))
    if unknown:
        raise ValueError(
            f"Unknown benchmark entries {unknown}; choose from {known}. Received: entries={entries}"
        )
    for entry in entries:
        name, overrides = split_entry(entry)
        if overrides and name == DECODE_LIMIT:
            raise ValueError(f"The limit takes no overrides; it follows --augment. Received: entry={entry!r}")
        if name in PEERS and any(not o.startswith(("peer.", "augment=")) for o in overrides):
            raise ValueError(
                f"A peer entry takes peer.<knob>=<int> (grain: workers, threads) and augment=. "
                f"Received: entry={entry!r}"
            )
        if name not in PEERS and any(
            not o.startswith(("loader.", "augment=", "augment.")) for o in overrides
        ):
            raise ValueError(
                "Entry overrides set loader.<knob>=<value>, augment=none|flip|rrc|layers or a layers knob "
                f"(augment.zoom=0.2). Received: entry={entry!r}"
            )
        for kind in (o.split("=", 1)[1] for o in overrides if o.startswith("augment=")):
            if kind not in AUGMENTS:
                raise ValueError(f"augment must be one of {list(AUGMENTS)}. Received: entry={entry!r}")
    rest = [e for e in dict.fromkeys(entries) if e != DECODE_LIMIT]
    return [DECODE_LIMIT, *rest]


def loader_config(name: str, overrides: list[str], conf_dir: Path = CONF_DIR) -> DictConfig:
    """The loader's config as `python src/train.py loader=<name> <overrides>` composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose("config", overrides=[f"loader={name}", *overrides]).loader


def _self_contained(name: str, conf_dir: Path) -> bool:
    """Whether the loader runs without servers started first (its class's `needs_service`)."""
    from hydra.utils import get_class

    return not getattr(get_class(loader_config(name, [], conf_dir)._target_), "needs_service", False)
