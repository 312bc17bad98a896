"""`pep data coco`: download, resume, md5, safe extraction and idempotence, against a local
HTTP server serving zips in COCO's own archive layout, built from tiny_coco."""

from __future__ import annotations

import filecmp
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import TINY_COCO
from pep.cli import main
from pep.config import PROJECT_ROOT, load_params
from pep.data import download as dl
from pep.data.download import COCO_2017_MD5, download_files, extract_zip
from pep.errors import PepError

TEST_DEV_IDS = 3  # val images re-used as a tiny test-dev


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves the server's folder with Range support; can cut a response off halfway."""

    def do_GET(self):
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        path = srv.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and not srv.ignore_range:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if name in srv.cut_next:  # a dropped connection: half the promised bytes, then close
            srv.cut_next.discard(name)
            body = body[:len(body) // 2]
        self.wfile.write(body)
        srv.bytes_sent[name] = srv.bytes_sent.get(name, 0) + len(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict:
    """Zips laid out as COCO publishes them, under served/ at COCO's relative paths, and
    their md5s. Names get a `tiny_` prefix: the official names' md5s are facts we keep."""
    served = tmp_path_factory.mktemp("served")
    val = json.loads((TINY_COCO / "annotations" / "instances_val2017.json").read_text())
    test_dev_images = val["images"][:TEST_DEV_IDS]
    info = {"images": test_dev_images, "categories": val["categories"], "info": val.get("info", {}),
            "licenses": val.get("licenses", [])}
    layout = {
        "zips/tiny_val2017.zip": {f"val2017/{p.name}": p for p in sorted((TINY_COCO / "val2017").iterdir())},
        "zips/tiny_test2017.zip": {f"test2017/{im['file_name']}": TINY_COCO / "val2017" / im["file_name"]
                                   for im in test_dev_images},
        "annotations/tiny_annotations_trainval2017.zip": {
            f"annotations/instances_{s}2017.json": TINY_COCO / "annotations" / f"instances_{s}2017.json"
            for s in ("train", "val")},
        "annotations/tiny_image_info_test2017.zip": {
            "annotations/image_info_test-dev2017.json": json.dumps(info),
            "annotations/image_info_test2017.json": json.dumps(info)},
    }
    md5 = {}
    for name, members in layout.items():
        path = served / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for arcname, source in members.items():
                if isinstance(source, Path):
                    zf.write(source, arcname)
                else:
                    zf.writestr(arcname, source)
        md5[name] = hashlib.md5(path.read_bytes()).hexdigest()
    return {"root": served, "md5": md5}


@pytest.fixture
def server(archives):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.root, srv.requests, srv.bytes_sent = archives["root"], [], {}
    srv.cut_next, srv.ignore_range = set(), False
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


VAL = "zips/tiny_val2017.zip"


def test_official_table_is_design_md():
    assert COCO_2017_MD5["zips/val2017.zip"] == "442b8da7639aecaf257c1dceb8ba8c80"
    assert COCO_2017_MD5["annotations/image_info_test2017.zip"] == "85da7065e5e600ebfee8af1edb634eb5"
    assert len(COCO_2017_MD5) == 5
    with pytest.raises(PepError, match="official COCO file"):
        dl.checksums({"zips/val2017.zip": "0" * 32})


def test_full_download_then_nothing_to_do(server, archives, tmp_path):
    out = tmp_path / "coco"
    lines = []
    outcomes = download_files(archives["md5"], server.url, out, keep_archives=False, progress=False,
                              report=lines.append)
    assert sorted(o.name for o in outcomes) == sorted(archives["md5"])
    assert all(o.extracted and o.downloaded > 0 for o in outcomes)
    cmp = filecmp.dircmp(TINY_COCO / "val2017", out / "val2017")
    assert not cmp.left_only and not cmp.right_only and len(cmp.same_files) == 50
    assert filecmp.cmpfiles(TINY_COCO / "val2017", out / "val2017", cmp.same_files, shallow=False)[0] \
        == cmp.same_files
    for split in ("train", "val"):
        name = f"annotations/instances_{split}2017.json"
        assert (out / name).read_bytes() == (TINY_COCO / name).read_bytes()
    # both annotation archives share annotations/: the second merged into the first
    assert (out / "annotations" / "image_info_test-dev2017.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["annotations", "downloads", "test2017", "val2017"]
    leftovers = [p for p in (out / "downloads").rglob("*") if p.suffix in (".part", ".zip", ".bad")]
    assert leftovers == []  # keep_archives=False, nothing half-done
    assert len(server.requests) == 4

    server.requests.clear()
    lines.clear()
    again = download_files(archives["md5"], server.url, out, keep_archives=False, progress=False,
                           report=lines.append)
    assert server.requests == []
    assert not any(o.extracted or o.downloaded for o in again)
    assert all("nothing to do" in line for line in lines) and len(lines) == 4

    # test-dev: images in test2017/, ids from image_info_test-dev2017.json, as the coco profile says
    from pep.data.coco import build_dataset

    cfg = load_params(PROJECT_ROOT / "params.yaml", profile="coco")
    cfg["data"]["root"] = str(out)  # absolute: resolve_data_path keeps it as it is
    cfg["data"]["input"].update(test_min_size=64, max_size=96)
    test_dev = build_dataset(cfg, "test-dev")
    assert len(test_dev) == TEST_DEV_IDS
    image, target = test_dev[0]
    assert image.shape[0] == 3 and len(target["labels"]) == 0


def test_dropped_connection_resumes_with_range(server, archives, tmp_path):
    out = tmp_path / "coco"
    files = {VAL: archives["md5"][VAL]}
    size = (archives["root"] / VAL).stat().st_size
    server.cut_next.add(VAL)
    with pytest.raises(PepError, match="run the command again to resume"):
        download_files(files, server.url, out, progress=False, retries=0, report=lambda _: None)
    part = out / "downloads" / (VAL + ".part")
    assert part.stat().st_size == size // 2
    assert not (out / "val2017").exists()

    outcomes = download_files(files, server.url, out, progress=False, report=lambda _: None)
    assert server.requests == [(VAL, None), (VAL, f"bytes={size // 2}-")]
    assert server.bytes_sent[VAL] == size  # half, then the other half: not 1.5 times the file
    assert outcomes[0].resumed_from == size // 2 and outcomes[0].downloaded == size - size // 2
    assert len(list((out / "val2017").iterdir())) == 50
    assert not part.exists()


def test_dropped_connection_retried_in_the_same_run(server, archives, tmp_path, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    server.cut_next.add(VAL)
    size = (archives["root"] / VAL).stat().st_size
    download_files({VAL: archives["md5"][VAL]}, server.url, tmp_path, progress=False, retries=2,
                   report=lambda _: None)
    assert [r for _, r in server.requests] == [None, f"bytes={size // 2}-"]
    assert server.bytes_sent[VAL] == size


def test_server_ignoring_range_restarts_cleanly(server, archives, tmp_path):
    server.ignore_range = True
    part = tmp_path / "downloads" / (VAL + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from another file")
    download_files({VAL: archives["md5"][VAL]}, server.url, tmp_path, progress=False,
                   report=lambda _: None)
    assert server.requests[0][1] == "bytes=29-"  # asked to resume; got the whole file (200)
    assert len(list((tmp_path / "val2017").iterdir())) == 50


def test_checksum_mismatch_is_named_and_nothing_extracted(server, archives, tmp_path):
    actual = archives["md5"][VAL]
    wrong = "0" * 32
    with pytest.raises(PepError) as err:
        download_files({VAL: wrong}, server.url, tmp_path, progress=False, report=lambda _: None)
    message = str(err.value)
    assert "tiny_val2017.zip" in message and wrong in message and actual in message
    assert not (tmp_path / "val2017").exists()
    assert not (tmp_path / "downloads" / VAL).exists()  # never under its verified name
    assert (tmp_path / "downloads" / (VAL + ".bad")).is_file()
    # the next run downloads it afresh
    server.requests.clear()
    download_files({VAL: actual}, server.url, tmp_path, progress=False, report=lambda _: None)
    assert server.requests == [(VAL, None)]
    assert (tmp_path / "val2017").is_dir()


def test_crash_during_extraction_leaves_no_half_folder(server, archives, tmp_path, monkeypatch):
    files = {VAL: archives["md5"][VAL]}
    original = zipfile.ZipFile.extract
    calls = []

    def crashing(self, member, path=None, pwd=None):
        calls.append(member)
        if len(calls) == 20:
            raise KeyboardInterrupt  # as a user's Ctrl-C in the middle of unpacking
        return original(self, member, path, pwd)

    monkeypatch.setattr(zipfile.ZipFile, "extract", crashing)
    with pytest.raises(KeyboardInterrupt):
        download_files(files, server.url, tmp_path, progress=False, report=lambda _: None)
    assert not (tmp_path / "val2017").exists()
    assert not list((tmp_path / "downloads").rglob("*.extracted"))
    monkeypatch.setattr(zipfile.ZipFile, "extract", original)
    server.requests.clear()
    outcomes = download_files(files, server.url, tmp_path, progress=False, report=lambda _: None)
    assert server.requests == []  # the verified archive was kept: re-checked, not re-fetched
    assert outcomes[0].extracted and len(list((tmp_path / "val2017").iterdir())) == 50
    assert not list(tmp_path.glob(".extract-*"))


@pytest.mark.parametrize("evil", ["../evil.txt", "val2017/../../evil.txt", "/tmp/pep_abs_evil.txt",
                                  "..\\evil.txt"])
def test_zip_slip_refused(tmp_path, evil):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("val2017/fine.jpg", b"fine")
        zf.writestr(evil, b"owned")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PepError, match="refusing to extract") as err:
        extract_zip(archive, out, progress=False)
    assert repr(evil) in str(err.value)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/pep_abs_evil.txt").exists()


def test_cli_end_to_end(server, archives, tmp_path, capsys):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"]["download"].update(files=list(archives["md5"]), md5=archives["md5"])
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "coco"
    argv = ["data", "coco", "--params", str(params_file), "--mirror", server.url, "--out", str(out), "-q"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "4 archive(s) ready" in first and "extracted 4 archive(s)" in first
    assert main(["data", "validate", "--annotations", str(out / "annotations" / "instances_val2017.json"),
                 "--images", str(out / "val2017"), "-q"]) == 0
    capsys.readouterr()
    server.requests.clear()
    assert main(argv) == 0
    assert "already in place" in capsys.readouterr().out and server.requests == []


def test_cli_on_the_synthetic_profile_says_so(capsys):
    assert main(["data", "coco", "--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "default"]) == 2
    err = capsys.readouterr().err
    assert "data.source synth" in err and "--profile coco" in err
    assert main(["data", "coco", "--params", str(PROJECT_ROOT / "params.yaml"), "--files", "zips/nope.zip",
                 "--out", "unused"]) == 2
    assert "no md5 known for zips/nope.zip" in capsys.readouterr().err


def test_the_data_stage_downloads_coco_then_finds_it_in_place(server, archives, tmp_path):
    """`pep data prepare` (the pipeline's data stage) on the coco profile: a download from the
    mirror named in params, then, on the next run, nothing fetched."""
    from pep.config import load_params
    from pep.data.prepare import prepare

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["profile"] = "coco"
    coco = params["profiles"]["coco"]["data"]
    coco.update(root=str(tmp_path / "coco"), train_images="val2017")  # the served set has no train2017
    coco["download"] = {**coco.get("download", {}), "files": list(archives["md5"]), "md5": archives["md5"],
                        "mirror": server.url}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_params(tmp_path / "params.yaml")
    first = prepare(cfg, progress=False)
    assert "4 archive(s) ready" in first["done"] and (tmp_path / "coco" / "val2017").is_dir()
    manifest = json.loads((tmp_path / "data" / "coco" / "manifest.json").read_text())
    assert manifest["root"] == str(tmp_path / "coco")  # outside data/coco: pointed at
    server.requests.clear()
    assert "found in place" in prepare(cfg, progress=False)["done"] and server.requests == []
