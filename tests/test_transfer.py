"""duetgen.transfer: a photo's outline, its attributes read zero-shot, and the phrase completed with what it keeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import needs_embedded
from PIL import Image

from duetgen import world
from duetgen.evaluator import instance_mask, mask_iou
from duetgen.transfer import (
    _attribute_text_embeds,
    complete_words,
    outline_sketch,
    parse_attribute_words,
    photo_silhouette,
    photo_tensor,
    read_attributes,
    transfer_query,
)

KINDS = ("colour", "pattern", "domain")
TEST_SEED = 424_243  # world items of these tests; no training or benchmark uses it


def world_photos(n: int, seed: int = TEST_SEED):
    """n held-out (instance, attributes, photo PIL) with every colour, pattern and domain represented."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        inst = world.sample_instance(rng)
        attrs = world.Attributes(tuple(world.COLOURS)[i % 8], world.PATTERNS[i % 4], world.DOMAINS[(i // 2) % 4])
        out.append((inst, attrs, Image.fromarray(world.render_photo(inst, attrs, 64, seed=i))))
    return out


@pytest.mark.parametrize(
    ("phrase", "named", "unknown"),
    [
        ("at night", {"domain": "night"}, []),
        ("in blue", {"colour": "blue"}, []),
        ("With Stripes!", {"pattern": "stripes"}, []),
        ("solid", {"pattern": "solid"}, []),
        ("blue with dots in pixel art", {"colour": "blue", "pattern": "dots", "domain": "pixel art"}, []),
        ("a checkered painting", {"pattern": "checks", "domain": "painting"}, []),
        ("spotted, violet, photo", {"pattern": "dots", "colour": "purple", "domain": "plain"}, []),
        ("red and blue", {"colour": "red"}, ["blue"]),  # two values of one attribute: the second is not read
        ("in a fluffy style", {}, ["fluffy"]),
    ],
)
def test_parse_attribute_words(phrase, named, unknown):
    assert parse_attribute_words(phrase) == (named, unknown)


def test_complete_words_keeps_what_the_phrase_does_not_name():
    src = world.Attributes("green", "stripes", "painting")
    assert complete_words("at night", src) == "green with stripes at night"
    assert complete_words("in blue", src) == "blue with stripes in a painting"
    assert complete_words("solid", src) == "solid green in a painting"
    assert complete_words("pink with checks in pixel art", src) == "pink with checks in pixel art"
    # words outside the world vocabulary, contradictions and empty phrases are not completed
    assert complete_words("at night with a hat", src) is None
    assert complete_words("red and blue", src) is None
    assert complete_words("", src) is None


def test_photo_outline_follows_the_object():
    """The outline a photo enters through matches the object's true silhouette across all four domains."""
    ious = []
    for inst, _, photo in world_photos(24):
        mask = photo_silhouette(photo)
        m64 = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((64, 64), Image.BILINEAR)) > 127
        ious.append(float(mask_iou(m64, instance_mask(inst, 64))))
    assert np.mean(ious) > 0.75 and min(ious) > 0.4, ious
    outline = outline_sketch(mask, 64)
    assert outline.shape == (3, 64, 64) and 0 <= outline.min() < 0.5 and outline.max() == 1.0
    assert (outline < 0.5).float().mean() < 0.2  # a stroke, not a filled blob


def test_transfer_query_plumbing(tiny_encoder):
    items = world_photos(3)
    photos = [p for _, _, p in items]
    phrases = ["at night", "in blue", "at night with a hat"]
    tq = transfer_query(tiny_encoder, photos, phrases, size=48)
    assert tq.query.shape == (3, tiny_encoder.embed_dim) and tq.sketches.shape == (3, 3, 48, 48)
    assert tq.states.shape[:2] == (3, tiny_encoder.context_length)
    assert all(isinstance(r, world.Attributes) for r in tq.read)
    # what the phrase names wins, the rest is the reading; free text stays as typed
    assert tq.words[0] == world.words(world.Attributes(**{**tq.read[0].to_dict(), "domain": "night"}))
    assert tq.words[1] == world.words(world.Attributes(**{**tq.read[1].to_dict(), "colour": "blue"}))
    assert tq.words[2] == "at night with a hat"
    # the composed query is the outline's pseudo-word with the completed words
    expected = tiny_encoder.encode_query(tq.sketches, tq.words)
    assert torch.allclose(tq.query, expected, atol=1e-5)
    bare = transfer_query(tiny_encoder, photos, phrases, complete=False)
    assert bare.words == phrases and bare.read == [None] * 3
    embed = transfer_query(tiny_encoder, photos, phrases, route="embed")
    side = tiny_encoder.image_size
    pixels = torch.stack([photo_tensor(p.resize((side, side), Image.BICUBIC)) for p in photos])
    expected = tiny_encoder.encode_query(sketch_embeds=tiny_encoder.encode_image(pixels), words=tq.words)
    assert embed.words == tq.words and torch.allclose(embed.query, expected, atol=1e-5)
    assert not torch.allclose(embed.query, tq.query)
    with pytest.raises(ValueError, match="one phrase per photo"):
        transfer_query(tiny_encoder, photos, phrases[:2])
    with pytest.raises(ValueError, match="no photos"):
        transfer_query(tiny_encoder, [], [])
    with pytest.raises(ValueError, match="route"):
        transfer_query(tiny_encoder, photos, phrases, route="outline")


@needs_embedded
def test_the_shipped_encoder_reads_a_photos_attributes():
    """Zero-shot reading with the embedded model: colour and domain almost always, the pattern well above chance, and
    reading through the composed query of the photo's outline reads the pattern better than the text tower alone.

    Measured on these 64 photos: text colour 0.98, pattern 0.41, domain 0.92; composed 0.98, 0.62, 1.00 (on 192
    held-out sources of recipes/attribute_transfer.py: 0.98 / 0.53 / 0.98 and 0.995 / 0.66 / 1.00). Chance is 1/8,
    1/4 and 1/4.
    """
    import duetgen

    encoder = duetgen.load_encoder().eval()
    items = world_photos(64)
    pixels = torch.stack([torch.from_numpy(np.asarray(p, dtype=np.float32) / 255).permute(2, 0, 1) for *_, p in items])
    with torch.no_grad():
        outlines = torch.stack([outline_sketch(photo_silhouette(p), encoder.image_size) for *_, p in items])
        outline_embeds = encoder.encode_sketch(outlines)
    truth = [a for _, a, _ in items]
    acc = {}
    for name, kw in (("text", {}), ("composed", {"sketch_embeds": outline_embeds})):
        read = read_attributes(encoder, pixels, batch_size=20, **kw)
        acc[name] = {k: np.mean([getattr(r, k) == getattr(a, k) for r, a in zip(read, truth, strict=True)])
                     for k in KINDS}  # fmt: skip
    assert acc["text"]["colour"] >= 0.85 and acc["text"]["domain"] >= 0.8 and acc["text"]["pattern"] >= 0.3, acc
    assert acc["composed"]["colour"] >= 0.9 and acc["composed"]["domain"] >= 0.9, acc
    assert acc["composed"]["pattern"] >= 0.5 and acc["composed"]["pattern"] >= acc["text"]["pattern"] + 0.1, acc
    with pytest.raises(ValueError, match="one each"):
        read_attributes(encoder, image_embeds=outline_embeds, sketch_embeds=outline_embeds[:3])


def test_each_photo_is_outlined_encoded_and_read_once(tiny_encoder):
    """A photo paired with several phrases (the recipe's input x phrase grid) costs one image encode for its
    reading and one for its outline, not one per pair; the attribute phrases' text embeddings are computed once per
    encoder and again only after its weights change."""
    (_, _, a), (_, _, b) = world_photos(2)
    batches = []
    hook = tiny_encoder.clip.visual.conv1.register_forward_hook(lambda m, args, out: batches.append(out.shape[0]))
    try:
        tq = transfer_query(tiny_encoder, [a, b, a, b], ["at night", "at night", "in blue", "in blue"], size=48)
    finally:
        hook.remove()
    assert batches == [2, 2]  # the 2 distinct photos, then their 2 outlines
    assert torch.equal(tq.sketches[0], tq.sketches[2]) and tq.read[0] == tq.read[2] and tq.read[1] == tq.read[3]
    with torch.no_grad():  # the reading is the composed query's (the outline with each phrase), not the text tower's
        side = tiny_encoder.image_size
        pixels = torch.stack([photo_tensor(p.resize((side, side), Image.BICUBIC)) for p in (a, b)])
        composed = read_attributes(tiny_encoder, pixels, sketch_embeds=tiny_encoder.encode_sketch(tq.sketches[:2]))
    assert tq.read[:2] == composed
    one = transfer_query(tiny_encoder, [b], ["in blue"], size=48)
    assert torch.allclose(one.query[0], tq.query[3], atol=1e-5) and one.words[0] == tq.words[3]

    texts = _attribute_text_embeds(tiny_encoder)
    assert texts.shape == (128, tiny_encoder.embed_dim) and _attribute_text_embeds(tiny_encoder) is texts
    with torch.no_grad():
        tiny_encoder.clip.token_embedding.weight.mul_(1.5)  # an in-place update, as an optimiser step makes
    fresh = _attribute_text_embeds(tiny_encoder)
    assert fresh is not texts and torch.allclose(fresh, tiny_encoder.encode_text([world.words(x) for x in
                                                                                  world.ALL_ATTRIBUTES]))  # fmt: skip
