"""``python -m dfanet_ros.demo``: the one-command demo (the node segments a replayed bag).

The tool lives in :mod:`dfanet_ros.bag`; this module keeps the command stable.
"""

import sys

from dfanet_ros.bag.cli import demo_main as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
