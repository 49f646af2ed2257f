"""What the launch files share: the launch arguments given on the command line, typed."""

from __future__ import annotations

from typing import Dict


def given_arguments(context, arguments: Dict[str, type]) -> dict:
    """The ``arguments`` (name -> parameter type) given on the command line (non-empty), converted to
    their parameter types; arguments left empty are not passed, so the params file's values stand."""
    from launch.substitutions import LaunchConfiguration

    out = {}
    for name, kind in arguments.items():
        text = LaunchConfiguration(name).perform(context).strip()
        if not text:
            continue
        try:
            out[name] = kind(text)
        except ValueError:
            raise ValueError(f"launch argument {name}:={text!r}: expected a {kind.__name__}") from None
    return out
