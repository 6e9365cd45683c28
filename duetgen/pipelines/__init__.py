"""Generation pipelines: sketch + words -> image.

* :class:`DuetGenPipeline`: the embedded default, a small pixel-space UNet conditioned on the composed query and the
  sketch (offline, CPU).
* :class:`DuetUnCLIPPipeline`: real photos from Stable unCLIP, driven by the composed query of a ViT-H-14 duet encoder
  (GPU and the unCLIP weights needed).
"""

from .pipeline_duetgen import (
    SCHEDULERS,
    UNET_DTYPES,
    DuetGenPipeline,
    candidate_generators,
    check_pipeline_folder,
    load_pipeline,
    make_scheduler,
    prompts_per_call,
    resolve_unet_dtype,
)
from .pipeline_output import DuetGenPipelineOutput

__all__ = [
    "SCHEDULERS",
    "UNET_DTYPES",
    "DuetGenPipeline",
    "DuetGenPipelineOutput",
    "DuetUnCLIPPipeline",
    "candidate_generators",
    "check_pipeline_folder",
    "load_pipeline",
    "make_scheduler",
    "prompts_per_call",
    "resolve_unet_dtype",
]


def __getattr__(name: str):
    # The unCLIP backend pulls in transformers; import it only when asked for.
    if name == "DuetUnCLIPPipeline":
        from .pipeline_unclip import DuetUnCLIPPipeline

        return DuetUnCLIPPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
