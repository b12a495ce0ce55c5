"""The command lines of the rosbag tools and the demo, in one place:

    python -m dfanet_ros.bag_eval BAG --image-topic T [--label-topic L] --out DIR   (eval_main)
    python -m dfanet_ros.bag_replay BAG --image-topic T [--rate X | --lockstep] --out DIR
                                                                               (replay_main)
    python -m dfanet_ros.make_bag --images DIR [--labels DIR] --out BAG             (make_main)
    python -m dfanet_ros.demo [BAG | IMAGE_FOLDER]                                   (demo_main)

(console scripts ``dfanet-bag-eval``, ``dfanet-bag-replay``, ``dfanet-make-bag``,
``segment_demo``). The runtime options (--backend, --precision, --input-size, ...) are
dfanet_core's shared ones (:func:`dfanet_core.deploy.options.add_runtime_arguments`). Exit codes:
0 done, 1 the demo's node failed or returned nothing, 2 bad input (bag, topic, checkpoint,
missing backend) or a replay that could not run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dfanet_core.deploy.options import add_runtime_arguments, options_from_args
from dfanet_core.reports import fmt

from .io import STORAGES, BagError

LOG = logging.getLogger("dfanet_ros.bag")
# What the CLIs report as a clear error (exit code 2): bad bags/topics, checkpoints
# (CheckpointError), missing backends, export failures, a replay that could not run.
CLI_ERRORS = (BagError, FileNotFoundError, ValueError, ImportError, RuntimeError)


# -- shared arguments and output ---------------------------------------------------------------
def add_bag_arguments(parser: argparse.ArgumentParser) -> None:
    """BAG, --image-topic, --label-topic."""
    parser.add_argument("bag", help="rosbag2 directory, .db3/.mcap file or ROS 1 .bag")
    parser.add_argument("--image-topic", required=True,
                        help="sensor_msgs/Image or CompressedImage topic to segment")
    parser.add_argument("--label-topic", default=None,
                        help="mono8 Image topic of class ids, matched to images by header stamp")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and the runtime options."""
    parser.add_argument("--checkpoint", default=None,
                        help="dfanet checkpoint (.safetensors); default: the shipped weights")
    add_runtime_arguments(parser)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--out-storage, --no-video, --strip-frames, --no-progress, --verbose."""
    parser.add_argument("--out-storage", choices=list(STORAGES), default=None,
                        help="storage of the output bag (default: the input bag's)")
    parser.add_argument("--no-video", action="store_true", help="do not write overlay.mp4")
    parser.add_argument("--strip-frames", type=int, default=8,
                        help="frames in overlay_strip.png (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true")


def output_settings(args: argparse.Namespace) -> Any:
    from .evaluate import OutputSettings

    return OutputSettings(storage=args.out_storage, video=not args.no_video,
                          strip_frames=args.strip_frames, progress=not args.no_progress)


def setup_logging(verbose: bool = False) -> None:
    """Plain logging to stderr for the CLIs."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def print_summary(report: dict[str, Any], out_dir: Path) -> None:
    """A few lines on stdout for the user of the CLI."""
    from .evaluate import REPORT_JSON

    lat = report["latency_ms"]
    lines = [f"frames: {report['frames']} (with labels: {report['frames_with_labels']})",
             f"mIoU: {fmt(report['miou'], 100, 2, '%')}",
             f"latency ms: p50 {fmt(lat['p50'])} p99 {fmt(lat['p99'])}",
             f"throughput: {fmt(report.get('throughput_fps'), 1, 2)} frames/s",
             f"report: {out_dir / REPORT_JSON}"]
    if "dropped_frames" in report:
        lines.insert(1, f"dropped: {report['dropped_frames']} of {report['frames_sent']} sent")
    sys.stdout.write("\n".join(lines) + "\n")


def run_cli(work: Callable[[], dict[str, Any] | None], out_dir: Path, verbose: bool,
            log: logging.Logger = LOG) -> int:
    """Run a CLI's ``work``: a :data:`CLI_ERRORS` failure is logged (exit code 2), a report is
    summarized on stdout (exit code 0)."""
    try:
        report = work()
    except CLI_ERRORS as exc:
        log.error("%s", exc, exc_info=verbose)
        return 2
    if report is not None:
        print_summary(report, out_dir)
    return 0


# -- offline evaluation -------------------------------------------------------------------------
def eval_parser() -> argparse.ArgumentParser:
    """Command line of the offline evaluation."""
    parser = argparse.ArgumentParser(
        prog="python -m dfanet_ros.bag_eval",
        description="Evaluate a DFANet checkpoint on a rosbag: mIoU against a label topic, "
                    "latency, output bag with /segmentation/mask and /segmentation/color.")
    add_bag_arguments(parser)
    parser.add_argument("--out", required=True, help="output directory")
    add_model_arguments(parser)
    parser.add_argument("--no-color", action="store_true", help="do not write /segmentation/color")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed Segmenter runs before the timed pass (default 1)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after N images")
    add_output_arguments(parser)
    return parser


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``python -m dfanet_ros.bag_eval`` / ``dfanet-bag-eval``."""
    from dfanet_core.files import resolve_checkpoint

    from .evaluate import EvalSettings, evaluate_open_bag, load_segmenter, preflight
    from .io import open_bag

    args = eval_parser().parse_args(argv)
    setup_logging(args.verbose)
    out_dir = Path(args.out)

    def work() -> dict[str, Any]:
        with open_bag(args.bag) as bag:
            info = preflight(bag, args.image_topic, args.label_topic)
            LOG.info("bag %s: %d frames on %s (%s)", bag.path, info["image_count"],
                     args.image_topic, info["image_type"])
            checkpoint = resolve_checkpoint(args.checkpoint)
            settings = EvalSettings(image_topic=args.image_topic, label_topic=args.label_topic,
                                    color=not args.no_color, warmup=args.warmup,
                                    max_frames=args.max_frames, checkpoint=str(checkpoint),
                                    outputs=output_settings(args))
            with load_segmenter(checkpoint, options_from_args(args)) as segmenter:
                return evaluate_open_bag(bag, info, segmenter, out_dir, settings)

    return run_cli(work, out_dir, args.verbose)


# -- live replay --------------------------------------------------------------------------------
def replay_parser() -> argparse.ArgumentParser:
    """Command line of the live replay."""
    parser = argparse.ArgumentParser(
        prog="python -m dfanet_ros.bag_replay",
        description="Replay a bag through the running segmentation node: end-to-end latency, "
                    "output rate, dropped frames and mIoU.")
    add_bag_arguments(parser)
    parser.add_argument("--out", default=None, help="output directory (required unless "
                                                    "--play-only)")
    parser.add_argument("--rate", type=float, default=1.0,
                        help="multiplier of the recorded rate (2 = twice as fast)")
    parser.add_argument("--lockstep", action="store_true",
                        help="publish each frame once the previous one's mask came back "
                             "(no drops, whatever the machine: for accuracy through the node)")
    add_model_arguments(parser)
    parser.add_argument("--domain-id", type=int, default=None,
                        help="ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID, else a per-process id)")
    parser.add_argument("--no-play", action="store_true",
                        help="do not play: listen while something else (ros2 bag play) plays")
    parser.add_argument("--no-node", action="store_true",
                        help="do not start the node: one is already running")
    parser.add_argument("--play-only", action="store_true",
                        help="only publish the bag (a stand-in for 'ros2 bag play'): no node, "
                             "no collection, no report")
    parser.add_argument("--wait-subscribers", type=int, default=1, metavar="N",
                        help="--play-only: start publishing once N subscriptions are matched "
                             "(2 with a --no-play collector beside the node)")
    parser.add_argument("--mask-topic", default=None,
                        help="the node's mask topic (default /segmentation/mask)")
    parser.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                        help="extra node parameter (repeatable)")
    parser.add_argument("--best-effort", action="store_true",
                        help="publish images best effort (default reliable, depth 10)")
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--drain-timeout", type=float, default=5.0,
                        help="after the last frame, stop waiting for outstanding masks once "
                             "none came for this long (the node's diagnostics usually end the "
                             "wait sooner)")
    parser.add_argument("--idle-timeout", type=float, default=10.0,
                        help="--no-play: stop this long after the last frame/mask")
    parser.add_argument("--lockstep-timeout", type=float, default=60.0,
                        help="--lockstep: a frame whose mask takes longer counts as dropped")
    add_output_arguments(parser)
    return parser


def replay_main(argv: Sequence[str] | None = None) -> int:
    """``python -m dfanet_ros.bag_replay`` / ``dfanet-bag-replay``."""
    from ..graph import ros_environment
    from .evaluate import MASK_TOPIC
    from .replay import NodeSettings, ReplaySettings, Timeouts, play_only, run_replay

    parser = replay_parser()
    args = parser.parse_args(argv)
    if args.out is None and not args.play_only:
        parser.error("--out is required (except with --play-only)")
    setup_logging(args.verbose)
    out_dir = Path(args.out or ".")

    def work() -> dict[str, Any] | None:
        if args.play_only and args.no_play:
            raise ValueError("--play-only and --no-play exclude each other")
        settings = ReplaySettings(
            image_topic=args.image_topic, label_topic=args.label_topic, rate=args.rate,
            lockstep=args.lockstep, mask_topic=args.mask_topic or MASK_TOPIC,
            play=not args.no_play, publish_reliable=not args.best_effort,
            wait_subscribers=args.wait_subscribers)
        node = NodeSettings(start=not (args.no_node or args.play_only),
                            checkpoint=args.checkpoint, runtime=options_from_args(args),
                            extra_params=tuple(args.node_param))
        timeouts = Timeouts(startup_s=args.startup_timeout, drain_s=args.drain_timeout,
                            idle_s=args.idle_timeout, lockstep_s=args.lockstep_timeout)
        env = ros_environment(args.domain_id, out_dir / "ros_log",
                              own_graph=settings.play and node.start)
        LOG.info("ROS_DOMAIN_ID=%s, discovery %s, Fast DDS profile %s",
                 env.get("ROS_DOMAIN_ID", "0 (unset)"), env["ROS_AUTOMATIC_DISCOVERY_RANGE"],
                 env.get("FASTDDS_DEFAULT_PROFILES_FILE", "(none)"))
        os.environ.update(env)  # this process's rclpy reads them at init
        if args.play_only:
            sent = play_only(args.bag, settings, timeouts, progress=not args.no_progress)
            sys.stdout.write(f"published {sent} frames on {args.image_topic}\n")
            return None
        return run_replay(args.bag, out_dir, settings, node, env, timeouts,
                          output_settings(args))

    return run_cli(work, out_dir, args.verbose, LOG)


# -- bag maker ----------------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
    """Command line of the bag maker."""
    parser = argparse.ArgumentParser(
        prog="python -m dfanet_ros.make_bag",
        description="Build a rosbag2 (sqlite3 or MCAP) from an image folder (+ labels) or video.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images (name order = time order)")
    source.add_argument("--video", help="video file (any format OpenCV reads)")
    parser.add_argument("--labels", help="folder of mono8 label PNGs with the images' file stems")
    parser.add_argument("--out", required=True, help="output bag directory (must not exist)")
    parser.add_argument("--rate", type=float, default=None,
                        help="frames per second (default: the video's rate, 10 for images)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap")
    parser.add_argument("--raw", action="store_true", help="write sensor_msgs/Image rgb8")
    parser.add_argument("--compressed", action="store_true",
                        help="write sensor_msgs/CompressedImage (default: raw only)")
    parser.add_argument("--compressed-format", choices=["jpeg", "png"], default="jpeg")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--frame-id", default="camera", help="header.frame_id (default camera)")
    parser.add_argument("--image-topic", default="/camera/image_raw")
    parser.add_argument("--compressed-topic", default=None,
                        help="default: <image topic>/compressed")
    parser.add_argument("--label-topic", default="/camera/labels")
    parser.add_argument("--start-time", type=float, default=None,
                        help="stamp of the first frame in seconds since the epoch (default: now)")
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def make_main(argv: Sequence[str] | None = None) -> int:
    """``python -m dfanet_ros.make_bag`` / ``dfanet-make-bag``."""
    from .make import BagSpec, folder_frames, video_frames, write_bag

    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.labels and not args.images:
        LOG.error("--labels needs --images (videos carry no labels)")
        return 2
    try:
        if args.video:
            total, fps, frames = video_frames(args.video, args.max_frames)
            rate = args.rate if args.rate is not None else (fps or 10.0)
        else:
            total, frames = folder_frames(args.images, args.labels, args.max_frames)
            rate = args.rate if args.rate is not None else 10.0
        spec = BagSpec(
            rate_hz=rate, storage=args.storage, raw=args.raw or not args.compressed,
            compressed=args.compressed, frame_id=args.frame_id, image_topic=args.image_topic,
            compressed_topic=args.compressed_topic, label_topic=args.label_topic,
            compressed_format=args.compressed_format, jpeg_quality=args.jpeg_quality,
            start_ns=None if args.start_time is None else round(args.start_time * 1e9))
        counts = write_bag(args.out, frames, spec, total=total, with_labels=bool(args.labels),
                           overwrite=args.overwrite, progress=not args.no_progress)
    except (BagError, FileNotFoundError, ValueError) as exc:
        LOG.error("%s", exc)
        return 2
    sys.stdout.write(f"wrote {args.out} ({spec.storage}, {rate:g} Hz): "
                     + ", ".join(f"{t} x{n}" for t, n in counts.items()) + "\n")
    return 0


# -- demo ---------------------------------------------------------------------------------------
def demo_parser() -> argparse.ArgumentParser:
    """Command line of the demo."""
    from . import demo

    parser = argparse.ArgumentParser(
        prog="python -m dfanet_ros.demo", description=demo.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default=None,
                        help="bag (rosbag2 dir, .mcap, .db3, ROS 1 .bag) or image folder "
                             f"(default: the shared CamVid bag, {demo.default_source()})")
    parser.add_argument("--topic", help="image topic of the bag (default: its first raw one)")
    parser.add_argument("--out", default="outputs/demo", help="output folder")
    parser.add_argument("--rate", type=float, default=2.0,
                        help="replay rate in Hz (the CamVid bag is recorded at 1 Hz)")
    parser.add_argument("--max-frames", type=int, default=0, help="0: all")
    parser.add_argument("--overlays", type=int, default=3, help="overlay PNGs to write")
    parser.add_argument("--checkpoint", help="checkpoint (default: the shipped weights)")
    parser.add_argument("--engine-cache-dir", default="",
                        help="where the node caches its ONNX export (default ~/.cache/dfanet)")
    parser.add_argument("--domain-id", type=int,
                        help="ROS domain (default: $ROS_DOMAIN_ID, else one per process)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for the node to load the model")
    return parser


def demo_main(argv: Sequence[str] | None = None) -> int:
    """``python -m dfanet_ros.demo`` / ``segment_demo``."""
    from dfanet_core.checkpoint import shipped_or_untrained

    from ..graph import NodeError
    from . import demo

    args = demo_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.rate <= 0:
        LOG.error("--rate must be > 0, got %s", args.rate)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        frames = demo.load_frames(Path(args.source or demo.default_source()), args.topic,
                                  args.max_frames)
        checkpoint, trained = shipped_or_untrained(out_dir, args.checkpoint)
    except (OSError, ValueError, RuntimeError) as exc:
        LOG.error("%s", exc)
        return 2
    if not trained:
        demo.warn_untrained(checkpoint)
    try:
        summary = demo.run_demo(frames, checkpoint, out_dir, rate_hz=args.rate,
                                overlays=args.overlays, domain_id=args.domain_id,
                                engine_cache_dir=args.engine_cache_dir, timeout_s=args.timeout)
    except NodeError as exc:
        LOG.error("%s", exc)
        return 1
    print(demo.format_summary(summary))
    print(f"overlays         {', '.join(summary['overlays']) or 'none'}")
    if not trained:
        demo.warn_untrained(checkpoint)
    return 0 if summary["masks_received"] else 1
