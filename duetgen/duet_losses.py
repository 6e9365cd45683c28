"""The losses of the sketch+text duet (DESIGN.md, "Sketch+text duet") and the stage-1 CLIP loss.

Distances are ``d(a, b) = 1 - cos(a, b)`` on L2-normalised embeddings. A batch is a set of twin groups
(:mod:`duetgen.world_dataset`) or, for real data, plain (sketch, photo) pairs where every photo is its own
instance. Every term has a weight in :class:`DuetLossConfig`; a weight of 0 switches the term off (ablation).

Region-aware triplet (L_RT), the formula duetgen uses since the papers give none::

    s_RT(q, P) = (1 / k) * sum_{j in top-k} cos(q, z_j)        z_j = projected patch tokens of P, k = rt_topk
    L_RT = mean over (q, p+, p-) of max(0, m_RT - s_RT(q, p+) + s_RT(q, p-))

i.e. a photo is scored by its k best-matching regions, so an object that fills a small part of the photo is not
drowned by the background; this is the same score scene retrieval uses at query time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

NEUTRAL_TEXTS: tuple[str, ...] = (
    "a simple line drawing",
    "a quick sketch",
    "a black and white drawing",
    "a hand drawn outline",
    "a rough doodle",
)


@dataclass
class DuetLossConfig:
    """Weights and hyper-parameters of the duet losses (0 turns a term off)."""

    w_trip: float = 1.0  # L_trip: triplet d(q, p+) vs d(q, p-)
    w_nce: float = 1.0  # in-batch InfoNCE on the same pairs (a denser signal than the triplet; 0 = paper-only)
    w_comp: float = 0.5  # L_comp: the delta query matches p+ better than q and better than p-
    w_reg: float = 0.3  # L_reg: neutral words add nothing
    w_tt: float = 0.3  # L_TT: learned prompt close to the handcrafted prompt
    w_rt: float = 0.5  # L_RT: region-aware triplet (formula in the module docstring)
    margin: float = 0.2  # triplet margin (DESIGN: 0.2 to 0.3)
    margin_rt: float = 0.1  # region-aware triplet margin
    rt_topk: int = 4  # regions that score a photo
    temperature: float = 0.05  # InfoNCE temperature
    caption_supervised: bool = False  # splice the attribute words after the sketch token during training
    neutral_texts: tuple[str, ...] = field(default_factory=lambda: NEUTRAL_TEXTS)


def triplet_all(sim: torch.Tensor, pos: torch.Tensor, neg_mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean hinge over all negatives: max(0, m + d(q, p+) - d(q, p-)) with d = 1 - sim.

    Args:
        sim: (Q, N) similarities between queries and candidates.
        pos: (Q,) index of each query's positive.
        neg_mask: (Q, N) bool, True where a candidate is a valid negative.
    """
    s_pos = sim.gather(1, pos[:, None])  # (Q, 1)
    hinge = F.relu(margin - s_pos + sim) * neg_mask  # (Q, N)
    active = (hinge > 0).sum(1).clamp(min=1)
    return (hinge.sum(1) / active).mean()


def info_nce(sim: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy over the valid candidates (positive + negatives); other candidates are masked out."""
    logits = (sim / temperature).masked_fill(~valid, float("-inf"))
    return F.cross_entropy(logits, pos)


def region_scores(queries: torch.Tensor, patch_embeds: torch.Tensor, topk: int) -> torch.Tensor:
    """s_RT for every (query, photo) pair: (Q, D) x (N, P, D) -> (Q, N) mean of the top-k patch similarities."""
    sims = torch.einsum("qd,npd->qnp", queries, patch_embeds)  # (Q, N, P)
    k = min(topk, sims.shape[-1])
    return sims.topk(k, dim=-1).values.mean(-1)


def clip_contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric CLIP InfoNCE on matched (B, D) pairs (stage 1: the CLIP stand-in)."""
    logits = logit_scale.exp().clamp(max=100) * image_embeds @ text_embeds.T  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def duet_losses(
    encoder,
    sketches: torch.Tensor,
    photos: torch.Tensor,
    photo_instance: torch.Tensor,
    words: list[str] | None,
    cfg: DuetLossConfig,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """All duet loss terms for one batch.

    Args:
        encoder: a :class:`~duetgen.ComposedQueryEncoder`.
        sketches: (S, 3, H, W) one sketch per instance.
        photos: (N, 3, H, W) photos; ``photo_instance[n]`` is the sketch index photo n depicts.
        photo_instance: (N,) long.
        words: N strings, the attribute words of each photo (needed when ``cfg.caption_supervised``).
        cfg: weights and margins.
        generator: picks which photo of an instance is p+ in the caption-free setting.

    Returns:
        dict with every active term, and ``"loss"`` = their weighted sum.
    """
    device = photos.device
    n_sk = sketches.shape[0]
    sk = encoder.encode_sketch(sketches)  # (S, D)
    ph = encoder.encode_photo(photos)
    p_emb, p_patch = ph.embeds, ph.patch_embeds  # (N, D), (N, P, D)
    same_inst = photo_instance[None, :] == torch.arange(n_sk, device=device)[:, None]  # (S, N)

    if cfg.caption_supervised:
        # one query per photo: its instance's sketch + its attribute words; only that photo is positive
        q_sk = sk[photo_instance]  # (N, D)
        q = encoder.encode_query(sketch_embeds=q_sk, words=list(words))  # (N, D)
        pos = torch.arange(q.shape[0], device=device)
        neg = ~torch.eye(q.shape[0], dtype=torch.bool, device=device)
        valid = torch.ones_like(neg)
        q_base_sk = q_sk
    else:
        # the paper's setting: no words; p+ is one photo of the sketch's instance, the other photos of the same
        # instance (same geometry, other colour) are neither positive nor negative
        q = encoder.encode_query(sketch_embeds=sk)  # (S, D)
        r = torch.rand(same_inst.shape, generator=generator).to(device) * same_inst
        pos = r.argmax(1)  # (S,)
        neg = ~same_inst
        valid = neg.clone()
        valid[torch.arange(n_sk, device=device), pos] = True
        q_base_sk = sk

    out: dict[str, torch.Tensor] = {}
    sim = q @ p_emb.T  # (Q, N)
    if cfg.w_trip:
        out["trip"] = triplet_all(sim, pos, neg, cfg.margin)
    if cfg.w_nce:
        out["nce"] = info_nce(sim, pos, valid, cfg.temperature)
    if cfg.w_comp:
        p_pos = p_emb[pos]  # (Q, D)
        q_delta = encoder.encode_query_delta(q_base_sk, p_pos)  # (Q, D)
        sim_d = q_delta @ p_emb.T
        # better than p-: every photo but p+ is a negative (the delta carries p+'s attributes)
        neg_d = ~torch.nn.functional.one_hot(pos, sim.shape[1]).bool()
        better_than_q = F.relu(cfg.margin - (q_delta * p_pos).sum(-1) + (q * p_pos).sum(-1).detach()).mean()
        out["comp"] = triplet_all(sim_d, pos, neg_d, cfg.margin) + better_than_q
    if cfg.w_reg:
        idx = torch.randint(len(cfg.neutral_texts), (q.shape[0],), generator=generator).tolist()
        neutral = [cfg.neutral_texts[i] for i in idx]
        base_words = list(words) if cfg.caption_supervised else None
        if base_words is not None:
            neutral = [f"{w} {n}" for w, n in zip(base_words, neutral, strict=True)]
        q_neutral = encoder.encode_query(sketch_embeds=q_base_sk, words=neutral)
        out["reg"] = (1 - (q_neutral * q).sum(-1)).mean()
    if cfg.w_tt:
        q_hand = encoder.encode_query(
            sketch_embeds=q_base_sk, words=list(words) if cfg.caption_supervised else None, prompt="handcrafted"
        )
        out["tt"] = (1 - (q_hand * q).sum(-1)).mean()
    if cfg.w_rt:
        s_rt = region_scores(q, p_patch, cfg.rt_topk)  # (Q, N)
        out["rt"] = triplet_all(s_rt, pos, neg, cfg.margin_rt)
    weights = {
        "trip": cfg.w_trip,
        "nce": cfg.w_nce,
        "comp": cfg.w_comp,
        "reg": cfg.w_reg,
        "tt": cfg.w_tt,
        "rt": cfg.w_rt,
    }
    out["loss"] = sum(weights[k] * v for k, v in out.items())
    return out
