"""Where data lives. Library code never guesses a data folder: it takes one as an argument;
command-line tools default through :func:`data_root`."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "DFANET_DATA"
# The development layout: the repository checkout next to a `shared/` folder with the
# research-only datasets (never copied into the repository).
_DEV_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def data_root(dataset: str) -> Path:
    """``$DFANET_DATA/<dataset>`` when the variable is set, else the development layout's
    ``../shared/data/<dataset>`` beside the checkout (tools and tests only)."""
    base = os.environ.get(DATA_ENV)
    return (Path(base) if base else _DEV_DATA) / dataset
