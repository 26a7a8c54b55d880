"""ShapesWorld's vocabulary: every attribute a scene has, in a fixed order.

The order is part of the contract: attribute ``kind == 2`` means ``KINDS[2] == "triangle"``
everywhere (renderer, captions, probe, metrics). Append, never reorder.
"""

KINDS = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple")
RGB = {
    "red": (0.90, 0.12, 0.12),
    "orange": (0.98, 0.55, 0.05),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.72, 0.22),
    "blue": (0.12, 0.35, 0.95),
    "purple": (0.52, 0.18, 0.78),
}
SIZES = ("small", "large")
SIZE_RADIUS = ((0.10, 0.13), (0.17, 0.21))  # half-extent, in image sides
COUNT_WORDS = ("one", "two", "three")
BACKGROUNDS = ("dark", "grey", "light")
# Brightness bands with gaps between them, so the bucket of every scene is unambiguous.
BACKGROUND_LEVEL = ((0.02, 0.18), (0.38, 0.62), (0.82, 0.98))
STYLES = ("plain", "brand")

# The brand look (for the LoRA lecture): pastel fill with a dark navy outline.
BRAND_OUTLINE = (0.06, 0.06, 0.28)
BRAND_STROKE = 0.045  # outline width, image sides
BRAND_PASTEL = 0.45  # fraction of white mixed into the fill colour

# Attributes the probe predicts, with their number of classes.
ATTRIBUTES = {
    "kind": len(KINDS),
    "colour": len(COLOURS),
    "size": len(SIZES),
    "count": len(COUNT_WORDS),  # stored as count - 1 in class form
    "background": len(BACKGROUNDS),
    "style": len(STYLES),
    "unsafe": 2,
}
