"""The embedded default model: trained by duetgen on its procedural world and shipped inside the package.

``encoder/`` holds the ComposedQueryEncoder, ``generator/`` the DuetGenPipeline's UNet, scheduler and null query
(diffusers ``save_pretrained`` layout, fp16 safetensors). Retrain with ``recipes/train_embedded.sh``.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIR = Path(__file__).parent
ENCODER_DIR = EMBEDDED_DIR / "encoder"
PIPELINE_DIR = EMBEDDED_DIR / "pipeline"
GALLERY_DIR = EMBEDDED_DIR.parent.parent / "samples" / "gallery"


def _present(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "model_index.json").is_file()


def embedded_status() -> dict[str, str]:
    """Which parts of the embedded default are shipped in this install."""
    out = {}
    for name, folder in (("encoder", ENCODER_DIR), ("generator", PIPELINE_DIR)):
        if _present(folder):
            size = sum(f.stat().st_size for f in folder.rglob("*.safetensors"))
            out[name] = f"present ({size / 1e6:.1f} MB, {folder})"
        else:
            out[name] = "missing (retrain with recipes/train_embedded.sh)"
    return out
