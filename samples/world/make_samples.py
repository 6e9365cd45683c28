"""Regenerate the visible samples of the procedural world: python samples/world/make_samples.py"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from duetgen import world

HERE = Path(__file__).parent


def main(size: int = 128) -> None:
    rows = []
    for i, shape in enumerate(world.SHAPES):
        rng = np.random.default_rng([7, i])
        inst = world.sample_instance(rng, shape)
        attrs = world.Attributes(tuple(world.COLOURS)[i % 8], world.PATTERNS[i % 4], world.DOMAINS[(i // 4 + i) % 4])
        photo, sketch = world.render_pair(inst, attrs, size, seed=i)
        Image.fromarray(photo).save(HERE / f"{i:02d}_{shape}_photo.png")
        Image.fromarray(sketch).save(HERE / f"{i:02d}_{shape}_sketch.png")
        rows.append((sketch, photo, world.caption(inst, attrs)))
    for j in range(2):
        scene = world.sample_scene(np.random.default_rng([7, 100 + j]), n_objects=3 + j)
        photo, boxes = world.render_scene(scene, 2 * size, seed=j)
        img = Image.fromarray(photo)
        draw = ImageDraw.Draw(img)
        for b in boxes:
            draw.rectangle(b, outline=(255, 0, 255))
        img.save(HERE / f"scene_{j}.png")
    # Contact sheet: sketch | photo | the same at 64 px | caption.
    w, h = 2 * size + 2 * 64 + 420, len(rows) * (size + 4)
    sheet = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (sketch, photo, text) in enumerate(rows):
        y = r * (size + 4)
        sheet.paste(Image.fromarray(sketch).convert("RGB"), (0, y))
        sheet.paste(Image.fromarray(photo), (size, y))
        sheet.paste(Image.fromarray(sketch).convert("RGB").resize((64, 64)), (2 * size, y))
        sheet.paste(Image.fromarray(photo).resize((64, 64)), (2 * size + 64, y))
        for k, start in enumerate(range(0, len(text), 60)):
            draw.text((2 * size + 136, y + 8 + 14 * k), text[start : start + 60], fill="black")
    sheet.save(HERE / "contact_sheet.png", optimize=True)


if __name__ == "__main__":
    main()
