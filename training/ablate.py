"""Short-schedule ablations of the from-scratch recipe, measured on CamVid test.

    python training/ablate.py [--epochs 30] [--rows base ohem no_aux ...] [--out runs/ablation]

Each row trains ``--recipe`` (default camvid_b_scratch) with the row's changes on a short
schedule (``--epochs`` at ``--crop-size``, batch ``--batch-size``, every other setting from the
recipe), then evaluates the final EMA weights on the test split at 480x360, single pass. Rows run
one after another; ``table.md`` / ``table.json`` in ``--out`` collect test mIoU overall and per
sequence. Short schedules rank the choices; they do not predict the full schedule's figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dfanet_core.imaging import atomic_write_bytes
from training import evaluate, train

# Row label -> train.py flags changed from the recipe (the recipe itself is "base").
ROWS: dict[str, list[str]] = {
    "base": [],
    "ohem": ["--loss", "ohem", "--class-weights", "none"],
    "no_aux": ["--aux-weight", "0"],
    "scale_0.75-1.75": ["--scale-range", "0.75", "1.75"],
    "train_only": ["--train-split", "train"],
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="camvid_b_scratch")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--crop-size", type=int, nargs=2, default=[192, 192])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    return p


def run_row(label: str, args: argparse.Namespace) -> dict:
    out = args.out / label
    common = ["--recipe", args.recipe, "--epochs", str(args.epochs), "--crop-size",
              *map(str, args.crop_size), "--batch-size", str(args.batch_size), "--threads",
              str(args.threads), "--eval-split", "", "--output-dir", str(out), "--resume",
              "auto"]  # fmt: skip
    if args.data_root:
        common += ["--data-root", str(args.data_root)]
    started = time.monotonic()
    summary = train.main(train.parse_args([*common, *ROWS[label]]))
    if summary["stop_reason"] != "completed":
        raise RuntimeError(f"row {label} did not complete: {summary}")
    report = evaluate.main(evaluate.get_args_parser().parse_args(
        ["--checkpoint", str(out / "final.safetensors"), "--split", "test", "--output-dir",
         str(out / "eval_test"), "--fp16-check-images", "0", "--threads", str(args.threads)]
        + (["--data-root", str(args.data_root)] if args.data_root else [])))  # fmt: skip
    return {
        "row": label,
        "changes": " ".join(ROWS[label]) or "(recipe)",
        "test_miou": report["miou"],
        "per_sequence": {k: v["miou"] for k, v in report["per_sequence"].items()},
        "train_minutes": round((time.monotonic() - started) / 60, 1),
    }


def main(args: argparse.Namespace) -> list[dict]:
    rows = []
    table = args.out / "table.json"
    if table.is_file():
        rows = [r for r in json.loads(table.read_text()) if r["row"] in args.rows]
    for label in args.rows:
        if any(r["row"] == label for r in rows):
            continue
        rows.append(run_row(label, args))
        write_tables(rows, args)
    return rows


def write_tables(rows: list[dict], args: argparse.Namespace) -> None:
    atomic_write_bytes(args.out / "table.json", (json.dumps(rows, indent=2) + "\n").encode())
    sequences = sorted({k for r in rows for k in r["per_sequence"]})
    lines = [
        f"Recipe `{args.recipe}`, {args.epochs:g} epochs of {args.crop_size[0]}x"
        f"{args.crop_size[1]} crops at batch {args.batch_size}; final EMA weights; CamVid test "
        "at 480x360, single pass.",
        "",
        "| row | change | test mIoU % | " + " | ".join(sequences) + " | train min |",
        "|---|---|---:|" + "---:|" * len(sequences) + "---:|",
    ]
    for r in rows:
        cells = " | ".join(f"{100 * r['per_sequence'].get(s, float('nan')):.2f}"
                           for s in sequences)  # fmt: skip
        lines.append(f"| {r['row']} | `{r['changes']}` | {100 * r['test_miou']:.2f} | {cells} | "
                     f"{r['train_minutes']} |")
    atomic_write_bytes(args.out / "table.md", ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main(get_args_parser().parse_args())
    sys.exit(0)
