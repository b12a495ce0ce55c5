"""``python -m dfanet_ros.bag_replay``: live replay of a rosbag through the segmentation node.

The tool lives in :mod:`dfanet_ros.bag`; this module keeps the command stable.
"""

import sys

from dfanet_ros.bag.cli import replay_main as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
