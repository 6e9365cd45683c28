"""The "CLIP for all things" losses, data views and evaluation (duetgen.zs_sbir), on a tiny real encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SKETCHY

from duetgen import zs_sbir as zs
from duetgen.errors import DuetgenInputError


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


# ----------------------------------------------------------------------------------------------------------
# patch shuffle


def test_shuffle_patches_moves_tiles():
    img = torch.zeros(1, 1, 4, 4)
    for t, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):  # tile t filled with value t
        img[0, 0, r : r + 2, c : c + 2] = t
    perm = torch.tensor([[3, 0, 2, 1]])
    out = zs.shuffle_patches(img, perm, grid=2)
    tiles = [out[0, 0, r, c].item() for r, c in [(0, 0), (0, 2), (2, 0), (2, 2)]]
    assert tiles == [3, 0, 2, 1]
    assert torch.equal(zs.shuffle_patches(img, torch.tensor([[0, 1, 2, 3]])), img)
    with pytest.raises(DuetgenInputError, match="divisible"):
        zs.shuffle_patches(torch.zeros(1, 1, 5, 5), perm, grid=2)


def test_permutation_pairs_always_differ():
    a, b = zs.random_permutation_pairs(500, grid=2, generator=torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (500, 4)
    assert not (a == b).all(1).any()
    assert torch.equal(a.sort(1).values, torch.arange(4).expand(500, 4))
    assert torch.equal(b.sort(1).values, torch.arange(4).expand(500, 4))


def test_patch_shuffle_loss_lower_when_permutations_agree(tiny_encoder):
    x = _images(6)
    pi, other = zs.random_permutation_pairs(6, 2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        agree = zs.patch_shuffle_loss(tiny_encoder, x, x, margin=0.3, perms=(pi, pi, other))
        disagree = zs.patch_shuffle_loss(tiny_encoder, x, x, margin=0.3, perms=(pi, other, pi))
        default = zs.patch_shuffle_loss(tiny_encoder, x, x, margin=0.3, generator=torch.Generator().manual_seed(1))
    assert agree < 0.3 < disagree
    assert torch.allclose(default, agree)  # the default draws (pi, pi, pi')


# ----------------------------------------------------------------------------------------------------------
# f-divergence


def test_gaussian_symmetric_kl_matches_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    mu_p, var_p, mu_q, var_q = torch.tensor(0.3), torch.tensor(0.5), torch.tensor(-0.2), torch.tensor(1.7)
    p, q = Normal(mu_p, var_p.sqrt()), Normal(mu_q, var_q.sqrt())
    expected = kl_divergence(p, q) + kl_divergence(q, p)
    assert torch.allclose(zs.gaussian_symmetric_kl(mu_p, var_p, mu_q, var_q), expected, atol=1e-6)


def test_f_divergence_zero_for_identical_categories_positive_otherwise():
    base = torch.tensor([-0.3, -0.1, 0.0, 0.2, 0.5])
    groups = torch.arange(3).repeat_interleave(5)
    same = base.repeat(3)
    assert zs.f_divergence_loss(same, groups).abs() < 1e-6
    shifted = torch.cat([base, base, base + 0.4])
    scaled = torch.cat([base, base, base * 3])
    more_shifted = torch.cat([base, base, base + 0.8])
    assert zs.f_divergence_loss(shifted, groups) > 1e-3
    assert zs.f_divergence_loss(scaled, groups) > 1e-3
    assert zs.f_divergence_loss(more_shifted, groups) > zs.f_divergence_loss(shifted, groups)
    # categories with fewer than min_samples gaps are left out; fewer than 2 categories -> 0
    assert zs.f_divergence_loss(shifted, groups, min_samples=6) == 0


def test_f_divergence_gradient_pulls_categories_together():
    gaps = torch.tensor([0.0, 0.1, -0.1, 0.5, 0.6, 0.4], requires_grad=True)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    zs.f_divergence_loss(gaps, groups).backward()
    assert gaps.grad[:3].sum() < 0 < gaps.grad[3:].sum()  # lower category moves up, upper moves down


# ----------------------------------------------------------------------------------------------------------
# triplet and classification


def test_triplet_gaps_match_explicit_loops():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    pos = torch.rand(4, 5, generator=g) > 0.6
    neg = ~pos & (torch.rand(4, 5, generator=g) > 0.3)
    gaps, anchor = zs.triplet_gaps(a, c, pos, neg)
    expected = [
        ((1 - a[i] @ c[j]) - (1 - a[i] @ c[k]), i)
        for i in range(4)
        for j in range(5)
        for k in range(5)
        if pos[i, j] and neg[i, k]
    ]
    assert len(gaps) == len(expected)
    assert torch.allclose(gaps, torch.stack([e[0] for e in expected]), atol=1e-6)
    assert anchor.tolist() == [e[1] for e in expected]
    assert torch.allclose(zs.triplet_loss(gaps, 0.3), torch.relu(0.3 + gaps).mean())


def test_fine_grained_negatives_come_from_the_same_class(tiny_encoder):
    x, y = _images(4, seed=2), _images(4, seed=3)
    text = zs.class_text_features(tiny_encoder, ["a", "b", "c", "d"])
    one_per_class = torch.tensor([0, 1, 2, 3])
    fine = zs.SBIRLossConfig.for_task("fine-grained", w_cls=0, w_fdiv=0, w_shuffle=0)
    cat = zs.SBIRLossConfig.for_task("category", w_cls=0)
    with torch.no_grad():
        out_f = zs.sbir_losses(tiny_encoder, x, one_per_class, text, fine, photos=y)
        out_c = zs.sbir_losses(tiny_encoder, x, one_per_class, text, cat, photos=y)
        # one class only: category-level has no negative, fine-grained has every other photo
        same = torch.zeros(4, dtype=torch.long)
        out_f1 = zs.sbir_losses(tiny_encoder, x, same, text, fine, photos=y)
        out_c1 = zs.sbir_losses(tiny_encoder, x, same, text, cat, photos=y)
    assert out_f["triplet"] == 0 and out_c["triplet"] > 0
    assert out_c1["triplet"] == 0 and out_f1["triplet"] > 0
    # two sketches of one photo: that photo is never a fine-grained negative of either
    with torch.no_grad():
        shared = zs.sbir_losses(
            tiny_encoder, x[:2], same[:2], text, fine, photos=y[:2], photo_index=torch.tensor([7, 7])
        )
    assert shared["triplet"] == 0


def test_task_defaults_and_weights():
    fine = zs.SBIRLossConfig.for_task("fine-grained")
    assert (fine.w_triplet, fine.w_cls, fine.w_fdiv, fine.w_shuffle, fine.margin, fine.grid) == (
        1,
        0.5,
        0.1,
        1,
        0.3,
        2,
    )
    cat = zs.SBIRLossConfig.for_task("category", w_cls=None, margin=0.2)
    assert (cat.w_cls, cat.w_fdiv, cat.w_shuffle, cat.margin) == (0.5, 0, 0, 0.2)
    with pytest.raises(DuetgenInputError, match="task"):
        zs.SBIRLossConfig(task="scene")


def test_classification_uses_frozen_text_features_at_clip_temperature(tiny_encoder):
    enc = tiny_encoder
    classes = ["cat", "dog", "car_(sedan)"]
    assert zs.class_prompts(classes)[2] == "a photo of a car (sedan)"
    text = zs.class_text_features(enc, classes)
    assert not text.requires_grad and text.shape == (3, enc.embed_dim)
    enc.set_trainable("all")  # even with the text tower trainable, the features stay frozen
    x, y = _images(6, seed=4), _images(6, seed=5)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    cfg = zs.SBIRLossConfig.for_task("fine-grained")
    out = zs.sbir_losses(enc, x, labels, text, cfg, photos=y, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"triplet", "cls", "fdiv", "shuffle", "loss"}
    expected = sum(w * out[k] for k, w in [("triplet", 1), ("cls", 0.5), ("fdiv", 0.1), ("shuffle", 1)])
    assert torch.allclose(out["loss"], expected)
    out["loss"].backward()
    text_params = [
        enc.clip.token_embedding.weight,
        *enc.clip.transformer.parameters(),
        *enc.clip.ln_final.parameters(),
    ]
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in text_params)
    assert enc.clip.visual.ln_post.weight.grad.abs().sum() > 0
    assert enc.visual_prompts.grad.abs().sum() > 0
    # temperature = CLIP logit scale
    with torch.no_grad():
        s, p_ = enc.encode_image(x), enc.encode_image(y)
        scale = enc.clip.logit_scale.exp()
        ce = lambda e: torch.nn.functional.cross_entropy(scale * e @ text.T, labels)  # noqa: E731
        assert torch.allclose(out["cls"], 0.5 * (ce(s) + ce(p_)), atol=1e-5)


def test_prompts_mode_trains_only_layernorms_and_visual_prompts(tiny_encoder):
    params = tiny_encoder.set_trainable("prompts")
    names = {n for n, p in tiny_encoder.named_parameters() if p.requires_grad}
    assert len(params) == len(names)
    assert all(n == "visual_prompts" or (n.startswith("clip.visual.") and ("ln_" in n or ".ln_" in n)) for n in names)
    assert "visual_prompts" in names and not any("in_proj" in n or "positional" in n for n in names)


def test_sketch_only_batches_use_sketch_candidates(tiny_encoder):
    x = _images(6, seed=6)
    text = zs.class_text_features(tiny_encoder, ["a", "b", "c"])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        out = zs.sbir_losses(tiny_encoder, x, labels, text, zs.SBIRLossConfig())
    assert out["triplet"] > 0 and out["cls"] > 0
    with pytest.raises(DuetgenInputError, match="pairs"):
        zs.sbir_losses(tiny_encoder, x, labels, text, zs.SBIRLossConfig.for_task("fine-grained"))


# ----------------------------------------------------------------------------------------------------------
# batches and evaluation


def test_class_balanced_batches_deterministic_and_photo_unique():
    labels = np.repeat(np.arange(5), 6)
    sketch_photo = np.repeat(np.arange(15), 2)  # two sketches per photo, three photos per class
    full = zs.ClassBalancedBatches(labels, 3, 2, steps=6, seed=1, sketch_photo=sketch_photo)
    resumed = zs.ClassBalancedBatches(labels, 3, 2, steps=6, start=4, seed=1, sketch_photo=sketch_photo)
    batches = list(full)
    assert len(batches) == 6 and list(resumed) == batches[4:]
    for b in batches:
        assert len(b) == 6 and len(set(labels[b])) == 3
        assert len(set(sketch_photo[b])) == 6  # no photo twice in a batch
    assert list(zs.ClassBalancedBatches(labels, 3, 2, steps=6, seed=2, sketch_photo=sketch_photo)) != batches


def test_fine_grained_metrics_rank_within_class_only():
    rng = np.random.default_rng(0)
    ql = np.array([0, 0, 1, 1, 1])
    gl = np.array([0, 0, 0, 1, 1, 1, 1])
    targets = np.array([0, 2, 3, 5, 6])
    sim = rng.random((5, 7)).astype(np.float32)
    got = zs.fine_grained_metrics(sim, ql, gl, targets, ks=(1, 2, 5))
    hits = {1: 0, 2: 0, 5: 0}
    for i in range(5):
        cand = np.flatnonzero(gl == ql[i])
        rank = 1 + sum(sim[i, j] > sim[i, targets[i]] for j in cand)
        for k in hits:
            hits[k] += rank <= k
    assert got == {f"Acc@{k}": hits[k] / 5 for k in (1, 2, 5)}
    assert got["Acc@5"] == 1.0  # classes of 3 and 4 photos: always inside the top 5


def test_category_metrics_none_when_k_exceeds_gallery():
    sim = np.random.default_rng(0).random((4, 50)).astype(np.float32)
    out = zs.category_metrics(sim, [0, 1, 0, 1], np.arange(50) % 2)
    assert out["P@100"] is None and out["mAP@200"] is None and 0 < out["mAP@all"] <= 1


@pytest.mark.skipif(not SKETCHY.is_dir(), reason="sketchy128 sample not present")
def test_open_split_and_transforms_on_real_data(tiny_encoder):
    test = zs.open_sbir_dataset("sketchy", SKETCHY, "sketchy128_zs", "test")
    train = zs.open_sbir_dataset("sketchy", SKETCHY, "sketchy128_zs", "train")
    assert len(test.classes) == 21 and len(train.classes) == 83 and not set(test.classes) & set(train.classes)
    tf = zs.ImageTransforms(32, "ink")
    s, p = tf.sketch(test.load_sketch(0)), tf.photo(test.load_photo(0))
    assert s.shape == p.shape == (3, 32, 32) and 0 <= s.min() and s.max() <= 1 and p.std() > 0.01
    assert s.min() < 0.5 < s.max()  # ink on paper
    with pytest.raises(DuetgenInputError, match="QMUL"):
        zs.open_sbir_dataset("qmul", SKETCHY, "sketchy128_zs")
