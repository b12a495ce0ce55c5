"""Segment one image and write the class mask and a colour overlay.

    python -m dfanet_core.segment_image [IMAGE] [--checkpoint C] [--out DIR]

Uses the shipped weights when present and says plainly when the model is untrained. The image is
segmented at its own size by the Segmenter's PyTorch backend on the CPU.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .imaging import read_image, write_image
from .paths import data_root

log = logging.getLogger("dfanet_core.segment_image")
DEFAULT_IMAGE = Path("test") / "Seq05VD_f00000.png"  # under the CamVid data root


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path, default=None,
                        help="image file (default: a CamVid test frame under $DFANET_DATA)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weights (.safetensors); default: the shipped weights")
    parser.add_argument("--out", type=Path, default=Path("outputs/segment_image"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import shipped_or_untrained
    from .deploy.segmenter import Segmenter

    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    image_path = args.image or data_root("camvid") / DEFAULT_IMAGE
    try:
        image = read_image(image_path)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    checkpoint, trained = shipped_or_untrained(args.out, args.checkpoint)
    if not trained:
        log.warning("NO TRAINED WEIGHTS FOUND: using an untrained model, the mask is noise")
    with Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu",
                                   input_size=image.shape[:2]) as segmenter:
        log.info("weights: %s (%s, trained on %s)", checkpoint, segmenter.meta["variant"],
                 segmenter.meta.get("dataset"))
        result = segmenter.predict_detailed(image, overlay=True)
    stem = image_path.stem
    mask_path = write_image(args.out / f"{stem}_mask.png", result.masks[0])
    overlay_path = write_image(args.out / f"{stem}_overlay.png", result.overlays[0])
    log.info("%s: %dx%d in %.1f ms (PyTorch, CPU) -> %s, %s", image_path, image.shape[1],
             image.shape[0], result.timings_ms["inference"], mask_path, overlay_path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
