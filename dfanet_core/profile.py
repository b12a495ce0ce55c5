"""Parameters, multiply-accumulates and CPU latency per variant and input size, beside the paper.

Convention: we report MACs (multiply-accumulates of conv and linear layers). The paper's "FLOPs"
match MACs; ``torch.utils.flop_counter`` counts 2 FLOPs per MAC, so its total is halved here.

    python -m dfanet_core.profile [--models dfanet_a dfanet_b] [--latency-runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .files import atomic_write_text
from .models import count_parameters, create_model, get_config, list_models
from .reports import machine_summary, markdown_table

log = logging.getLogger("dfanet_core.profile")

DEFAULT_MODELS = ("backbone_a", "backbone_b", "dfanet_a", "dfanet_b")
DEFAULT_SIZES = ((1024, 1024), (512, 1024), (720, 960))
# Paper compute at sizes other than 1024x1024 (Table 5: A' = A at 512x1024 -> 1.7 G).
PAPER_GMAC_OTHER = {("dfanet_a", (512, 1024)): 1.7}


@dataclass
class ProfileRow:
    model: str
    input_hw: tuple[int, int]
    params_m: float
    gmac: float
    paper_params_m: float | None
    paper_gmac: float | None
    latency_ms: float | None


def count_macs(model: torch.nn.Module, input_hw: tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1."""
    x = torch.zeros(1, 3, *input_hw)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def measure_latency_ms(
    model: torch.nn.Module, input_hw: tuple[int, int], runs: int, warmup: int = 2
) -> float:
    """Median eager-mode CPU latency of one batch-1 forward pass."""
    x = torch.randn(1, 3, *input_hw)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def paper_gmac(name: str, input_hw: tuple[int, int]) -> float | None:
    if input_hw == (1024, 1024):
        return get_config(name).paper.gmac_1024
    return PAPER_GMAC_OTHER.get((name, input_hw))


def profile(models=DEFAULT_MODELS, sizes=DEFAULT_SIZES, latency_runs: int = 3) -> list[ProfileRow]:
    rows = []
    for name in models:
        model = create_model(name).eval()
        params = count_parameters(model)
        for hw in sizes:
            latency = measure_latency_ms(model, hw, latency_runs) if latency_runs > 0 else None
            rows.append(
                ProfileRow(
                    name,
                    tuple(hw),
                    params / 1e6,
                    count_macs(model, hw) / 1e9,
                    get_config(name).paper.params_m,
                    paper_gmac(name, hw),
                    latency,
                )
            )
    return rows


def _ratio(value: float, paper: float | None) -> str:
    return f"{value / paper:.2f}" if paper else "-"


def format_table(rows: list[ProfileRow]) -> str:
    header = ("model", "input HxW", "params (M)", "paper params (M)", "ratio", "GMAC", "paper G",
              "ratio", "CPU eager ms (2 thr)")
    body = [
        (r.model, f"{r.input_hw[0]}x{r.input_hw[1]}", f"{r.params_m:.3f}",
         r.paper_params_m if r.paper_params_m is not None else "-",
         _ratio(r.params_m, r.paper_params_m), f"{r.gmac:.3f}",
         r.paper_gmac if r.paper_gmac is not None else "-", _ratio(r.gmac, r.paper_gmac),
         f"{r.latency_ms:.1f}" if r.latency_ms is not None else "-")
        for r in rows
    ]
    return "\n".join(markdown_table(header, body, align="llrrrrrrr"))


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help=f"variants (any of: {', '.join(list_models())}; 'all' for every one)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=[f"{h}x{w}" for h, w in DEFAULT_SIZES],
        help="input sizes as HxW",
    )
    parser.add_argument(
        "--latency-runs",
        type=int,
        default=3,
        help="timed forward passes per cell (0 skips the latency column)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--write-doc", type=Path, metavar="MD",
                        help="replace the table between the profile markers of this markdown file "
                        "(docs/architecture.md)")
    return parser


DOC_BEGIN = "<!-- profile:begin -->"
DOC_END = "<!-- profile:end -->"


def write_doc_table(path: Path, table: str, command: str, machine: str) -> None:
    """Replace the generated block of ``path`` so the doc always shows a rerunnable result."""
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise ValueError(f"{path} has no {DOC_BEGIN} ... {DOC_END} block to replace")
    head, rest = text.split(DOC_BEGIN, 1)
    tail = rest.split(DOC_END, 1)[1]
    block = (f"{DOC_BEGIN}\nMeasured with `{command}` on {machine}.\n\n"
             f"{table}\n{DOC_END}")
    atomic_write_text(path, head + block + tail)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    models = list_models() if args.models == ["all"] else args.models
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    except ValueError:
        raise SystemExit(f"--sizes expects HxW values like 1024x1024, got {args.sizes}") from None
    try:
        rows = profile(models, sizes, args.latency_runs)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    machine = machine_summary()
    print(f"Machine: {machine}. Compute in MACs (paper 'FLOPs' = MACs).")
    print(format_table(rows))
    if args.write_doc:
        command = "python -m dfanet_core.profile " + " ".join(argv if argv is not None
                                                              else sys.argv[1:])
        write_doc_table(args.write_doc, format_table(rows), command.strip(), machine)
    if args.json:
        atomic_write_text(
            args.json,
            json.dumps({"machine": machine, "rows": [asdict(r) for r in rows]}, indent=2),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
