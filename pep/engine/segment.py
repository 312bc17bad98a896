"""Segmenting a user's own images: `pep predict --images SOURCE... --out OUT` (folders, files or
globs), and the MLflow model.

One path for both (pep.inference): an image file (JPEG or PNG, any size, any mode, EXIF
orientation applied) -> RGB -> the test-time resize the model was trained for -> the model ->
instances at the image's own size, each with its mask (compressed RLE), box, category id and
name, and score.

Writes, for `pep predict --images`:

  (file_name: the image's path below the folder all the given images share)

  OUT/results.json             one record per instance: file_name, width, height, category_id,
                               category_name, score, segmentation (COCO compressed RLE), bbox
                               ([x, y, w, h], COCO's)
  OUT/overlays/<stem>.png      the image with each kept instance's mask, outline, box, class
                               and score drawn (torchvision.utils)

All staged and published together, results.json last; an unreadable image is skipped and named,
the others are still done.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
from tqdm import tqdm

from pep.errors import PepError
from pep.inference import Segmentation, Segmenter, read_image
from pep.jsonfile import StagedOutputs

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Instance colours (matplotlib's tab10), one per category, so a class reads the same everywhere.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def overlay(pixels: np.ndarray, seg: Segmentation, records: list[dict], category_order: list[int]) -> np.ndarray:
    """The image with each instance's mask (half transparent), outline, box, class and score;
    `records` are seg.records(), whose boxes are drawn."""
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    if not len(seg.masks):
        return pixels
    masks = torch.from_numpy(seg.masks)
    colours = [PALETTE[category_order.index(int(c)) % len(PALETTE)] if int(c) in category_order
               else PALETTE[0] for c in seg.category_ids]
    image = draw_segmentation_masks(image, masks, alpha=0.45, colors=colours)
    # outline: the mask minus its 3x3 erosion
    eroded = -F.max_pool2d(-masks[:, None].float(), 3, stride=1, padding=1)[:, 0] > 0.5
    image = draw_segmentation_masks(image, masks & ~eroded, alpha=1.0, colors=colours)
    boxes = torch.tensor([r["bbox"] for r in records], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    labels = [f"{name} {score:.2f}" for name, score in zip(seg.category_names, seg.scores)]
    image = draw_bounding_boxes(image, boxes, labels=labels, colors=colours, width=1)
    return image.permute(1, 2, 0).numpy()


GLOB_CHARS = "*?["


def image_files(sources: str | Path | list[str | Path]) -> list[Path]:
    """The images that `--images` names, in order and without repeats. Each source is a folder
    (its JPEG and PNG files, by name; subfolders are not searched), one file (taken whatever
    its suffix: the user named it), or a glob such as `photos/*.jpg` or `shots/**/*.png`, quoted
    so that pep, not the shell, expands it (its JPEG and PNG matches). A clear error for a
    source that names nothing."""
    found: list[Path] = []
    for source in [sources] if isinstance(sources, (str, Path)) else sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise PepError(f"{path}: no JPEG or PNG images in it ({', '.join(IMAGE_SUFFIXES)}; "
                               "subfolders are not searched: give a glob such as 'DIR/**/*.jpg')")
        elif path.is_file():
            files = [path]
        elif any(c in str(source) for c in GLOB_CHARS):
            matched = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
            files = [p for p in matched if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise PepError(f"{source}: the pattern matches no JPEG or PNG file"
                               + (f" ({len(matched)} other path(s))" if matched else ""))
        else:
            raise PepError(f"{path}: no such image file or folder of images")
        found += files
    unique = {os.path.realpath(p): p for p in reversed(found)}  # an image named twice is done once
    return [p for p in found if unique[os.path.realpath(p)] is p]


def display_names(files: list[Path]) -> dict[Path, str]:
    """Each image's name in results.json: its path below the folder all the images share (the
    file name alone where they lie in one folder)."""
    parents = [os.path.abspath(f.parent) for f in files]
    root = os.path.commonpath(parents) if files else ""
    return {f: Path(os.path.relpath(os.path.abspath(f), root)).as_posix() for f in files}


def overlay_names(files: list[Path]) -> dict[Path, str]:
    """<stem>.png for each image; where two images share a stem, its name in results.json with
    folders and suffix spelt out (a/b.jpg -> a__b_jpg.png)."""
    stems = [f.stem for f in files]
    shown = display_names(files)
    return {f: (f"{f.stem}.png" if stems.count(f.stem) == 1 else
                shown[f].replace("/", "__").replace(".", "_") + ".png") for f in files}


def segment_images(segmenter: Segmenter, sources: str | Path | list[str | Path], out: str | Path,
                   score_threshold: float, progress: bool = True) -> dict:
    """Segment every image that `sources` name (folders, files, globs: `image_files`) into
    `out` (see the module). Returns a summary: images done, instances kept, and the files
    skipped with the reason."""
    out = Path(out)
    if not 0.0 <= score_threshold <= 1.0:
        raise PepError(f"--score-threshold must lie in [0, 1], got {score_threshold}")
    files = image_files(sources)
    names, shown = overlay_names(files), display_names(files)
    overlays = out / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    category_order = sorted(segmenter.names)
    records, skipped = [], []
    with StagedOutputs([*(overlays / names[f] for f in files), results_path], "`pep predict --images`") as staged:
        for path in tqdm(files, desc="segment", unit="image", disable=None if progress else True):
            try:
                pixels = read_image(path)
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.warning("%s: skipped, not a readable image (%s)", path, reason)
                skipped.append({"file_name": shown[path], "path": str(path), "reason": reason})
                continue
            kept = segmenter(pixels).above(score_threshold)
            found = kept.records(shown[path])
            records += found
            Image.fromarray(overlay(pixels, kept, found, category_order)).save(
                staged.temp_path(overlays / names[path]), format="PNG")
        staged.write_json(results_path, records, indent=None)
        staged.publish()
    return {"images": len(files) - len(skipped), "instances": len(records), "skipped": skipped,
            "results": results_path, "overlays": overlays}


def predict_images_command(cfg: dict, sources: list[str] | None, out: Path | None, variant: str | None,
                           seed: int | None, model_uri: str | None, score_threshold: float,
                           load_model=None, progress: bool = True) -> int:
    """`pep predict --images SOURCE... --out OUT`: one's own images (folders, files, globs),
    segmented by a trained variant (--variant, from runs/) or an MLflow model (--model URI, opened
    by `load_model(cfg, uri)`: pep.tracking.model.load_segmenter, handed over by the caller)."""
    from pep.config import chosen_seeds
    from pep.distributed import choose_device

    if sources is None or out is None:
        raise PepError("`pep predict --images SOURCE... --out OUT`: both are needed (SOURCE: a folder, "
                       "an image file or a quoted glob such as 'photos/*.jpg')")
    if (variant is None) == (model_uri is None):
        raise PepError("`pep predict --images`: give the model as either --variant V [--seed S] "
                       "(from runs/) or --model URI (from MLflow), not both or neither")
    if variant is not None:
        from pep.engine.train import load_trained

        seed = chosen_seeds(cfg, seed)[0]
        device = choose_device(cfg["train"]["device"])
        model, state = load_trained(cfg, variant, seed, device)
        segmenter = Segmenter(model, cfg["data"]["input"], list(state["class_names"]), device)
        source = f"{variant} seed {seed}"
    else:
        segmenter = load_model(cfg, model_uri)
        source = model_uri
    summary = segment_images(segmenter, sources, out, score_threshold, progress=progress)
    print(f"{source}: {summary['instances']} instances (score >= {score_threshold}) on "
          f"{summary['images']} images -> {summary['results']}, {summary['overlays']}/")
    for skipped in summary["skipped"]:
        print(f"pep: skipped {skipped['path']}: not a readable image ({skipped['reason']})", file=sys.stderr)
    return 1 if summary["skipped"] else 0
