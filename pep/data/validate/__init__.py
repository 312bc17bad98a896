"""`pep data validate`: check a COCO-format instance segmentation set before training on it.

A broken record found after a day of training costs a day; found here it costs seconds. Every
problem is reported, not only the first: problems are grouped by *kind* (a stable snake_case
name), each kind with a severity. An `error` means training would crash, silently mislearn or
produce ambiguous results, so the set is not trainable; a `warning` is something the training
loader copes with by itself (it drops degenerate annotations, maps category ids), worth knowing
but no reason to stop. Each example names the record (`annotations[12] (id 907)`) and the key.

Nothing here raises for bad input: an unreadable or non-JSON file is itself a reported problem.

The checks follow the parts of the file: findings.py holds the report and the kinds of problem,
fields.py the checks of one record's keys and values, images.py the `images` list and the
image files on disk, categories.py the `categories` list, annotations.py the `annotations` list
and the masks; this module reads the file, checks its top level and runs the rest in order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pep.data.validate.annotations import ANNOTATION_FIELDS, _check_annotations
from pep.data.validate.categories import (CATEGORY_FIELDS, _check_categories, left_out_categories,
                                          used_category_ids)
from pep.data.validate.fields import Check, _show
from pep.data.validate.images import (IMAGE_FIELDS, _check_files, _check_images, _ImageRecord,
                                      missing_file_hint)
from pep.data.validate.findings import KEPT_EXAMPLES, KINDS, TRAINING_ONLY, Finding, Severity, ValidationReport
from pep.errors import PepError

__all__ = ["ANNOTATION_FIELDS", "CATEGORY_FIELDS", "Check", "Finding", "IMAGE_FIELDS", "KEPT_EXAMPLES",
           "KINDS", "Severity", "TRAINING_ONLY", "ValidationReport", "check_annotation_data",
           "check_before_use", "left_out_categories", "missing_file_hint", "used_category_ids",
           "validate_dataset"]


def validate_dataset(annotations: Path, images: Path, check_images: bool = True,
                     progress: bool = True) -> ValidationReport:
    """Check the annotation file `annotations` and (unless `check_images` is False) the image
    files it lists under `images`."""
    report = ValidationReport(Path(annotations), Path(images))
    data = _read_json(report)
    if data is None:
        return report
    image_records = check_annotation_data(report, data)
    if check_images and image_records is not None:
        _check_files(report, image_records, progress)
    return report


def check_annotation_data(report: ValidationReport, data: Any,
                          with_annotations: bool = True) -> dict[int, _ImageRecord] | None:
    """Every check of the parsed annotation file `data` into `report` (all but the image
    files'); the image records by id, for the file checks. `with_annotations=False` is for
    test-dev's image_info file, which lists images and categories only."""
    if not isinstance(data, dict):
        report.add("wrong_type", "top level: should be an object with 'images', 'annotations' "
                                 f"and 'categories', got {_show(data)}")
        return None
    sections = {}
    for name in ("images", "annotations", "categories"):
        if name not in data:
            if name != "annotations" or with_annotations:
                report.add("missing_key", f"top level: no '{name}' list")
        elif not isinstance(data[name], list):
            report.add("wrong_type", f"top level: '{name}' should be a list, got {_show(data[name])}")
        else:
            sections[name] = data[name]
    image_records = _check_images(report, sections.get("images"))
    categories = _check_categories(report, sections.get("categories"),
                                   used_category_ids(sections.get("annotations")))
    annotated = _check_annotations(report, sections.get("annotations"), image_records, categories,
                                   required=with_annotations)
    report.counts.update(
        images=len(sections.get("images", [])),
        categories=len(sections.get("categories", [])),
        images_without_annotations=len({*(image_records or {})} - annotated),
    )
    return image_records


def check_before_use(data: Any, path: Path, use: str, with_annotations: bool = True) -> dict[int, str]:
    """The checks of `pep data validate` on an annotation file a stage is about to use (`use`:
    "training", "scoring"), without opening images; a PepError with the errors when there are
    any. So a stage takes exactly what validate accepts, and what would crash or hang inside
    pycocotools (an RLE whose counts miss its size loops for ever in computeIoU) is named
    first. About a second for COCO's 5,000-image val file. Returns the categories that
    training and evaluation leave out."""
    report = ValidationReport(Path(path), Path("."))
    check_annotation_data(report, data, with_annotations)
    blocking = [f for f in report._ordered() if f.severity == "error"
                and not (use != "training" and f.kind in TRAINING_ONLY)]
    if not blocking:
        return report.left_out_categories
    lines = []
    for found in blocking:
        lines.append(f"{found.kind}: {found.count} ({KINDS[found.kind][1]}), e.g. {found.examples[0]}")
        if found.kind == "duplicate_category_name":
            lines.append("    fix: give each class one category id (move the annotations of one id "
                         "to the other and delete it), or rename one of them")
    total = sum(f.count for f in blocking)
    raise PepError(f"{path}: {total} error(s) that stop {use}:\n  " + "\n  ".join(lines)
                   + f"\n`pep data validate --annotations {path} --images IMAGE_DIR` lists every problem")


# --- reading ---

def _read_json(report: ValidationReport) -> Any | None:
    path = report.annotations
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        report.add("file_not_found", f"{path}: no such file")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        report.add("file_unreadable", f"{path}: {exc}")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        report.add("json_syntax", f"{path}: line {exc.lineno}, column {exc.colno}: {exc.msg}")
        return None
    except RecursionError:
        report.add("json_syntax", f"{path}: nested too deeply to parse")
        return None
