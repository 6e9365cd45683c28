import pytest
import torch

import duetgen
from duetgen import ComposedQueryEncoder, DuetgenInputError
from duetgen.backbones import get_clip_config
from duetgen.errors import CheckpointError

TEXTS = [
    "a photo of a red star",
    "x",
    "a big blue heart with stripes at the top left, tilted right",
    "pixel art of a small crescent",
]


@pytest.mark.parametrize("n_prefix", [0, 1, 2, 3, 5])
def test_splice_reproduces_open_clip_encode_text(tiny_encoder, n_prefix):
    """Ordinary word embeddings fed through the spliced path give open_clip's own encode_text: the EOS index is
    right."""
    enc = tiny_encoder
    texts = [t for t in TEXTS if len(enc.word_ids(t)) >= n_prefix]
    with torch.no_grad():
        ref = enc.clip.encode_text(enc.tokenizer(texts), normalize=True)
        prefix = torch.stack([enc.word_embeddings(t)[:n_prefix] for t in texts])  # (B, n, W)
        rest = [enc.tokenizer.decode(enc.word_ids(t)[n_prefix:]) for t in texts]
        emb, eos = enc.compose_embeddings(prefix, rest)
        mine = enc.encode_token_embeddings(emb, eos)
    assert torch.equal(eos.cpu(), torch.tensor([1 + len(enc.word_ids(t)) for t in texts]))
    assert (mine - ref).abs().max() < 1e-5


def test_handcrafted_prompt_query_equals_plain_text(tiny_encoder):
    enc = tiny_encoder
    with torch.no_grad():
        q = enc.encode_query(words=["red star", "blue heart with dots"], prompt="handcrafted")
        ref = enc.clip.encode_text(enc.tokenizer(["a photo of red star", "a photo of blue heart with dots"]), True)
    assert (q - ref).abs().max() < 1e-5


def test_visual_path_without_prompts_equals_open_clip():
    torch.manual_seed(0)
    enc = ComposedQueryEncoder(get_clip_config("duetgen-tiny"), num_visual_prompts=0).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ref = enc.clip.encode_image(enc.normalize_images(x), normalize=True)
        assert (enc.encode_image(x) - ref).abs().max() < 1e-5


def test_visual_prompts_and_patch_tokens(tiny_encoder):
    enc = tiny_encoder
    assert enc.visual_prompts.shape[0] == 3
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = enc.encode_photo(x)
        assert out.embeds.shape == (2, 32) and out.patch_embeds.shape == (2, 16, 32)
        assert torch.allclose(out.embeds.norm(dim=-1), torch.ones(2))
        before = enc.encode_image(x)
        enc.visual_prompts.add_(torch.randn_like(enc.visual_prompts))  # (a constant shift is removed by ln_pre)
        assert (enc.encode_image(x) - before).abs().max() > 1e-3  # the prompts take part in the forward pass
        # larger inputs are resized to the model's image size
        assert enc.encode_image(torch.rand(1, 3, 64, 64)).shape == (1, 32)


def _step_and_diff(enc, mode, **kwargs):
    params = enc.set_trainable(mode, **kwargs)
    before = {k: v.detach().clone() for k, v in enc.named_parameters()}
    opt = torch.optim.SGD(params, lr=0.5)
    x = torch.rand(4, 3, 32, 32)
    loss = (enc.encode_query(x, ["red", "blue with dots", "green", ""]) - enc.encode_image(x.flip(0))).pow(2).sum()
    loss.backward()
    opt.step()
    return {k for k, v in enc.named_parameters() if not torch.equal(v, before[k])}


def test_prompt_mode_trains_only_layernorms_and_prompts(tiny_encoder):
    changed = _step_and_diff(tiny_encoder, "prompts")
    assert "visual_prompts" in changed
    assert any("ln_" in k or ".ln_1." in k for k in changed)
    for k in changed:
        assert k == "visual_prompts" or ("clip.visual" in k and ("ln" in k)), k
    for frozen in ("clip.visual.class_embedding", "clip.visual.positional_embedding", "clip.visual.proj"):
        assert frozen not in changed
    assert not any("in_proj" in k or k.startswith("clip.transformer") or "mapper" in k for k in changed)


def test_duet_mode_keeps_text_encoder_frozen(tiny_encoder):
    changed = _step_and_diff(tiny_encoder, "duet")
    assert {"prompt_tokens", "mapper.0.weight", "visual_prompts"} <= changed
    assert not any(k.startswith(("clip.transformer", "clip.token_embedding", "clip.ln_final")) for k in changed)
    assert "clip.text_projection" not in changed and "clip.visual.conv1.weight" not in changed


def test_visual_blocks_train_the_last_blocks_of_v_and_nothing_of_the_text_tower(tiny_encoder):
    n = len(tiny_encoder.clip.visual.transformer.resblocks)
    method = set(_step_and_diff(tiny_encoder, "duet"))
    changed = _step_and_diff(tiny_encoder, "duet", visual_blocks=1)
    last = f"clip.visual.transformer.resblocks.{n - 1}."
    assert {last + "attn.in_proj_weight", last + "mlp.c_fc.weight", "clip.visual.proj"} <= changed
    assert changed - method == {k for k in changed if k.startswith(last) and ".ln_" not in k} | {"clip.visual.proj"}
    assert not any(k.startswith(("clip.transformer", "clip.token_embedding", "clip.ln_final")) for k in changed)
    assert "clip.visual.transformer.resblocks.0.attn.in_proj_weight" not in changed
    for bad, mode in ((n + 1, "duet"), (-1, "duet"), (1, "all")):
        with pytest.raises(ValueError, match="visual_blocks"):
            tiny_encoder.set_trainable(mode, visual_blocks=bad)


def test_batch_with_different_word_lengths_matches_single(tiny_encoder):
    enc = tiny_encoder
    x = torch.rand(3, 3, 32, 32)
    words = ["red", "with many long stripes in pixel art at night", ""]
    with torch.no_grad():
        batch = enc.encode_query(x, words)
        single = torch.cat([enc.encode_query(x[i : i + 1], [w]) for i, w in enumerate(words)])
        sk_only = enc.encode_query(x)
    assert (batch - single).abs().max() < 1e-5
    assert (batch[2] - sk_only[2]).abs().max() < 1e-6  # empty words == sketch-only query
    assert (batch[0] - sk_only[0]).abs().max() > 1e-4  # words change the query


def test_query_variants(tiny_encoder):
    enc = tiny_encoder
    x, p = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        sk, ph = enc.encode_sketch(x), enc.encode_image(p)
        q = enc.encode_query(sketch_embeds=sk)
        qd = enc.encode_query_delta(sk, ph)
        qn = enc.encode_query(sketch_embeds=sk, words="a simple line drawing")
        qt = enc.encode_query(words=["red", "blue"])
    for t in (qd, qn, qt):
        assert t.shape == q.shape and not torch.allclose(t, q)


def test_too_long_words_are_an_error_not_truncation(tiny_encoder):
    with pytest.raises(DuetgenInputError, match="too long"):
        tiny_encoder.encode_query(torch.rand(1, 3, 32, 32), ["very " * 40 + "red"])
    with pytest.raises(DuetgenInputError, match="neither"):
        tiny_encoder.encode_query()
    with pytest.raises(DuetgenInputError, match="one per sketch"):
        tiny_encoder.encode_query(torch.rand(2, 3, 32, 32), ["red"])
    with pytest.raises(DuetgenInputError, match=r"\(B, 3, H, W\)"):
        tiny_encoder.encode_image(torch.rand(3, 32, 32))


def test_save_load_round_trip_is_exact_and_safetensors_only(tiny_encoder, tmp_path):
    enc = tiny_encoder
    enc.save_pretrained(tmp_path / "enc")
    files = sorted(p.name for p in (tmp_path / "enc").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = duetgen.load_encoder(tmp_path / "enc")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(enc.encode_query(x, ["red", "blue"]), loaded.encode_query(x, ["red", "blue"]))
        assert torch.equal(enc.encode_photo(x).patch_embeds, loaded.encode_photo(x).patch_embeds)
    assert loaded.identity == enc.identity


def test_load_refuses_pickles_and_unknown_config(tiny_encoder, tmp_path):
    folder = tmp_path / "enc"
    tiny_encoder.save_pretrained(folder)
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CheckpointError, match="never unpickles"):
        duetgen.load_encoder(folder)
    (folder / "diffusion_pytorch_model.bin").unlink()
    cfg = (folder / "config.json").read_text().replace('"backbone"', '"evil_key": 1, "backbone"')
    (folder / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="evil_key"):
        duetgen.load_encoder(folder)
    with pytest.raises(CheckpointError, match="no config.json"):
        duetgen.load_encoder(tmp_path)
    with pytest.raises(CheckpointError, match="neither a folder nor a known backbone"):
        duetgen.load_encoder("no-such-model")
