"""ament_python package whose root is the repository root: dfanet_core + dfanet_ros."""

from glob import glob

from setuptools import find_packages, setup

package_name = "dfanet_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["dfanet_core", "dfanet_core.*", "dfanet_ros", "dfanet_ros.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml") + glob("config/*.xml")),
        (
            "share/" + package_name + "/weights",
            glob("weights/*.safetensors") + glob("weights/*.json"),
        ),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="dfanet team",
    maintainer_email="dfanet@example.com",
    description="DFANet real-time semantic segmentation for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "segment_node = dfanet_ros.segment_node:main",
            "segment_demo = dfanet_ros.demo:main",
            "echo_node = dfanet_ros.echo_node:main",
            "dfanet-profile = dfanet_core.profile:main",
            "dfanet-bag-eval = dfanet_ros.bag_eval:main",
            "dfanet-bag-replay = dfanet_ros.bag_replay:main",
            "dfanet-make-bag = dfanet_ros.make_bag:main",
        ],
    },
)
