"""ComposedQueryEncoder: a sketch becomes a pseudo-word spliced into CLIP's text encoder next to the user's words.

Notation (DESIGN.md): V = CLIP visual encoder, T_w = word-embedding table, T_t = text transformer (positional
embedding, causal transformer, ln_final, pooling at the end-of-text position, text_projection).

* Visual prompts: K learnable tokens appended after the patch tokens (after the positional embedding, before
  ``ln_pre``); the pooled output is the class token ("CLIP for all things").
* Pseudo-word: ``s_w = C_v2w(V(S))``, one token of the text width.
* Sketch query: ``q = T_t([SOS] P_L s_w [EOS])``; composed query: ``q = T_t([SOS] P_L s_w T_w(words) [EOS])``.
* Delta query (L_comp): ``T_t([SOS] P_L s_w C_v2w(V(P) - V(S)) [EOS])``; neutral query (L_reg): words = a neutral
  description; handcrafted prompt (L_TT): ``P_F`` = the word embeddings of "a photo of".

open_clip pools the text at the argmax of the token ids (the end-of-text id is the largest); with spliced embeddings
there are no ids at the spliced places, so this module tracks the end-of-text index itself. Every encode method takes
images as float tensors in [0, 1] of shape (B, 3, H, W) at ``image_size`` and normalises them itself.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from . import limits
from .backbones import build_clip
from .errors import DuetgenInputError

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PhotoEmbedding(BaseOutput):
    """Output of :meth:`ComposedQueryEncoder.encode_photo`.

    Attributes:
        embeds: (B, D) L2-normalised global embedding (class token, projected).
        patch_embeds: (B, N, D) L2-normalised patch tokens (after ``ln_post`` and the projection), N = grid**2.
    """

    embeds: torch.Tensor
    patch_embeds: torch.Tensor


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


class ComposedQueryEncoder(ModelMixin, ConfigMixin):
    """CLIP with visual prompts, a pseudo-word mapper and a learned text prompt.

    Args:
        clip_config: open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``, optional ``quick_gelu``).
        backbone: name of the backbone this was built from (recorded in galleries to refuse a mismatched encoder).
        num_visual_prompts: K visual prompt tokens (0 disables them).
        num_prompt_tokens: length of the learned text prompt P_L.
        handcrafted_prompt: the words of the handcrafted prompt P_F.
        mapper_hidden: hidden width of C_v2w (default: 2 x text width).
        image_mean: per-channel mean used to normalise [0, 1] images.
        image_std: per-channel std used to normalise [0, 1] images.
        sketch_fit: how sketches should be framed for this model: ``"canvas"`` (position on the canvas matters, as
            in the procedural world) or ``"ink"`` (crop to the strokes, as for Sketchy-like data).
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        clip_config: dict,
        backbone: str = "custom",
        num_visual_prompts: int = 3,
        num_prompt_tokens: int = 3,
        handcrafted_prompt: str = "a photo of",
        mapper_hidden: int | None = None,
        image_mean: tuple[float, float, float] = OPENAI_MEAN,
        image_std: tuple[float, float, float] = OPENAI_STD,
        sketch_fit: str = "ink",
    ):
        super().__init__()
        if sketch_fit not in ("ink", "canvas"):
            raise ValueError(f"sketch_fit must be 'ink' or 'canvas', got {sketch_fit!r}")
        self.clip = build_clip(clip_config)
        visual = self.clip.visual
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("ComposedQueryEncoder needs a ViT that pools its class token (pool_type='tok')")
        v_width = visual.conv1.out_channels
        t_width = self.clip.token_embedding.embedding_dim
        embed_dim = clip_config["embed_dim"]
        hidden = mapper_hidden or 2 * t_width

        # K visual prompt tokens (K, Wv); appended after the patch tokens.
        self.visual_prompts = nn.Parameter(torch.randn(num_visual_prompts, v_width) * v_width**-0.5)
        # C_v2w: CLIP embedding space -> word-embedding space of T_t.
        self.mapper = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, t_width))
        # P_L: learned prompt (P, Wt).
        self.prompt_tokens = nn.Parameter(torch.randn(num_prompt_tokens, t_width) * 0.02)
        self.register_buffer("_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)

    # ----------------------------------------------------------------------------------------------------------
    # properties and set-up
    # ----------------------------------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    @property
    def context_length(self) -> int:
        return int(self.clip.context_length)

    @property
    def embed_dim(self) -> int:
        return int(self.config.clip_config["embed_dim"])

    @property
    def tokenizer(self):
        return _tokenizer(self.context_length)

    @property
    def identity(self) -> dict:
        """What a gallery records to refuse another encoder: backbone, embedding dim and a weight fingerprint."""
        with torch.no_grad():
            probe = sum(float(p.float().sum()) for p in (self.clip.visual.conv1.weight, self.clip.visual.proj))
            probe += float(self.visual_prompts.float().sum()) if self.visual_prompts.numel() else 0.0
        return {"backbone": self.config.backbone, "embed_dim": self.embed_dim, "fingerprint": f"{probe:.6e}"}

    def set_trainable(self, mode: str = "duet", visual_blocks: int = 0) -> list[nn.Parameter]:
        """Freezes everything, then unfreezes one training recipe's parameters and returns them.

        Modes:
            ``"duet"``: LayerNorms of V, visual prompts, C_v2w and P_L (T_t frozen), the sketch+text method.
            ``"prompts"``: only LayerNorms of V and the visual prompts ("CLIP for all things"): attention in_proj,
                class/positional embeddings and ``proj`` stay frozen.
            ``"all"``: every parameter (stage-1 pre-training of the CLIP stand-in).
            ``"pretrain"``: every parameter except a pretrained CNN trunk (the ImageNet EfficientNet of a hybrid ViT,
                which stays frozen with its BatchNorm statistics); the same as ``"all"`` for other backbones.

        A pretrained CNN trunk is frozen in every mode but ``"all"``.

        ``visual_blocks`` (``"duet"`` and ``"prompts"`` only) also unfreezes the last K transformer blocks of V and its
        output projection. It is not part of the method: it makes up for a stand-in CLIP whose V knows too little
        shape (real CLIP's does). Those weights come after the method's parameters in the returned list, so
        ``params[len(set_trainable(mode)):]`` can get a learning rate of their own.
        """
        from .backbones import pretrained_stem

        if mode not in ("duet", "prompts", "all", "pretrain"):
            raise ValueError(f"mode must be 'duet', 'prompts', 'pretrain' or 'all', got {mode!r}")
        blocks = getattr(getattr(self.clip.visual, "transformer", None), "resblocks", ())
        if visual_blocks and (mode in ("all", "pretrain") or not 0 < visual_blocks <= len(blocks)):
            raise ValueError(
                f"visual_blocks must be between 1 and V's {len(blocks)} transformer blocks, with mode 'duet' or "
                f"'prompts'; got {visual_blocks} with {mode!r}"
            )
        trunk = getattr(pretrained_stem(self.clip), "trunk", None)
        if mode == "pretrain" and trunk is None:
            mode = "all"
        for p in self.parameters():
            p.requires_grad_(False)
        self._stem_frozen = mode != "all"
        if mode in ("all", "pretrain"):
            frozen = set() if mode == "all" else {id(p) for p in trunk.parameters()}
            params = [p for p in self.parameters() if id(p) not in frozen]
            for p in params:
                p.requires_grad_(True)
            return params
        params: list[nn.Parameter] = []
        for module in self.clip.visual.modules():
            if isinstance(module, nn.LayerNorm):
                params.extend(module.parameters())
        params.append(self.visual_prompts)
        if mode == "duet":
            params.extend(self.mapper.parameters())
            params.append(self.prompt_tokens)
        if visual_blocks:
            seen = {id(p) for p in params}
            extra = [p for b in blocks[len(blocks) - visual_blocks :] for p in b.parameters()]
            if isinstance(getattr(self.clip.visual, "proj", None), nn.Parameter):
                extra.append(self.clip.visual.proj)
            params.extend(p for p in extra if id(p) not in seen)
        for p in params:
            p.requires_grad_(True)
        return params

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``, but a frozen stem's BatchNorms keep their running statistics (eval mode)."""
        super().train(mode)
        if mode and getattr(self, "_stem_frozen", False):
            for m in self.clip.visual.conv1.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    @torch.no_grad()
    def init_prompt_from_text(self, text: str | None = None) -> None:
        """Initialises P_L from the word embeddings of ``text`` (default: the handcrafted prompt), CoOp-style."""
        ids = self.tokenizer.encode(text or self.config.handcrafted_prompt)
        emb = self.clip.token_embedding.weight[torch.tensor(ids, device=self.device)]
        n = self.prompt_tokens.shape[0]
        reps = emb.repeat((n + len(ids) - 1) // len(ids), 1)[:n]
        self.prompt_tokens.copy_(reps)

    # ----------------------------------------------------------------------------------------------------------
    # visual side
    # ----------------------------------------------------------------------------------------------------------

    def prepare_images(self, images: torch.Tensor, name: str = "images") -> torch.Tensor:
        """Checks a (B, 3, H, W) [0, 1] batch, resizes it to ``image_size`` and moves it to the model's
        device/dtype."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise DuetgenInputError(f"{name} must be a float tensor (B, 3, H, W) in [0, 1], got {got}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return images.to(device=self.device, dtype=self.dtype)

    def normalize_images(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the backbone's normalised input (what ``open_clip``'s ``encode_image`` expects)."""
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    def _visual_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V with visual prompts. Returns projected, un-normalised (class (B, D), patches (B, N, D))."""
        v = self.clip.visual
        x = v.conv1(self.normalize_images(images))  # (B, Wv, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, N, Wv)
        n_patches = x.shape[1]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)  # (B, 1 + N, Wv)
        x = v.patch_dropout(x)
        if self.visual_prompts.shape[0]:
            prompts = self.visual_prompts.to(x.dtype).expand(x.shape[0], -1, -1)  # (B, K, Wv)
            x = torch.cat([x, prompts], dim=1)  # (B, 1 + N + K, Wv)
        x = v.ln_pre(x)
        x = v.transformer(x)
        x = v.ln_post(x)
        cls_out, patches = x[:, 0], x[:, 1 : 1 + n_patches]  # (B, Wv), (B, N, Wv)
        if v.proj is not None:
            cls_out, patches = cls_out @ v.proj, patches @ v.proj  # (B, D), (B, N, D)
        return cls_out, patches

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """V(images): (B, 3, H, W) in [0, 1] -> (B, D). Sketches and photos share V."""
        pooled, _ = self._visual_tokens(self.prepare_images(images, "images"))
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_photo(self, photos: torch.Tensor) -> PhotoEmbedding:
        """Global and patch embeddings of photos (patches feed region-aware matching and scene retrieval)."""
        pooled, patches = self._visual_tokens(self.prepare_images(photos, "photos"))
        return PhotoEmbedding(embeds=F.normalize(pooled, dim=-1), patch_embeds=F.normalize(patches, dim=-1))

    def encode_sketch(self, sketches: torch.Tensor) -> torch.Tensor:
        """V(S): (B, 3, H, W) -> (B, D), normalised."""
        return self.encode_image(sketches)

    def pseudo_word(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """C_v2w: (B, D) CLIP embeddings -> (B, 1, Wt) pseudo-word tokens."""
        return self.mapper(image_embeds).unsqueeze(1)

    # ----------------------------------------------------------------------------------------------------------
    # text side
    # ----------------------------------------------------------------------------------------------------------

    def word_ids(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens (cached)."""
        return _word_ids(self.context_length, text)

    def word_embeddings(self, text: str) -> torch.Tensor:
        """T_w(text): (n, Wt)."""
        ids = torch.tensor(self.word_ids(text), dtype=torch.long, device=self.device)
        return self.clip.token_embedding(ids)

    def compose_embeddings(
        self, prefix: torch.Tensor, words: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Builds the token-embedding sequence ``[SOS] prefix T_w(words) [EOS] pad`` and its end-of-text index.

        Args:
            prefix: (B, n, Wt) embeddings spliced right after [SOS] (prompt, pseudo-words...).
            words: B strings (may be empty) or ``None``.

        Returns:
            ``(embeds (B, L, Wt), eos_index (B,))`` with L = context length.
        """
        tok = self.tokenizer
        batch, n_prefix = prefix.shape[0], prefix.shape[1]
        if words is None:
            words = [""] * batch
        if isinstance(words, str) or len(words) != batch:
            raise DuetgenInputError(f"words must be a list of {batch} strings (one per sketch), got {words!r:.80}")
        length = self.context_length
        ids = torch.zeros(batch, length, dtype=torch.long)
        eos = torch.empty(batch, dtype=torch.long)
        max_chars = limits.current().max_text_chars
        for i, text in enumerate(words):
            if text is not None and not isinstance(text, str):
                raise DuetgenInputError(f"words must be strings, got {type(text).__name__} {text!r:.60}")
            if text and len(text) > max_chars:  # checked before tokenising: a huge string costs time and cache memory
                limits.check("max_text_chars", len(text), f"words {text[:30]!r}...")
            w = self.word_ids(text) if text else []
            end = 1 + n_prefix + len(w)
            if end >= length:
                room = length - n_prefix - 2
                shown = repr(text[:40]) + ("..." if len(text) > 40 else "")
                raise DuetgenInputError(
                    f"words {shown} are too long for this model: {len(w)} word tokens, but only {room} fit "
                    f"(context of {length} tokens, less {n_prefix} prompt/sketch tokens and start/end); "
                    "use fewer words"
                )
            ids[i, 0] = tok.sot_token_id
            ids[i, 1 + n_prefix : end] = torch.tensor(w, dtype=torch.long)
            ids[i, end] = tok.eot_token_id
            eos[i] = end
        ids, eos = ids.to(self.device), eos.to(self.device)
        emb = self.clip.token_embedding(ids)  # (B, L, Wt)
        emb = torch.cat([emb[:, :1], prefix.to(emb.dtype), emb[:, 1 + n_prefix :]], dim=1)
        return emb, eos

    def encode_token_embeddings(
        self, embeds: torch.Tensor, eos_index: torch.Tensor, normalize: bool = True, return_states: bool = False
    ):
        """T_t on a spliced sequence: (B, L, Wt) + end-of-text index (B,) -> (B, D).

        With ``return_states`` also the per-token output of the text transformer (after ``ln_final``, before the
        end-of-text pooling): ``(query (B, D), states (B, L, Wt))``, the composed query token by token, as Stable
        Diffusion conditions on CLIP's last hidden state.
        """
        clip = self.clip
        x = embeds + clip.positional_embedding.to(embeds.dtype)
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        states = clip.ln_final(x)  # (B, L, Wt)
        x = states[torch.arange(states.shape[0], device=states.device), eos_index]  # (B, Wt)
        if clip.text_projection is not None:
            x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
        x = F.normalize(x, dim=-1) if normalize else x
        return (x, states) if return_states else x

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Plain CLIP text embedding of full sentences (the words-only baseline, class-name classifiers)."""
        prefix = torch.zeros(len(texts), 0, self.clip.token_embedding.embedding_dim, device=self.device)
        emb, eos = self.compose_embeddings(prefix, list(texts))
        return self.encode_token_embeddings(emb, eos, normalize)

    def prompt(self, batch: int, kind: str = "learned") -> torch.Tensor:
        """P_L (learned) or P_F (handcrafted) for a batch: (B, P, Wt)."""
        if kind == "learned":
            p = self.prompt_tokens
        elif kind == "handcrafted":
            p = self.word_embeddings(self.config.handcrafted_prompt)
        else:
            raise ValueError(f"prompt kind must be 'learned' or 'handcrafted', got {kind!r}")
        return p.unsqueeze(0).expand(batch, -1, -1)

    # ----------------------------------------------------------------------------------------------------------
    # composed queries
    # ----------------------------------------------------------------------------------------------------------

    def encode_query(
        self,
        sketches: torch.Tensor | None = None,
        words: list[str] | str | None = None,
        *,
        sketch_embeds: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
        prompt: str = "learned",
        normalize: bool = True,
        return_states: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The composed query ``T_t([SOS] P s_w [extra] T_w(words) [EOS])``.

        Args:
            sketches: (B, 3, H, W) in [0, 1], or ``None`` for a words-only query through the same prompt.
            words: one string per sketch (a single string is broadcast), e.g. ``"in shiny red"``.
            sketch_embeds: precomputed V(S) (B, D) instead of ``sketches``.
            extra_tokens: (B, m, Wt) tokens placed after s_w (the delta token of L_comp).
            prompt: ``"learned"`` (P_L) or ``"handcrafted"`` (P_F, for L_TT).
            normalize: L2-normalise the output.
            return_states: also return the text transformer's per-token states (B, L, Wt) of the same sequence
                (the generator's cross-attention condition).

        Returns:
            (B, D) query embeddings, or ``(query, states)`` with ``return_states``.
        """
        if sketch_embeds is None and sketches is not None:
            sketch_embeds = self.encode_sketch(sketches)
        if sketch_embeds is None:
            if words is None:
                raise DuetgenInputError("a query needs a sketch, words, or both; got neither")
            words = [words] if isinstance(words, str) else list(words)
            batch = len(words)
            parts = [self.prompt(batch, prompt)]
        else:
            batch = sketch_embeds.shape[0]
            if isinstance(words, str):
                words = [words] * batch
            parts = [self.prompt(batch, prompt), self.pseudo_word(sketch_embeds)]
        if extra_tokens is not None:
            parts.append(extra_tokens)
        prefix = torch.cat([p.to(self.dtype) for p in parts], dim=1)  # (B, n, Wt)
        emb, eos = self.compose_embeddings(prefix, words)
        return self.encode_token_embeddings(emb, eos, normalize, return_states=return_states)

    def encode_query_delta(self, sketch_embeds: torch.Tensor, photo_embeds: torch.Tensor) -> torch.Tensor:
        """q_delta = T_t([SOS] P_L s_w C_v2w(V(P) - V(S)) [EOS]) for L_comp."""
        delta_w = self.pseudo_word(photo_embeds - sketch_embeds)  # (B, 1, Wt)
        return self.encode_query(sketch_embeds=sketch_embeds, extra_tokens=delta_w)

    def forward(self, sketches: torch.Tensor, words: list[str] | str | None = None) -> torch.Tensor:
        """Same as :meth:`encode_query`."""
        return self.encode_query(sketches, words)


@functools.lru_cache(maxsize=4096)
def _word_ids(context_length: int, text: str) -> list[int]:
    return _tokenizer(context_length).encode(text)


def encoder_from_backbone(
    name: str, pretrained: str | None = None, allow_download: bool | None = None, **kwargs
) -> ComposedQueryEncoder:
    """A ComposedQueryEncoder around a registered backbone, with its pretrained CLIP weights if it has any.

    Args:
        name: backbone registry name or ``hf-hub:`` id (see ``duetgen.list_backbones()``).
        pretrained: override the weight source (tag, ``hf-hub:`` id or a local file).
        allow_download: permit downloading weights that are not cached.
        **kwargs: further ComposedQueryEncoder arguments (``num_visual_prompts``...).
    """
    from .backbones import load_clip, preprocess_config

    clip, cfg = load_clip(name, pretrained=pretrained, allow_download=allow_download)
    pre = preprocess_config(cfg)  # the backbone's own image normalisation (CLIP's when the config names none)
    if "mean" in pre:
        kwargs.setdefault("image_mean", pre["mean"])
    if "std" in pre:
        kwargs.setdefault("image_std", pre["std"])
    encoder = ComposedQueryEncoder(clip_config=cfg, backbone=name, **kwargs)
    encoder.clip.load_state_dict(clip.state_dict())
    encoder.init_prompt_from_text()
    return encoder.eval()
