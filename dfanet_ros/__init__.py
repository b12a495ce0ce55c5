"""dfanet_ros: the thin ROS 2 layer over dfanet_core.

``segment_node`` is the node; ``conversions``, ``params``, ``stats``, ``diagnostics``,
``pipeline`` and ``launch_logic`` hold its logic as plain Python, tested without a ROS graph
(``qos`` builds rclpy QoS profiles); ``harness`` drives a node from Python (demo, benchmark,
tests); ``demo`` is the one-command tour; ``bag_*`` are the rosbag tools.
"""
