"""``hmseg-core``: one command-line entry point; each subcommand is a thin layer over the library.

The command groups live in their own modules and are registered here explicitly:

* :mod:`.core`    ``models``, ``genotype``, ``train``, ``eval``, ``demo``
* :mod:`.drive`   ``bag make|info``
* :mod:`.zoo`     ``zoo build|status|publish|measure`` (the zoo pipeline, :mod:`hmseg_core.pipeline`)
* :mod:`.search`  ``lut build|check|recalibrate``, ``search``
* :mod:`.deploy`  ``export``, ``bench``, ``profile``, ``agree``
* :mod:`.args`    the argument types they share (``HxW`` sizes, ratio lists)

Other installed distributions add commands through the entry-point group
``hmseg_core.commands``: each entry point is a ``register(sub)`` function (``hmseg_ros``
adds ``replay-eval`` this way, so the core never imports ROS). Building the parser imports
no torch, numpy, yaml or TVM: every handler imports what it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional, Sequence

from . import core, deploy, drive, search, zoo

Register = Callable[[argparse._SubParsersAction], None]

#: entry-point group of the subcommands other distributions add
COMMANDS_GROUP = "hmseg_core.commands"

#: the command groups of the core, in the order ``--help`` lists them
GROUPS: List[Register] = [core.register, drive.register, zoo.register, search.register, deploy.register]


def extension_entry_points(group: str = COMMANDS_GROUP) -> list:
    """The entry points advertised under ``group`` by every distribution on ``sys.path``, by name.

    Read from every copy of the metadata, not only the first per distribution as
    ``entry_points(group=...)`` does: a stale ``*.egg-info`` in the source tree (on ``sys.path``
    under ``python -m`` from the checkout) would otherwise hide the installed metadata.
    """
    from importlib.metadata import distributions

    found = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == group:
                found.setdefault((ep.name, ep.value), ep)
    return [found[k] for k in sorted(found)]


def register_extensions(sub: argparse._SubParsersAction, group: str = COMMANDS_GROUP) -> None:
    """Call every ``register(sub)`` advertised under ``group``; one that fails is skipped with a
    one-line warning on stderr, so a broken extension cannot take the other commands down."""
    for ep in extension_entry_points(group):
        try:
            ep.load()(sub)
        except Exception as e:  # noqa: BLE001 (any failure of a third-party module)
            reason = f"{type(e).__name__}: {e}".replace("\n", " ")
            print(f"hmseg-core: warning: command extension {ep.name!r} ({ep.value}) not loaded: {reason}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hmseg-core", description="HMSeg: efficient semantic segmentation networks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in GROUPS:
        register(sub)
    register_extensions(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)  # --help and usage errors exit here, before any heavy import

    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data.datasets import DatasetError
    from ..genotype import GenotypeError
    from ..machine import retain_freed_memory
    from ..runtime import BackendUnavailable

    retain_freed_memory()
    try:
        return args.func(args)
    except (
        BackendUnavailable, CheckpointError, ConfigError, DatasetError, GenotypeError, FileExistsError, FileNotFoundError, ValueError
    ) as e:
        print(f"hmseg-core {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS_GROUP", "GROUPS", "build_parser", "extension_entry_points", "main", "register_extensions"]
