"""Trained models people can use: each training logs and registers an MLflow model that loads by
its URI alone, in a fresh process of a moved project, and `pep predict --images` segments a
folder of one's own images (any mode, EXIF-rotated, broken files among them) into results that
pycocotools scores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from conftest import ENV, TINY_COCO, make_project, pep, refused
from pep.config import load_params
from pep.data.coco import CocoInstances, InputSize
from pep.engine.evaluate import predict
from pep.inference import read_image
from pep.engine.train import load_trained
from pep.evaluation import evaluate

TINY_VAL_IMAGES = TINY_COCO / "val2017"
TINY_VAL = TINY_COCO / "annotations" / "instances_val2017.json"
RESULT_KEYS = {"file_name", "width", "height", "category_id", "category_name", "score", "segmentation", "bbox"}


def ok(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = pep(*args, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory, small_synth) -> Path:
    """A project with `pep` trained (12 iterations), tracked in its own sqlite store with
    system metrics sampled every second."""
    params = make_project(tmp_path_factory.mktemp("models") / "project", small_synth, epochs=2)
    raw = yaml.safe_load(params.read_text())
    raw["tracking"]["system_metrics_interval_s"] = 1
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = ok("train", "--params", str(params), "--variant", "pep", "--seed", "0", cwd=params.parent).stdout
    assert "(MLflow: models:/pep-pep/1)" in out
    return params.parent


@pytest.fixture(scope="module")
def some_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for path in sorted(TINY_VAL_IMAGES.glob("*.jpg"))[:6]:
        shutil.copy(path, folder / path.name)
    return folder


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_training_logs_and_registers_its_model_with_system_metrics(project):
    c = client(project)
    experiment = c.get_experiment_by_name("pep")
    assert experiment.artifact_location == "pep-artifacts:mlartifacts"  # relative to the store
    (run,) = c.search_runs([experiment.experiment_id])
    assert run.info.artifact_uri.startswith("pep-artifacts:mlartifacts/")
    (version,) = c.search_model_versions("name = 'pep-pep'")
    assert int(version.version) == 1 and version.run_id == run.info.run_id
    assert version.tags["variant"] == "pep" and version.tags["seed"] == "0"
    assert version.tags["params_hash"] == run.data.tags["params_hash"]
    (logged,) = c.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert logged.name == "model" and logged.source_run_id == run.info.run_id
    model_dir = project / "mlartifacts" / "models" / logged.model_id / "artifacts"
    described = json.loads((model_dir / "artifacts" / "pep_model.json").read_text())
    assert described["variant"] == "pep" and described["class_names"] == ["circle", "square", "triangle", "star"]
    assert described["settings"]["model"]["fpn_channels"] == 64 and (model_dir / "code" / "pep" / "cli.py").exists()
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    assert "python_function" in mlmodel["flavors"] and mlmodel["signature"]["params"]
    assert (model_dir / "serving_input_example.json").exists()
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in run.data.metrics, sorted(run.data.metrics)


def test_the_model_loads_by_uri_alone_in_a_fresh_process_of_a_moved_project(project, some_images, tmp_path):
    ok("predict", "--variant", "pep", "--images", str(some_images), "--out", "from_runs",
       "--score-threshold", "0", cwd=project)
    expected = json.loads((project / "from_runs" / "results.json").read_text())
    assert expected, "the tiny model found nothing to compare"

    moved = tmp_path / "moved"
    shutil.copytree(project, moved)
    away = project.with_name(project.name + ".away")
    project.rename(away)  # nothing may still point into the old folder
    try:
        script = (
            "import json, sys, mlflow, pandas as pd\n"
            "model = mlflow.pyfunc.load_model('models:/pep-pep/1')\n"
            "files = sys.argv[1:]\n"
            "frame = model.predict(pd.DataFrame({'image': [open(f, 'rb').read() for f in files]}),\n"
            "                      params={'score_threshold': 0.0})\n"
            "print(frame.to_json(orient='records'))\n")
        files = sorted(str(p) for p in some_images.iterdir())
        env = {**ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{moved / 'mlflow.db'}"}
        proc = subprocess.run([sys.executable, "-c", script, *files], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        ok("predict", "--model", "models:/pep-pep/1", "--images", str(some_images), "--out", "from_mlflow",
           "--score-threshold", "0", cwd=moved)
        from_mlflow = (moved / "from_mlflow" / "results.json").read_text()
    finally:
        away.rename(project)

    assert from_mlflow == (project / "from_runs" / "results.json").read_text()
    names = [Path(f).name for f in files]
    got = [(names[r["image"]], r["category_id"], r["rle"], round(r["score"], 5), r["width"], r["height"])
           for r in rows]
    want = [(r["file_name"], r["category_id"], r["segmentation"]["counts"], round(r["score"], 5), r["width"],
             r["height"]) for r in expected]
    assert got == want


def test_predict_images_on_tiny_coco_is_what_evaluation_sees_and_pycocotools_scores(project, tmp_path):
    out = ok("predict", "--variant", "pep", "--images", str(TINY_VAL_IMAGES), "--out", str(tmp_path / "out"),
             "--score-threshold", "0", cwd=project).stdout
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    overlays = sorted(p.stem for p in (tmp_path / "out" / "overlays").iterdir())
    assert overlays == sorted(p.stem for p in TINY_VAL_IMAGES.glob("*.jpg")) and len(overlays) == 50
    assert f"{len(records)} instances" in out and "on 50 images" in out
    assert records and all(set(r) == RESULT_KEYS for r in records)
    assert {r["category_name"] for r in records} <= {"circle", "square", "triangle", "star"}

    gt = json.loads(TINY_VAL.read_text())
    image_of = {img["file_name"]: img for img in gt["images"]}
    results = []
    for r in records:
        image = image_of[r["file_name"]]
        assert (r["width"], r["height"]) == (image["width"], image["height"])
        results.append({"image_id": image["id"], "category_id": r["category_id"],
                        "segmentation": r["segmentation"], "score": r["score"]})

    # the same model through the path `pep evaluate` scores (one image per batch: same padding)
    cfg = load_params(project / "params.yaml")
    cfg["evaluate"]["batch_size"] = 1
    model, _ = load_trained(cfg, "pep", 0)
    dataset = CocoInstances(TINY_VAL, TINY_VAL_IMAGES, InputSize.from_params(cfg["data"]["input"], train=False),
                            train=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `pep` ran (OMP_NUM_THREADS=1): sums in the same order
    try:
        reference, _ = predict(model, dataset, cfg, torch.device("cpu"), progress=False)
    finally:
        torch.set_num_threads(threads)
    key = lambda r: (r["image_id"], r["category_id"], r["segmentation"]["counts"], round(r["score"], 5))  # noqa: E731
    assert sorted(map(key, results)) == sorted(map(key, reference))

    ours = evaluate(TINY_VAL, results, "segm")["stats"]
    assert ours == evaluate(TINY_VAL, reference, "segm")["stats"]
    assert len(ours) == 12 and all(-1 <= s <= 1 for s in ours.values())


def _exif_rotated_jpeg(path: Path) -> None:
    """80 x 60 stored, with EXIF orientation 6: shown upright as 60 x 80."""
    pixels = np.zeros((60, 80, 3), np.uint8)
    pixels[10:30, 10:50] = (200, 40, 40)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif)


def test_any_image_is_segmented_and_an_unreadable_one_is_named(project, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    rgb = np.asarray(Image.open(sorted(TINY_VAL_IMAGES.glob("*.jpg"))[0]).convert("RGB"))[:120, :160]
    Image.fromarray(rgb).convert("L").save(folder / "grey.jpg")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / "alpha.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(folder / "deep.png")  # 16-bit grey
    _exif_rotated_jpeg(folder / "rotated.JPG")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")

    proc = pep("predict", "--variant", "pep", "--images", str(folder), "--out", str(tmp_path / "out"),
               cwd=project, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # done, but not everything
    assert "Traceback" not in proc.stderr
    assert f"skipped {folder / 'broken.jpg'}: not a readable image" in proc.stderr
    assert "on 5 images" in proc.stdout
    overlays = {p.name: Image.open(p).size for p in (tmp_path / "out" / "overlays").iterdir()}
    assert overlays == {"grey.png": (160, 120), "alpha.png": (160, 120), "palette.png": (160, 120),
                        "deep.png": (160, 120), "rotated.png": (60, 80)}
    assert read_image(folder / "rotated.JPG").shape == (80, 60, 3)  # upright, as a viewer shows it
    assert read_image(folder / "deep.png").max() == 255 and read_image(folder / "alpha.png").dtype == np.uint8
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert all(r["score"] >= 0.3 for r in records)  # the default threshold
    assert {r["file_name"] for r in records} <= {"grey.jpg", "alpha.png", "palette.png", "deep.png", "rotated.JPG"}


def test_predict_images_takes_one_file_a_glob_or_several_sources(project, some_images, tmp_path):
    files = sorted(some_images.glob("*.jpg"))
    single = tmp_path / "single"
    out = ok("predict", "--variant", "pep", "--images", str(files[0]), "--out", str(single),
             "--score-threshold", "0", cwd=project).stdout
    assert "on 1 images" in out and [p.name for p in (single / "overlays").iterdir()] == [f"{files[0].stem}.png"]
    from_folder = {}
    ok("predict", "--variant", "pep", "--images", str(some_images), "--out", str(tmp_path / "folder"),
       "--score-threshold", "0", cwd=project)
    for r in json.loads((tmp_path / "folder" / "results.json").read_text()):
        from_folder.setdefault(r["file_name"], []).append(r)
    assert json.loads((single / "results.json").read_text()) == from_folder.get(files[0].name, [])

    # a glob pep expands itself (quoted from the shell), a file it also matches, and a second folder
    other = tmp_path / "more"
    other.mkdir()
    shutil.copy(files[1], other / files[1].name)  # the same name as an image of the first folder
    globbed = tmp_path / "globbed"
    out = ok("predict", "--variant", "pep", "--images", str(some_images / "*.jpg"), str(files[2]), str(other),
             "--out", str(globbed), "--score-threshold", "0", cwd=project).stdout
    assert f"on {len(files) + 1} images" in out  # files[2] twice is done once
    names = {r["file_name"] for r in json.loads((globbed / "results.json").read_text())}
    below = Path(os.path.commonpath([some_images, other]))  # the folder both lie in
    assert names <= {(some_images / f.name).relative_to(below).as_posix() for f in files} | \
        {(other / files[1].name).relative_to(below).as_posix()}
    assert len(names) > 1
    overlays = {p.name for p in (globbed / "overlays").iterdir()}
    assert len(overlays) == len(files) + 1
    assert f"{files[0].stem}.png" in overlays and \
        (other / files[1].name).relative_to(below).as_posix().replace("/", "__").replace(".", "_") + ".png" in overlays

    refused("predict", "--variant", "pep", "--images", str(some_images / "*.tiff"), "--out", str(tmp_path / "o"),
            cwd=project, names=(str(some_images / "*.tiff"), "matches no JPEG or PNG file"))
    assert not (tmp_path / "o" / "results.json").exists()


def test_predict_images_refuses_what_it_cannot_do_in_one_message(project, some_images, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    refused("predict", "--variant", "pep", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o"),
            cwd=project, names=(str(tmp_path / "empty"), "no JPEG or PNG"))
    refused("predict", "--variant", "pep", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
            cwd=project, names=(str(tmp_path / "nowhere"), "no such image file or folder"))
    refused("predict", "--variant", "baseline", "--images", str(some_images), "--out", str(tmp_path / "o"),
            cwd=project, names=("runs/baseline/seed0/model_final.pt", "pep train --variant baseline"))
    refused("predict", "--model", "models:/pep-nothing/1", "--images", str(some_images), "--out",
            str(tmp_path / "o"), cwd=project, names=("models:/pep-nothing/1",))
    refused("predict", "--variant", "pep", "--model", "models:/pep-pep/1", "--images", str(some_images),
            "--out", str(tmp_path / "o"), cwd=project, names=("--variant", "--model"))
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["model"]["fpn_channels"] = 32
    (project / "other.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))  # outputs beside it: runs/
    refused("predict", "--params", "other.yaml", "--variant", "pep", "--images", str(some_images), "--out",
            str(tmp_path / "o"), cwd=project, names=("model.fpn_channels: 64 when trained, 32 now",))
    assert not (tmp_path / "o" / "results.json").exists()
