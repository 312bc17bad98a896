"""The `images` list and the image files it names: each record's id, file_name, width and
height, duplicate ids and file names (`_check_images`, which also gives the records by id for
the annotation and file checks), then, on disk, that each listed file is under the images
folder, decodes in full and has its record's size (`_check_files`; `missing_file_hint` says
what to change when a file_name carries a folder prefix the images folder lacks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pep.data.validate.fields import Check, _fields, _int, _positive_int, _string, _where
from pep.data.validate.findings import ValidationReport

IMAGE_FIELDS: dict[str, Check] = {"id": _int, "file_name": _string, "width": _positive_int,
                                  "height": _positive_int}


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
