"""The embedded default data set: crowded shapes, in COCO 2017's exact layout.

Why this design: PEP's two contributions only have work to do where instances crowd. Each image
holds a few *crowds* (clusters of touching and overlapping objects, most of one class, so that
one semantic cell sees several same-class instances) plus a few loners. Objects are painted
back to front; every annotation is the *visible* part of its object, so occluded instances have
irregular masks. Each class has its own hue (`class_colour_jitter` sets how far an object
strays from it; null draws every colour at random, so that shape alone tells the class); the
texture (solid, stripes, checker, speckle) is drawn per object. Tied colours are what lets a
from-scratch model learn the classes within the demo's few thousand images; telling touching
same-class instances apart, the part excavating and purifying are for, stays as hard.

Crowds alone leave almost no instance without a grid cell of its own (0.2% of val), so images
also hold *nests*: same-class objects around one centre, each turned against the one in front
so that both show. Named crowding levels (`crowding`, `crowding_levels`) set how many; `pep
data crowding` measures each level against real COCO images (pep.data.crowding).

Segmentations come in all three of COCO's encodings, as in the real set: a polygon for an object
that is fully visible and inside the image, compressed RLE for an occluded one, and
uncompressed RLE for the occasional iscrowd=1 region (a heap of tiny shapes). Category ids are
deliberately not contiguous (1, 3, 5, ...), like COCO's, so that every run exercises the
mapping between COCO ids and the model's labels.

Everything is drawn from numpy Generators seeded by (seed, split, image index): the same
parameters give byte-identical files, and any image can be regenerated alone.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from pep.config import crowding_settings, resolve_data_path
from pep.errors import PepError

DESCRIPTION = "PEP synthetic crowded shapes"
SPLITS = (("train", "train2017"), ("val", "val2017"), ("test-dev", "test-dev2017"))
PRIVATE_TEST_DEV_GT = "private/instances_test-dev2017.json"


# --- shapes: each returns a closed polygon (K, 2) of x, y around (0, 0), circumradius 1 ---

def _regular(k: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular(2 * points, -np.pi / 2)
    radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return outer * radius[:, None]


def _cross(arm: float = 0.36) -> np.ndarray:
    a, b = arm, float(np.sqrt(1 - arm * arm))  # half-width a, arm tips on the unit circle
    return np.array([(a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b),
                     (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a), (-a, -b)])


# the turn that maps a shape onto itself is 2 pi / SYMMETRY (a circle's: any)
SYMMETRY = {"circle": 1, "ellipse": 2, "square": 4, "triangle": 3, "star": 5, "hexagon": 6,
            "diamond": 2, "cross": 4}

SHAPES = {
    "circle": lambda rng: _regular(32),
    "ellipse": lambda rng: _regular(32) * np.array([1.0, rng.uniform(0.45, 0.7)]),
    "square": lambda rng: _regular(4, np.pi / 4),
    "triangle": lambda rng: _regular(3, -np.pi / 2),
    "star": lambda rng: _star(),
    "hexagon": lambda rng: _regular(6),
    "diamond": lambda rng: _regular(4) * np.array([rng.uniform(0.5, 0.7), 1.0]),
    "cross": lambda rng: _cross(),
}


@dataclass
class _Object:
    category: int            # index into the class list
    polygon: np.ndarray      # (K, 2) image coordinates
    is_crowd_region: bool = False
    size: float = 0.0        # diameter of the circumscribed circle (pixels)


def category_id(index: int) -> int:
    """COCO id of the index-th class: 1, 3, 5, ... (non-contiguous on purpose)."""
    return 2 * index + 1


def categories(classes: list[str]) -> list[dict]:
    return [{"id": category_id(i), "name": name, "supercategory": "shape"}
            for i, name in enumerate(classes)]


# --- drawing ---

def _rasterize(polygon: np.ndarray, height: int, width: int) -> np.ndarray:
    rles = mask_utils.frPyObjects([polygon.reshape(-1).tolist()], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def _background(rng: np.random.Generator, height: int, width: int, noise: float) -> np.ndarray:
    base = rng.uniform(0.15, 0.85, size=3)
    tilt = rng.uniform(-0.25, 0.25, size=(2, 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = base + tilt[0] * (xx / width - 0.5)[..., None] + tilt[1] * (yy / height - 0.5)[..., None]
    # soft low-frequency blotches, so that "background" is not a flat colour
    for _ in range(rng.integers(2, 5)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.1, 0.4) * max(height, width)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img = img + blob[..., None] * rng.uniform(-0.2, 0.2, size=3)
    img = img + rng.normal(0, noise, size=img.shape)
    return img.astype(np.float32)


TEXTURES = ("solid", "stripes", "checker", "speckle")


def class_colour(index: int, n_classes: int) -> np.ndarray:
    """The base colour of class `index`: hues evenly spaced around the wheel, saturated and bright."""
    return np.array(colorsys.hsv_to_rgb(index / n_classes, 0.85, 0.9))


def _texture(rng: np.random.Generator, height: int, width: int, cfg: dict, cls: int) -> np.ndarray:
    jitter = cfg["class_colour_jitter"]
    if jitter is None:
        colour = rng.uniform(0, 1, size=3)
    else:
        colour = np.clip(class_colour(cls, len(cfg["classes"])) + rng.uniform(-jitter, jitter, size=3), 0, 1)
    other = np.clip(colour + rng.choice([-1, 1]) * rng.uniform(0.2, 0.4, size=3), 0, 1)
    weights = np.array([cfg["textures"][k] for k in TEXTURES], dtype=float)
    kind = rng.choice(TEXTURES, p=weights / weights.sum())
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "solid":
        return np.broadcast_to(colour, (height, width, 3)).astype(np.float32)
    if kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        sel = (np.floor(phase) % 2 == 0)[..., None]
    elif kind == "checker":
        period = rng.uniform(3, 7)
        sel = ((np.floor(xx / period) + np.floor(yy / period)) % 2 == 0)[..., None]
    else:
        sel = (rng.uniform(size=(height, width)) < 0.3)[..., None]
    return np.where(sel, colour, other).astype(np.float32)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it: a 1-px rim, as objects have edges."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _place_objects(rng: np.random.Generator, cfg: dict, width: int, height: int) -> list[_Object]:
    """Objects in painting order (back to front)."""
    n_classes = len(cfg["classes"])
    objects: list[_Object] = []

    def make(cls: int, cx: float, cy: float, size: float, angle: float | None = None) -> _Object:
        shape = SHAPES[cfg["classes"][cls]](rng)
        angle = rng.uniform(0, 2 * np.pi) if angle is None else angle
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        # rounded as it is written to JSON, so that the written polygon rasterizes to the mask
        return _Object(cls, np.round(shape @ rot.T * (size / 2) + np.array([cx, cy]), 2), size=size)

    if rng.uniform() < cfg["crowd_region_prob"]:  # a heap of tiny shapes: one iscrowd=1 region
        cls = int(rng.integers(n_classes))
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        for _ in range(rng.integers(8, 16)):
            heap = make(cls, cx + rng.normal(0, 5), cy + rng.normal(0, 5), rng.uniform(4, 8))
            heap.is_crowd_region = True
            objects.append(heap)

    lo, hi = cfg["object_size"]
    for _ in range(rng.integers(cfg["crowds_per_image"][0], cfg["crowds_per_image"][1] + 1)):
        crowd_cls = int(rng.integers(n_classes))
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        crowd_size = rng.uniform(lo, hi)  # members of a crowd are of similar size
        for _ in range(rng.integers(cfg["objects_per_crowd"][0], cfg["objects_per_crowd"][1] + 1)):
            cls = crowd_cls if rng.uniform() < cfg["same_class_prob"] else int(rng.integers(n_classes))
            size = float(np.clip(crowd_size * rng.uniform(0.75, 1.3), lo, hi))
            dist = cfg["crowd_spread"] * size * np.sqrt(rng.uniform())
            theta = rng.uniform(0, 2 * np.pi)
            objects.append(make(cls, cx + dist * np.cos(theta), cy + dist * np.sin(theta), size))
    for _ in range(rng.integers(cfg["loners_per_image"][0], cfg["loners_per_image"][1] + 1)):
        size = rng.uniform(lo, hi)
        objects.append(make(int(rng.integers(n_classes)), rng.uniform(size / 2, width - size / 2),
                            rng.uniform(size / 2, height - size / 2), size))
    # crowd regions stay at the back; the rest are painted in random depth order
    heap = [o for o in objects if o.is_crowd_region]
    rest = [o for o in objects if not o.is_crowd_region]
    order = heap + [rest[i] for i in rng.permutation(len(rest))]
    if cfg["nest_prob"] > 0 and rng.uniform() < cfg["nest_prob"]:  # drawn last: a set without nests is as before
        for _ in range(rng.integers(cfg["nests_per_image"][0], cfg["nests_per_image"][1] + 1)):
            at = int(rng.integers(len(heap), len(order) + 1))
            order[at:at] = _nest(rng, cfg, make, width, height)
    return order


def _nest(rng: np.random.Generator, cfg: dict, make, width: int, height: int) -> list[_Object]:
    """Same-class objects around one centre, painted back to front: each is turned by half its
    shape's symmetry angle against the one in front of it (a star's points show between the
    points of the star in front) and `nest_ratio` times its size, grown further where less
    than `min_visible_fraction` of it would show. Their centres fall in one grid cell and their
    boxes nearly match, so perceiving's assignment gives every shared cell to the smallest and
    the others own none: the instances PEP's excavating is for (pep.data.crowding counts them)."""
    lo, hi = cfg["nest_size"]
    cls = int(rng.integers(len(cfg["classes"])))
    shape = cfg["classes"][cls]
    turn = np.pi / SYMMETRY[shape]
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    front = make(cls, cx, cy, rng.uniform(lo, hi), angle)
    nest = [front]
    for k in range(1, int(rng.integers(cfg["nest_depth"][0], cfg["nest_depth"][1] + 1))):
        size = nest[-1].size * rng.uniform(*cfg["nest_ratio"])
        for _ in range(20):  # a few steps: a circle needs 1.2x to show 30%, a star 1.0x; past 2.5x
            back = make(cls, cx, cy, size, angle + k * turn)  # the painter's visibility rule drops it
            full = _rasterize(back.polygon, height, width)
            shown = full & ~_rasterize(nest[-1].polygon, height, width)
            if shown.sum() >= (cfg["min_visible_fraction"] + 0.05) * full.sum():
                break
            size *= 1.05
        nest.append(back)
    return nest[::-1]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with a run of zeros)."""
    flat = np.asfortranarray(mask.astype(np.uint8)).reshape(-1, order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": list(mask.shape)}


def render_image(rng: np.random.Generator, cfg: dict, width: int, height: int):
    """One picture and its annotations (without ids): (uint8 HxWx3, list of dicts)."""
    objects = _place_objects(rng, cfg, width, height)
    full = [_rasterize(o.polygon, height, width) for o in objects]

    # Front to back: keep an object only if enough of it shows above the kept ones.
    covered = np.zeros((height, width), bool)
    keep, visible = [False] * len(objects), [None] * len(objects)
    for i in reversed(range(len(objects))):
        vis = full[i] & ~covered
        n_full, n_vis = int(full[i].sum()), int(vis.sum())
        ok = n_vis >= (1 if objects[i].is_crowd_region else cfg["min_visible_pixels"])
        ok = ok and n_vis >= cfg["min_visible_fraction"] * n_full
        if ok:
            keep[i], visible[i] = True, vis
            covered |= full[i]

    canvas = _background(rng, height, width, cfg["background_noise"])
    for i, obj in enumerate(objects):
        if not keep[i]:
            continue
        tex = _texture(rng, height, width, cfg, obj.category)
        canvas[full[i]] = tex[full[i]]
        canvas[_outline(full[i])] *= rng.uniform(0.55, 0.8)
    canvas = canvas + rng.normal(0, cfg["background_noise"] / 2, size=canvas.shape)
    picture = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)

    annotations = []
    heap = np.zeros((height, width), bool)
    heap_cls = None
    for i, obj in enumerate(objects):
        if not keep[i]:
            continue
        if obj.is_crowd_region:
            heap |= visible[i]
            heap_cls = obj.category
            continue
        inside = (obj.polygon >= 0).all() and (obj.polygon[:, 0] <= width).all() \
            and (obj.polygon[:, 1] <= height).all()
        if inside and (visible[i] == full[i]).all():
            segmentation = [obj.polygon.reshape(-1).tolist()]
        else:
            rle = mask_utils.encode(np.asfortranarray(visible[i].astype(np.uint8)))
            segmentation = {"counts": rle["counts"].decode("ascii"), "size": [height, width]}
        annotations.append(_annotation(obj.category, visible[i], segmentation, iscrowd=0))
    if heap_cls is not None and heap.any():
        annotations.append(_annotation(heap_cls, heap, uncompressed_rle(heap), iscrowd=1))
    return picture, annotations


def _annotation(cls: int, mask: np.ndarray, segmentation, iscrowd: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"category_id": category_id(cls), "segmentation": segmentation,
            "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": iscrowd}


def generate(cfg: dict, out: Path, progress: bool = True) -> dict:
    """Write the whole data set under `out` (replacing an earlier synthetic set there).

    The set is built in a sibling temporary folder and moved into place at the end, so an
    interrupted run never leaves a folder that looks complete. Returns a summary.
    """
    out = Path(out)
    cfg = crowding_settings(cfg)
    _check_replaceable(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "annotations").mkdir(parents=True)
    (tmp / "private").mkdir()
    started = time.perf_counter()
    cats = categories(cfg["classes"])
    info = {"description": DESCRIPTION, "version": "1.0", "year": 2026,
            "contributor": "pep data synth", "seed": cfg["seed"], "crowding": cfg["crowding"]}
    licenses = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]
    counts = {"train": cfg["num_train"], "val": cfg["num_val"], "test-dev": cfg["num_test_dev"]}
    summary = {"root": str(out), "images": {}, "annotations": {}}
    next_image_id, next_ann_id = 1, 1
    try:
        for split_no, (split, folder) in enumerate(SPLITS):
            (tmp / folder).mkdir()
            images, anns = [], []
            for k in tqdm(range(counts[split]), desc=f"synth {split}", unit="img",
                          disable=None if progress else True, leave=False):
                rng = np.random.default_rng([cfg["seed"], split_no, k])
                width = int(rng.integers(cfg["image_size"][0], cfg["image_size"][1] + 1))
                height = int(rng.integers(cfg["image_size"][0], cfg["image_size"][1] + 1))
                picture, image_anns = render_image(rng, cfg, width, height)
                file_name = f"{next_image_id:012d}.jpg"
                Image.fromarray(picture).save(tmp / folder / file_name, quality=cfg["jpeg_quality"])
                images.append({"id": next_image_id, "file_name": file_name, "width": width,
                               "height": height, "license": 1})
                for ann in image_anns:
                    anns.append({"id": next_ann_id, "image_id": next_image_id, **ann})
                    next_ann_id += 1
                next_image_id += 1
            gt = {"info": info, "licenses": licenses, "images": images, "annotations": anns,
                  "categories": cats}
            if split == "test-dev":
                _write_json(tmp / "annotations" / "image_info_test-dev2017.json",
                            {k: v for k, v in gt.items() if k != "annotations"})
                _write_json(tmp / PRIVATE_TEST_DEV_GT, gt)
            else:
                _write_json(tmp / "annotations" / f"instances_{folder}.json", gt)
            summary["images"][split] = len(images)
            summary["annotations"][split] = len(anns)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))


def _check_replaceable(out: Path) -> None:
    """Refuse to delete a folder that is not an earlier synthetic set (a user's real data)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise PepError(f"{out}: exists and is not a folder; choose another output path")
    if not any(out.iterdir()):
        return
    marker = out / "annotations" / "instances_train2017.json"
    try:
        with open(marker, encoding="utf-8") as f:
            ours = json.load(f).get("info", {}).get("description") == DESCRIPTION
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise PepError(f"{out}: folder exists and does not hold a synthetic set made by "
                       "`pep data synth`; refusing to overwrite it (choose another --out or "
                       "remove it yourself)")


def synth_command(cfg: dict, out: Path | None, progress: bool = True) -> int:
    """`pep data synth`: the set of the params' data.synth, into `out` (default: data.root)."""
    summary = generate(cfg["data"]["synth"], out or resolve_data_path(cfg, "root"), progress=progress)
    print(f"wrote {sum(summary['images'].values())} images and "
          f"{sum(summary['annotations'].values())} annotations to {summary['root']} "
          f"in {summary['seconds']:.1f} s "
          f"(train/val/test-dev images: {summary['images']['train']}/{summary['images']['val']}/"
          f"{summary['images']['test-dev']})")
    return 0
