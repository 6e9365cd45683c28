"""The embedded default model: trained by duetgen on its procedural world and shipped inside the package.

``pipeline/`` is a DuetGenPipeline folder (diffusers ``save_pretrained`` layout, fp16 safetensors): its ``encoder/``
is the embedded ComposedQueryEncoder (one copy, shared by retrieval and generation), ``unet/``, ``conditioner/`` and
``scheduler/`` the generator. ``evaluator/`` is the independent world evaluator used only by benchmarks. Retrain with
``recipes/train_embedded.sh``.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIR = Path(__file__).parent
PIPELINE_DIR = EMBEDDED_DIR / "pipeline"
ENCODER_DIR = PIPELINE_DIR / "encoder"
GALLERY_DIR = EMBEDDED_DIR.parent.parent / "samples" / "gallery"


def _present(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "model_index.json").is_file()


def embedded_status() -> dict[str, str]:
    """Which parts of the embedded default are shipped in this install."""
    out = {}
    for name, folder in (("encoder", ENCODER_DIR), ("generator", PIPELINE_DIR)):
        if _present(folder) and (name == "encoder" or (folder / "unet").is_dir()):
            files = (
                folder.rglob("*.safetensors")
                if name == "encoder"
                else (f for f in folder.rglob("*.safetensors") if ENCODER_DIR not in f.parents)
            )
            size = sum(f.stat().st_size for f in files)
            out[name] = f"present ({size / 1e6:.1f} MB, {folder})"
        else:
            out[name] = "missing (retrain with recipes/train_embedded.sh)"
    return out
