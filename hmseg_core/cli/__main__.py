"""``python -m hmseg_core.cli ...`` (what ``torchrun -m hmseg_core.cli`` runs): the ``hmseg-core`` command."""

from __future__ import annotations

import sys

from hmseg_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
