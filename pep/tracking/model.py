"""A trained PEP model as an MLflow model: everything it needs travels with it.

`pep train` logs each (variant, seed) as an MLflow pyfunc model named `model` in its run and
registers it as `pep-<variant>` (pep.tracking.runs.Tracker.log_model). The model folder holds

  artifacts/model_final.pt   the weights (the file `pep train` wrote)
  artifacts/pep_model.json   variant, seed, the settings that build the network, the test-time
                             resize, the category ids and names

so that nothing but the URI is needed to use it, from any folder:

    model = mlflow.pyfunc.load_model("models:/pep-pep/1")     # or runs:/<run id>/model
    detections = model.predict(pd.DataFrame({"image": [open("photo.jpg", "rb").read()]}),
                               params={"score_threshold": 0.3})

Input: a DataFrame with a column `image` of encoded image files (JPEG or PNG bytes). Output: one
row per instance: `image` (the input row), width, height, category_id, category_name, score,
`rle` (COCO compressed RLE counts of a mask of height x width) and the box bbox_x, bbox_y,
bbox_w, bbox_h (COCO's [x, y, w, h]).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pep.errors import PepError
from pep.inference import Segmenter, read_image
from pep.stage_settings import model_settings
from pep.tracking.store import quiet_mlflow, tracking_uri

WEIGHTS = "weights"
DESCRIPTION = "description"
OUTPUT_COLUMNS = ("image", "width", "height", "category_id", "category_name", "score", "rle",
                  "bbox_x", "bbox_y", "bbox_w", "bbox_h")
DEFAULT_PARAMS = {"score_threshold": 0.0}


def description(cfg: dict, variant: str, seed: int, state: dict) -> dict:
    """What pep_model.json holds: enough to rebuild the network and its input pipeline."""
    inp = cfg["data"]["input"]
    return {"variant": variant, "seed": seed, "settings": model_settings(cfg, variant),
            "input": {k: inp[k] for k in ("test_min_size", "max_size", "size_divisibility")},
            "category_ids": [int(i) for i in state["category_ids"]],
            "class_names": list(state.get("class_names") or [str(i) for i in state["category_ids"]])}


def segmenter_from_files(weights: str | Path, described: dict, device: str = "cpu"):
    """A pep.inference.Segmenter from the two artifacts."""
    import torch

    from pep.model.detector import PEP

    variant = described["variant"]
    settings = described["settings"]
    model = PEP(settings["model"], settings[f"variants.{variant}"], described["category_ids"], variant=variant)
    state = torch.load(weights, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    return Segmenter(model.to(device), described["input"], described["class_names"], device)


def signature():
    """Input: encoded images; output: one row per instance; param: the score threshold."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    types = {"image": "long", "width": "long", "height": "long", "category_id": "long",
             "category_name": "string", "score": "double", "rle": "string", "bbox_x": "double",
             "bbox_y": "double", "bbox_w": "double", "bbox_h": "double"}
    return ModelSignature(inputs=Schema([ColSpec("binary", "image")]),
                          outputs=Schema([ColSpec(types[c], c) for c in OUTPUT_COLUMNS]),
                          params=ParamSchema([ParamSpec("score_threshold", "double",
                                                        DEFAULT_PARAMS["score_threshold"])]))


def requirements() -> list[str]:
    """The pip pins a model environment needs (the installed versions); `pep` itself travels
    with the model as code."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in
            ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pycocotools", "PyYAML",
             "tqdm", "jsonschema")]


def detections_frame(segmentations: list) -> pd.DataFrame:
    """The output rows of `predict` for pep.inference.Segmentation objects, one per input."""
    rows = []
    for index, seg in enumerate(segmentations):
        for record in seg.records(str(index)):
            x, y, w, h = record["bbox"]
            rows.append({"image": index, "width": record["width"], "height": record["height"],
                         "category_id": record["category_id"], "category_name": record["category_name"],
                         "score": record["score"], "rle": record["segmentation"]["counts"],
                         "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h})
    frame = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    return frame.astype({"image": "int64", "width": "int64", "height": "int64", "category_id": "int64",
                         "category_name": object, "score": "float64", "rle": object, "bbox_x": "float64",
                         "bbox_y": "float64", "bbox_w": "float64", "bbox_h": "float64"})


class PepPyfuncModel(mlflow.pyfunc.PythonModel):
    """The pyfunc flavour's entry point; see the module docstring for input and output."""

    def load_context(self, context) -> None:
        described = json.loads(Path(context.artifacts[DESCRIPTION]).read_text(encoding="utf-8"))
        self.segmenter = segmenter_from_files(context.artifacts[WEIGHTS], described)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        threshold = float((params or {}).get("score_threshold", DEFAULT_PARAMS["score_threshold"]))
        if "image" not in model_input:
            raise ValueError(f"expected a column 'image' of JPEG or PNG bytes, got columns {list(model_input)}")
        segmentations = []
        for index, data in enumerate(model_input["image"]):
            try:
                pixels = read_image(io.BytesIO(bytes(data)))
            except Exception as exc:
                raise ValueError(f"row {index}: not a readable JPEG or PNG image ({exc})") from None
            segmentations.append(self.segmenter(pixels).above(threshold))
        return detections_frame(segmentations)


def example_image_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    """A small PNG (a grey square on black) for the model's input example."""
    from PIL import Image

    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = 160
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def load_segmenter(cfg: dict, model_uri: str):
    """The pep.inference.Segmenter inside an MLflow model (models:/, runs:/ or a path),
    resolved against the project's store; one PepError naming the URI when it cannot load."""
    from mlflow.exceptions import MlflowException

    quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(cfg))
    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PepError(f"MLflow model {model_uri} cannot be loaded from {tracking_uri(cfg)}: {first}") from None
    python_model = loaded.unwrap_python_model()
    if not isinstance(python_model, PepPyfuncModel):
        raise PepError(f"MLflow model {model_uri} is not a PEP model (it is {type(python_model).__name__})")
    return python_model.segmenter
