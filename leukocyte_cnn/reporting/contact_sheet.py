"""Contact sheet of flagged near-duplicate pairs: a PNG that shows each pair side by side.

This module holds :func:`contact_sheet`, which draws the pairs of
:attr:`leukocyte_cnn.splits.leakage.LeakageReport.copies` grouped by role pair (train-test,
train-val, val-test), the most similar first, with both image names, the hash distance and
the pixel similarity under each pair, so a reader can judge by eye whether they are copies.
"""
from __future__ import annotations

from PIL import Image

SHEET_THUMB = (160, 120)  # (width, height) of each image in a panel
SHEET_COLUMNS = 3         # panels (pairs) per row
SHEET_MAX_PAIRS = 60      # pairs drawn at most (the most similar of each role pair first)


def contact_sheet(pairs, path, max_pairs: int = SHEET_MAX_PAIRS, title: str = "") -> int:
    """Draw flagged pairs side by side, grouped by role pair, the most similar first.

    ``pairs``: a DataFrame with ``roles``, ``image_a``, ``image_b``, ``path_a``, ``path_b``,
    ``distance`` and ``similarity`` (as
    :attr:`~leukocyte_cnn.splits.leakage.LeakageReport.copies`). Under each pair: both image
    names, the hash distance in bits and the pixel similarity (or "joined via copies" where
    it is NaN: joined through verified copies, not compared). At most
    ``max_pairs`` panels, shared out over the role pairs in order. Writes a PNG at ``path``
    and returns the number of panels drawn.
    """
    from PIL import ImageDraw

    from leukocyte_cnn.base.io import atomic_path
    from leukocyte_cnn.data.images import load_rgb

    tw, th = SHEET_THUMB
    pad, text_h, head_h = 6, 30, 22
    chars = tw // 6  # the default font is ~6 px a character
    panel_w = 2 * tw + 3 * pad
    width = SHEET_COLUMNS * panel_w + pad
    order = {"train-test": 0, "train-val": 1, "val-test": 2}
    groups = sorted(((str(roles), rows.sort_values(["similarity", "distance"],
                                                   ascending=[False, True]))
                     for roles, rows in (pairs.groupby("roles", sort=False) if len(pairs)
                                         else [])),
                    key=lambda item: order.get(item[0], 3))
    # an even share of the cap for each role pair; what one leaves unused goes to the others
    quota = [min(len(rows), max_pairs // max(1, len(groups))) for _, rows in groups]
    for k, (_, rows) in enumerate(groups):
        extra = min(len(rows) - quota[k], max(0, max_pairs - sum(quota)))
        quota[k] += extra
    sections = [(roles, len(rows), rows.head(n))
                for (roles, rows), n in zip(groups, quota, strict=True)]
    height = head_h + pad
    for _, _, shown in sections:
        height += head_h + -(-len(shown) // SHEET_COLUMNS) * (th + text_h + pad)
    sheet = Image.new("RGB", (width, max(height, 2 * head_h)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), title or f"{len(pairs)} flagged pair(s)", fill="black")
    y = head_h + pad
    drawn = 0
    for roles, total, shown in sections:
        draw.text((pad, y + 4), f"{roles}: {total} pair(s), {len(shown)} shown, most similar "
                                "first", fill="black")
        y += head_h
        for k, row in enumerate(shown.itertuples()):
            x0 = pad + (k % SHEET_COLUMNS) * panel_w
            y0 = y + (k // SHEET_COLUMNS) * (th + text_h + pad)
            for n, image_path in enumerate((row.path_a, row.path_b)):
                thumb = Image.fromarray(load_rgb(image_path))
                thumb.thumbnail((tw, th))
                sheet.paste(thumb, (x0 + n * (tw + pad), y0))
            for n, name in enumerate((str(row.image_a), str(row.image_b))):
                draw.text((x0 + n * (tw + pad), y0 + th + 2), name[-chars:], fill="black")
            similarity = float(row.similarity)
            draw.text((x0, y0 + th + 15), f"distance {int(row.distance)} bits, " + (
                f"similarity {similarity:.3f}" if similarity == similarity
                else "joined via copies"), fill="black")
            drawn += 1
        y += -(-len(shown) // SHEET_COLUMNS) * (th + text_h + pad)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return drawn
