"""Start the DFANet segmentation node.

    ros2 launch dfanet_ros segment.launch.py image:=/camera/front/image_raw
    ros2 launch dfanet_ros segment.launch.py image:=/cam1/image_raw input_type:=compressed \
        namespace:=cam1 backend:=tensorrt managed:=true min_confidence:=0.5 log_level:=warn

All decisions (default params file, overrides, remappings, the Fast DDS profile variable, the log
level) are made by dfanet_ros.launch_logic.plan_launch, which the tests cover without a launch
install.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dfanet_ros.launch_logic import EXECUTABLE, LAUNCH_ARGUMENTS, PACKAGE, plan_launch


def _launch_node(context, *args, **kwargs):
    values = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in LAUNCH_ARGUMENTS}
    plan = plan_launch(values, get_package_share_directory(PACKAGE), os.environ)
    actions = [SetEnvironmentVariable(name, value) for name, value in plan.environment]
    actions.append(
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name=plan.node_name,
            namespace=plan.namespace,
            parameters=list(plan.parameters),
            remappings=list(plan.remappings),
            ros_arguments=list(plan.ros_arguments),
            output="screen",
            emulate_tty=True,
        )
    )
    return actions


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument(
            arg.name,
            default_value=arg.default,
            description=arg.description,
            **({"choices": list(arg.choices)} if arg.choices else {}),
        )
        for arg in LAUNCH_ARGUMENTS
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_launch_node)])
