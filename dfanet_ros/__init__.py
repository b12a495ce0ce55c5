"""dfanet_ros: the ROS 2 segmentation node over dfanet_core.

``segment_node`` is the node, glue over plain modules tested without a ROS graph:
``conversions`` (message <-> numpy), ``params`` (parameters -> NodeConfig -> RuntimeOptions),
``pipeline`` (the frame hand-off and one frame through the Segmenter), ``stats``,
``diagnostics``, ``qos`` and ``launch_logic``. ``graph`` holds the ROS plumbing the node and the
tools share (environment, node process, client node, log bridge); ``testing`` drives a node
from Python; ``bag`` holds the rosbag tools and the demo.
"""
