"""Where an ONNX Runtime run of DFANet spends its time: ONNX Runtime's own profiler, summed per
operator type and per node, for the Segmenter's export with and without the CPU layout passes.

    python bench/ort_profile.py [--checkpoint C] [--size 512x1024] [--threads 2] [--runs 10]
        [--head fast|exact] [--no-cpu-layout] [--top 10] [--json outputs/bench/ort_profile.json]

The graph is the one the onnxruntime backend exports (classes head at the resolution ``--head``
picks, ``min_confidence`` input; with the CPU layout passes of dfanet_core.deploy.cpu_layout
unless ``--no-cpu-layout``), run with ORT_ENABLE_ALL, no spinning, ``--threads`` threads, on a
random input. Profiling adds overhead: compare shares and the two graphs, not absolute times.
Not a test: prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dfanet_core.deploy.export import cached_onnx_export
from dfanet_core.deploy.heads import HEAD_RESOLUTION_OF
from dfanet_core.files import atomic_write_json
from dfanet_core.reports import markdown_table, parse_size, start_benchmark


def profile(onnx_path: Path, size: tuple[int, int], threads: int, runs: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "dfanet_ort_profile")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {"images": np.random.default_rng(0).standard_normal((1, 3, *size), np.float32),
            "min_confidence": np.zeros(1, np.float32)}
    warmup = 3
    for _ in range(warmup):
        session.run(None, feed)
    wall = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        wall.append((time.perf_counter() - started) * 1000)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    by_type: dict[str, float] = collections.Counter()
    counts: dict[str, int] = collections.Counter()
    by_node: dict[str, float] = collections.Counter()
    shapes: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"]["op_name"]
        by_type[op] += event["dur"]
        counts[op] += 1
        node = event["name"].removesuffix("_kernel_time")
        by_node[node] += event["dur"]
        outputs = event["args"].get("output_type_shape") or [{}]
        shapes[node] = f"{op} -> {list(outputs[0].values())[0] if outputs[0] else '?'}"
    calls = warmup + runs
    total = sum(by_type.values())
    return {
        "onnx": onnx_path.name,
        "median_ms_while_profiling": round(float(np.median(wall)), 2),
        "op_types": [{"op": op, "ms_per_run": round(us / calls / 1000, 2),
                      "nodes": counts[op] // calls, "share": round(us / total, 3)}
                     for op, us in sorted(by_type.items(), key=lambda kv: -kv[1])],
        "nodes": [{"node": node, "what": shapes[node], "ms_per_run": round(us / calls / 1000, 2)}
                  for node, us in sorted(by_node.items(), key=lambda kv: -kv[1])],
    }


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/ort_profile.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--size", type=parse_size, default=(512, 1024))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--head", choices=tuple(HEAD_RESOLUTION_OF), default="fast")
    parser.add_argument("--no-cpu-layout", action="store_true")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--json", type=Path, default=Path("outputs/bench/ort_profile.json"))
    parser.add_argument("--workdir", type=Path, help="where the ONNX export goes (default: temp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    size = args.size
    checkpoint, head = start_benchmark("bench/ort_profile.py", argv, None, args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="dfanet-profile-") as tmp:
        path = cached_onnx_export(checkpoint, size, 1, "fp32", args.workdir or tmp,
                                  head_resolution=HEAD_RESOLUTION_OF[args.head],
                                  min_confidence_input=True, cpu_layout=not args.no_cpu_layout)
        result = profile(path, size, args.threads, args.runs)
    result.update(**head, load_avg_1m=round(os.getloadavg()[0], 2))
    types = markdown_table(("op type", "ms per run", "nodes", "share"),
                           [(t["op"], t["ms_per_run"], t["nodes"], f"{100 * t['share']:.1f} %")
                            for t in result["op_types"][: args.top]])
    nodes = markdown_table(("node", "what", "ms per run"),
                           [(n["node"], n["what"], n["ms_per_run"])
                            for n in result["nodes"][: args.top]])
    print(f"median {result['median_ms_while_profiling']} ms per run while profiling")
    print("\n".join(types))
    print()
    print("\n".join(nodes))
    atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
