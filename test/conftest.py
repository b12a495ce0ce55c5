"""Shared fixtures: real data from ../shared, checkpoints (untrained, calibrated, shipped), the
Segmenters and CamVid frames the tests compare against, isolated ROS environments. Test modules
define no fixture another module also needs (they never import each other)."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import numpy as np
import pytest

from dfanet_core.paths import REPO_ROOT

SHARED_DIR = Path(os.environ.get("DFANET_SHARED_DIR", REPO_ROOT.parent / "shared"))

def pytest_configure(config):
    # Fast DDS reads its default XML profile once per process, at the first participant: every
    # rclpy context of this process (test clients publish camera-sized frames) gets the shipped
    # profile, whichever test creates the first one (dfanet_ros.graph.ros_environment does the
    # same for the processes the tests start).
    from dfanet_ros.graph import PROFILE_VARIABLE, fastdds_profile

    os.environ.setdefault(PROFILE_VARIABLE, str(fastdds_profile()))
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where there is none)")
    config.addinivalue_line("markers", "slow: longer integration test (still runs in CI)")
    config.addinivalue_line(
        "markers", "ros_install: needs a full ROS 2 install (launch, launch_ros); skipped without"
    )


def pytest_collection_modifyitems(config, items):
    """Skip hardware/installation-bound tests only where that hardware or install is absent."""
    import importlib.util

    import torch

    absent = {
        "gpu": None if torch.cuda.is_available() else "needs a CUDA GPU (this machine has none)",
        "ros_install": None if importlib.util.find_spec("launch_ros") else
        "needs a ROS 2 install with launch_ros (not installable from PyPI)",
    }
    for item in items:
        for marker, reason in absent.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """One cache of ONNX exports (and engines) for the whole session, through
    ``$DFANET_CACHE_DIR``, so every Segmenter, node and tool process of the run (they inherit the
    environment) exports a checkpoint/size once and nothing lands in ~/.cache."""
    root = tmp_path_factory.mktemp("dfanet_cache")
    previous = os.environ.get("DFANET_CACHE_DIR")
    os.environ["DFANET_CACHE_DIR"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("DFANET_CACHE_DIR", None)
    else:
        os.environ["DFANET_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def onnx_cache(model_cache: Path) -> Path:
    """The session's ONNX export folder (the default the Segmenter uses in this session)."""
    return model_cache / "onnx"


@pytest.fixture(scope="module")
def one_cpu_thread():
    """One intra-op torch thread for a module's CPU inference: on a shared 2-core machine two
    OpenMP threads stall at every barrier when a neighbour runs, turning milliseconds into
    seconds. Use with ``pytestmark = pytest.mark.usefixtures("one_cpu_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DIR} (set DFANET_SHARED_DIR)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def camvid_root(shared_dir: Path) -> Path:
    root = shared_dir / "data" / "camvid"
    assert (root / "train").is_dir(), f"CamVid not found under {root}"
    return root


@pytest.fixture(scope="session")
def camvid_readme_classes(camvid_root: Path) -> dict[str, list]:
    """CamVid's class names and colours as the dataset's README tables them (``| 0 | Sky |
    128,128,128 |``), an oracle independent of dfanet_core.data: ``{"class_names": [...],
    "palette": [[r, g, b], ...]}`` in id order, the void row (id 11) left out. An alias in
    parentheses ("Pavement (sidewalk)") is not part of the name."""
    readme = camvid_root / "README.md"
    row = re.compile(r"^\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|\s*(\d+),\s*(\d+),\s*(\d+)\s*\|\s*$")
    rows = [m.groups() for m in map(row.match, readme.read_text().splitlines()) if m]
    classes = [(int(i), name, [int(r), int(g), int(b)]) for i, name, r, g, b in rows
               if "void" not in name.lower()]
    assert [i for i, _, _ in classes] == list(range(11)), f"class table of {readme}: {rows}"
    return {
        "class_names": [re.sub(r"\s*\(.*\)$", "", name) for _, name, _ in classes],
        "palette": [colour for _, _, colour in classes],
    }


@pytest.fixture(scope="session")
def camvid_bag_dirs(shared_dir: Path) -> dict[str, Path]:
    base = shared_dir / "data" / "bags" / "camvid_seq"
    dirs = {"sqlite3": base / "camvid_seq_db3", "mcap": base / "camvid_seq_mcap"}
    for path in dirs.values():
        assert path.is_dir(), f"shared bag not found: {path}"
    return dirs


@pytest.fixture(scope="session")
def camvid_samples(camvid_root: Path):
    """``camvid_samples(n)`` -> n (rgb, label, stem) tuples from CamVid test, in name order."""
    from dfanet_core.imaging import read_image, read_label

    def load(n: int = 4, split: str = "test"):
        paths = sorted((camvid_root / split).glob("*.png"))[:n]
        return [
            (read_image(p), read_label(camvid_root / f"{split}annot" / p.name), p.stem)
            for p in paths
        ]

    return load


@pytest.fixture(scope="session")
def camvid_images(camvid_samples) -> list[np.ndarray]:
    """The first 4 CamVid test frames (RGB, 480x360), the frames the Segmenter and node tests
    compare on. Treat as read-only (session-wide)."""
    return [rgb for rgb, _, _ in camvid_samples(4)]


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A freshly initialised dfanet_b with CamVid metadata (seeded, so runs are repeatable): the
    stand-in the demo uses without shipped weights (dfanet_core.checkpoint.save_untrained)."""
    from dfanet_core.checkpoint import save_untrained

    return save_untrained(tmp_path_factory.mktemp("ckpt") / "untrained_dfanet_b.safetensors")


@pytest.fixture(scope="session")
def calibrated_checkpoint(untrained_checkpoint: Path, camvid_root: Path, tmp_path_factory) -> Path:
    """``untrained_checkpoint`` with its batch-norm statistics estimated on 4 CamVid *train*
    images (one batch).

    Still untrained, but its masks vary with the image content (and the channel order): the raw
    untrained net predicts one class everywhere, which would hide a frame/label misalignment or
    a colour swap. The tests compare on CamVid test frames, never the calibration images.
    """
    import torch

    from dfanet_core import load_checkpoint, save_checkpoint
    from dfanet_core.imaging import read_image

    model, meta = load_checkpoint(untrained_checkpoint)
    paths = sorted((camvid_root / "train").glob("*.png"))[:4]
    images = torch.stack([torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in paths])
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model((images.float() / 255 - mean) / std)
    path = tmp_path_factory.mktemp("calibrated") / "calibrated_dfanet_b.safetensors"
    return save_checkpoint(path, model.eval(), meta)


@pytest.fixture(scope="session")
def shipped_checkpoint() -> Path:
    """The trained CamVid weights under weights/ (dfanet_a): masks with structure, and the
    backends agree on them to the pixel (an untrained net's near-tied logits do not)."""
    from dfanet_core.files import default_checkpoint

    path = default_checkpoint()
    assert path is not None and path.parent.name == "weights", f"shipped weights: {path}"
    return path


@pytest.fixture(scope="session")
def segmenter_of():
    """``segmenter_of(checkpoint, **options)``: the Segmenter of ``checkpoint`` with these
    runtime options (``Segmenter.from_checkpoint`` keywords), made once per checkpoint and
    options for the session and closed at its end. Use a checkpoint whose masks vary
    (``shipped_checkpoint``, ``calibrated_checkpoint``): comparisons of one-class masks prove
    nothing."""
    from dfanet_core import Segmenter

    made: dict[tuple, Segmenter] = {}

    def make(checkpoint: Path, **options) -> Segmenter:
        key = (str(checkpoint), *sorted(options.items()))
        if key not in made:
            made[key] = Segmenter.from_checkpoint(checkpoint, **options)
        return made[key]

    yield make
    for segmenter in made.values():
        segmenter.close()


@pytest.fixture(scope="session")
def reference_segmenter(segmenter_of, calibrated_checkpoint: Path):
    """ONNX Runtime on the calibrated checkpoint at its own input size (360x480): the offline
    result the node, the bag tools and the pipeline must reproduce."""
    return segmenter_of(calibrated_checkpoint, backend="onnxruntime")


@pytest.fixture(scope="session")
def bag_reference(reference_segmenter, camvid_root: Path) -> dict:
    """What bag evaluation and live replay of the shared bag must reproduce: the masks, mIoU and
    per-class IoU of ``reference_segmenter`` on the PNG files of the bag's frames
    (``_helpers.png_reference``). Treat as read-only (session-wide)."""
    from _helpers import png_reference

    ref = png_reference(reference_segmenter, camvid_root)
    classes = set().union(*(np.unique(m).tolist() for m in ref["masks"]))
    assert len(classes) >= 4, "the reference masks should vary"
    assert not all(np.array_equal(ref["masks"][0], m) for m in ref["masks"][1:])
    return ref


_domain_ids = itertools.count(int(os.environ.get("DFANET_TEST_DOMAIN_BASE", "0")))


@pytest.fixture
def ros_domain_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ROS processes of one test: its own domain and localhost-only discovery, so
    parallel tests never cross-talk.

    Every process loads the shipped Fast DDS profile (config/fastdds_profile.xml, a 64 MiB
    shared-memory segment): without it best-effort messages over ~0.5 MB are lost between
    processes under localhost-only discovery (docs/ros_interface.md, "QoS and transport").
    """
    from dfanet_ros.graph import ros_environment

    base = 10 + (os.getpid() * 7) % 150
    domain = base + next(_domain_ids) % 70
    env = ros_environment(domain, discovery_range="LOCALHOST")
    env["ROS_LOG_DIR"] = str(tmp_path / "ros_log")  # the test's own, whatever HOME says
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def ros_env(ros_domain_env: dict[str, str], monkeypatch) -> dict[str, str]:
    """``ros_domain_env``, which this process joins too (a client node here talks to the node
    processes of the test): the same ROS variables in os.environ for the test's duration."""
    from dfanet_ros.graph import ROS_ENV_KEYS

    for key in ROS_ENV_KEYS:
        if key in ros_domain_env:
            monkeypatch.setenv(key, ros_domain_env[key])
    return ros_domain_env


@pytest.fixture(scope="session")
def installed_prefix(tmp_path_factory) -> Path:
    """The package installed the way ``colcon build`` (without --symlink-install) installs it:
    ``setup.py egg_info build install --single-version-externally-managed`` from a copy of the
    package's files into a fresh prefix, so nothing of the checkout is reachable from it."""
    import shutil
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("colcon")
    source, build, prefix = root / "src", root / "build", root / "install"
    source.mkdir()
    build.mkdir()
    for name in ("setup.py", "setup.cfg", "package.xml", "resource", "launch", "config",
                 "weights", "dfanet_core", "dfanet_ros"):
        origin = REPO_ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(origin, source / name)
    command = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(build), "build",
               "--build-base", str(build / "build"), "install", "--prefix", str(prefix),
               "--record", str(build / "install.log"), "--single-version-externally-managed"]
    done = subprocess.run(command, cwd=source, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return prefix
