"""Where the community dashboards of the compatibility tests are read from.

They stay outside the repository (``../shared/compat`` beside the checkout,
as CI lays it out): their owners ask that they not be copied into the
project. ``FLEETWATCH_COMPAT_DIR`` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def compat_file(name: str) -> Path:
    """The path of one shared compatibility file, e.g. ``node-exporter-full.json``.

    Raises:
        FileNotFoundError: with where it looked and how to point elsewhere.
    """
    folder = Path(os.environ.get("FLEETWATCH_COMPAT_DIR") or REPO.parent / "shared" / "compat")
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: set FLEETWATCH_COMPAT_DIR to the folder holding {name}")
    return path
