"""Zero-shot sketch-based image retrieval, "CLIP for all things" (DESIGN.md): losses, data views and evaluation.

Only LayerNorms of V and the K visual prompts train (``encoder.set_trainable("prompts")``). Distances are
``d(a, b) = 1 - cos(a, b)`` on L2-normalised embeddings; sketches and photos share V.

Category-level (``task="category"``)::

    L = w_triplet * L_trip(negatives from another class) + w_cls * L_cls

Fine-grained (``task="fine-grained"``)::

    L = w_triplet * L_trip(negatives from the same class, other photo) + w_cls * L_cls
        + w_fdiv * L_fdiv + w_shuffle * L_shuffle

* ``L_trip``: ``mean over (anchor s, positive p+, negative p-) of max(0, margin + d(s, p+) - d(s, p-))``. The
  category-level positives are every photo of the sketch's class in the batch; the fine-grained positive is the
  sketch's own photo. Sketch-only datasets (TU-Berlin, QuickDraw) use the other sketches of the batch as candidates.
* ``L_cls``: cross-entropy of sketch and photo embeddings against the frozen text features
  ``T_t("a photo of a {c}")`` of the training classes, logits = CLIP logit scale * cosine. The text features are
  computed once under ``torch.no_grad`` (:func:`class_text_features`): the text encoder gets no gradient.
* ``L_fdiv`` (the papers give no estimator; this is duetgen's): take every fine-grained triplet of the batch and
  its gap ``g = d(s, p+) - d(s, p-)``; group the gaps by the anchor's category; fit a Gaussian
  ``N(mu_c, var_c + eps)`` to each category with at least ``fdiv_min_samples`` gaps; the reference is the batch mean
  distribution ``N(mean_c mu_c, mean_c var_c + eps)`` (categories weighted equally); the loss is the mean over
  categories of the symmetric KL (Jeffreys divergence, an f-divergence) to the reference::

      J(p, q) = KL(p || q) + KL(q || p) = (var_p + dmu^2) / (2 var_q) + (var_q + dmu^2) / (2 var_p) - 1

  It is 0 exactly when every category's gap distribution has the same mean and variance, so no category is
  separated more easily than another (the margin means the same thing for every category).
* ``L_shuffle``: cut each image into a ``grid x grid`` tiling and permute the tiles: a sketch permuted by ``pi``
  must match its photo permuted by the same ``pi`` better than the photo permuted by another ``pi'``:
  ``max(0, shuffle_margin + d(S_pi, P_pi) - d(S_pi, P_pi'))``. This forces V to keep the part-level
  correspondence between a sketch and its photo.

Stand-in pre-training (``recipes/train_sbir.py --task pretrain``, :func:`pretrain_losses`): a backbone whose
transformers start from random weights (the hybrid ViT on an ImageNet CNN, ``efficientnet-lite0-hybrid``) has no
CLIP pre-training to tune prompts on, so it first learns, on the seen classes only, what CLIP's pre-training would
have given it: everything but the pretrained CNN trunk trains (``set_trainable("pretrain")``), text tower included::

    L_pre = w_cls * CE(s * V(x) . T_t("a photo of a {c}")^T, c)   over sketches and photos, T_t with gradient
          + w_pair * InfoNCE(s * V(S) . V(P)^T)                     each sketch against the batch's photos, both ways

with ``s`` CLIP's trainable logit scale: CLIP's contrastive loss over the class captions, and the sketch-photo
pairing that real CLIP would have seen as line drawings of photographed things.

Evaluation (:func:`evaluate_sbir`): category-level = sketch queries against every photo of the evaluated classes
(mAP@all, mAP@200, P@100, P@200); fine-grained = each sketch against the photos of its own class, the target being
its paired photo (Acc@1, Acc@5, Acc@10). A sketch-only dataset is evaluated sketch-to-sketch: within each class the
even-numbered sketches are queries and the odd-numbered ones the gallery.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .errors import DuetgenInputError

logger = logging.getLogger(__name__)

TASKS = ("category", "fine-grained")
CLASS_TEMPLATE = "a photo of a {}"
MAP_KS = (200,)  # mAP@K cut-offs of category-level evaluation
PRECISION_KS = (100, 200)  # P@K cut-offs of category-level evaluation
FINE_GRAINED_KS = (1, 5, 10)


# ----------------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SBIRLossConfig:
    """Weights and hyper-parameters of the "CLIP for all things" losses (a weight of 0 switches a term off).

    Use :meth:`for_task` for the paper's defaults of each task.
    """

    task: str = "category"  # "category" (negatives from another class) or "fine-grained" (same class)
    w_triplet: float = 1.0  # L_trip
    w_cls: float = 0.5  # L_cls: sketch and photo embeddings vs frozen class-name text features
    w_fdiv: float = 0.0  # L_fdiv: per-category gap distributions made similar (fine-grained: 0.1)
    w_shuffle: float = 0.0  # L_shuffle: patch-shuffle triplet (fine-grained: 1.0)
    margin: float = 0.3  # triplet margin
    shuffle_margin: float = 0.3  # patch-shuffle triplet margin
    grid: int = 2  # patch-shuffle grid (grid x grid tiles)
    fdiv_min_samples: int = 2  # a category needs this many gaps in the batch to enter L_fdiv
    fdiv_eps: float = 1e-4  # variance floor of the Gaussian fits

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DuetgenInputError(f"task must be one of {TASKS}; got {self.task!r}")
        if self.grid < 1:
            raise DuetgenInputError(f"grid must be >= 1; got {self.grid}")

    @classmethod
    def for_task(cls, task: str, **overrides: Any) -> SBIRLossConfig:
        """The paper's weights for ``task``; ``overrides`` whose value is ``None`` keep the task default."""
        defaults: dict[str, Any] = {"task": task}
        if task == "fine-grained":
            defaults.update(w_fdiv=0.1, w_shuffle=1.0)
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**defaults)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------------
# loss terms
# ----------------------------------------------------------------------------------------------------------


def class_prompts(classes: Sequence[str], template: str = CLASS_TEMPLATE) -> list[str]:
    """``"a photo of a {c}"`` for each class, folder spellings made readable (``car_(sedan)`` -> ``car (sedan)``)."""
    return [template.format(c.replace("_", " ").replace("-", " ").strip()) for c in classes]


@torch.no_grad()
def class_text_features(
    encoder, classes: Sequence[str], template: str = CLASS_TEMPLATE, batch_size: int = 256
) -> torch.Tensor:
    """Frozen ``T_t("a photo of a {c}")`` features (C, D), L2-normalised; computed without gradient."""
    prompts = class_prompts(classes, template)
    feats = [encoder.encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    return torch.cat(feats).detach()


def clip_logit_scale(encoder) -> torch.Tensor:
    """The CLIP logit scale ``exp(logit_scale)`` (capped at 100 as in CLIP), detached."""
    return encoder.clip.logit_scale.detach().exp().clamp(max=100.0)


def classification_loss(
    embeds: torch.Tensor, labels: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Cross-entropy of (B, D) embeddings against (C, D) class text features at the CLIP temperature."""
    logits = logit_scale * embeds @ text_features.detach().to(embeds.dtype).T  # (B, C)
    return F.cross_entropy(logits, labels)


def triplet_gaps(
    anchors: torch.Tensor, candidates: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every triplet's gap ``d(a, p+) - d(a, p-)`` and its anchor index.

    Args:
        anchors: (A, D) normalised anchors (sketches).
        candidates: (N, D) normalised candidates (photos, or sketches for sketch-only data).
        pos_mask: (A, N) bool, True where a candidate is a positive of the anchor.
        neg_mask: (A, N) bool, True where a candidate is a negative of the anchor.

    Returns:
        ``(gaps (M,), anchor_index (M,))`` over all (anchor, positive, negative) triplets.
    """
    dist = 1.0 - anchors @ candidates.T  # (A, N)
    gap = dist[:, :, None] - dist[:, None, :]  # (A, N+, N-)
    valid = pos_mask[:, :, None] & neg_mask[:, None, :]  # (A, N+, N-)
    idx = valid.nonzero(as_tuple=True)
    return gap[idx], idx[0]


def triplet_loss(gaps: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean(max(0, margin + d(a, p+) - d(a, p-)))`` over the triplets; 0 (with gradient) when there are none."""
    if gaps.numel() == 0:
        return gaps.sum() * 0.0
    return F.relu(margin + gaps).mean()


def gaussian_symmetric_kl(mu_p: torch.Tensor, var_p: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor):
    """Jeffreys divergence ``KL(p||q) + KL(q||p)`` between 1-D Gaussians (elementwise)."""
    d2 = (mu_p - mu_q) ** 2
    return (var_p + d2) / (2 * var_q) + (var_q + d2) / (2 * var_p) - 1.0


def f_divergence_loss(
    gaps: torch.Tensor, groups: torch.Tensor, min_samples: int = 2, eps: float = 1e-4
) -> torch.Tensor:
    """L_fdiv: mean symmetric KL of each category's Gaussian gap fit to the batch-mean Gaussian (module docstring).

    Args:
        gaps: (M,) triplet gaps ``d(s, p+) - d(s, p-)``.
        groups: (M,) category of each gap's anchor.
        min_samples: categories with fewer gaps are left out.
        eps: variance floor.

    Returns:
        Scalar; 0 with fewer than two usable categories.
    """
    mus, vars_ = [], []
    for g in torch.unique(groups):
        x = gaps[groups == g]
        if x.numel() < max(2, min_samples):
            continue
        mus.append(x.mean())
        vars_.append(x.var(unbiased=False) + eps)
    if len(mus) < 2:
        return gaps.sum() * 0.0
    mu, var = torch.stack(mus), torch.stack(vars_)  # (C,)
    mu_ref, var_ref = mu.mean(), var.mean()
    return gaussian_symmetric_kl(mu, var, mu_ref, var_ref).mean()


def random_permutation_pairs(
    batch: int, grid: int = 2, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tile permutations per sample, different from each other: ``(pi (B, T), pi' (B, T))``, T = grid**2."""
    tiles = grid * grid
    if tiles < 2:
        raise DuetgenInputError(f"patch shuffling needs at least 2 tiles; grid={grid}")
    a = torch.stack([torch.randperm(tiles, generator=generator) for _ in range(batch)])
    b = torch.stack([torch.randperm(tiles, generator=generator) for _ in range(batch)])
    same = (a == b).all(1)
    b[same] = b[same].roll(1, dims=1)  # a rolled permutation of T >= 2 tiles always differs
    return a, b


def shuffle_patches(images: torch.Tensor, perms: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """Permute the ``grid x grid`` tiles of each image: tile ``t`` of the output is tile ``perms[b, t]`` of the input.

    Args:
        images: (B, C, H, W), H and W divisible by ``grid``.
        perms: (B, grid**2) long.
    """
    b, c, h, w = images.shape
    if h % grid or w % grid:
        raise DuetgenInputError(f"image size {h}x{w} is not divisible by the patch-shuffle grid {grid}")
    th, tw = h // grid, w // grid
    tiles = images.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)
    tiles = tiles[torch.arange(b, device=images.device)[:, None], perms.to(images.device)]  # (B, T, C, th, tw)
    return tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def pretrain_losses(
    encoder,
    sketches: torch.Tensor,
    labels: torch.Tensor,
    class_prompts: Sequence[str],
    *,
    photos: torch.Tensor | None = None,
    w_cls: float = 1.0,
    w_pair: float = 1.0,
) -> dict[str, torch.Tensor]:
    """L_pre of the stand-in pre-training (module docstring): class-caption contrastive + sketch-photo pairing.

    Args:
        encoder: a :class:`~duetgen.ComposedQueryEncoder` (usually after ``set_trainable("pretrain")``).
        sketches: (B, 3, H, W) in [0, 1]; labels: (B,) index into ``class_prompts``.
        class_prompts: the C captions ``"a photo of a {c}"`` of the training classes (:func:`class_prompts`),
            encoded with gradient.
        photos: (B, 3, H, W) the photo of each sketch (all different photos), or ``None`` for sketch-only data (the
            pairing term is then skipped).

    Returns:
        dict of the active terms and ``"loss"``.
    """
    labels = labels.to(sketches.device)
    scale = encoder.clip.logit_scale.exp().clamp(max=100.0)
    text = encoder.encode_text(list(class_prompts))  # (C, D), with gradient
    sk = encoder.encode_image(sketches)  # (B, D)
    out: dict[str, torch.Tensor] = {}
    ph = encoder.encode_image(photos) if photos is not None else None  # (B, D)
    if w_cls:
        cls = F.cross_entropy(scale * sk @ text.T, labels)
        if ph is not None:
            cls = 0.5 * (cls + F.cross_entropy(scale * ph @ text.T, labels))
        out["cls"] = cls
    if w_pair and ph is not None:
        logits = scale * sk @ ph.T  # (B, B), sketch i drawn from photo i
        target = torch.arange(sk.shape[0], device=sk.device)
        out["pair"] = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    if not out:
        raise DuetgenInputError("pretrain_losses: every term is off (w_cls = 0 and no photos for the pairing term)")
    weights = {"cls": w_cls, "pair": w_pair}
    out["loss"] = sum(weights[k] * v for k, v in out.items())
    return out


def patch_shuffle_loss(
    encoder,
    sketches: torch.Tensor,
    photos: torch.Tensor,
    *,
    grid: int = 2,
    margin: float = 0.3,
    generator: torch.Generator | None = None,
    perms: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """L_shuffle: ``max(0, margin + d(S_pi, P_pi) - d(S_pi, P_pi'))`` averaged over the pairs.

    Args:
        encoder: a :class:`~duetgen.ComposedQueryEncoder`.
        sketches: (B, 3, H, W) in [0, 1]; ``photos`` (B, 3, H, W) their paired photos.
        perms: ``(sketch_perm, positive_photo_perm, negative_photo_perm)``, each (B, grid**2); default: random
            ``(pi, pi, pi')`` with ``pi != pi'``.
    """
    if perms is None:
        pi, pi_other = random_permutation_pairs(sketches.shape[0], grid, generator)
        perms = (pi, pi, pi_other)
    size = encoder.image_size
    size -= size % grid
    if sketches.shape[-1] != size or sketches.shape[-2] != size:
        sketches = F.interpolate(sketches, size=(size, size), mode="bilinear", antialias=True)
        photos = F.interpolate(photos, size=(size, size), mode="bilinear", antialias=True)
    s = encoder.encode_image(shuffle_patches(sketches, perms[0], grid))  # (B, D)
    p_pos = encoder.encode_image(shuffle_patches(photos, perms[1], grid))
    p_neg = encoder.encode_image(shuffle_patches(photos, perms[2], grid))
    gap = (1 - (s * p_pos).sum(-1)) - (1 - (s * p_neg).sum(-1))  # (B,)
    return F.relu(margin + gap).mean()


def sbir_losses(
    encoder,
    sketches: torch.Tensor,
    labels: torch.Tensor,
    text_features: torch.Tensor,
    cfg: SBIRLossConfig,
    *,
    photos: torch.Tensor | None = None,
    photo_index: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Every active "CLIP for all things" term for one batch.

    Args:
        encoder: a :class:`~duetgen.ComposedQueryEncoder`.
        sketches: (B, 3, H, W) in [0, 1].
        labels: (B,) long class index of each sketch (indexes ``text_features``); each photo has its sketch's label.
        text_features: (C, D) frozen class text features (:func:`class_text_features`).
        cfg: task and weights.
        photos: (B, 3, H, W) the photo paired with each sketch, or ``None`` for sketch-only data (category only).
        photo_index: (B,) id of each photo (two sketches of one photo share it); default: all different.
        generator: draws the patch-shuffle permutations.

    Returns:
        dict of the active terms and ``"loss"``, their weighted sum.
    """
    device = sketches.device
    labels = labels.to(device)
    fine = cfg.task == "fine-grained"
    if photos is None and (fine or cfg.w_shuffle):
        raise DuetgenInputError("the fine-grained losses need (sketch, photo) pairs; this batch has no photos")
    b = sketches.shape[0]
    scale = clip_logit_scale(encoder)
    sk = encoder.encode_image(sketches)  # (B, D)
    same_class = labels[:, None] == labels[None, :]  # (B, B)
    if photos is not None:
        ph = encoder.encode_image(photos)  # (B, D)
        pid = torch.arange(b, device=device) if photo_index is None else photo_index.to(device)
        same_photo = pid[:, None] == pid[None, :]
        candidates = ph
        if fine:
            pos_mask, neg_mask = same_photo, same_class & ~same_photo
        else:
            pos_mask, neg_mask = same_class, ~same_class
    else:
        ph = None
        candidates = sk
        eye = torch.eye(b, dtype=torch.bool, device=device)
        pos_mask, neg_mask = same_class & ~eye, ~same_class

    out: dict[str, torch.Tensor] = {}
    gaps, anchor = triplet_gaps(sk, candidates, pos_mask, neg_mask)
    if cfg.w_triplet:
        out["triplet"] = triplet_loss(gaps, cfg.margin)
    if cfg.w_cls:
        cls = classification_loss(sk, labels, text_features, scale)
        if ph is not None:
            cls = 0.5 * (cls + classification_loss(ph, labels, text_features, scale))
        out["cls"] = cls
    if cfg.w_fdiv:
        out["fdiv"] = f_divergence_loss(gaps, labels[anchor], cfg.fdiv_min_samples, cfg.fdiv_eps)
    if cfg.w_shuffle:
        out["shuffle"] = patch_shuffle_loss(
            encoder, sketches, photos, grid=cfg.grid, margin=cfg.shuffle_margin, generator=generator
        )
    weights = {"triplet": cfg.w_triplet, "cls": cfg.w_cls, "fdiv": cfg.w_fdiv, "shuffle": cfg.w_shuffle}
    out["loss"] = sum(weights[k] * v for k, v in out.items())
    return out


# ----------------------------------------------------------------------------------------------------------
# data: PIL -> tensors at the encoder's size, class-balanced batches
# ----------------------------------------------------------------------------------------------------------


class ImageTransforms:
    """PIL image (or path) -> float tensor (3, size, size) in [0, 1]; sketches through :func:`duetgen.load_sketch`.

    Args:
        size: the encoder's image size.
        sketch_fit: ``"ink"`` (crop to the strokes, right for Sketchy-like data) or ``"canvas"``.
    """

    def __init__(self, size: int, sketch_fit: str = "ink") -> None:
        self.size = int(size)
        self.sketch_fit = sketch_fit

    def sketch(self, item: Any) -> torch.Tensor:
        from .sketch_input import load_sketch

        if isinstance(item, torch.Tensor):
            return item
        return load_sketch(item, fit=self.sketch_fit, size=self.size)

    def photo(self, item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            return item
        if not isinstance(item, Image.Image):
            from .datasets._common import open_image

            item = open_image(item)
        im = item.convert("RGB").resize((self.size, self.size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def has_photos(source: Any) -> bool:
    """Whether a loader pairs sketches with photos (Sketchy, QMUL) or holds sketches only (TU-Berlin, QuickDraw)."""
    return hasattr(source, "load_photo") and hasattr(source, "sketch_photo")


class SBIRPairs(Dataset):
    """Training view: item ``i`` is sketch ``i`` as a tensor with its class, its photo (if any) and the photo's id.

    Returns ``(sketch (3, S, S), photo (3, S, S) or empty (0,), label, photo_index)``; photo_index is -1 for
    sketch-only data.
    """

    def __init__(self, source: Any, transforms: ImageTransforms) -> None:
        self.source = source
        self.tf = transforms
        self.paired = has_photos(source)

    def __len__(self) -> int:
        return len(self.source.sketch_labels)

    def __getitem__(self, index: int):
        sketch = self.tf.sketch(self.source.load_sketch(index))
        label = int(self.source.sketch_labels[index])
        if not self.paired:
            return sketch, torch.zeros(0), label, -1
        p = int(self.source.sketch_photo[index])
        return sketch, self.tf.photo(self.source.load_photo(p)), label, p


class ClassBalancedBatches:
    """Deterministic class-balanced batches: ``classes_per_batch`` classes x ``per_class`` items, one list per step.

    With photos, each class contributes ``per_class`` *different* photos and one random sketch of each, so no two
    sketches in a batch share a photo. The batch of step ``t`` depends only on ``(seed, t)``, so a resumed run
    sees exactly the batches an uninterrupted run would; ``rank`` (the process index) gives each process of a
    distributed run its own batches.
    """

    def __init__(
        self,
        labels: Sequence[int],
        classes_per_batch: int,
        per_class: int,
        steps: int,
        *,
        start: int = 0,
        seed: int = 0,
        rank: int = 0,
        sketch_photo: Sequence[int] | None = None,
    ) -> None:
        labels = np.asarray(labels)
        self.classes = np.unique(labels)
        if len(self.classes) == 0:
            raise DuetgenInputError("no training items: the dataset is empty")
        self.classes_per_batch = min(classes_per_batch, len(self.classes))
        self.per_class = per_class
        self.steps, self.start, self.seed, self.rank = steps, start, seed, rank
        # per class: list of groups; a group is the sketch indices of one photo (or one sketch)
        self.groups: dict[int, list[np.ndarray]] = {}
        for c in self.classes:
            idx = np.flatnonzero(labels == c)
            if sketch_photo is None:
                self.groups[int(c)] = [np.array([i]) for i in idx]
            else:
                sp = np.asarray(sketch_photo)[idx]
                self.groups[int(c)] = [idx[sp == p] for p in np.unique(sp)]

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def batch(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, step, self.rank])
        out = []
        for c in rng.choice(self.classes, size=self.classes_per_batch, replace=False):
            groups = self.groups[int(c)]
            take = rng.choice(len(groups), size=min(self.per_class, len(groups)), replace=False)
            out += [int(rng.choice(groups[g])) for g in take]
        return out

    def __iter__(self):
        for step in range(self.start, self.steps):
            yield self.batch(step)


def collate_pairs(items):
    sketches, photos, labels, pids = zip(*items, strict=True)
    photos_t = torch.stack(photos) if photos[0].numel() else None
    return torch.stack(sketches), photos_t, torch.tensor(labels), torch.tensor(pids)


DATASETS = ("sketchy", "tuberlin", "quickdraw", "qmul")
PARTS = ("train", "test", "all")


def open_sbir_dataset(dataset: str, root: str, split: str | None = None, part: str = "test", **kwargs: Any) -> Any:
    """Opens a loader on one part of a zero-shot split.

    Args:
        dataset: ``"sketchy"``, ``"tuberlin"``, ``"quickdraw"`` or ``"qmul"``.
        root: the dataset folder.
        split: a class split (built-in name such as ``"sketchy128_zs"`` or a file, see
            :func:`duetgen.datasets.load_class_split`); ``None`` keeps every class. QMUL has one category and
            its own ``train``/``test`` folders, so it takes no class split.
        part: ``"train"`` (seen classes), ``"test"`` (unseen classes) or ``"all"``.
        **kwargs: passed to the loader; ``load_images`` defaults to False (items hold paths, which
            :class:`ImageTransforms` decodes).
    """
    from . import datasets as ds

    if dataset not in DATASETS:
        raise DuetgenInputError(f"dataset must be one of {DATASETS}; got {dataset!r}")
    if part not in PARTS:
        raise DuetgenInputError(f"part (classes) must be one of {PARTS}; got {part!r}")
    if dataset == "qmul":
        if split is not None:
            raise DuetgenInputError(
                f"QMUL has one category and its own train/test folders; pass no class split (got {split!r})"
            )
        kwargs.setdefault("load_images", False)
        return ds.QMULDataset(root, split=None if part == "all" else part, **kwargs)
    if dataset != "quickdraw":
        kwargs.setdefault("load_images", False)  # paths: ImageTransforms decodes each file once
    loader = {"sketchy": ds.SketchyDataset, "tuberlin": ds.TUBerlinDataset, "quickdraw": ds.QuickDrawDataset}[dataset]
    if split is None or part == "all":
        return loader(root, **kwargs)
    cs = ds.load_class_split(split)
    if cs.train is None:  # a one-class-per-line file: train = the dataset's other classes
        every = loader(root, **kwargs).classes
        cs = ds.load_class_split(split, classes=every)
    return loader(root, classes=list(cs.train if part == "train" else cs.test), **kwargs)


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------


class _Domain(Dataset):
    def __init__(self, load: Callable[[int], Any], n: int, transform: Callable[[Any], torch.Tensor]) -> None:
        self.load, self.n, self.transform = load, n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.load(i))


@torch.no_grad()
def _embed(fn: Callable[[torch.Tensor], torch.Tensor], data: Dataset, batch_size: int, num_workers: int):
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return torch.cat([fn(x).float().cpu() for x in loader]) if len(data) else torch.zeros(0, 0)


def embed_dataset(
    encoder,
    source: Any,
    *,
    query: str = "image",
    sketch_fit: str = "ink",
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Embeds every sketch (and every unique photo) of a loader.

    Args:
        query: how sketches become queries: ``"image"`` (V(S), "CLIP for all things") or ``"composed"``
            (``encode_query(S)``, the duet method's sketch query).

    Returns:
        ``{"sketch": (N, D), "sketch_labels": (N,), "photo": (P, D) | None, "photo_labels", "sketch_photo"}``.
    """
    if query not in ("image", "composed"):
        raise DuetgenInputError(f"query must be 'image' or 'composed'; got {query!r}")
    was_training = encoder.training
    encoder.eval()
    tf = ImageTransforms(encoder.image_size, sketch_fit)
    sketch_fn = encoder.encode_image if query == "image" else (lambda x: encoder.encode_query(x))
    n = len(source.sketch_labels)
    out: dict[str, Any] = {
        "sketch": _embed(sketch_fn, _Domain(source.load_sketch, n, tf.sketch), batch_size, num_workers),
        "sketch_labels": np.asarray(source.sketch_labels),
        "photo": None,
        "photo_labels": None,
        "sketch_photo": None,
    }
    if has_photos(source):
        p = len(source.photo_labels)
        out["photo"] = _embed(encoder.encode_image, _Domain(source.load_photo, p, tf.photo), batch_size, num_workers)
        out["photo_labels"] = np.asarray(source.photo_labels)
        out["sketch_photo"] = np.asarray(source.sketch_photo)
    encoder.train(was_training)
    return out


def category_metrics(
    sim: np.ndarray | torch.Tensor,
    query_labels,
    gallery_labels,
    map_ks: Sequence[int] = MAP_KS,
    precision_ks: Sequence[int] = PRECISION_KS,
) -> dict[str, float | None]:
    """mAP@all, mAP@K and P@K; a K larger than the gallery gives ``None`` (not computable, never clamped)."""
    from .metrics import map_at_all, map_at_k, precision_at_k

    n_gallery = sim.shape[1]
    out: dict[str, float | None] = {"mAP@all": map_at_all(sim, query_labels, gallery_labels)}
    for k in map_ks:
        out[f"mAP@{k}"] = map_at_k(sim, query_labels, gallery_labels, k) if k <= n_gallery else None
    for k in precision_ks:
        out[f"P@{k}"] = precision_at_k(sim, query_labels, gallery_labels, k) if k <= n_gallery else None
    return out


def fine_grained_metrics(
    sim: np.ndarray | torch.Tensor, query_labels, gallery_labels, targets, ks: Sequence[int] = FINE_GRAINED_KS
) -> dict[str, float]:
    """Acc@K with each sketch ranked among the photos of its own class only (targets index the full gallery).

    A class with fewer than K photos always has the target within the top K (rank <= class size < K).
    """
    from .metrics import acc_at_k

    sim = sim.numpy() if isinstance(sim, torch.Tensor) else np.asarray(sim)
    ql, gl, targets = np.asarray(query_labels), np.asarray(gallery_labels), np.asarray(targets)
    hits = {k: 0.0 for k in ks}
    for c in np.unique(ql):
        q = np.flatnonzero(ql == c)
        g = np.flatnonzero(gl == c)
        local = np.searchsorted(g, targets[q])  # target position inside the class gallery
        if not np.array_equal(g[np.minimum(local, len(g) - 1)], targets[q]):
            raise DuetgenInputError(f"class {c}: a sketch's paired photo is not a photo of its class")
        valid = [k for k in ks if k <= len(g)]
        acc = acc_at_k(sim[np.ix_(q, g)], local, valid) if valid else {}
        for k in ks:
            hits[k] += acc.get(f"Acc@{k}", 1.0) * len(q)
    return {f"Acc@{k}": hits[k] / len(ql) for k in ks}


def metrics_from_embeddings(emb: dict[str, Any], task: str | None = None) -> dict[str, float | None]:
    """The metric table of :func:`evaluate_sbir` from :func:`embed_dataset`'s output."""
    if task is not None and task not in TASKS:
        raise DuetgenInputError(f"task must be one of {TASKS} or None (both); got {task!r}")
    out: dict[str, float | None] = {}
    sk, sl = emb["sketch"], emb["sketch_labels"]
    if emb["photo"] is None:
        if task == "fine-grained":
            raise DuetgenInputError("fine-grained evaluation needs a dataset with photos (Sketchy, QMUL)")
        q_idx, g_idx = sketch_only_split(sl)
        sim = (sk[q_idx] @ sk[g_idx].T).numpy()
        out.update(category_metrics(sim, sl[q_idx], sl[g_idx]))
        return out
    sim = (sk @ emb["photo"].T).numpy()  # (N, P)
    if task in (None, "category"):
        out.update(category_metrics(sim, sl, emb["photo_labels"]))
    if task in (None, "fine-grained"):
        out.update(fine_grained_metrics(sim, sl, emb["photo_labels"], emb["sketch_photo"]))
    return out


def sketch_only_split(labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Queries (even positions within each class) and gallery (odd positions) of a sketch-only evaluation."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    return np.flatnonzero(rank % 2 == 0), np.flatnonzero(rank % 2 == 1)


def evaluate_sbir(
    encoder,
    source: Any,
    *,
    task: str | None = None,
    query: str = "image",
    sketch_fit: str = "ink",
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, float | None]:
    """Zero-shot SBIR metrics of an encoder on a loader (usually the test classes of a split).

    Args:
        encoder: a :class:`~duetgen.ComposedQueryEncoder`.
        source: a loader (``SketchyDataset``, ``QMULDataset``, ``TUBerlinDataset``, ``QuickDrawDataset``).
        task: ``"category"`` (mAP@all, mAP@200, P@100, P@200), ``"fine-grained"`` (Acc@1, Acc@5, Acc@10 among the
            photos of the query's class) or ``None`` for both.
        query: ``"image"`` (V(S)) or ``"composed"`` (the duet sketch query).
        sketch_fit: framing of the sketches (``"ink"`` for real data).

    Returns:
        ``{"mAP@all": ..., "P@100": ..., "Acc@1": ...}``; a cut-off larger than the gallery maps to ``None``.
    """
    emb = embed_dataset(
        encoder, source, query=query, sketch_fit=sketch_fit, batch_size=batch_size, num_workers=num_workers
    )
    return metrics_from_embeddings(emb, task)


def chance_metrics(source: Any, task: str | None = None, trials: int = 5, seed: int = 0) -> dict[str, float | None]:
    """The metrics of random rankings (uniform random similarities), averaged over ``trials``."""
    rng = np.random.default_rng(seed)
    sl = np.asarray(source.sketch_labels)
    emb = {"sketch_labels": sl, "photo": None, "photo_labels": None, "sketch_photo": None}
    if has_photos(source):
        emb.update(photo_labels=np.asarray(source.photo_labels), sketch_photo=np.asarray(source.sketch_photo))
    runs = []
    for _ in range(trials):
        if emb["photo_labels"] is None:
            q_idx, g_idx = sketch_only_split(sl)
            sim = rng.random((len(q_idx), len(g_idx)), dtype=np.float32)
            runs.append(category_metrics(sim, sl[q_idx], sl[g_idx]))
            continue
        sim = rng.random((len(sl), len(emb["photo_labels"])), dtype=np.float32)
        r: dict[str, float | None] = {}
        if task in (None, "category"):
            r.update(category_metrics(sim, sl, emb["photo_labels"]))
        if task in (None, "fine-grained"):
            r.update(fine_grained_metrics(sim, sl, emb["photo_labels"], emb["sketch_photo"]))
        runs.append(r)
    return {k: (None if runs[0][k] is None else float(np.mean([r[k] for r in runs]))) for k in runs[0]}


def format_metrics_table(rows: dict[str, dict[str, float | None]], keys: Sequence[str] | None = None) -> str:
    """A markdown table: one row per named result, one column per metric."""
    if not rows:
        return ""
    keys = list(keys or next(iter(rows.values())).keys())
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, m in rows.items():
        cells = []
        for k in keys:
            v = m.get(k)
            cells.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "DATASETS",
    "open_sbir_dataset",
    "FINE_GRAINED_KS",
    "MAP_KS",
    "PRECISION_KS",
    "TASKS",
    "ClassBalancedBatches",
    "ImageTransforms",
    "SBIRLossConfig",
    "SBIRPairs",
    "category_metrics",
    "chance_metrics",
    "class_prompts",
    "class_text_features",
    "classification_loss",
    "clip_logit_scale",
    "collate_pairs",
    "embed_dataset",
    "evaluate_sbir",
    "f_divergence_loss",
    "fine_grained_metrics",
    "format_metrics_table",
    "gaussian_symmetric_kl",
    "has_photos",
    "metrics_from_embeddings",
    "patch_shuffle_loss",
    "pretrain_losses",
    "random_permutation_pairs",
    "sbir_losses",
    "shuffle_patches",
    "triplet_gaps",
    "triplet_loss",
]
