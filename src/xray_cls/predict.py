"""``python -m xray_cls.predict ckpt_path=<checkpoint> input=<image file or folder>``: classify image files.

Writes ``predictions.csv`` into its own run directory: per file the predicted class, every class's
probability, the threshold used (binary tasks) and, for files that cannot be read, the error (the other
files are still classified). ``predict.gradcam=true`` adds ``gradcam/<file>.png`` per image.
"""

from __future__ import annotations

if __name__ == "__main__":
    # The command starts in the light xray_cls.cli (see xray_cls.train): Hydra's own errors and --help answer
    # before torch and Lightning below are imported.
    import sys

    from xray_cls.cli import predict_main

    predict_main()
    sys.exit()  # done: what follows is the pipeline, which xray_cls.cli imported as xray_cls.predict

import contextlib
import csv
import io
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.utils import save_image
from tqdm import tqdm

from xray_cls.checkpoints import load_checkpoint, module_from_checkpoint, restore_config
from xray_cls.data.decode import decode_image
from xray_cls.data.folders import list_images
from xray_cls.data.lookalike import unlike_training
from xray_cls.errors import UserError
from xray_cls.evaluation.gradcam import gradcam, overlay
from xray_cls.evaluation.threshold import predicted_labels
from xray_cls.evaluation.tta import tta
from xray_cls.io import write_text_atomic
from xray_cls.validation import validate

log = logging.getLogger("xray_cls.predict")


class ImageFiles(Dataset):
    """``(uint8 [C, S, S], error message or "", index, how it differs from the training images or "")`` per
    file, decoded as the image cache decodes training images (shorter side resized to S, centre crop, gray or
    RGB); an unreadable file gives a blank image and its error instead of failing the batch."""

    def __init__(self, files: list[Path], image_size: int, num_channels: int, fixed_size: bool) -> None:
        self.files, self.image_size, self.num_channels = files, image_size, num_channels
        self.fixed_size = fixed_size  # trained on arrays of exactly image_size px (see data.lookalike)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, int, str]:
        try:
            image = torch.tensor(decode_image(self.files[i], self.image_size, self.num_channels))
            note = unlike_training(self.files[i], self.image_size, self.num_channels, self.fixed_size)
            return image, "", i, note
        except Exception as err:  # PIL fails in many ways (unidentified, truncated, bombs): all reported
            blank = torch.zeros(self.num_channels, self.image_size, self.image_size, dtype=torch.uint8)
            return blank, f"{type(err).__name__}: {err}".replace("\n", " "), i, ""


def predict(cfg: DictConfig, overrides: list[str]) -> Path:
    """Classify ``cfg.input``; returns the path of the predictions CSV."""
    checkpoint = load_checkpoint(cfg.ckpt_path)
    cfg = restore_config(cfg, checkpoint, overrides)
    with open_dict(cfg):
        # The class list as resolved in training: an image-folder data set need not exist where we predict.
        cfg.data.class_names = list(checkpoint["hyper_parameters"]["class_names"])
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    files, base = _inputs(Path(cfg.input))
    device = _device(cfg.predict.device)
    module = module_from_checkpoint(checkpoint, calibrated=cfg.eval.calibration != "none")
    module = module.to(device).eval()
    class_names = list(module.class_names)
    positive = module.positive_index
    threshold = float(module.threshold)
    # Sources that decode files themselves take the size to decode to (data.source.image_size).
    fixed_size = "image_size" not in cfg.data.source
    loader = DataLoader(
        ImageFiles(files, cfg.data.image_size, cfg.data.num_channels, fixed_size),
        batch_size=cfg.predict.batch_size,
        num_workers=cfg.predict.num_workers,
        pin_memory=device.type == "cuda",
    )

    rows: list[dict[str, str]] = []
    unlike: list[tuple[Path, str]] = []
    for images, errors, indices, notes in tqdm(loader, desc="predict", unit="batch"):
        batch_files = [files[int(i)] for i in indices]
        unlike += [(file, note) for file, note in zip(batch_files, notes, strict=True) if note]
        batch_rows = [_row(file, class_names, error) for file, error in zip(batch_files, errors, strict=True)]
        readable = [j for j, error in enumerate(errors) if not error]
        if readable:
            x = images[readable].to(device).float().div(255)
            with torch.no_grad(), _augmented(cfg, module):
                probs = module.probabilities(x).cpu()
            preds = predicted_labels(probs, threshold, positive)
            maps = gradcam(module, x, preds) if cfg.predict.gradcam else None
            for k, j in enumerate(readable):
                row = batch_rows[j]
                row["predicted"] = class_names[int(preds[k])]
                row |= {
                    f"prob_{name}": f"{float(p):.6f}" for name, p in zip(class_names, probs[k], strict=True)
                }
                row["threshold"] = f"{threshold:.6f}" if positive is not None else ""  # multiclass: arg-max
                if maps is not None:
                    row["gradcam"] = _save_overlay(x[k], maps[k], batch_files[j], base, output_dir)
        rows += batch_rows

    path = output_dir / "predictions.csv"
    write_text_atomic(path, _csv(rows, class_names, cfg.predict.gradcam))
    failed = [r for r in rows if r["error"]]
    if len(failed) == len(rows):
        raise UserError(
            f"none of the {len(rows)} input files could be read, nothing was predicted: see the error "
            f"column of {path}"
        )
    if failed:
        log.warning(
            "%d of %d files could not be read; see the error column of %s", len(failed), len(rows), path
        )
    _warn_unlike_training(unlike, len(rows))
    log.info("predictions for %d files: %s", len(rows), path)
    return path


def _warn_unlike_training(unlike: list[tuple[Path, str]], total: int) -> None:
    if not unlike:
        return
    listed = "; ".join(f"{file.name}: {note}" for file, note in unlike[:5])
    log.warning(
        "%d of %d inputs do not look like the images the model was trained on, and its answers on them "
        "cannot be trusted (%s%s)",
        len(unlike), total, listed, " ..." if len(unlike) > 5 else "",
    )  # fmt: skip


def _inputs(path: Path) -> tuple[list[Path], Path]:
    """The image files to classify and the folder their names are given relative to."""
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise UserError(f"input={path} holds no image files (looked for {', '.join(IMG_EXTENSIONS)})")
        return files, path
    raise UserError(f"input={path} does not exist: pass an image file or a folder of images")


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"predict.device={spec} but no CUDA GPU is available: use predict.device=cpu")
    return device


def _augmented(cfg: DictConfig, module: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    if cfg.eval.tta:
        return tta(module, cfg.data.augment.hflip, cfg.data.image_size)
    return contextlib.nullcontext()


def _row(file: Path, class_names: list[str], error: str) -> dict[str, str]:
    return {
        "file": str(file),
        "predicted": "",
        **{f"prob_{n}": "" for n in class_names},
        "threshold": "",
        "error": error,
    }


def _save_overlay(image: torch.Tensor, cam: torch.Tensor, file: Path, base: Path, output_dir: Path) -> str:
    """The image beside its Grad-CAM overlay, named after the file's path under the input folder."""
    name = file.relative_to(base).as_posix().replace("/", "__") + ".png"
    path = output_dir / "gradcam" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    gray_or_rgb = image.detach().cpu().float()
    rgb = gray_or_rgb.expand(3, -1, -1) if gray_or_rgb.shape[0] == 1 else gray_or_rgb
    save_image(torch.stack([rgb, overlay(gray_or_rgb[None], cam[None])[0]]), path, nrow=2, padding=2)
    return str(path.relative_to(output_dir))


def _csv(rows: list[dict[str, str]], class_names: list[str], with_gradcam: bool) -> str:
    columns = ["file", "predicted", *(f"prob_{n}" for n in class_names), "threshold", "error"]
    if with_gradcam:
        columns.append("gradcam")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
