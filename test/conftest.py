"""Shared fixtures: real data from ../shared, a fresh checkpoint, isolated ROS environments."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("DFANET_SHARED_DIR", REPO_ROOT.parent / "shared"))

CAMVID_CLASS_NAMES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]
CAMVID_PALETTE = [
    [128, 128, 128],
    [128, 0, 0],
    [192, 192, 128],
    [128, 64, 128],
    [60, 40, 222],
    [128, 128, 0],
    [192, 128, 128],
    [64, 64, 128],
    [64, 0, 128],
    [64, 64, 0],
    [0, 128, 192],
]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped where there is none)")
    config.addinivalue_line("markers", "slow: longer integration test (still runs in CI)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (this machine has none)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A freshly initialised dfanet_b with CamVid metadata (seeded, so runs are repeatable)."""
    import torch

    from dfanet_core import create_model, save_checkpoint

    torch.manual_seed(0)
    model = create_model("dfanet_b", num_classes=len(CAMVID_CLASS_NAMES)).eval()
    meta = {
        "variant": "dfanet_b",
        "num_classes": len(CAMVID_CLASS_NAMES),
        "class_names": CAMVID_CLASS_NAMES,
        "palette": CAMVID_PALETTE,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "RGB",
        "input_size": [360, 480],
        "ignore_index": 255,
        "dataset": "camvid",
        "trained": False,
    }
    path = tmp_path_factory.mktemp("ckpt") / "untrained_dfanet_b.safetensors"
    return save_checkpoint(path, model, meta)


_domain_ids = itertools.count(int(os.environ.get("DFANET_TEST_DOMAIN_BASE", "0")))


@pytest.fixture
def ros_domain_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ROS processes of one test: its own domain, localhost-only discovery,
    Fast DDS large-data transport (best-effort frames > 0.5 MB are lost without it)."""
    base = 10 + (os.getpid() * 7) % 150
    domain = base + next(_domain_ids) % 70
    env = dict(os.environ)
    env.update(
        {
            "ROS_DOMAIN_ID": str(domain),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
            "ROS_LOG_DIR": str(tmp_path / "ros_log"),
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
