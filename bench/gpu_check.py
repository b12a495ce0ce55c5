"""GPU check helpers for bench/gpu_check.sh (run there, not by hand).

    python bench/gpu_check.py env      --out DIR                 # environment + import report
    python bench/gpu_check.py parity   --out DIR --images DIR    # torch CUDA fp32/fp16 vs CPU fp32
    python bench/gpu_check.py report   --out DIR                 # DIR/gpu_check.md from the pieces

Each step writes DIR/<step>.json atomically and never raises past main(): a failing step is
recorded and the shell script moves on, so one call to the GPU machine always brings back a report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

LOG = logging.getLogger("gpu_check")
#: What the repository imports somewhere; the GPU machine may lack some (no network there).
MODULES = (
    "torch",
    "numpy",
    "cv2",
    "safetensors",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "tqdm",
    "packaging",
    "yaml",
    "pytest",
    "tensorrt",
    "tensorrt_rtx",
)
MIN_AGREEMENT = 0.995


def write_json(path: Path, obj: object) -> None:
    from dfanet_core.files import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def step_env(out: Path) -> dict:
    modules = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
            modules[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # ImportError, or a library that fails to load its .so
            modules[name] = f"MISSING ({type(exc).__name__}: {exc})"[:200]
    report = {"python": platform.python_version(), "modules": modules}
    import torch

    report["cuda"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            torch_cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    from dfanet_core.deploy.backends import resolve_backend, tensorrt_usable

    report["tensorrt_usable"] = tensorrt_usable()
    report["auto_backend"] = resolve_backend("auto")
    return report


def _checkpoint(workdir: Path) -> tuple[Path, str]:
    """Shipped weights when present, else a seeded untrained dfanet_b with CamVid meta."""
    from dfanet_core.checkpoint import shipped_or_untrained

    path, trained = shipped_or_untrained(workdir)
    if trained:
        return path, f"shipped weights {path.name}"
    return path, "untrained dfanet_b (seed 0): no weights/*.safetensors in the repository"


def _load_images(folder: Path) -> list:
    from dfanet_core.files import list_images
    from dfanet_core.imaging import read_image

    return [read_image(p) for p in list_images(folder / "test" if (folder / "test").is_dir()
                                               else folder)]


def step_parity(out: Path, images_dir: Path, device: str = "cuda") -> dict:
    """Masks of the torch backend on ``device`` (fp32, fp16, fp16 + CUDA graphs, letterbox) vs
    the CPU fp32 reference. ``device='cpu'`` runs the fp32 configs only: a dry run of this code."""
    import numpy as np
    import torch

    from dfanet_core import Segmenter

    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA GPU"}
    images = _load_images(images_dir)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, weights = _checkpoint(Path(tmp))
        reference = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu")
        ref_masks = reference.predict(images)
        configs = {
            f"{device}-fp32": {"precision": "fp32"},
            f"{device}-fp16": {"precision": "fp16"},
            f"{device}-fp16-graphs": {"precision": "fp16", "cuda_graphs": True},
            f"{device}-fp32-letterbox": {"precision": "fp32", "resize_mode": "letterbox"},
        }
        if device == "cpu":
            configs = {k: v for k, v in configs.items() if v["precision"] == "fp32"}
        results = {}
        for name, options in configs.items():
            seg = Segmenter.from_checkpoint(checkpoint, backend="torch", device=device, **options)
            seg.warmup()
            res = [seg.predict_detailed(im, confidence=True) for im in images]
            refs = ref_masks
            if options.get("resize_mode") == "letterbox":
                cpu_lb = Segmenter.from_checkpoint(
                    checkpoint, backend="torch", device="cpu", resize_mode="letterbox"
                )
                refs = cpu_lb.predict(images)
            agree = [float((r.masks[0] == m).mean()) for r, m in zip(res, refs)]
            timings = {
                k: float(np.median([r.timings_ms[k] for r in res])) for k in res[0].timings_ms
            }
            results[name] = {
                "agreement_min": min(agree),
                "agreement_mean": float(np.mean(agree)),
                "passed": min(agree) >= MIN_AGREEMENT,
                "median_timings_ms": timings,
                "shapes_ok": all(r.masks[0].shape == im.shape[:2] for r, im in zip(res, images)),
                "confidence_in_0_1": all(
                    0.0 <= r.confidences[0].min() and r.confidences[0].max() <= 1.0 for r in res
                ),
            }
            LOG.info(
                "%s: agreement min %.5f mean %.5f, timings %s",
                name,
                min(agree),
                np.mean(agree),
                timings,
            )
    return {
        "weights": weights,
        "images": len(images),
        "input_size": list(reference.input_size),
        "threshold": MIN_AGREEMENT,
        "results": results,
        "passed": all(r["passed"] and r["shapes_ok"] for r in results.values()),
    }


def step_report(out: Path) -> str:
    def load(name: str) -> dict:
        path = out / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else {"missing": str(path)}

    env, parity, bench = load("env"), load("parity"), load("gpu_bench")
    compiled = load("gpu_compile")
    lines = ["# dfanet GPU check", "", f"Created {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.", ""]
    lines += ["## Environment", "", "```json", json.dumps(env, indent=2), "```", ""]
    lines += ["## Torch CUDA parity vs CPU fp32", ""]
    if "results" in parity:
        lines += [
            f"Weights: {parity['weights']}; {parity['images']} images; input "
            f"{parity['input_size']}; threshold {parity['threshold']}.",
            "",
            "| config | agreement min | mean | pre ms | infer ms | post ms | total ms | ok |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in parity["results"].items():
            t = r["median_timings_ms"]
            lines.append(
                f"| {name} | {r['agreement_min']:.5f} | {r['agreement_mean']:.5f} | "
                f"{t['preprocess']:.2f} | {t['inference']:.2f} | "
                f"{t['postprocess']:.2f} | {t['total']:.2f} | "
                f"{'PASS' if r['passed'] and r['shapes_ok'] else 'FAIL'} |"
            )
    else:
        lines += ["```json", json.dumps(parity, indent=2), "```"]
    lines += ["", "## Throughput (python bench/backend_latency.py)", ""]
    lines += [bench.get("table_markdown", "```json\n" + json.dumps(bench, indent=2) + "\n```")]
    lines += ["", "## torch.compile vs eager and CUDA graphs (python bench/gpu_compile.py)", ""]
    if compiled.get("results"):
        lines += ["| variant | input | batch | config | compile s | median ms | frames/s | "
                  "GPU kernels/frame | host launches/frame | graph launches/frame | "
                  "agreement vs eager fp32 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in compiled["results"]:
            if "median_ms" not in r:
                lines.append(f"| {r['variant']} | {r['input']} | {r['batch']} | {r['config']} | "
                             f"{r.get('skipped') or r.get('error', '?')} | | | | | | |")
                continue
            lines.append(
                f"| {r['variant']} | {r['input']} | {r['batch']} | {r['config']} | "
                f"{r['compile_seconds']} | {r['median_ms']:.2f} | {r['frames_per_s']:.0f} | "
                f"{r['gpu_kernels_per_frame']} | {r['host_kernel_launches_per_frame']} | "
                f"{r['graph_launches_per_frame']} | {r['agreement_with_eager_fp32']} |"
            )
    else:
        lines += ["```json", json.dumps(compiled, indent=2), "```"]
    tests = out / "gpu_tests.txt"
    if tests.is_file():
        tail = tests.read_text().strip().splitlines()[-15:]
        lines += ["", "## GPU-marked tests (tail)", "", "```", *tail, "```"]
    text = "\n".join(lines) + "\n"
    from dfanet_core.files import atomic_write_text

    atomic_write_text(out / "gpu_check.md", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("env", "parity", "report"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--device", default="cuda", help="parity device (cpu: a dry run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        if args.step == "env":
            result = step_env(args.out)
        elif args.step == "parity":
            if args.images is None:
                raise ValueError("parity needs --images DIR (CamVid test images)")
            result = step_parity(args.out, args.images, args.device)
        else:
            print(step_report(args.out))
            return 0
    except Exception as exc:  # record and go on: the report must come back regardless
        LOG.error("step %s failed: %s", args.step, exc)
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_json(args.out / f"{args.step}.json", result)
    return 1 if "error" in result or result.get("passed") is False else 0


if __name__ == "__main__":
    sys.exit(main())
