"""The package as ``colcon build`` installs it (no symlinks): the weights land in the ament
share directory, and an installed node, started outside the checkout with ``checkpoint: ""``,
finds them there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dfanet_core.paths import REPO_ROOT

SCRIPTS = ("segment_node", "segment_demo", "echo_node", "dfanet-profile", "dfanet-bag-eval",
           "dfanet-bag-replay", "dfanet-make-bag")


def installed_env(prefix: Path, **extra: str) -> dict[str, str]:
    """An environment that imports the installed copy only (never the checkout)."""
    (site,) = prefix.glob("lib/python*/site-packages")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env["PYTHONPATH"] = str(site)
    env.update(extra)
    return env


def run_installed(prefix: Path, code: str, cwd: Path, **extra: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env=installed_env(prefix, **extra), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_install_layout(installed_prefix):
    share = installed_prefix / "share" / "dfanet_ros"
    for relative in ("package.xml", "launch/segment.launch.py", "config/segment.yaml",
                     "weights/dfanet_a_camvid.safetensors"):
        assert (share / relative).is_file(), relative
    marker = installed_prefix / "share/ament_index/resource_index/packages/dfanet_ros"
    assert marker.is_file()
    for script in SCRIPTS:  # where `ros2 run dfanet_ros <script>` looks (setup.cfg)
        assert (installed_prefix / "lib" / "dfanet_ros" / script).is_file(), script


@pytest.mark.parametrize("ament", [False, True], ids=["install_prefix", "ament_index"])
def test_default_weights_resolve_to_the_share_directory(installed_prefix, tmp_path, ament):
    code = ("import dfanet_core, dfanet_ros.params as p; print(dfanet_core.__file__); "
            "print(p.model_source(p.config_from_values({'checkpoint': ''})))")
    extra = {"AMENT_PREFIX_PATH": str(installed_prefix)} if ament else {}
    module, weights = run_installed(installed_prefix, code, tmp_path, **extra)
    assert Path(module).is_relative_to(installed_prefix), "imported the checkout, not the install"
    assert Path(weights) == (installed_prefix / "share" / "dfanet_ros" / "weights"
                             / "dfanet_a_camvid.safetensors")
    assert not Path(weights).is_relative_to(REPO_ROOT)


def test_installed_node_loads_the_shipped_weights(installed_prefix, tmp_path, ros_domain_env):
    """``ros2 run dfanet_ros segment_node`` with ``checkpoint: ""`` (config/segment.yaml) from
    the install: the model loads (build_only: then the node exits 0)."""
    executable = installed_prefix / "lib" / "dfanet_ros" / "segment_node"
    params = installed_prefix / "share" / "dfanet_ros" / "config" / "segment.yaml"
    env = {**installed_env(installed_prefix), **{k: v for k, v in ros_domain_env.items()
                                                 if k.startswith(("ROS_", "RMW_", "FASTDDS_"))}}
    done = subprocess.run([sys.executable, str(executable), "--ros-args", "--params-file",
                           str(params), "-p", "build_only:=true"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    shipped = installed_prefix / "share" / "dfanet_ros" / "weights" / "dfanet_a_camvid.safetensors"
    assert f"loading {shipped} (backend onnxruntime" in log
    assert "build_only: model and engine are ready, exiting" in log
