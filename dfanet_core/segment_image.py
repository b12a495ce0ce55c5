"""Segment one image and write the class mask and a colour overlay.

    python -m dfanet_core.segment_image [IMAGE] [--checkpoint C] [--out DIR]

Uses the shipped weights when present and says plainly when the model is untrained.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from .checkpoint import REPO_ROOT, default_checkpoint, default_meta, load_checkpoint
from .imaging import overlay, read_image, write_image
from .models import create_model

log = logging.getLogger("dfanet_core.segment_image")
DEFAULT_IMAGE = REPO_ROOT.parent / "shared" / "data" / "camvid" / "test" / "Seq05VD_f00000.png"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weights (.safetensors); default: the shipped weights under weights/")
    parser.add_argument("--out", type=Path, default=Path("outputs/segment_image"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    checkpoint = args.checkpoint or default_checkpoint()
    if checkpoint is not None:
        model, meta = load_checkpoint(checkpoint)
        log.info("weights: %s (%s, trained on %s)", checkpoint, meta["variant"],
                 meta.get("dataset"))
    else:
        model = create_model("dfanet_b", num_classes=11).eval()
        meta = default_meta("dfanet_b", 11)
        log.warning("NO TRAINED WEIGHTS FOUND: using an untrained dfanet_b, the mask is noise")
    try:
        image = read_image(args.image)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    mean = torch.tensor(meta["mean"])[:, None, None]
    std = torch.tensor(meta["std"])[:, None, None]
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
    start = time.perf_counter()
    with torch.inference_mode():
        mask = model(x[None]).argmax(1)[0].to(torch.uint8).numpy()
    elapsed = (time.perf_counter() - start) * 1000
    stem = args.image.stem
    mask_path = write_image(args.out / f"{stem}_mask.png", mask)
    overlay_path = write_image(args.out / f"{stem}_overlay.png",
                               overlay(image, mask, meta["palette"]))
    log.info("%s: %dx%d in %.1f ms (PyTorch eager, CPU) -> %s, %s", args.image, image.shape[1],
             image.shape[0], elapsed, mask_path, overlay_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
