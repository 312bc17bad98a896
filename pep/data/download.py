"""`pep data coco`: download, verify and unpack COCO 2017, resumably and safely.

The steps for each archive, in this order, each one skipped when its result is already there:

1. download to `<out>/downloads/<name>.part`, resuming a partial file with an HTTP Range
   request (a server that ignores Range and answers 200 makes us start again from byte 0), and
   retrying a dropped connection from where it stopped;
2. check the md5 of the complete file as it lies on disk; a mismatch moves the file aside to
   `<name>.bad` and stops with both checksums, so that the next run downloads it afresh and
   nothing from it is ever extracted; only a verified file gets its final name
   `<out>/downloads/<name>`;
3. check every member's path (none may land outside `<out>`), unpack into a temporary folder
   beside the target and rename the archive's top-level folders into place, so that
   `train2017/` appears only once complete; then write `<name>.extracted`, the marker that makes
   a second run skip the archive.

The md5 table below is the official one (DESIGN.md section 3); params.yaml only chooses names
(`data.download.files`) and may add checksums of further files (`data.download.md5`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from pep.errors import PepError
from pep.jsonfile import write_json_atomic

log = logging.getLogger(__name__)

COCO_HOST = "http://images.cocodataset.org"

# name (path relative to the host) -> md5, as published with COCO 2017
COCO_2017_MD5: dict[str, str] = {
    "zips/train2017.zip": "cced6f7f71b7629ddf16f17bbcfab6b2",
    "zips/val2017.zip": "442b8da7639aecaf257c1dceb8ba8c80",
    "zips/test2017.zip": "77ad2c53ac5d0aea611d422c0938fb35",
    "annotations/annotations_trainval2017.zip": "f4bbac642086de4f52a3fdda2de5fa2c",
    "annotations/image_info_test2017.zip": "85da7065e5e600ebfee8af1edb634eb5",
}

DOWNLOADS = "downloads"          # under the target folder: archives, .part files, markers
CHUNK = 1 << 20
TIMEOUT_S = 60                   # per socket operation, not per file


@dataclass
class FileOutcome:
    """What happened to one archive: `downloaded` bytes fetched this run (0: none),
    `extracted` whether it was unpacked this run, `entries` its top-level names."""

    name: str
    downloaded: int = 0
    resumed_from: int = 0
    extracted: bool = False
    entries: list[str] = field(default_factory=list)


def checksums(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The official table plus `extra` (data.download.md5); an official checksum cannot be
    changed, since it is a fact about COCO's files."""
    table = dict(COCO_2017_MD5)
    for name, md5 in (extra or {}).items():
        if name in table and table[name] != md5.lower():
            raise PepError(f"data.download.md5: {name} is an official COCO file with md5 "
                           f"{table[name]}; remove the entry that says {md5}")
        table[name] = md5.lower()
    return table


def select_files(names: list[str], table: dict[str, str]) -> dict[str, str]:
    """{name: md5} for `names`, each of which must have a known checksum."""
    unknown = [n for n in names if n not in table]
    if unknown:
        raise PepError(f"data.download.files: no md5 known for {', '.join(unknown)} "
                       f"(known: {', '.join(table)}); add it under data.download.md5")
    return {name: table[name] for name in names}


def download_files(files: dict[str, str], base_url: str, out: str | Path, *,
                   keep_archives: bool = True, progress: bool = True, retries: int = 5,
                   report=print) -> list[FileOutcome]:
    """Fetch `<base_url>/<name>` for each name of `files` ({name: md5}), verify and unpack it
    into `out`. Safe to rerun after any failure: it picks up where it stopped.

    `report` receives one line per archive saying what was done (or that nothing was needed).
    """
    out = Path(out)
    if not base_url.startswith(("http://", "https://", "file://")):
        raise PepError(f"mirror {base_url!r}: expected a base URL starting with http://, https:// "
                       "or file://")
    base_url = base_url.rstrip("/")
    (out / DOWNLOADS).mkdir(parents=True, exist_ok=True)
    outcomes = []
    for name, md5 in files.items():
        outcome = FileOutcome(name)
        archive = out / DOWNLOADS / name
        marker = archive.with_name(archive.name + ".extracted")
        done = _read_marker(marker)
        if done and done.get("md5") == md5 and all((out / e).exists() for e in done["entries"]):
            outcome.entries = done["entries"]
            report(f"{name}: already extracted ({', '.join(e + '/' for e in done['entries'])} "
                   f"in {out}); nothing to do")
            outcomes.append(outcome)
            continue
        if archive.is_file():
            _verify_existing(archive, md5, progress)
        else:
            outcome.downloaded, outcome.resumed_from = _download(
                f"{base_url}/{name}", archive, md5, progress=progress, retries=retries)
        outcome.entries = extract_zip(archive, out, progress=progress)
        outcome.extracted = True
        write_json_atomic(marker, {"md5": md5, "entries": outcome.entries})
        if not keep_archives:
            archive.unlink()
        fetched = (f"downloaded {human_size(outcome.downloaded)}"
                   + (f" (resumed at {human_size(outcome.resumed_from)})" if outcome.resumed_from else "")
                   if outcome.downloaded else "archive already downloaded")
        report(f"{name}: {fetched}, md5 ok, extracted {', '.join(e + '/' for e in outcome.entries)}")
        outcomes.append(outcome)
    return outcomes


def _read_marker(marker: Path) -> dict | None:
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) and isinstance(done.get("entries"), list) else None


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --- download ---

class _Dropped(Exception):
    """The connection ended before the whole file arrived; worth another try."""

    def __init__(self, message: str, start: int = 0, written: int = 0):
        super().__init__(message)
        self.start, self.written = start, written


class _Refused(_Dropped):
    """Nothing listens at the address: worth another try only if a server answered there
    earlier in this run (it may be restarting); otherwise the address is wrong or down."""


def _verify_existing(archive: Path, md5: str, progress: bool) -> None:
    """An archive left by an earlier run that stopped before its extraction finished."""
    digest = hashlib.md5()
    with open(archive, "rb") as f, _bar(archive.name + " (md5)", archive.stat().st_size, 0, progress) as bar:
        while block := f.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    _check_md5(archive, md5, digest.hexdigest())


def _check_md5(path: Path, expected: str, actual: str) -> None:
    if actual == expected:
        return
    bad = path.with_name(path.name.removesuffix(".part") + ".bad")
    os.replace(path, bad)  # out of the way: the next run downloads afresh
    raise PepError(f"{path.name.removesuffix('.part')}: md5 mismatch, expected {expected}, got {actual}; nothing was "
                   f"extracted from it, it is kept as {bad} and the next run downloads it again")


def _bar(desc: str, total: int | None, initial: int, progress: bool) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, leave=False, disable=None if progress else True)


def _download(url: str, archive: Path, md5: str, *, progress: bool, retries: int) -> tuple[int, int]:
    """Download to `<archive>.part`, verify, rename to `archive`. Returns (bytes fetched this
    run, the offset the first request resumed from)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    part = archive.with_name(archive.name + ".part")
    fetched, first_offset = 0, None
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            start, written = _fetch_once(url, part, offset, progress)
            fetched += written
            first_offset = start if first_offset is None else first_offset
            break
        except _Dropped as exc:
            first_offset = exc.start if first_offset is None else first_offset
            fetched += exc.written
            kept = part.stat().st_size if part.exists() else 0
            if isinstance(exc, _Refused) and not fetched:
                raise PepError(f"{url}: cannot connect: {exc}; check --mirror / data.download.mirror "
                               "(nothing was downloaded)") from None
            if attempt == retries:
                raise PepError(f"{url}: {exc}, {retries + 1} tries; " + (
                    f"{kept} bytes are kept in {part}: run the command again to resume" if kept else
                    "nothing was downloaded: check the address and the network, then run it again")) from None
            wait = min(2 ** attempt, 30)
            log.warning("%s: %s; resuming in %d s (try %d of %d)", url, exc, wait, attempt + 2, retries + 1)
            time.sleep(wait)
    digest = hashlib.md5()
    with open(part, "rb") as f:  # the part as it is on disk: what gets extracted
        while block := f.read(CHUNK):
            digest.update(block)
    _check_md5(part, md5, digest.hexdigest())
    os.replace(part, archive)
    return fetched, first_offset or 0


def _fetch_once(url: str, part: Path, offset: int, progress: bool) -> tuple[int, int]:
    """One request: append to `part` from `offset` (or restart at 0 when the server sends the
    whole file). Returns (where it started, bytes written); raises _Dropped on a connection
    that broke off."""
    if url.startswith("file://"):  # a mirror on disk: say which file is missing, not "cannot connect"
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
        if not local.is_file():
            raise PepError(f"{url}: the file mirror has no {local.name} ({local} does not exist); "
                           "check --mirror / data.download.mirror")
    headers = {"User-Agent": "pep-reproduction"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: the part is already whole
            return offset, 0
        if exc.code >= 500:
            raise _Dropped(f"server error {exc.code} {exc.reason}") from None
        raise PepError(f"{url}: HTTP {exc.code} {exc.reason}"
                       + ("; check --mirror / data.download.mirror" if exc.code == 404 else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            raise _Refused(f"connection refused by {urllib.parse.urlparse(url).netloc}") from None
        if isinstance(reason, (socket.timeout, ConnectionError, TimeoutError)):
            raise _Dropped(f"connection failed ({reason})") from None
        raise PepError(f"{url}: cannot connect ({reason})") from None
    with response:
        status = getattr(response, "status", None) or 200
        if offset and status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise PepError(f"{url}: asked for bytes from {offset}, server sent {content_range!r}")
            mode = "ab"
        else:
            if offset:
                log.info("%s: the server ignored the Range request; downloading from the start", url)
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = offset + expected if expected is not None else None
        if total is not None:
            _need_space(part.parent, expected, f"downloading {part.name.removesuffix('.part')}")
        written = 0
        with open(part, mode) as f, _bar(part.name.removesuffix(".part"), total, offset, progress) as bar:
            try:
                while block := response.read(CHUNK):
                    f.write(block)
                    written += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, socket.timeout) as exc:
                raise _Dropped(f"connection dropped after {offset + written} bytes "
                               f"({type(exc).__name__})", offset, written) from None
    if expected is not None and written < expected:
        raise _Dropped(f"connection closed after {offset + written} of {total} bytes", offset, written)
    return offset, written


def _need_space(folder: Path, needed: int, doing: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise PepError(f"{folder}: {human_size(free)} free, {doing} needs {human_size(needed)}; free some "
                       "space or choose another folder with --out")


# --- extraction ---

def _member_problem(name: str) -> str | None:
    """Why a zip member may not be written (None: it may)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "is an absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "climbs out of the target folder with '..'"
    return None


def extract_zip(archive: str | Path, out: str | Path, progress: bool = True) -> list[str]:
    """Unpack `archive` into `out` through a temporary folder beside it; the top-level entries
    of the archive appear in `out` by renaming, each only once complete. Returns them sorted.

    Refuses the whole archive, before writing anything, if any member's path would resolve
    outside `out`.
    """
    archive, out = Path(archive), Path(out)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PepError(f"{archive}: not a readable zip archive ({exc})") from None
    with zf:
        members = zf.infolist()
        root = out.resolve()
        for member in members:
            problem = _member_problem(member.filename)
            resolved = (root / member.filename).resolve()
            if problem is None and resolved != root and root not in resolved.parents:
                problem = "resolves outside the target folder"
            if problem:
                raise PepError(f"{archive}: member {member.filename!r} {problem}; "
                               "refusing to extract this archive")
        entries = sorted({PurePosixPath(m.filename.replace("\\", "/")).parts[0]
                          for m in members if m.filename.strip("/")})
        if not entries:
            raise PepError(f"{archive}: the archive is empty")
        _need_space(out, sum(m.file_size for m in members), f"extracting {archive.name}")
        tmp = out / f".extract-{archive.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # the leftovers of a crashed run
        tmp.mkdir(parents=True)
        with _bar(f"extract {archive.name}", sum(m.file_size for m in members), 0, progress) as bar:
            for member in members:
                zf.extract(member, tmp)
                bar.update(member.file_size)
    for entry in entries:
        _move_into_place(tmp / entry, out / entry)
    shutil.rmtree(tmp, ignore_errors=True)
    return entries


def _move_into_place(src: Path, dest: Path) -> None:
    """Rename `src` to `dest`; a folder that exists already (annotations/, which two of COCO's
    archives share) receives the new files one rename at a time."""
    if src.is_dir() and dest.is_dir():
        for child in sorted(src.iterdir()):
            _move_into_place(child, dest / child.name)
    elif dest.is_dir():
        raise PepError(f"{dest}: is a folder, but the archive holds a file of that name")
    else:
        os.replace(src, dest)


def download_for_params(cfg: dict, out: Path, names: list[str] | None = None, mirror: str | None = None,
                        keep_archives: bool = False, progress: bool = True) -> list:
    """The archives that params ask for (data.download.files, or `names`), from the mirror that
    params or the caller name (else the official host), into `out`."""
    download = cfg["data"]["download"]
    files = select_files(names or download["files"], checksums(download["md5"]))
    return download_files(files, mirror or download["mirror"] or COCO_HOST, out,
                          keep_archives=keep_archives or download["keep_archives"], progress=progress)


def coco_command(cfg: dict, names: list[str] | None, out: Path | None, mirror: str | None,
                 keep_archives: bool, progress: bool = True) -> int:
    """`pep data coco`: the archives `names` (default: data.download.files) into `out` (default:
    data.root); refused for a profile that downloads nothing unless both are given."""
    from pep.config import resolve_data_path

    names = names or cfg["data"]["download"]["files"]
    source = cfg["data"]["source"]
    if not names or (source == "synth" and not out):
        raise PepError(f"profile '{cfg['profile']}' has data.source {source}"
                       + (", which `pep data synth` generates" if source == "synth" else "")
                       + (" and downloads nothing (data.download.files is empty)" if not names else "")
                       + "; for COCO 2017 run `pep data coco --profile coco`, or name the archives "
                         "with --files and the target folder with --out")
    out = out or resolve_data_path(cfg, "root")
    outcomes = download_for_params(cfg, out, names, mirror, keep_archives, progress=progress)
    fetched = sum(o.downloaded for o in outcomes)
    unpacked = sum(o.extracted for o in outcomes)
    print(f"{out}: {len(outcomes)} archive(s) ready; downloaded {human_size(fetched)}, extracted "
          f"{unpacked} archive(s)" + ("" if fetched or unpacked else " (all were already in place)"))
    return 0
