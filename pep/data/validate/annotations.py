"""The `annotations` list and each annotation's mask: the fields, duplicate ids and id 0, that
image_id and category_id name a known image and category, the segmentation (polygons of at
least 3 points and an even length; an RLE whose size matches its image and whose counts decode
and cover that size exactly, decoded here as pycocotools would), degenerate area or bbox, and
the counts of annotations, crowd and usable ones; no usable annotation at all is an error.
"""

from __future__ import annotations

from pep.data.validate.fields import (Check, _bbox, _fields, _int, _iscrowd, _number, _segmentation,
                                      _show, _where)
from pep.data.validate.images import _ImageRecord
from pep.data.validate.findings import ValidationReport

ANNOTATION_FIELDS: dict[str, Check] = {"id": _int, "image_id": _int, "category_id": _int,
                                       "segmentation": _segmentation, "bbox": _bbox,
                                       "area": _number, "iscrowd": _iscrowd}


def _check_annotations(report: ValidationReport, annotations: list | None,
                       images: dict[int, _ImageRecord] | None, categories: set[int] | None,
                       required: bool = True) -> set[int]:
    """Field checks, references, RLE consistency and degenerate masks; also fills the
    annotation counts. Returns the ids of the images that have at least one annotation."""
    annotated: set[int] = set()
    seen: dict[int, int] = {}
    crowd = usable = 0
    for i, record in enumerate(annotations or []):
        good = _fields(report, "annotations", i, record, ANNOTATION_FIELDS)
        if good is None:
            continue
        where = _where("annotations", i, record)
        if "id" in good:
            if record["id"] == 0:
                report.add("annotation_id_zero", f"{where}: 'id' is 0")
            if record["id"] in seen:
                report.add("duplicate_annotation_id", f"{where}: id {record['id']} is also used by "
                                                      f"annotations[{seen[record['id']]}]")
            else:
                seen[record["id"]] = i
        is_crowd = "iscrowd" in good and record["iscrowd"] == 1
        crowd += is_crowd
        image = None
        if "image_id" in good:
            annotated.add(record["image_id"])
            image = images.get(record["image_id"]) if images is not None else None
            if image is None and images is not None:
                report.add("unknown_image", f"{where}: 'image_id' {record['image_id']} is not "
                                            "the id of any image")
        if "category_id" in good and categories is not None and record["category_id"] not in categories:
            report.add("unknown_category", f"{where}: 'category_id' {record['category_id']} is not "
                                           "the id of any category")
        mask_ok = "segmentation" in good and _check_mask(report, where, record, good, image)
        if mask_ok and good == set(ANNOTATION_FIELDS) and not is_crowd and image is not None \
                and categories is not None and record["category_id"] in categories:
            usable += 1
    if annotations is not None:
        report.counts.update(annotations=len(annotations), crowd=crowd,
                             non_crowd=len(annotations) - crowd, usable_annotations=usable)
        if usable == 0 and images is not None and categories is not None and required:
            report.add("no_annotations", f"annotations: none of the {len(annotations)} is a "
                                         "non-crowd instance with a mask, on a known image and category")
    else:
        report.counts.update(annotations=0, crowd=0, non_crowd=0, usable_annotations=0)
    return annotated


def _check_mask(report: ValidationReport, where: str, record: dict, good: set[str],
                image: _ImageRecord | None) -> bool:
    """RLE consistency and degeneracy of a well-typed segmentation; whether it gives a mask."""
    seg = record["segmentation"]
    reasons = []
    if isinstance(seg, list):
        short = [i for i, polygon in enumerate(seg) if len(polygon) < 6]
        reasons += [f"'segmentation' polygon {i} has {len(seg[i]) // 2} point(s), fewer than 3"
                    for i in short]
        if not seg:
            reasons.append("'segmentation' is an empty list")
        odd = [i for i, polygon in enumerate(seg) if len(polygon) % 2]
        if odd:
            report.add("odd_polygon_length", f"{where}: 'segmentation' polygon {odd[0]} has "
                                             f"{len(seg[odd[0]])} numbers")
        has_mask = len(short) < len(seg)
    else:
        height, width = seg["size"]
        if image is not None and image.height is not None and image.width is not None \
                and (height, width) != (image.height, image.width):
            report.add("rle_size_mismatch",
                       f"{where}: 'segmentation' size [{height}, {width}] but {image.where} has "
                       f"height {image.height}, width {image.width}")
            return False
        counts = seg["counts"] if isinstance(seg["counts"], list) else _rle_string_counts(seg["counts"])
        if counts is None:
            report.add("bad_rle", f"{where}: 'segmentation' counts is not a valid compressed RLE string")
            return False
        if sum(counts) != height * width:
            report.add("bad_rle", f"{where}: 'segmentation' counts add up to {sum(counts)} pixels, "
                                  f"but size [{height}, {width}] has {height * width}")
            return False
        has_mask = sum(counts[1::2]) > 0
        if not has_mask:
            reasons.append("'segmentation' RLE mask is empty")
    if "area" in good and record["area"] <= 0:
        reasons.append(f"'area' is {record['area']}")
        has_mask = False
    if "bbox" in good and (record["bbox"][2] <= 0 or record["bbox"][3] <= 0):
        reasons.append(f"'bbox' {_show(record['bbox'])} has no width or height")
        has_mask = False
    if reasons:
        report.add("degenerate_segmentation", f"{where}: " + "; ".join(reasons))
    return has_mask


def _rle_string_counts(s: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString), or None when
    it is malformed: decoding such counts in C writes past the mask's end."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            if p >= len(s):
                return None
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return None
        counts.append(x)
    return counts
