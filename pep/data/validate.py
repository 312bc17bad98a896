"""`pep data validate`: check a COCO-format instance segmentation set before training on it.

A broken record found after a day of training costs a day; found here it costs seconds. Every
problem is reported, not only the first: problems are grouped by *kind* (a stable snake_case
name), each kind with a severity. An `error` means training would crash, silently mislearn or
produce ambiguous results, so the set is not trainable; a `warning` is something the training
loader copes with by itself (it drops degenerate annotations, maps category ids), worth knowing
but no reason to stop. Each example names the record (`annotations[12] (id 907)`) and the key.

Nothing here raises for bad input: an unreadable or non-JSON file is itself a reported problem.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from PIL import Image
from tqdm import tqdm

from pep.errors import PepError

Severity = Literal["error", "warning"]

# kind -> (severity, what it means); the order here is the order of the summary's blocks.
KINDS: dict[str, tuple[Severity, str]] = {
    "file_not_found": ("error", "the annotation file does not exist"),
    "file_unreadable": ("error", "the annotation file cannot be read as UTF-8 text"),
    "json_syntax": ("error", "the annotation file is not valid JSON"),
    "missing_key": ("error", "a required key is absent"),
    "wrong_type": ("error", "a value has the wrong type"),
    "invalid_value": ("error", "a value is out of its range"),
    "duplicate_image_id": ("error", "an id used by more than one image record"),
    "duplicate_annotation_id": ("error", "an id used by more than one annotation"),
    "duplicate_category_id": ("error", "an id used by more than one category"),
    "duplicate_category_name": ("error", "a name used by more than one category that annotations "
                                         "use: class names in result tables would be ambiguous"),
    "unknown_image": ("error", "an annotation's image_id is not among the images"),
    "unknown_category": ("error", "an annotation's category_id is not among the categories"),
    "rle_size_mismatch": ("error", "an RLE's size disagrees with its image's height and width"),
    "bad_rle": ("error", "an RLE's counts are malformed or do not cover its size exactly"),
    "no_annotations": ("error", "not one annotation is usable for training"),
    "image_dir_not_found": ("error", "the image folder does not exist"),
    "image_missing_on_disk": ("error", "an image file is missing"),
    "image_unreadable": ("error", "an image file cannot be read as an image"),
    "image_size_mismatch": ("error", "an image file's size differs from its record's width/height"),
    "degenerate_segmentation": ("warning", "an annotation or polygon without a usable mask, "
                                           "which the training loader drops and evaluation "
                                           "scores as an empty mask (a miss)"),
    "odd_polygon_length": ("warning", "a polygon with an odd number of coordinates, "
                                      "of which pycocotools ignores the last"),
    "category_id_zero": ("warning", "category id 0, which other tools reserve for background; "
                                    "this pipeline maps ids itself"),
    "annotation_id_zero": ("warning", "annotation id 0, which pycocotools' evaluation takes for "
                                      "'unmatched'; this pipeline renumbers annotation ids on loading"),
    "duplicate_file_name": ("warning", "one image file listed by more than one image record"),
    "unused_duplicate_category": ("warning", "a category no annotation uses whose name repeats "
                                             "another's (labelling services export the project's "
                                             "name so); left out of training and evaluation"),
}

# What only training needs: a set without one usable instance can still be scored.
TRAINING_ONLY = {"no_annotations"}

KEPT_EXAMPLES = 100  # per kind, in the report; the summary shows fewer


@dataclass
class Finding:
    """All occurrences of one kind of problem: how many, and the first few in words."""

    kind: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def severity(self) -> Severity:
        return KINDS[self.kind][0]


@dataclass
class ValidationReport:
    """What `validate_dataset` found: counts of the set's contents and problems by kind."""

    annotations: Path
    images: Path
    images_checked: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    left_out_categories: dict[int, str] = field(default_factory=dict)  # see left_out_categories()

    def add(self, kind: str, example: str) -> None:
        found = self.findings.setdefault(kind, Finding(kind))
        found.count += 1
        if len(found.examples) < KEPT_EXAMPLES:
            found.examples.append(example)

    def _total(self, severity: Severity) -> int:
        return sum(f.count for f in self.findings.values() if f.severity == severity)

    @property
    def errors(self) -> int:
        return self._total("error")

    @property
    def warnings(self) -> int:
        return self._total("warning")

    @property
    def trainable(self) -> bool:
        return self.errors == 0

    def _ordered(self) -> list[Finding]:
        rank = {kind: i for i, kind in enumerate(KINDS)}
        return sorted(self.findings.values(),
                      key=lambda f: (f.severity != "error", rank[f.kind]))

    def summary(self, max_examples: int = 3) -> str:
        """Readable text: the file and its counts, one block per kind, then the verdict."""
        c = self.counts
        if c:
            head = (f"{self.annotations}: {c['images']} images ({c['images_without_annotations']} "
                    f"without annotations), {c['annotations']} annotations ({c['non_crowd']} "
                    f"non-crowd, {c['crowd']} crowd), {c['categories']} categories")
            if not self.images_checked:
                head += "; image files not checked"
        else:
            head = f"{self.annotations}: could not be read"
        lines = [head]
        for found in self._ordered():
            shown = found.examples[:max(max_examples, 0)]
            lines.append(f"{found.severity.upper()} {found.kind}: {found.count} "
                         f"({KINDS[found.kind][1]})" + (":" if shown else ""))
            lines += [f"    {example}" for example in shown]
            if found.count > len(shown) and shown:
                lines.append(f"    ... and {found.count - len(shown)} more")
        warned = f", {self.warnings} warning(s)" if self.warnings else ""
        lines.append(f"OK: can be trained on{warned}" if self.trainable
                     else f"NOT TRAINABLE: {self.errors} error(s){warned}")
        return "\n".join(lines)

    def to_dict(self, show_path=str) -> dict:
        """The findings as JSON; `show_path` writes the two paths (pep.config.project_relative
        keeps a project's report the same wherever the project lies)."""
        return {
            "annotations": show_path(self.annotations),
            "images": show_path(self.images),
            "images_checked": self.images_checked,
            "trainable": self.trainable,
            "errors": self.errors,
            "warnings": self.warnings,
            "counts": dict(self.counts),
            "problems": {f.kind: {"severity": f.severity, "description": KINDS[f.kind][1],
                                  "count": f.count, "examples": list(f.examples)}
                         for f in self._ordered()},
        }


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


# --- field checks: each returns None (fine) or (kind, what is wrong after "'key' ") ---

Check = Callable[[Any], tuple[str, str] | None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite JSON number (json.loads accepts NaN and Infinity; no tool can use them)."""
    return _is_int(v) or (isinstance(v, float) and math.isfinite(v))


def _int(v: Any) -> tuple[str, str] | None:
    return None if _is_int(v) else ("wrong_type", f"should be an int, got {_show(v)}")


def _positive_int(v: Any) -> tuple[str, str] | None:
    if not _is_int(v):
        return "wrong_type", f"should be a positive int, got {_show(v)}"
    return None if v > 0 else ("invalid_value", f"should be a positive int, got {v}")


def _string(v: Any) -> tuple[str, str] | None:
    return None if isinstance(v, str) else ("wrong_type", f"should be a string, got {_show(v)}")


def _number(v: Any) -> tuple[str, str] | None:
    return None if _is_number(v) else ("wrong_type", f"should be a number, got {_show(v)}")


def _bbox(v: Any) -> tuple[str, str] | None:
    if isinstance(v, list) and len(v) == 4 and all(map(_is_number, v)):
        return None
    return "wrong_type", f"should be 4 numbers [x, y, width, height], got {_show(v)}"


def _iscrowd(v: Any) -> tuple[str, str] | None:
    if not _is_int(v):
        return "wrong_type", f"should be 0 or 1, got {_show(v)}"
    return None if v in (0, 1) else ("invalid_value", f"should be 0 or 1, got {v}")


def _segmentation(v: Any) -> tuple[str, str] | None:
    if isinstance(v, list):
        if v and all(map(_is_number, v)):
            return "wrong_type", ("is a flat list of numbers; polygons go in a list of lists: "
                                  "[[x1, y1, x2, y2, ...]]")
        for i, polygon in enumerate(v):
            if not (isinstance(polygon, list) and all(map(_is_number, polygon))):
                return "wrong_type", f"polygon {i} should be a list of numbers, got {_show(polygon)}"
        return None
    if isinstance(v, dict):
        for key in ("counts", "size"):
            if key not in v:
                return "missing_key", f"is an RLE without '{key}'"
        counts, size = v["counts"], v["size"]
        if not (isinstance(counts, str) or (isinstance(counts, list)
                                            and all(_is_int(n) and n >= 0 for n in counts))):
            return "wrong_type", ("RLE 'counts' should be a string or a list of non-negative ints, "
                                  f"got {_show(counts)}")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(n) and n > 0 for n in size)):
            return "wrong_type", f"RLE 'size' should be [height, width], got {_show(size)}"
        return None
    return "wrong_type", ("should be a list of polygons or an RLE {counts, size}, "
                          f"got {_show(v)}")


IMAGE_FIELDS: dict[str, Check] = {"id": _int, "file_name": _string, "width": _positive_int,
                                  "height": _positive_int}
ANNOTATION_FIELDS: dict[str, Check] = {"id": _int, "image_id": _int, "category_id": _int,
                                       "segmentation": _segmentation, "bbox": _bbox,
                                       "area": _number, "iscrowd": _iscrowd}
CATEGORY_FIELDS: dict[str, Check] = {"id": _int, "name": _string}


def _where(section: str, index: int, record: Any) -> str:
    """How examples name a record: `annotations[12] (id 907)`."""
    if isinstance(record, dict) and _is_int(record.get("id")):
        return f"{section}[{index}] (id {record['id']})"
    return f"{section}[{index}]"


def _fields(report: ValidationReport, section: str, index: int, record: Any,
            spec: dict[str, Check]) -> set[str] | None:
    """Report missing or ill-typed keys of one record; the keys that passed (None: not a dict)."""
    where = _where(section, index, record)
    if not isinstance(record, dict):
        report.add("wrong_type", f"{where}: should be an object, got {_show(record)}")
        return None
    good = set()
    for key, check in spec.items():
        if key not in record:
            report.add("missing_key", f"{where}: no '{key}'")
            continue
        problem = check(record[key])
        if problem:
            report.add(problem[0], f"{where}: '{key}' {problem[1]}")
        else:
            good.add(key)
    return good


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- sections ---

@dataclass
class _ImageRecord:
    where: str
    file_name: str | None
    width: int | None
    height: int | None


def _check_images(report: ValidationReport, images: list | None) -> dict[int, _ImageRecord] | None:
    """Field checks and duplicate ids/files; the image records by id, the first one of an id
    (None: no usable list)."""
    if images is None:
        return None
    by_id: dict[int, _ImageRecord] = {}
    first_index: dict[int, int] = {}
    file_users: dict[str, str] = {}
    for i, record in enumerate(images):
        good = _fields(report, "images", i, record, IMAGE_FIELDS)
        if good is None or "id" not in good:
            continue
        where = _where("images", i, record)
        image_id = record["id"]
        if image_id in first_index:
            report.add("duplicate_image_id",
                       f"{where}: id {image_id} is also used by images[{first_index[image_id]}]")
            continue
        first_index[image_id] = i
        file_name = record["file_name"] if "file_name" in good else None
        if file_name is not None:
            if file_name in file_users:
                report.add("duplicate_file_name",
                           f"{where}: 'file_name' {file_name!r} is also used by {file_users[file_name]}")
            file_users.setdefault(file_name, where)
        by_id[image_id] = _ImageRecord(where, file_name, record["width"] if "width" in good else None,
                                       record["height"] if "height" in good else None)
    return by_id


def used_category_ids(annotations: Any) -> set:
    """The category_id values that annotations use."""
    if not isinstance(annotations, list):
        return set()
    return {a.get("category_id") for a in annotations if isinstance(a, dict)
            and isinstance(a.get("category_id"), (int, str))}


def left_out_categories(categories: list, used: set) -> dict[int, str]:
    """Categories that no annotation uses and whose name another category carries: {id: why}.
    Labelling services export the project's name as such a category (often id 0, supercategory
    "none"); training and evaluation leave them out, so a class name stays unambiguous. Where
    no category of the name is used, the first one stays."""
    by_name: dict[str, list[dict]] = {}
    for record in categories:
        if isinstance(record, dict) and _is_int(record.get("id")) and isinstance(record.get("name"), str):
            by_name.setdefault(record["name"], []).append(record)
    out = {}
    for name, group in by_name.items():
        if len(group) < 2:
            continue
        kept = [r for r in group if r["id"] in used] or group[:1]
        for record in group:
            if record not in kept:
                out[record["id"]] = (f"no annotation uses it and category id {kept[0]['id']} "
                                     f"is also named {name!r}")
    return out


def _check_categories(report: ValidationReport, categories: list | None, used: set) -> set[int] | None:
    """Field checks, duplicates and id 0; the category ids (None: no usable list)."""
    if categories is None:
        return None
    ids: dict[int, str] = {}
    names: dict[str, str] = {}
    left_out = report.left_out_categories = left_out_categories(categories, used)
    for i, record in enumerate(categories):
        good = _fields(report, "categories", i, record, CATEGORY_FIELDS)
        if good is None:
            continue
        where = _where("categories", i, record)
        if "id" in good:
            cid = record["id"]
            if cid in ids:
                report.add("duplicate_category_id", f"{where}: id {cid} is also used by {ids[cid]}")
            else:
                ids[cid] = where
            if cid == 0:
                report.add("category_id_zero", f"{where}: 'id' is 0")
        if "name" in good:
            name = record["name"]
            if "id" in good and record["id"] in left_out:
                report.add("unused_duplicate_category", f"{where}: 'name' {name!r}: "
                                                        f"{left_out[record['id']]}")
            elif name in names:
                report.add("duplicate_category_name",
                           f"{where}: 'name' {name!r} is also used by {names[name]}, and annotations "
                           "use both: give each class one id, or rename one")
            else:
                names[name] = where
    return set(ids)


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


# --- image files ---

def missing_file_hint(folder: Path, file_name: str) -> str:
    """What to change when `file_name` is not under `folder` but its base name is: labelling
    tools often write a sub-folder prefix (`images/x.jpg`, `val2017/x.jpg`). '' otherwise."""
    parts = [p for p in re.split(r"[\\/]", file_name) if p]
    base = parts[-1] if parts else file_name
    if base == file_name or not (folder / base).is_file():
        return ""
    prefix = parts[:-1]
    hint = (f"; found as {base} directly in {folder}: strip the prefix "
            f"{'/'.join(prefix) + '/'!r} from the 'file_name' fields")
    if prefix and len(prefix) < len(folder.parts) and list(folder.parts[-len(prefix):]) == prefix:
        hint += (f", or give the folder that holds {'/'.join(prefix)}/ as the images folder: "
                 f"{folder.parents[len(prefix) - 1]}")
    return hint


def _check_files(report: ValidationReport, images: dict[int, _ImageRecord], progress: bool) -> None:
    """Open and decode each listed image (the loader reads with PIL too): present, a whole
    image, the right size. About 2 ms per COCO image."""
    folder = report.images
    if not folder.is_dir():
        report.add("image_dir_not_found", f"{folder}: no such folder")
        return
    report.images_checked = True
    records = [r for r in images.values() if r.file_name is not None]
    for record in tqdm(records, desc="validate images", unit="img", leave=False,
                       disable=None if progress else True):
        path = folder / record.file_name
        if not path.is_file():
            report.add("image_missing_on_disk", f"{record.where}: 'file_name' {record.file_name!r} "
                                                f"is not in {folder}{missing_file_hint(folder, record.file_name)}")
            continue
        try:
            with Image.open(path) as im:
                size = im.size
                # decode it all, as training will (a truncated file has a good header); a JPEG
                # at 1/8 scale, which reads every byte at a fraction of the cost
                im.draft("RGB", (max(size[0] // 8, 1), max(size[1] // 8, 1)))
                im.load()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            report.add("image_unreadable", f"{record.where}: 'file_name' {path} ({exc})")
            continue
        if record.width is not None and record.height is not None \
                and size != (record.width, record.height):
            report.add("image_size_mismatch",
                       f"{record.where}: 'file_name' {path} is {size[0]}x{size[1]} pixels but "
                       f"'width' x 'height' say {record.width}x{record.height}")
