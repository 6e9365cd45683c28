"""duetgen studio: draw a sketch, type a few words, and retrieve, generate, transfer attributes or find scenes.

Run it with ``duetgen studio`` (flags: ``--model DIR``, ``--gallery DIR``, ``--port N``, ``--allow-dir DIR``) or
``streamlit run apps/studio.py``. It works offline on the embedded default model and the shipped sample gallery;
``apps/studio_core.py`` documents the environment variables that point it elsewhere. Only duetgen's public API is
used.
"""

from __future__ import annotations

import hashlib
import io
import sys
from contextlib import contextmanager
from pathlib import Path

import streamlit as st
from PIL import Image
from streamlit.errors import StreamlitAPIException

sys.path.insert(0, str(Path(__file__).resolve().parent))

import studio_core as core  # noqa: E402

from duetgen import DuetgenError  # noqa: E402


def page_icon() -> Image.Image:
    """A local favicon (a material or emoji icon would be fetched from a CDN, which fails offline)."""
    import math

    from PIL import ImageDraw

    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.rounded_rectangle([0, 0, 63, 63], radius=14, fill=(59, 91, 219, 255))
    radii = [24 if i % 2 == 0 else 10 for i in range(11)]
    angles = [-math.pi / 2 + i * math.pi / 5 for i in range(11)]
    pts = [(32 + r * math.cos(a), 33 + r * math.sin(a)) for r, a in zip(radii, angles, strict=True)]
    draw.line(pts, fill=(255, 255, 255, 255), width=4, joint="curve")
    return icon


st.set_page_config(page_title="duetgen studio", page_icon=page_icon(), layout="wide")

CANVAS_SIDE = 300
GRID_COLUMNS = 4
CSS = """
<style>
  .block-container {padding-top: 2.2rem; padding-bottom: 2rem; max-width: 1400px;}
  [data-testid="stImageCaption"] {font-size: 0.78rem; color: #555;}
  div[data-testid="stImage"] img {border-radius: 6px; border: 1px solid #e6e6ea;}
  .duet-sub {color: #666; margin-top: -0.8rem; margin-bottom: 1rem;}
</style>
"""


# ---------------------------------------------------------------------------------------------------------------
# cached resources: loaded once per process, shared by every session
# ---------------------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner="Loading the model (once)…")
def get_models(model: str | None, stamp: tuple) -> core.Models:
    return core.load_models(model)


def model_stamp(model: str | None) -> tuple:
    """Changes when the model folder gains or replaces its files (e.g. the embedded generator lands)."""
    folder = Path(model) if model else core.PIPELINE_DIR
    return tuple(manifest_stamp(folder, name) for name in ("model_index.json", "config.json", "encoder/config.json"))


@st.cache_resource(show_spinner="Opening the gallery (once)…")
def get_gallery(path: str, stamp: float, model_key: str, _models: core.Models):
    return core.open_gallery(path, _models.encoder)


@st.cache_resource(show_spinner="Building the demo scene gallery (once)…")
def get_demo_scenes(model_key: str, cache_dir: str, n_scenes: int, _models: core.Models):
    path = core.build_demo_scenes(_models.encoder, Path(cache_dir), n_scenes)
    return core.open_gallery(path, _models.encoder)


@st.cache_resource
def get_config() -> core.StudioConfig:
    return core.StudioConfig.from_env()


def manifest_stamp(path: Path, name: str = "manifest.json") -> float:
    try:
        return (path / name).stat().st_mtime
    except OSError:
        return 0.0


@contextmanager
def shown_errors(prefix: str = ""):
    """Shows a DuetgenError / ValueError as a one-line st.error and carries on with the page."""
    try:
        yield
    except (DuetgenError, ValueError, OSError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        st.error(f"{prefix}{msg}", icon=":material/error:")
    except Exception as err:  # noqa: BLE001 - the page must keep running; say what broke
        st.error(f"{prefix}unexpected {type(err).__name__}: {str(err)[:300]}", icon=":material/bug_report:")


def uploader(label: str, key: str):
    """A file uploader limited to the accepted types and size; a refused file becomes a DuetgenError."""
    try:
        return st.file_uploader(label, type=list(core.SKETCH_TYPES), key=key, max_upload_size=core.MAX_UPLOAD_MB)
    except StreamlitAPIException as err:  # a file the browser should have refused (wrong type, too big)
        raise DuetgenError(first_line(err).replace("`", "'")) from err


def first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def grid(images: list, captions: list[str], columns: int = GRID_COLUMNS) -> None:
    for start in range(0, len(images), columns):
        cols = st.columns(columns)
        for col, image, caption in zip(
            cols, images[start : start + columns], captions[start : start + columns], strict=False
        ):
            col.image(image, caption=caption, width="stretch")


# ---------------------------------------------------------------------------------------------------------------
# sidebar: model and gallery
# ---------------------------------------------------------------------------------------------------------------

config = get_config()
st.markdown(CSS, unsafe_allow_html=True)

models = None
model_key = ""
gallery = None
gallery_error = None
trusted_roots: list[Path] = []

with st.sidebar:
    st.markdown("## :material/draw: duetgen studio")
    st.caption("A sketch says *what* and *how it is posed*; a few words say colour, pattern and style.")

    st.markdown("#### Model")
    model_choice = st.radio(
        "Model", ["Embedded default", "Folder"], index=1 if config.model else 0, key="model_choice",
        horizontal=True, label_visibility="collapsed",
    )  # fmt: skip
    model_arg = None
    with shown_errors("Model: "):
        if model_choice == "Folder":
            typed = st.text_input("Model folder", value=config.model or "", key="model_dir",
                                  placeholder="a pipeline or encoder folder (save_pretrained)")  # fmt: skip
            model_arg = str(core.allowed_path(typed, config, "model"))
        models = get_models(model_arg, model_stamp(model_arg))
        model_key = model_arg or "embedded"
        gen = "yes" if models.pipe is not None else "no (encoder only)"
        name = models.source if model_arg is None else Path(models.source).name
        st.caption(
            f"**{name}** · dim {models.encoder.embed_dim} · {models.encoder.image_size} px · generator: {gen}",
            help=models.source,
        )

    st.markdown("#### Gallery")
    gallery_choice = st.radio(
        "Gallery", ["Sample gallery", "Folder"], index=1 if config.gallery else 0, key="gallery_choice",
        horizontal=True, label_visibility="collapsed",
    )  # fmt: skip
    if models is not None:
        try:
            if gallery_choice == "Folder":
                typed = st.text_input("Gallery folder", value=config.gallery or "", key="gallery_dir",
                                      placeholder="a folder built with 'duetgen index'")  # fmt: skip
                gpath = core.allowed_path(typed, config, "gallery")
                trusted = config.gallery is not None and gpath == Path(config.gallery).resolve()
            else:
                gpath = core.sample_gallery_dir()
                trusted = True
                if not (gpath / "manifest.json").is_file():
                    raise DuetgenError(
                        f"the sample gallery is not in this install yet ({gpath}); build it with 'duetgen index' "
                        "or pick a gallery folder"
                    )
            gallery = get_gallery(str(gpath), manifest_stamp(gpath), model_key, models)
            if trusted:
                trusted_roots = core.gallery_image_roots(gallery)
            regions = "with regions" if gallery.regions is not None else "no regions"
            st.caption(f"**{len(gallery)} photos** · {regions} · `{gpath.name}`")
        except (DuetgenError, ValueError, OSError) as err:
            gallery_error = first_line(err)
            st.error(f"Gallery: {gallery_error}", icon=":material/error:")

    with st.expander("Folders the studio may read"):
        for d in config.allow_dirs:
            st.caption(f"`{d}`")
        st.caption("Add one with `duetgen studio --allow-dir DIR`.")

image_roots = config.allow_dirs + trusted_roots

# ---------------------------------------------------------------------------------------------------------------
# header and the shared input: sketch + words
# ---------------------------------------------------------------------------------------------------------------

st.markdown("## Sketch + words → one query")
st.markdown(
    '<p class="duet-sub">Draw an object (or upload a sketch), add words for what a sketch cannot show, then '
    "retrieve photos, generate images, transfer attributes or find scenes.</p>",
    unsafe_allow_html=True,
)

sketch = None  # (3, S, S) in [0, 1]
sketch_error = None


def to_sketch(src, name: str):
    """Any sketch source -> (3, S, S) for the current model (None until a model is loaded)."""
    return core.read_sketch_source(src, models, name) if models is not None else None


left, right = st.columns([1.15, 1], gap="large")

with left:
    st.markdown("##### Sketch")
    source = st.radio(
        "Sketch source", ["Draw", "Upload", "Sample"], horizontal=True, key="sketch_source",
        label_visibility="collapsed",
    )  # fmt: skip
    try:
        if source == "Draw":
            try:
                from streamlit_drawable_canvas import st_canvas
            except Exception as err:  # noqa: BLE001 - the component is optional: fall back to uploads
                raise DuetgenError(f"the drawing canvas is unavailable ({first_line(err)}); upload a sketch") from err
            tools = st.columns([3, 1])
            pen = tools[0].slider("Pen width", 1, 20, 6, key="pen_width")
            if tools[1].button("Clear", key="clear_canvas", width="stretch"):
                st.session_state["canvas_round"] = st.session_state.get("canvas_round", 0) + 1
            result = st_canvas(
                stroke_width=pen, stroke_color="#111111", background_color="#ffffff", height=CANVAS_SIDE,
                width=CANVAS_SIDE, drawing_mode="freedraw", return_image_data=True, update_streamlit=True,
                key=f"canvas-{st.session_state.get('canvas_round', 0)}",
            )  # fmt: skip
            st.caption("Undo and redo are in the canvas toolbar.")
            if core.canvas_has_strokes(result.json_data):
                if result.image_data is None:
                    raise DuetgenError("the canvas sent no image yet; lift the pen to finish the stroke")
                sketch = to_sketch(core.canvas_image(result.image_data), "canvas")
        elif source == "Upload":
            upload = uploader(f"Sketch file (up to {core.MAX_UPLOAD_MB} MB)", "sketch_upload")
            if upload is not None:
                data = upload.getvalue()
                core.check_upload(upload.name, data, core.SKETCH_TYPES)
                sketch = to_sketch(data, upload.name)
        else:
            samples = core.sample_sketches()
            if not samples:
                raise DuetgenError("no sample sketches in this install (samples/sketches)")
            name = st.selectbox("Sample sketch", list(samples), key="sketch_sample")
            sketch = to_sketch(samples[name], name)
    except (DuetgenError, ValueError) as err:
        sketch_error = first_line(err)
        st.error(f"Sketch: {sketch_error}", icon=":material/error:")
        sketch = None

with right:
    st.markdown("##### Words")
    words = st.text_input(
        "Words", key="words", placeholder="e.g. red with stripes in pixel art", label_visibility="collapsed",
        max_chars=200,
    )  # fmt: skip
    st.caption("Try: *red with stripes* · *blue with dots in a painting* · *green at night*")
    if sketch is not None:
        st.markdown("##### What the model sees")
        from torchvision.transforms.functional import to_pil_image

        st.image(core.display(to_pil_image(sketch), 160), width=160)
    elif not sketch_error:
        st.info("No sketch yet: draw one, upload one or pick a sample. Words alone work too.", icon=":material/draw:")


def query_for(mode: str):
    """The composed query for the current input, cached per (input, words, mode, model) in the session."""
    key = hashlib.sha1(
        (sketch.numpy().tobytes() if sketch is not None else b"") + f"|{words}|{mode}|{model_key}".encode()
    ).hexdigest()
    cache = st.session_state.setdefault("query_cache", {})
    if key not in cache:
        cache.clear()
        cache[key] = core.compose_query(models.encoder, sketch, words, mode)
    return cache[key]


def verifier_for(g):
    """One silhouette verifier per gallery in the session, so each photo's silhouette is read once."""
    from duetgen import SilhouetteVerifier

    kept = st.session_state.get("verifier")
    if kept is None or kept[0] != str(g.path):
        kept = st.session_state["verifier"] = (str(g.path), SilhouetteVerifier())
    return kept[1]


def scene_verifier_for(g):
    """One scene verifier per scene gallery and model in the session, so each scene's objects are read once."""
    from duetgen import SceneVerifier

    key = (str(g.path), model_key)
    kept = st.session_state.get("scene_verifier")
    if kept is None or kept[0] != key:
        kept = st.session_state["scene_verifier"] = (key, SceneVerifier(models.encoder))
    return kept[1]


# ---------------------------------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------------------------------

st.write("")
tab_retrieve, tab_generate, tab_transfer, tab_scenes = st.tabs(
    [
        ":material/search: Retrieve",
        ":material/palette: Generate",
        ":material/swap_horiz: Attribute transfer",
        ":material/travel_explore: Scene retrieval",
    ]
)

# --- Retrieve --------------------------------------------------------------------------------------------------
with tab_retrieve:
    c1, c2, c3 = st.columns([2, 1, 1])
    mode = c1.radio("Query", core.QUERY_MODES, horizontal=True, key="retrieve_mode")
    k = c2.slider("Results", 4, 24, 8, step=4, key="retrieve_k")
    verify = c3.checkbox(
        "Verify by silhouette", key="retrieve_verify", disabled=sketch is None or mode == core.QUERY_MODES[2],
        help="Re-rank the top 20 by how well each photo's object fills the sketch's outline "
             "(photos on plain backgrounds).",
    )  # fmt: skip
    if models is None:
        st.warning("Pick a model in the sidebar first.")
    elif gallery is None:
        st.warning(f"No gallery to search: {gallery_error or 'pick one in the sidebar'}")
    elif sketch is None and not words.strip() and mode == core.QUERY_MODES[0]:
        st.info("Draw or pick a sketch, or type words, to search the gallery.")
    else:
        with shown_errors():
            verified = verify and sketch is not None and mode != core.QUERY_MODES[2]
            check = {"verify_sketch": sketch, "verifier": verifier_for(gallery)} if verified else {}
            (hits, seconds) = core.timed(lambda: core.search(gallery, query_for(mode), k, **check))
            st.caption(
                f"Top {len(hits)} of {len(gallery)} photos · {mode.lower()}{' · verified' if verified else ''} · "
                f"answered in {seconds * 1000:.0f} ms"
            )
            images = [core.result_image(h.path, image_roots) or core.placeholder("outside allowed folders")
                      for h in hits]  # fmt: skip
            labels = [f"#{i} · {h.score:.3f}" + (f" · IoU {h.iou:.2f}" if h.iou is not None else "")
                      + f" · {Path(h.path).name}" for i, h in enumerate(hits, 1)]  # fmt: skip
            grid([core.display(im) for im in images], labels)

# --- Generate --------------------------------------------------------------------------------------------------
with tab_generate:
    g = st.columns(6)
    steps = g[0].slider("Steps", 1, 100, 25, key="gen_steps")
    guidance = g[1].slider("Guidance", 0.0, 10.0, 3.0, step=0.5, key="gen_guidance")
    seed = g[2].number_input("Seed", 0, 2**31 - 1, 0, step=1, key="gen_seed")
    scheduler = g[3].selectbox("Scheduler", list(core.SCHEDULERS), key="gen_scheduler")
    n_images = g[4].slider("Images", 1, 4, 2, key="gen_n")
    best_of = g[5].slider(
        "Best of", 1, 8, 1, key="gen_best_of",
        help="Draw this many candidates per image and keep the one that best matches the words (embedding cosine) "
             "and the sketch's outline (silhouette overlap). Costs that many times the time; 4 follows the sketch's "
             "shape more often (attribute transfer from photos: shape kept 0.82 -> 0.87 at 4).",
    )  # fmt: skip
    if models is not None and models.pipe is None:
        st.warning(f"The model '{models.source}' has no generator: pick a pipeline folder to generate.")
    clicked = st.button("Generate", type="primary", key="generate", disabled=models is None or models.pipe is None)
    if clicked:
        st.session_state.pop("generated", None)
        with shown_errors():
            if sketch is None and not words.strip():
                why = f" ({sketch_error})" if sketch_error else ""
                raise DuetgenError(f"nothing to generate from{why}: draw or pick a sketch, type words, or both")
            bar = st.progress(0.0, text="Starting…")
            images, seconds = core.timed(
                core.generate, models, sketch=sketch, words=words, steps=steps, guidance=guidance, seed=seed,
                scheduler=scheduler, n_images=n_images, best_of=best_of,
                on_step=lambda i, n: bar.progress(i / n, text=f"Denoising step {i} / {n}"),
            )  # fmt: skip
            bar.progress(1.0, text=f"Done in {seconds:.1f} s")
            st.session_state["generated"] = {
                "png": [core.png_bytes(im) for im in images],
                "caption": f"{scheduler}, {steps} steps, guidance {guidance}, seed {seed}"
                + (f", best of {best_of}" if best_of > 1 else ""),
            }
    done = st.session_state.get("generated")
    if done:
        cols = st.columns(GRID_COLUMNS)
        for i, png in enumerate(done["png"]):
            with cols[i % GRID_COLUMNS]:
                st.image(core.display(Image.open(io.BytesIO(png)), 256), caption=f"#{i + 1} · {done['caption']}",
                         width="stretch")  # fmt: skip
                st.download_button("Download PNG", png, file_name=f"duetgen_{i + 1}.png", mime="image/png",
                                   key=f"download_{i}", on_click="ignore", width="stretch")  # fmt: skip
    elif not clicked:
        st.caption("Uses the sketch and words above. Each step updates the progress bar.")

# --- Attribute transfer ----------------------------------------------------------------------------------------
with tab_transfer:
    st.caption(
        "Keep an object's shape and pose, change what words describe. A sketch composes with the new words directly; "
        "a photo enters as its outline, and the words are completed with the attributes the photo keeps. Retrieved "
        "photos are verified by silhouette against that outline."
    )
    t = st.columns([1.3, 1, 1.3])
    origin = t[0].radio("Start from", ["Shipped sample", "Upload"], horizontal=True, key="transfer_origin")
    read_as = t[1].radio("Read it as", ["Auto", "Photo", "Sketch"], horizontal=True, key="transfer_read_as")
    new_words = t[2].text_input("New attributes", value="blue with dots", key="transfer_words", max_chars=200)
    raw = None
    raw_name = ""
    with shown_errors("Source: "):
        if origin == "Shipped sample":
            choices = {**core.sample_photos(), **core.sample_sketches()}
            picked = st.selectbox("Sample", list(choices), key="transfer_sample")
            raw, raw_name = choices[picked].read_bytes(), choices[picked].name
        else:
            up = uploader(f"A photo or a sketch (up to {core.MAX_UPLOAD_MB} MB)", "transfer_upload")
            if up is not None:
                raw, raw_name = up.getvalue(), up.name
                core.check_upload(raw_name, raw, core.SKETCH_TYPES)
    k = st.columns([1.3, 2.3])
    keep_look = k[0].checkbox(
        "Keep the photo's look",
        value=False,
        key="transfer_keep_look",
        help="Photos only: start generating from the photo itself (image-to-image) instead of noise. Keeps its shape "
        "and background: good for a new colour, weak for a new style ('at night', 'in pixel art') or pattern.",
    )
    strength = k[1].slider(
        "Redo this much of the photo", 0.3, 1.0, 0.6, step=0.05, key="transfer_strength", disabled=not keep_look,
        help="Lower keeps more of the photo; at 0.6 colour changes succeed 0.94 of the time with the shape kept 0.91.",
    )  # fmt: skip
    go = st.button("Transfer attributes", type="primary", key="transfer", disabled=raw is None or models is None)
    if go:
        st.session_state.pop("transfer_result", None)
        with shown_errors():
            as_photo = False
            preview = None
            ext = raw_name.rsplit(".", 1)[-1].lower()
            if read_as == "Photo" or (read_as == "Auto" and ext in core.PHOTO_TYPES):
                preview = core.read_photo(raw, raw_name)
                as_photo = read_as == "Photo" or core.looks_like_photo(preview)
            if as_photo:
                size = max(models.encoder.image_size, models.pipe.sample_size if models.pipe else 0)
                tq = core.photo_query(models.encoder, preview, new_words, sketch_size=size)
                query, states, src_sketch, composed = tq.query, tq.states, tq.sketches[0], tq.words[0]
            else:
                src_sketch = core.read_sketch_source(raw, models, raw_name)
                query, states = core.compose_query(
                    models.encoder, src_sketch, new_words, core.QUERY_MODES[0], return_states=True
                )
                from torchvision.transforms.functional import to_pil_image

                preview = to_pil_image(src_sketch)
                composed = new_words.strip()
            out = {"source": core.png_bytes(core.display(preview, 192)), "as": "photo" if as_photo else "sketch",
                   "words": composed, "hits": [], "generated": []}  # fmt: skip
            if gallery is not None:
                hits = core.search(gallery, query, 4, verify_sketch=src_sketch, verifier=verifier_for(gallery))
                out["hits"] = [(core.png_bytes(core.display(core.result_image(h.path, image_roots)
                                                            or core.placeholder("outside allowed folders"))),
                                f"#{i} · {h.score:.3f}") for i, h in enumerate(hits, 1)]  # fmt: skip
            if models.pipe is not None:
                bar = st.progress(0.0, text="Generating…")
                start = {"image": preview, "strength": strength} if as_photo and keep_look else {}
                images = core.generate(
                    models, sketch=src_sketch, query_embeds=query, query_token_embeds=states, steps=steps,
                    guidance=guidance, seed=seed, scheduler=scheduler, n_images=2, best_of=best_of,
                    on_step=lambda i, n: bar.progress(i / n, text=f"Denoising step {i} / {n}"), **start,
                )  # fmt: skip
                bar.empty()
                out["generated"] = [core.png_bytes(core.display(im, 192)) for im in images]
                out["from_photo"] = strength if start else None
            st.session_state["transfer_result"] = out
    res = st.session_state.get("transfer_result")
    if res:
        a, b, c = st.columns([1, 2, 2], gap="medium")
        a.markdown(f"**Source** (read as {res['as']})")
        a.image(res["source"], width="stretch")
        b.markdown(f"**Retrieved** · “{res['words']}”")
        if res["as"] == "photo" and res["words"] != new_words.strip():
            b.caption("The new words completed with what the photo keeps (its colour, pattern and style, read by the "
                      "encoder); the photo's outline keeps the pose.")  # fmt: skip
        if res["hits"]:
            bc = b.columns(2)
            for i, (png, cap) in enumerate(res["hits"]):
                bc[i % 2].image(png, caption=cap, width="stretch")
        else:
            b.info(f"No gallery: {gallery_error or 'pick one in the sidebar'}")
        c.markdown("**Generated**")
        if res["generated"]:
            cc = c.columns(2)
            for i, png in enumerate(res["generated"]):
                started = f", from the photo at {res['from_photo']:.2f}" if res.get("from_photo") else ""
                cc[i % 2].image(png, caption=f"seed {seed + 0}, image {i + 1}{started}", width="stretch")
        else:
            c.info("This model has no generator.")

# --- Scene retrieval -------------------------------------------------------------------------------------------
with tab_scenes:
    st.caption(
        "Sketch one object: find the scenes that contain it. The best-matching region is outlined, or with "
        "'Verify objects by shape' the object that matched."
    )
    s = st.columns([2, 1])
    scene_choice = s[0].radio(
        "Scenes", ["Demo scenes (procedural)", "Folder"], index=1 if config.scene_gallery else 0, horizontal=True,
        key="scene_choice",
    )  # fmt: skip
    scene_k = s[1].slider("Scenes to show", 4, 16, 8, step=4, key="scene_k")
    scene_verify = st.checkbox(
        "Verify objects by shape", key="scene_verify", disabled=sketch is None,
        help="Re-score each scene by its best object: how well its silhouette fits the sketch at any rotation, plus "
             "how likely its crop shows what the words say (a colour, say) (scenes on plain backgrounds; 3 to 6 "
             "times the mAP of regions on world scenes). The first search reads each scene's objects once.",
    )  # fmt: skip
    scenes = None
    if models is None:
        st.warning("Pick a model in the sidebar first.")
    else:
        with shown_errors("Scenes: "):
            if scene_choice == "Folder":
                typed = st.text_input("Scene gallery folder", value=config.scene_gallery or "", key="scene_dir",
                                      placeholder="a folder built with 'duetgen index --regions'")  # fmt: skip
                spath = core.allowed_path(typed, config, "scene gallery")
                scenes = get_gallery(str(spath), manifest_stamp(spath), model_key, models)
                if scenes.regions is None:
                    scenes = None
                    raise DuetgenError(
                        f"'{typed}' has no region embeddings; rebuild it with 'duetgen index --regions'"
                    )
                if config.scene_gallery and spath == Path(config.scene_gallery).resolve():
                    image_roots = image_roots + core.gallery_image_roots(scenes)
            else:
                cached = core.scene_cache_dir(models.encoder, config.cache_dir, config.n_scenes)
                if (cached / "gallery" / "manifest.json").is_file() or st.button(
                    f"Build {config.n_scenes} demo scenes", key="build_scenes", type="primary"
                ):
                    scenes = get_demo_scenes(model_key, str(config.cache_dir), config.n_scenes, models)
                else:
                    st.info(
                        f"The demo scenes are built once per model ({config.n_scenes} procedural scenes, region "
                        f"embeddings) into `{config.cache_dir}`."
                    )
        if scenes is not None:
            if sketch is None and not words.strip():
                st.info("Draw or pick an object sketch (words optional) to search the scenes.")
            else:
                with shown_errors():
                    by_object = scene_verify and sketch is not None
                    check = {"verify_sketch": sketch, "verifier": scene_verifier_for(scenes),
                             "verify_words": words.strip()} if by_object else {}  # fmt: skip
                    (hits, seconds) = core.timed(
                        lambda: core.search(scenes, query_for(core.QUERY_MODES[0]), scene_k, regions=True, **check)
                    )
                    st.caption(f"Top {len(hits)} of {len(scenes)} scenes{' · objects verified' if by_object else ''}"
                               f" · answered in {seconds * 1000:.0f} ms")  # fmt: skip
                    images = [core.result_image(h.path, image_roots, h.box) or core.placeholder("outside allowed")
                              for h in hits]  # fmt: skip
                    labels = [f"#{i} · {h.score:.3f} · " + (f"object {h.box} · shape {h.iou:.3f}" if h.iou is not None
                              else f"region {h.box}") for i, h in enumerate(hits, 1)]  # fmt: skip
                    grid([core.display(im, 256) for im in images], labels)
