"""The rosbag tools and the demo, apart from the node:

``io``        read bags (rosbag2 sqlite3/MCAP, ROS 1) and write rosbag2 atomically; no rclpy
``evaluate``  offline evaluation: the Segmenter over a bag's images, mIoU, latency, report
``replay``    live replay: play a bag onto the running node, collect its masks, same report
``make``      build a replayable rosbag2 from an image folder (+ labels) or a video
``demo``      the one-command tour: the node segments a replayed bag
``cli``       their command lines (``python -m dfanet_ros.bag_eval`` / ``bag_replay`` /
              ``make_bag`` / ``demo`` are thin entry points into it)
"""
