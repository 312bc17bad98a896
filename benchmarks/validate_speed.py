"""How long the ground-truth check that every stage now runs costs, against reading the file.

Every stage that reads an annotation file first runs `pep data validate`'s checks on it
(`pep.data.validate.check_before_use`), so that what pycocotools cannot take (an RLE whose
counts miss its size makes COCOeval loop for ever) is named before the work. The issue's
target: a 5,000-image val file in seconds. This script builds such a file from tiny_coco's
val set, 100 copies of its 50 images with fresh ids (5,000 images, 38,200 annotations, COCO's
mix of polygons and crowd RLE), or takes `--annotations FILE`, and times, in one process:

- `json.loads` of the file (the reference every loader pays anyway);
- `check_before_use` on the parsed data (the added cost);
- pycocotools' `COCO.createIndex` on it;
- `pep.data.coco.load_coco`, all of them together.

Run from the project root:

    .venv/bin/python benchmarks/validate_speed.py            # the 5,000-image file
    .venv/bin/python benchmarks/validate_speed.py --json     # one JSON object on stdout
    .venv/bin/python benchmarks/validate_speed.py --annotations data/coco/annotations/instances_val2017.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from pycocotools.coco import COCO

from pep.config import PROJECT_ROOT
from pep.data.coco import load_coco
from pep.data.validate import check_before_use

TINY_VAL = PROJECT_ROOT.parent / "shared" / "data" / "tiny_coco" / "annotations" / "instances_val2017.json"


def replicated(source: Path, copies: int) -> dict:
    """`copies` copies of the source's images and annotations under fresh ids."""
    raw = json.loads(source.read_text(encoding="utf-8"))
    step = 10 ** len(str(max(a["id"] for a in raw["annotations"]) + max(i["id"] for i in raw["images"])))
    images = [{**im, "id": im["id"] + k * step} for k in range(copies) for im in raw["images"]]
    annotations = [{**a, "id": a["id"] + k * step, "image_id": a["image_id"] + k * step}
                   for k in range(copies) for a in raw["annotations"]]
    return {**raw, "images": images, "annotations": annotations}


def best_of(repeats: int, work) -> float:
    """The fastest of `repeats` runs, in seconds: the least disturbed by the rest of the machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(path: Path, repeats: int) -> dict:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    parse = best_of(repeats, lambda: json.loads(text))
    check = best_of(repeats, lambda: check_before_use(data, path, "scoring"))  # reads, never writes

    def index():
        coco = COCO()
        coco.dataset = data  # createIndex only reads the dataset too
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    create_index = best_of(repeats, index)
    load = best_of(repeats, lambda: load_coco(path))
    return {"file": str(path), "images": len(data["images"]), "annotations": len(data["annotations"]),
            # microseconds kept: on a small file createIndex takes under 0.5 ms, which 3 decimals round to 0
            "json_parse_s": round(parse, 6), "check_s": round(check, 6),
            "create_index_s": round(create_index, 6), "load_coco_s": round(load, 6),
            "ratios": {"check / json_parse": round(check / parse, 2),
                       "check / create_index": round(check / create_index, 2)},
            "check_ms_per_1000_annotations": round(1000 * check / len(data["annotations"]) * 1000, 2),
            "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=Path, help="an annotation file (default: tiny_coco val x copies)")
    parser.add_argument("--copies", type=int, default=100, help="copies of tiny_coco val (default 100: 5,000 images)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each step; the fastest counts")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.annotations
        if path is None:
            path = Path(tmp) / "val_5000.json"
            path.write_text(json.dumps(replicated(TINY_VAL, args.copies)), encoding="utf-8")
        report = measure(path, args.repeats)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['file'] if args.annotations else 'tiny_coco val x ' + str(args.copies)}: "
          f"{report['images']:,} images, {report['annotations']:,} annotations (fastest of {args.repeats})")
    for key, what in (("json_parse_s", "json.loads (reference)"), ("check_s", "check_before_use"),
                      ("create_index_s", "COCO.createIndex"), ("load_coco_s", "load_coco, all together")):
        print(f"  {what:<26} {report[key]:7.3f} s")
    for name, value in report["ratios"].items():
        print(f"  {name:<26} {value:7.2f} x")
    print(f"  check per 1,000 annotations {report['check_ms_per_1000_annotations']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
