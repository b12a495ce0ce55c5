"""Where things live. Library code never guesses a data folder: it takes one as an argument;
command-line tools default through :func:`data_root`. Scripts and tests of the checkout find it
through :data:`REPO_ROOT` (the one definition)."""

from __future__ import annotations

import os
from pathlib import Path

#: The source checkout this package was imported from (an editable install or PYTHONPATH):
#: scripts (``bench/``, ``training/``) and tests use it; for an installed copy it is the
#: site-packages folder, which holds no ``weights/``, ``bench/`` or ``test/``.
REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "DFANET_DATA"
# The development layout: the repository checkout next to a `shared/` folder with the
# research-only datasets (never copied into the repository).
_DEV_DATA = REPO_ROOT.parent / "shared" / "data"


def data_root(dataset: str) -> Path:
    """``$DFANET_DATA/<dataset>`` when the variable is set, else the development layout's
    ``../shared/data/<dataset>`` beside the checkout (tools and tests only)."""
    base = os.environ.get(DATA_ENV)
    return (Path(base) if base else _DEV_DATA) / dataset
