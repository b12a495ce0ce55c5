"""``python -m dfanet_ros.make_bag``: build a rosbag2 from an image folder or a video.

The tool lives in :mod:`dfanet_ros.bag`; this module keeps the command stable.
"""

import sys

from dfanet_ros.bag.cli import make_main as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
