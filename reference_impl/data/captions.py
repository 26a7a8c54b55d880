"""Captions in three qualities, and a parser that reads attributes back out of a caption.

Web-scale image-text data (LAION-5B, Common Crawl alt-text) is mostly badly captioned: a file
name (``IMG_0452.jpg``), a vague alt-text ("abstract wallpaper"), and only sometimes a real
description. ShapesWorld writes all three for every scene, so the course can measure what
re-captioning buys (DALL-E 3's "Improving Image Generation with Better Captions", Betker et al.
2023, made this the standard recipe).
"""
from __future__ import annotations

import re

import numpy as np

from .vocab import BACKGROUNDS, COLOURS, COUNT_WORDS, KINDS, SIZES

QUALITIES = ("filename", "alt", "rich")
PLURAL = {k: k + "s" for k in KINDS}
BRAND_PHRASE = "in the brand style"
HAZARD_PHRASE = "with a hazard sign"


def filename_caption(rng: np.random.Generator) -> str:
    """What a scraper often gets: the file name. Carries no information about the image."""
    u, v = rng.random(2)
    prefix = ("IMG", "DSC", "PXL", "photo", "image")[int(u * 5)]
    return f"{prefix}_{int(v * 10000):04d}.jpg"


def alt_caption(scene: dict, rng: np.random.Generator) -> str:
    """A poor alt-text: vague, at most one attribute, sometimes plain stock-photo noise."""
    kind, colour = KINDS[scene["kind"]], COLOURS[scene["colour"]]
    options = [
        "abstract art",
        "geometric wallpaper",
        "stock photo",
        "untitled",
        f"{colour} shape",
        f"a {kind}",
        "shapes",
        f"{colour} design, high quality",
    ]
    return options[int(rng.random() * len(options))]


def rich_caption(scene: dict) -> str:
    """The full description, the canonical wording the evaluation parses back.

    e.g. "two small red circles on a dark background in the brand style"
    """
    n = scene["count"]
    noun = KINDS[scene["kind"]] if n == 1 else PLURAL[KINDS[scene["kind"]]]
    words = [COUNT_WORDS[n - 1], SIZES[scene["size"]], COLOURS[scene["colour"]], noun]
    text = " ".join(words) + f" on a {BACKGROUNDS[scene['background']]} background"
    if scene["style"] == 1:
        text += " " + BRAND_PHRASE
    if scene["unsafe"]:
        text += " " + HAZARD_PHRASE
    return text


def prompt(kind: str, colour: str, background: str, count: int = 1, size: str = "large",
           brand: bool = False) -> str:
    """A rich caption from attribute names: the prompt form the lectures type."""
    idx = {"kind": KINDS.index(kind), "colour": COLOURS.index(colour), "count": count,
           "size": SIZES.index(size), "background": BACKGROUNDS.index(background),
           "style": int(brand), "unsafe": False}
    return rich_caption(idx)


_WORD = r"(?<![a-z]){}(?![a-z])"


def parse_caption(text: str) -> dict[str, int]:
    """Read the attributes a caption asks for; attributes it does not name are left out.

    Returns a dict with any of: kind, colour, size, count (1..3), background, style, unsafe.
    ``parse_caption(rich_caption(s))`` recovers every attribute of scene ``s``.
    """
    t = text.lower()
    out: dict[str, int] = {}
    for i, k in enumerate(KINDS):
        if re.search(_WORD.format(k + "s?"), t):
            out["kind"] = i
    for name, vocab in (("colour", COLOURS), ("size", SIZES)):
        for i, word in enumerate(vocab):
            if re.search(_WORD.format(word), t):
                out[name] = i
    for i, word in enumerate(BACKGROUNDS):
        if re.search(_WORD.format(word) + " background", t):
            out["background"] = i
    for i, word in enumerate(COUNT_WORDS):
        if re.search(r"^" + word + r"(?![a-z])", t):
            out["count"] = i + 1
    if "count" not in out and re.search(r"^(a|an) ", t) and "kind" in out:
        out["count"] = 1
    if BRAND_PHRASE in t:
        out["style"] = 1
    if HAZARD_PHRASE in t:
        out["unsafe"] = 1
    return out


def names_prompt_attributes(caption: str) -> bool:
    """Does the caption name kind, colour and background - what a prompt asks for?"""
    parsed = parse_caption(caption)
    return all(k in parsed for k in ("kind", "colour", "background"))
