"""``python -m dfanet_ros.bag_eval``: offline evaluation of a model on a rosbag.

The tool lives in :mod:`dfanet_ros.bag`; this module keeps the command stable.
"""

import sys

from dfanet_ros.bag.cli import eval_main as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
