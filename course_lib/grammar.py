"""Open wording for the photo collection: an instruction grammar instead of fixed templates.

An instruction is built from parts, one per edit, each rendered from a *pattern* of its edit
family and direction:

* **imperatives** ("brighten {obj}{adv}", "make {obj} {cmp} warmer") and **statements**, mostly
  everyday complaints ("it looks gloomy", "{obj} {be} {deg} too dark", "the highlights are
  clipped"). Comparative adjectives go through frames ("make {obj} {cmp} {adj}", "I want {obj}
  {cmp} {adj}", ...), so every family gets verbs x objects x modifiers;
* **slots**: ``{obj}`` an object phrase of the edit's target ("the sky", "the greens", "the top
  of the frame", "it"); ``{cmp}``/``{acmp}``/``{adv}``/``{deg}`` a strength word before a
  comparative, after "a", at the end, or before "too" ("a bit", "much", "a lot", "way");
  ``{be}``/``{look}``/``{feel}``/``{needs}`` agree with the object ("the sky is", "the leaves are");
  ``{hue}`` the hue a colour range is pushed towards ("towards orange");
* **polite wrappers** around imperatives ("could you {p}?", "{p}, please") and **connectors**
  that compose two or three edits (" and ", ", then ").

Held out for evaluation (never in training text):

* ``wording="heldout_phrasing"``: whole patterns (two frames and one or two patterns per family
  and direction), two wrappers and two connectors;
* ``wording="heldout_synonym"``: patterns and object phrases built on *synonyms* - words that
  appear nowhere in the training grammar (:data:`HELDOUT_SYNONYMS`, e.g. "illuminate",
  "toastier", "the heavens", "the greenery", "a smidge").

A pattern may be limited to one target with a ``@target:`` prefix ("@edges:add a vignette").
Strength words scale a family's unit amount by :data:`STRENGTHS`. Everything is deterministic
given a NumPy generator. This module is pure text: the families' pixels live in
:mod:`course_lib.world`.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Iterable, Sequence

import numpy as np

# --------------------------------------------------------------------------- strength and slots

#: Strength words and the factor they put on a family's unit amount.
STRENGTHS = {"slightly": 0.5, "normal": 1.0, "strongly": 1.8}

#: Training words per strength, per slot: ``cmp`` before a comparative ("a bit warmer"),
#: ``acmp`` after the article "a" ("a slightly warmer tone"), ``adv`` at the end ("... a lot"),
#: ``deg`` before "too" in a complaint ("way too dark").
SLOT_WORDS = {
    "cmp": {"slightly": ("a bit", "slightly", "a little", "a touch", "somewhat"), "normal": ("",),
            "strongly": ("much", "a lot", "far", "way")},
    "acmp": {"slightly": ("slightly", "somewhat", "subtly"), "normal": ("",),
             "strongly": ("much", "far", "considerably")},
    "adv": {"slightly": ("slightly", "a little", "a bit", "gently", "a touch", "subtly"), "normal": ("",),
            "strongly": ("a lot", "strongly", "heavily", "dramatically")},
    "deg": {"slightly": ("a bit", "a little", "slightly"), "normal": ("",), "strongly": ("way", "far", "much")},
}
#: Held-out strength synonyms (only in ``heldout_synonym`` wording).
SLOT_SYNONYMS = {
    "cmp": {"slightly": ("a smidge", "a tad"), "strongly": ("massively", "hugely")},
    "acmp": {"slightly": ("marginally",), "strongly": ("vastly",)},
    "adv": {"slightly": ("a smidge", "a tad", "marginally"), "strongly": ("massively", "hugely", "drastically")},
    "deg": {"slightly": ("a tad", "a smidge"), "strongly": ("massively", "vastly")},
}
STRENGTH_SLOTS = ("cmp", "acmp", "adv", "deg")

#: Polite wrappers around an imperative instruction (``{p}``).
WRAPPERS = ("please {p}", "{p}, please", "could you {p}?", "can you {p}?", "would you {p}?",
            "could you please {p}?", "i'd like you to {p}", "go ahead and {p}")
WRAPPERS_HELDOUT = ("would you be so kind as to {p}?", "do me a favour and {p}")
#: How parts of a composed instruction are joined.
CONNECTORS = (" and ", ", and ", ", then ", " and then ", ", also ")
CONNECTORS_HELDOUT = (", after that ", ", plus ")

#: Frames that turn a comparative adjective into a pattern: (frame, is imperative).
ADJ_FRAMES = (("make {obj} {cmp} {adj}", True), ("get {obj} {cmp} {adj}", True),
              ("i want {obj} {cmp} {adj}", False), ("{obj} should look {cmp} {adj}", False),
              ("i'd like {obj} {cmp} {adj}", False))
ADJ_FRAMES_HELDOUT = (("let {obj} look {cmp} {adj}", True), ("{obj} {needs} to be {cmp} {adj}", False))

# --------------------------------------------------------------------------- objects

GLOBAL_OBJECTS = ("it", "the photo", "the image", "the picture", "the shot", "this photo", "the whole picture",
                  "everything")
GLOBAL_SYNONYMS = ("the snapshot", "the pic", "the capture")

#: Object phrases of each target (training) and their held-out synonyms.
OBJECTS: dict[str, tuple[str, ...]] = {
    "": GLOBAL_OBJECTS,
    # hue ranges (colour-selective families)
    "reds": ("the reds", "the red tones", "the red colours", "anything red"),
    "oranges": ("the oranges", "the orange tones", "the orange colours", "anything orange"),
    "yellows": ("the yellows", "the yellow tones", "the yellow colours", "anything yellow"),
    "greens": ("the greens", "the green tones", "the green colours", "anything green"),
    "aquas": ("the aquas", "the cyans", "the turquoise tones", "the cyan colours"),
    "blues": ("the blues", "the blue tones", "the blue colours", "anything blue"),
    "purples": ("the purples", "the purple tones", "the violet colours", "anything purple"),
    "magentas": ("the magentas", "the pink tones", "the magenta colours", "anything pink"),
    # frame regions (spatial families)
    "top": ("the top", "the top of the frame", "the upper half", "the top half", "the upper part"),
    "bottom": ("the bottom", "the bottom of the frame", "the lower half", "the bottom half", "the lower part",
               "the foreground"),
    "centre": ("the centre", "the center", "the middle", "the middle of the frame", "the central area"),
    "edges": ("the edges", "the corners", "the edges of the frame", "the borders", "the outer parts"),
    # content regions
    "sky": ("the sky", "the blue sky", "the sky above"),
    "skin": ("the skin", "the skin tones", "the faces", "the people's skin"),
    "foliage": ("the foliage", "the leaves", "the trees", "the grass", "the plants"),
}
OBJECT_SYNONYMS: dict[str, tuple[str, ...]] = {
    "": GLOBAL_SYNONYMS,
    "reds": ("the crimson tones", "the scarlet tones"), "oranges": ("the amber tones", "the tangerine tones"),
    "yellows": ("the lemon tones", "the mustard tones"), "greens": ("the emerald tones", "the jade tones"),
    "aquas": ("the aquamarine tones",), "blues": ("the azure tones", "the cobalt tones"),
    "purples": ("the lilac tones", "the lavender tones"), "magentas": ("the fuchsia tones",),
    "top": ("the upper third", "the uppermost band"), "bottom": ("the lower third", "the lowermost band"),
    "centre": ("the heart of the picture", "the core of the frame"), "edges": ("the periphery", "the margins"),
    "sky": ("the heavens", "the firmament"), "skin": ("the complexion", "the flesh tones"),
    "foliage": ("the greenery", "the vegetation"),
}
#: Object phrases of global families that name what they act on (the family's own objects).
FAMILY_OBJECTS = {
    "saturation": GLOBAL_OBJECTS + ("the colours", "the colors"),
    "shadows": ("the shadows", "the dark areas", "the darker tones", "the dark parts of the image"),
    "highlights": ("the highlights", "the bright areas", "the brightest tones", "the bright parts of the image"),
    "clarity": GLOBAL_OBJECTS + ("the details", "the textures"),
}
FAMILY_OBJECT_SYNONYMS = {
    "saturation": GLOBAL_SYNONYMS + ("the hues",),
    "shadows": ("the murk", "the umbra"),
    "highlights": ("the glints", "the specular areas"),
    "clarity": GLOBAL_SYNONYMS + ("the micro detail",),
}

#: Hue words a colour range moves towards: (increasing hue angle, decreasing hue angle).
HUE_TOWARDS = {"reds": (("orange",), ("magenta", "pink")), "oranges": (("yellow",), ("red",)),
               "yellows": (("green",), ("orange",)), "greens": (("cyan", "teal"), ("yellow",)),
               "aquas": (("blue",), ("green",)), "blues": (("purple", "violet"), ("cyan", "teal")),
               "purples": (("magenta", "pink"), ("blue",)), "magentas": (("red",), ("purple", "violet"))}


def is_plural(phrase: str) -> bool:
    """True for object phrases that take "are" ("the leaves", "the skin tones")."""
    last = phrase.split()[-1]
    return last.endswith("s") and not last.endswith(("ss", "us", "is"))


# --------------------------------------------------------------------------- patterns per family


@dataclasses.dataclass(frozen=True)
class Wording:
    """The patterns of one family and direction.

    ``do``: imperatives; ``say``: statements and complaints; ``adjs``: comparatives that the
    frames of :data:`ADJ_FRAMES` turn into patterns; ``held``: held-out whole phrasings
    (imperative if they do not start with "~"); ``syn``: patterns built on held-out synonyms.
    """

    do: tuple[str, ...]
    say: tuple[str, ...]
    adjs: tuple[str, ...]
    held: tuple[str, ...]
    syn: tuple[str, ...]


def W(do: Sequence[str], say: Sequence[str], adjs: Sequence[str], held: Sequence[str], syn: Sequence[str]) -> Wording:
    return Wording(tuple(do), tuple(say), tuple(adjs), tuple(held), tuple(syn))


_BRIGHT_DO = ("brighten {obj}{adv}", "lighten {obj}{adv}", "lift {obj}{adv}", "add light to {obj}{adv}",
              "open up {obj}{adv}", "raise the exposure of {obj}{adv}")
_DARK_DO = ("darken {obj}{adv}", "dim {obj}{adv}", "pull down {obj}{adv}", "lower the exposure of {obj}{adv}",
            "burn in {obj}{adv}", "take some light out of {obj}")
_WARM_DO = ("warm up {obj}{adv}", "warm {obj}{adv}", "add warmth to {obj}{adv}", "give {obj} a {acmp} warmer tone",
            "make the light in {obj} {cmp} more golden", "add a warm cast to {obj}{adv}")
_COOL_DO = ("cool down {obj}{adv}", "cool {obj}{adv}", "take the warmth out of {obj}{adv}",
            "give {obj} a {acmp} cooler tone", "make the light in {obj} {cmp} colder", "add a blue cast to {obj}{adv}")
_SAT_UP_DO = ("saturate {obj}{adv}", "boost {obj}{adv}", "enrich {obj}{adv}", "strengthen {obj}{adv}",
              "increase the saturation of {obj}{adv}", "push the saturation of {obj}{adv}", "make {obj} pop{adv}",
              "bring out {obj}{adv}")
_SAT_DOWN_DO = ("desaturate {obj}{adv}", "mute {obj}{adv}", "tone down {obj}{adv}", "reduce the saturation of {obj}{adv}",
                "calm down {obj}{adv}", "pull back {obj}{adv}", "lower the saturation of {obj}{adv}",
                "drain some colour from {obj}")

WORDINGS: dict[str, tuple[Wording, Wording]] = {
    "exposure": (
        W(("brighten {obj}{adv}", "lighten {obj}{adv}", "increase the exposure{adv}", "raise the exposure{adv}",
           "push the exposure up{adv}", "add light to {obj}{adv}", "lift the exposure{adv}",
           "open up the exposure{adv}", "give {obj} {cmp} more light"),
          ("{obj} {be} {deg} too dark", "{obj} {look} {deg} underexposed", "it looks gloomy",
           "{obj} {look} {deg} too dim", "the picture feels murky", "everything is too dark"),
          ("brighter", "lighter"),
          ("light up {obj}{adv}", "~i can barely see anything, it is so dark"),
          ("illuminate {obj}{adv}", "make {obj} {cmp} more luminous")),
        W(("darken {obj}{adv}", "decrease the exposure{adv}", "lower the exposure{adv}", "reduce the exposure{adv}",
           "pull the exposure down{adv}", "take some light out of {obj}", "dim {obj}{adv}",
           "bring the exposure down{adv}", "give {obj} {cmp} less light"),
          ("{obj} {be} {deg} too bright", "{obj} {look} {deg} overexposed", "it looks blown out",
           "{obj} {look} {deg} too light", "everything is too bright"),
          ("darker", "dimmer"),
          ("tone down the brightness{adv}", "~it is all {deg} too glaring"),
          ("make {obj} {cmp} duskier", "subdue the brightness{adv}"))),
    "contrast": (
        W(("increase the contrast{adv}", "add contrast{adv}", "boost the contrast{adv}", "raise the contrast{adv}",
           "strengthen the contrast{adv}", "give {obj} {cmp} more contrast", "push the contrast{adv}",
           "add more contrast to {obj}"),
          ("{obj} {look} {deg} too flat", "{obj} {look} flat and grey", "there is not enough contrast",
           "the contrast is {deg} too weak"),
          ("more contrasty", "higher in contrast"),
          ("increase the tonal separation{adv}",),
          ("accentuate the contrast{adv}", "intensify the contrast{adv}")),
        W(("reduce the contrast{adv}", "lower the contrast{adv}", "decrease the contrast{adv}",
           "soften the contrast{adv}", "tone down the contrast{adv}", "give {obj} {cmp} less contrast",
           "take some contrast out{adv}", "flatten the contrast{adv}"),
          ("{obj} {be} {deg} too contrasty", "the contrast is {deg} too harsh", "{obj} {look} {deg} too harsh"),
          ("less contrasty", "lower in contrast"),
          ("make the contrast {cmp} gentler",),
          ("mellow the contrast{adv}", "lessen the contrast{adv}"))),
    "saturation": (
        W(("increase the saturation{adv}", "boost the saturation{adv}", "saturate {obj}{adv}", "add saturation{adv}",
           "raise the saturation{adv}", "make the colours pop{adv}", "enrich the colours{adv}",
           "strengthen the colours{adv}"),
          ("the colours feel {deg} dull", "the colors look {deg} dull", "{obj} {look} {deg} washed out",
           "{obj} {look} {deg} too grey", "the colours are too weak"),
          ("more saturated", "more colourful", "more colorful"),
          ("pump up the colours{adv}",),
          ("make {obj} {cmp} more intense", "amplify the colours{adv}")),
        W(("decrease the saturation{adv}", "reduce the saturation{adv}", "desaturate {obj}{adv}", "mute the colours{adv}",
           "lower the saturation{adv}", "tone down the colours{adv}", "drain some colour from {obj}",
           "take the saturation down{adv}"),
          ("the colours are {deg} too strong", "{obj} {look} {deg} oversaturated", "the colours feel {deg} garish",
           "{obj} {be} {deg} too colourful"),
          ("less saturated", "less colourful", "more muted"),
          ("make the colours {cmp} quieter",),
          ("bleach the colours{adv}", "make {obj} {cmp} more subdued"))),
    "vibrance": (
        W(("increase the vibrance{adv}", "boost the vibrance{adv}", "add vibrance{adv}", "raise the vibrance{adv}",
           "liven up the muted colours{adv}", "boost the dull colours{adv}", "bring the muted colours to life",
           "give the soft colours {cmp} more life"),
          ("the muted colours look {deg} lifeless", "the pastel tones are {deg} too dull",
           "the quiet colours need more life"),
          ("more vibrant", "livelier"),
          ("wake up the muted colours{adv}",),
          ("make {obj} {cmp} more spirited", "energise the muted colours{adv}")),
        W(("decrease the vibrance{adv}", "reduce the vibrance{adv}", "lower the vibrance{adv}",
           "tone down the vibrance{adv}", "remove vibrance{adv}", "calm the muted colours{adv}",
           "soften the vibrance{adv}", "take the vibrance down{adv}"),
          ("{obj} {look} {deg} too vibrant", "the colours feel {deg} too lively", "the soft colours are {deg} too loud"),
          ("less vibrant", "calmer"),
          ("hold back the vibrance{adv}",),
          ("make {obj} {cmp} more restrained", "temper the vibrance{adv}"))),
    "temperature": (
        W(("warm up {obj}{adv}", "warm {obj}{adv}", "add warmth{adv}", "raise the colour temperature{adv}",
           "give {obj} a {acmp} warmer tone", "push the white balance warmer{adv}",
           "make the light {cmp} more golden", "add a warm glow{adv}"),
          ("{obj} {look} {deg} too cold", "{obj} {be} {deg} too blue", "it feels {deg} chilly",
           "the light looks {deg} too cool"),
          ("warmer", "cosier"),
          ("bring some sunshine into {obj}",),
          ("make {obj} {cmp} toastier", "heat up {obj}{adv}")),
        W(("cool down {obj}{adv}", "cool {obj}{adv}", "lower the colour temperature{adv}",
           "give {obj} a {acmp} cooler tone", "make the light {cmp} colder", "add a cool cast{adv}",
           "take the warmth out{adv}", "push the white balance cooler{adv}"),
          ("{obj} {look} {deg} too warm", "{obj} {be} {deg} too orange", "{obj} {be} {deg} too yellow",
           "the light feels {deg} too hot"),
          ("cooler", "colder", "bluer"),
          ("give {obj} a wintry feel",),
          ("make {obj} {cmp} frostier", "chill {obj}{adv}"))),
    "tint": (
        W(("shift the tint towards magenta{adv}", "add a magenta tint{adv}", "push the tint to magenta{adv}",
           "tint {obj} magenta{adv}", "add some magenta{adv}", "move the tint towards pink{adv}",
           "correct the green cast{adv}", "remove the green cast{adv}"),
          ("{obj} {look} {deg} too green", "there is a green cast", "{obj} {look} {deg} sickly green"),
          ("more magenta", "pinker"),
          ("counter the green cast{adv}",),
          ("make {obj} {cmp} rosier", "add a fuchsia tint{adv}")),
        W(("shift the tint towards green{adv}", "add a green tint{adv}", "push the tint to green{adv}",
           "tint {obj} green{adv}", "add some green{adv}", "correct the magenta cast{adv}",
           "remove the pink cast{adv}", "move the tint towards green{adv}"),
          ("{obj} {look} {deg} too pink", "{obj} {look} {deg} too magenta", "there is a magenta cast"),
          ("greener", "less magenta"),
          ("counter the magenta cast{adv}",),
          ("make {obj} {cmp} more olive", "add a minty tint{adv}"))),
    "tone_curve": (
        W(("apply an s-curve{adv}", "add punch to the tones{adv}", "steepen the tone curve{adv}",
           "give {obj} {cmp} more pop", "add some punch{adv}", "snap up the midtones{adv}",
           "deepen the tonal curve{adv}", "make the midtones {cmp} snappier"),
          ("{obj} {look} {deg} lifeless", "{obj} {look} {deg} too faded", "the tones feel {deg} weak"),
          ("punchier", "snappier"),
          ("put an s-shaped curve on {obj}",),
          ("make {obj} {cmp} zippier", "give {obj} {cmp} more oomph")),
        W(("fade {obj}{adv}", "flatten the tone curve{adv}", "apply a matte fade{adv}",
           "give {obj} a {acmp} faded look", "soften the tones{adv}", "lift the blacks into a matte look",
           "add a film fade{adv}", "give {obj} a matte finish"),
          ("{obj} {look} {deg} too punchy", "the tones are {deg} too hard", "{obj} {look} {deg} too crunchy"),
          ("more faded", "more matte"),
          ("give {obj} a {acmp} retro fade",),
          ("make {obj} {cmp} more weathered", "give {obj} a {acmp} dusty look"))),
    "shadows": (
        W(("lift the shadows{adv}", "brighten the shadows{adv}", "open up the shadows{adv}",
           "bring up the shadows{adv}", "recover the shadows{adv}", "raise the shadows{adv}",
           "show more detail in the shadows", "lighten the dark areas{adv}"),
          ("{obj} {be} {deg} too dark", "{obj} {be} {deg} blocked up", "{obj} {look} {deg} too heavy",
           "the shadows are crushed"),
          ("brighter", "lighter", "more open"),
          ("pull detail out of the shadows{adv}",),
          ("make {obj} {cmp} airier", "unveil the shadows{adv}")),
        W(("deepen the shadows{adv}", "darken the shadows{adv}", "crush the shadows{adv}",
           "push the shadows down{adv}", "lower the shadows{adv}", "sink the dark areas{adv}",
           "make the blacks {cmp} deeper", "add weight to the shadows{adv}"),
          ("{obj} {look} {deg} too light", "{obj} {look} {deg} milky", "{obj} {be} {deg} too open"),
          ("darker", "deeper", "heavier"),
          ("give the shadows more density{adv}",),
          ("make {obj} {cmp} inkier", "make {obj} {cmp} murkier"))),
    "highlights": (
        W(("boost the highlights{adv}", "brighten the highlights{adv}", "lift the highlights{adv}",
           "push the highlights up{adv}", "raise the highlights{adv}", "make the whites {cmp} brighter",
           "add sparkle to the highlights{adv}", "lift the bright areas{adv}"),
          ("{obj} {look} {deg} dull", "{obj} {look} {deg} too grey", "{obj} {be} {deg} too dim"),
          ("brighter", "more brilliant"),
          ("let the highlights shine{adv}",),
          ("make {obj} {cmp} more dazzling", "make {obj} {cmp} gleam")),
        W(("tame the highlights{adv}", "recover the highlights{adv}", "pull down the highlights{adv}",
           "reduce the highlights{adv}", "lower the highlights{adv}", "bring back detail in the highlights",
           "hold back the bright areas{adv}", "rescue the blown highlights{adv}"),
          ("the highlights are clipped", "{obj} {be} {deg} blown out", "{obj} {be} {deg} too hot",
           "{obj} {look} {deg} too bright"),
          ("darker", "dimmer", "softer"),
          ("keep the highlights from clipping",),
          ("rein in the highlights{adv}", "make {obj} {cmp} more subdued"))),
    "hsl_saturation": (
        W(_SAT_UP_DO + ("deepen {obj}{adv}",),
          ("{obj} {look} {deg} dull", "{obj} {look} {deg} washed out", "{obj} {be} {deg} too weak",
           "{obj} {look} {deg} faded"),
          ("more saturated", "richer", "stronger"),
          ("crank up {obj}{adv}",),
          ("make {obj} {cmp} more intense", "amplify {obj}{adv}")),
        W(_SAT_DOWN_DO + ("soften {obj}{adv}",),
          ("{obj} {be} {deg} too strong", "{obj} {look} {deg} oversaturated", "{obj} {be} {deg} too loud",
           "{obj} {look} {deg} garish"),
          ("less saturated", "more muted", "weaker"),
          ("dial back {obj}{adv}",),
          ("make {obj} {cmp} more subdued", "bleach {obj}{adv}"))),
    "hsl_luminance": (
        W(("brighten {obj}{adv}", "lighten {obj}{adv}", "lift {obj}{adv}", "raise the luminance of {obj}{adv}",
           "increase the luminance of {obj}{adv}", "make {obj} glow{adv}", "open up {obj}{adv}",
           "add light to {obj}{adv}"),
          ("{obj} {look} {deg} too dark", "{obj} {look} {deg} murky", "{obj} {be} {deg} too heavy"),
          ("brighter", "lighter"),
          ("give {obj} more luminance{adv}",),
          ("illuminate {obj}{adv}", "make {obj} {cmp} more luminous")),
        W(("darken {obj}{adv}", "deepen the tone of {obj}{adv}", "lower the luminance of {obj}{adv}",
           "decrease the luminance of {obj}{adv}", "dim {obj}{adv}", "make {obj} {cmp} deeper in tone",
           "burn down {obj}{adv}", "reduce the brightness of {obj}{adv}"),
          ("{obj} {look} {deg} too bright", "{obj} {look} {deg} too light", "{obj} {look} {deg} too glowing"),
          ("darker", "deeper"),
          ("take the luminance of {obj} down{adv}",),
          ("make {obj} {cmp} duskier", "make {obj} {cmp} inkier"))),
    "hsl_hue": (
        W(("shift {obj} towards {hue}{adv}", "push {obj} towards {hue}{adv}", "move {obj} towards {hue}{adv}",
           "rotate the hue of {obj} towards {hue}{adv}", "nudge {obj} towards {hue}",
           "turn {obj} {cmp} more {hue}", "bend {obj} towards {hue}{adv}", "change the hue of {obj} towards {hue}{adv}",
           "give {obj} a {acmp} more {hue} hue", "steer {obj} towards {hue}{adv}",
           "slide the hue of {obj} towards {hue}{adv}", "make {obj} lean towards {hue}{adv}"),
          ("{obj} should lean {cmp} more {hue}", "{obj} {be} not {hue} enough",
           "i'd like {obj} to lean towards {hue}", "{obj} could be {cmp} more {hue}"),
          ("more {hue}",),
          ("swing {obj} towards {hue}{adv}", "~{obj} ought to be {cmp} more {hue}"),
          ("tilt {obj} towards {hue}{adv}", "veer {obj} towards {hue}{adv}")),
        W(("shift {obj} towards {hue}{adv}", "push {obj} towards {hue}{adv}", "move {obj} towards {hue}{adv}",
           "rotate the hue of {obj} towards {hue}{adv}", "nudge {obj} towards {hue}",
           "turn {obj} {cmp} more {hue}", "bend {obj} towards {hue}{adv}", "change the hue of {obj} towards {hue}{adv}",
           "give {obj} a {acmp} more {hue} hue", "steer {obj} towards {hue}{adv}",
           "slide the hue of {obj} towards {hue}{adv}", "make {obj} lean towards {hue}{adv}"),
          ("{obj} should lean {cmp} more {hue}", "{obj} {be} not {hue} enough",
           "i'd like {obj} to lean towards {hue}", "{obj} could be {cmp} more {hue}"),
          ("more {hue}",),
          ("swing {obj} towards {hue}{adv}", "~{obj} ought to be {cmp} more {hue}"),
          ("tilt {obj} towards {hue}{adv}", "veer {obj} towards {hue}{adv}"))),
    "graduated_exposure": (
        W(_BRIGHT_DO + ("add a bright gradient over {obj}", "apply a brightening graduated filter to {obj}"),
          ("{obj} {be} {deg} too dark", "{obj} {look} {deg} gloomy", "{obj} {look} {deg} underexposed"),
          ("brighter", "lighter"),
          ("dodge {obj}{adv}",),
          ("illuminate {obj}{adv}", "make {obj} {cmp} more luminous")),
        W(_DARK_DO + ("add a graduated filter to {obj}", "add a dark gradient over {obj}"),
          ("{obj} {be} {deg} too bright", "{obj} {look} {deg} blown out", "{obj} {look} {deg} overexposed"),
          ("darker", "dimmer"),
          ("put a neutral density gradient on {obj}",),
          ("make {obj} {cmp} duskier", "make {obj} {cmp} inkier"))),
    "graduated_temperature": (
        W(_WARM_DO + ("add a warm gradient to {obj}", "apply a warm graduated filter to {obj}"),
          ("{obj} {look} {deg} too cold", "{obj} {be} {deg} too blue", "{obj} {feel} {deg} chilly"),
          ("warmer", "cosier"),
          ("bathe {obj} in warm light",),
          ("make {obj} {cmp} toastier", "heat up {obj}{adv}")),
        W(_COOL_DO + ("add a cool gradient to {obj}", "apply a cool graduated filter to {obj}"),
          ("{obj} {look} {deg} too warm", "{obj} {be} {deg} too orange", "{obj} {feel} {deg} too hot"),
          ("cooler", "colder", "bluer"),
          ("bathe {obj} in cold light",),
          ("make {obj} {cmp} frostier", "chill {obj}{adv}"))),
    "radial_exposure": (
        W(_BRIGHT_DO + ("spotlight {obj}{adv}", "put a soft light on {obj}", "@edges:remove the vignette{adv}",
                        "@edges:undo the vignetting{adv}", "@centre:light the subject in the middle{adv}"),
          ("{obj} {be} {deg} too dark", "{obj} {look} {deg} gloomy", "@edges:there is too much vignetting"),
          ("brighter", "lighter"),
          ("dodge {obj}{adv}", "@centre:draw the eye to the middle with light"),
          ("illuminate {obj}{adv}", "make {obj} {cmp} more luminous")),
        W(_DARK_DO + ("shade {obj}{adv}", "@edges:add a vignette{adv}", "@edges:vignette the photo{adv}",
                      "@edges:darken the corners of the frame{adv}", "@centre:take the light off the middle{adv}"),
          ("{obj} {be} {deg} too bright", "{obj} {look} {deg} too light", "{obj} {look} {deg} distracting"),
          ("darker", "dimmer"),
          ("burn {obj}{adv}", "@edges:frame the subject with a dark border"),
          ("make {obj} {cmp} duskier", "make {obj} {cmp} inkier"))),
    "region_exposure": (
        W(_BRIGHT_DO + ("bring {obj} out of the shadow{adv}",),
          ("{obj} {be} {deg} too dark", "{obj} {look} {deg} gloomy", "{obj} {look} {deg} underexposed",
           "{obj} {look} {deg} muddy"),
          ("brighter", "lighter"),
          ("dodge {obj}{adv}",),
          ("illuminate {obj}{adv}", "make {obj} {cmp} more luminous")),
        W(_DARK_DO + ("tone {obj} down{adv}",),
          ("{obj} {be} {deg} too bright", "{obj} {look} {deg} blown out", "{obj} {look} {deg} overexposed",
           "{obj} {look} {deg} too light"),
          ("darker", "dimmer"),
          ("burn {obj}{adv}",),
          ("make {obj} {cmp} duskier", "make {obj} {cmp} inkier"))),
    "region_temperature": (
        W(_WARM_DO + ("give {obj} a golden glow{adv}",),
          ("{obj} {look} {deg} too cold", "{obj} {be} {deg} too blue", "{obj} {feel} {deg} chilly",
           "{obj} {look} {deg} lifeless and cold"),
          ("warmer", "cosier"),
          ("bathe {obj} in warm light",),
          ("make {obj} {cmp} toastier", "heat up {obj}{adv}")),
        W(_COOL_DO + ("give {obj} a colder cast{adv}",),
          ("{obj} {look} {deg} too warm", "{obj} {be} {deg} too orange", "{obj} {feel} {deg} too hot",
           "{obj} {look} {deg} too yellow"),
          ("cooler", "colder", "bluer"),
          ("bathe {obj} in cold light",),
          ("make {obj} {cmp} frostier", "chill {obj}{adv}"))),
    "region_saturation": (
        W(_SAT_UP_DO + ("make the colour of {obj} {cmp} richer",),
          ("{obj} {look} {deg} dull", "{obj} {look} {deg} washed out", "{obj} {look} {deg} too grey",
           "{obj} {look} {deg} faded"),
          ("more saturated", "richer", "more colourful"),
          ("crank up {obj}{adv}",),
          ("make {obj} {cmp} more intense", "amplify {obj}{adv}")),
        W(_SAT_DOWN_DO + ("make the colour of {obj} {cmp} calmer",),
          ("{obj} {be} {deg} too strong", "{obj} {look} {deg} oversaturated", "{obj} {look} {deg} garish",
           "{obj} {look} {deg} too colourful"),
          ("less saturated", "more muted", "less colourful"),
          ("dial back {obj}{adv}",),
          ("make {obj} {cmp} more subdued", "bleach {obj}{adv}"))),
    "clarity": (
        W(("add clarity{adv}", "increase the clarity{adv}", "boost the clarity{adv}", "bring out the texture{adv}",
           "bring out the details{adv}", "add local contrast{adv}", "enhance the texture{adv}",
           "sharpen the local contrast{adv}", "give {obj} {cmp} more bite"),
          ("{obj} {look} {deg} soft", "{obj} {look} {deg} mushy", "the details are lost",
           "the textures look {deg} flat"),
          ("crisper", "more defined", "more detailed"),
          ("make the texture sing{adv}",),
          ("accentuate the texture{adv}", "make {obj} {cmp} more chiselled")),
        W(("reduce the clarity{adv}", "lower the clarity{adv}", "soften the texture{adv}", "smooth {obj}{adv}",
           "smooth out the details{adv}", "decrease the local contrast{adv}", "give {obj} a {acmp} softer look",
           "add a soft glow{adv}", "remove some clarity{adv}"),
          ("{obj} {look} {deg} too harsh", "{obj} {look} {deg} too gritty", "the texture is {deg} overdone",
           "{obj} {look} {deg} overprocessed"),
          ("smoother", "softer", "dreamier"),
          ("iron out the texture{adv}",),
          ("make {obj} {cmp} silkier", "make {obj} {cmp} more velvety"))),
}

# --------------------------------------------------------------------------- patterns and rendering

_TARGET_PREFIX = re.compile(r"^@(\w+):")


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One pattern: its text (slots unfilled), whether it is an imperative, and an optional target."""

    text: str
    imperative: bool
    target: str | None = None

    def fits(self, target: str) -> bool:
        return self.target is None or self.target == target


def _pattern(text: str, imperative: bool) -> Pattern:
    if text.startswith("~"):
        text, imperative = text[1:], False
    m = _TARGET_PREFIX.match(text)
    return Pattern(text[m.end():], imperative, m.group(1)) if m else Pattern(text, imperative)


WORDINGS_KINDS = ("train", "heldout_phrasing", "heldout_synonym")


@functools.lru_cache(maxsize=None)
def patterns(family: str, direction: int, wording: str = "train") -> tuple[Pattern, ...]:
    """The patterns of a family and direction (+1/-1) for ``"train"``, ``"heldout_phrasing"`` or
    ``"heldout_synonym"`` wording."""
    if wording not in WORDINGS_KINDS:
        raise ValueError(f"wording must be one of {WORDINGS_KINDS}, not {wording!r}")
    w = WORDINGS[family][0 if direction > 0 else 1]
    if wording == "train":
        frames = ADJ_FRAMES
        texts = [(t, True) for t in w.do] + [(t, False) for t in w.say]
    elif wording == "heldout_phrasing":
        frames = ADJ_FRAMES_HELDOUT
        texts = [(t, True) for t in w.held]
    else:
        frames = ()
        texts = [(t, True) for t in w.syn]
    texts += [(f.replace("{adj}", adj), imp) for f, imp in frames for adj in w.adjs]
    return tuple(_pattern(t, imp) for t, imp in texts)


def objects(family: str, target: str, synonyms: bool = False) -> tuple[str, ...]:
    """Object phrases for ``{obj}``: the family's own objects, else the target's."""
    if synonyms:
        return FAMILY_OBJECT_SYNONYMS.get(family) or OBJECT_SYNONYMS[target]
    return FAMILY_OBJECTS.get(family) or OBJECTS[target]


def _fill(text: str, obj: str, strength: str, hue: str, rng: np.random.Generator, synonyms: bool) -> str:
    plural = is_plural(obj)
    values = {"obj": obj, "hue": hue, "be": "are" if plural else "is", "look": "look" if plural else "looks",
              "feel": "feel" if plural else "feels", "needs": "need" if plural else "needs"}
    for slot in STRENGTH_SLOTS:
        words = SLOT_WORDS[slot][strength]
        if synonyms and strength in SLOT_SYNONYMS[slot]:
            words = words + SLOT_SYNONYMS[slot][strength]
        word = str(rng.choice(words))
        values[slot] = (" " + word) if (slot == "adv" and word) else word
    out = text.format(**values)
    return re.sub(r"\s+", " ", out).replace(" ,", ",").replace(" ?", "?").strip()


def has_strength_slot(p: Pattern) -> bool:
    return any("{" + s + "}" in p.text for s in STRENGTH_SLOTS)


def render_part(family: str, direction: int, target: str, strength: str, rng: np.random.Generator,
                wording: str = "train") -> tuple[str, bool]:
    """One instruction part for an edit; returns ``(text, is_imperative)``.

    A pattern without a strength slot is only used at strength ``"normal"``. With
    ``wording="heldout_synonym"`` either the pattern is a synonym pattern or, half of the time,
    a training pattern with a held-out object synonym (where the family has some).
    """
    synonyms = wording == "heldout_synonym"
    pool = patterns(family, direction, wording)
    obj_pool = objects(family, target, synonyms=False)
    if synonyms and rng.random() < 0.5:
        syn_objs = objects(family, target, synonyms=True)
        train_with_obj = [p for p in patterns(family, direction, "train") if "{obj}" in p.text]
        if syn_objs and train_with_obj:
            pool, obj_pool = tuple(train_with_obj), syn_objs
    elif synonyms:
        obj_pool = obj_pool + objects(family, target, synonyms=True)
    usable = [p for p in pool if p.fits(target) and (strength == "normal" or has_strength_slot(p))]
    if not usable:  # every family has some slot pattern; this only guards odd restrictions
        usable = [p for p in pool if p.fits(target)]
    p = usable[int(rng.integers(len(usable)))]
    hues = HUE_TOWARDS.get(target, (("",), ("",)))[0 if direction > 0 else 1]
    text = _fill(p.text, str(rng.choice(obj_pool)), strength, str(rng.choice(hues)), rng, synonyms)
    return text, p.imperative


def compose(parts: Sequence[tuple[str, bool]], rng: np.random.Generator, wording: str = "train",
            polite_prob: float = 0.25) -> str:
    """Join parts with connectors; wrap the whole in a polite request if it starts with an imperative."""
    held = wording == "heldout_phrasing"
    connectors = CONNECTORS_HELDOUT if held else CONNECTORS
    text = parts[0][0]
    for part, _ in parts[1:]:
        text += str(rng.choice(connectors)) + part
    if parts[0][1] and rng.random() < polite_prob:
        text = str(rng.choice(WRAPPERS_HELDOUT if held else WRAPPERS)).format(p=text)
    return text


# --------------------------------------------------------------------------- not an edit

#: Requests that name no edit (training): vague wishes, chat, captions. Paired with the identity,
#: they teach the student's "understood as" heads what *not* recognising an instruction looks like.
NON_EDITS = ("make it better", "improve it", "fix it", "fix this photo", "make it nice", "make it look good",
             "do something", "edit this", "enhance", "hello", "hi there", "thanks", "thank you", "ok",
             "what is this?", "who took this?", "a photo of a dog", "a picture of a house", "nice photo",
             "i like it", "whatever you think", "surprise me", "make it pop somehow", "help",
             "is this good?", "the end", "test", "lorem ipsum dolor sit amet", "asdf", "qwerty", "123",
             "hmm", "yes", "no", "maybe later", "my holiday", "send this to mum", "print it")
#: Held out for evaluating the refusal (never in training).
NON_EDITS_HELDOUT = ("make it better please", "can you improve this?", "make it great", "beautify",
                     "good morning", "how are you?", "a cat on a sofa", "zzzz", "xxxx", "jkl;", "!!!",
                     "just do your thing", "the weather is nice today", "blah blah", "42",
                     "make it look professional", "edit", "perfect it", "anything", "why?")


# --------------------------------------------------------------------------- everyday words (the reader's)

#: Everyday wording that only the student's *reader* trains on (never the image data, so the world's
#: training items stay as they were): colloquial patterns per family and direction ``(more, less)``,
#: "give it a chilly feel"-style wishes (the result named, not the complaint), colour and material
#: words, result words, colloquial verbs and moods. Hand-written; no word of :data:`HELDOUT_SYNONYMS` may appear
#: here (tested).
EVERYDAY: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "exposure": (("turn up the brightness{adv}", "bump the exposure up{adv}", "make {obj} {cmp} less dark",
                  "{obj} {be} {deg} too dark to see", "give {obj} a {acmp} brighter look",
                  "make {obj} {cmp} more radiant", "make {obj} {cmp} less gloomy", "make {obj} {cmp} sunlit"),
                 ("turn down the brightness{adv}", "knock the exposure down{adv}", "make {obj} {cmp} less bright",
                  "make {obj} {cmp} moodier", "give {obj} a {acmp} darker look", "make {obj} {cmp} gloomier",
                  "make {obj} {cmp} shadier", "make {obj} {cmp} more sombre")),
    "contrast": (("bump up the contrast{adv}", "more contrast{adv}", "make the darks darker and the lights lighter",
                  "give {obj} {cmp} stronger contrast", "make {obj} {cmp} more dramatic",
                  "give {obj} {cmp} bolder contrast"),
                 ("ease off the contrast{adv}", "less contrast{adv}", "make {obj} {cmp} flatter",
                  "give {obj} {cmp} gentler contrast", "make {obj} {cmp} less dramatic",
                  "make the contrast {cmp} milder")),
    "saturation": (("make the colours {cmp} more vivid", "make {obj} {cmp} more vivid", "bump up the colours{adv}",
                    "give {obj} {cmp} richer colours", "make the colours {cmp} stronger", "more colour{adv}",
                    "make the colours {cmp} bolder", "make {obj} {cmp} more vibrant in colour",
                    "saturate the colours{adv}"),
                   ("make the colours {cmp} paler", "make {obj} {cmp} paler", "take the colour out of {obj}{adv}",
                    "turn {obj} almost monochrome", "make {obj} {cmp} more monochrome",
                    "make the colours {cmp} greyer", "less colour{adv}", "make the colours {cmp} less vivid",
                    "strip the colour from {obj}{adv}", "make {obj} {cmp} more neutral",
                    "make the colours {cmp} duller")),
    "temperature": (("make {obj} {cmp} sunnier", "give {obj} a {acmp} warm feel", "give {obj} a sunny look",
                     "make {obj} feel like summer", "make {obj} {cmp} more summery", "{obj} {look} {deg} too icy",
                     "{obj} {look} {deg} too bluish", "make {obj} {cmp} less blue", "give {obj} a warm feel",
                     "make {obj} {cmp} balmier", "give {obj} a cosy glow", "make {obj} {cmp} more tropical"),
                    ("make {obj} {cmp} icier", "give {obj} a chilly feel", "give {obj} a {acmp} cold look",
                     "make {obj} look icy", "give {obj} a frosty look", "make {obj} feel like winter",
                     "{obj} {look} {deg} too yellowish", "{obj} {look} {deg} too orangey",
                     "make {obj} {cmp} less yellow", "give {obj} a cool feel", "give {obj} an arctic look",
                     "make {obj} {cmp} more frozen", "make {obj} {cmp} bleaker and colder")),
    "tint": (("make {obj} {cmp} less green", "add pink{adv}", "make {obj} {cmp} more rose-coloured"),
             ("make {obj} {cmp} less pink", "add green{adv}", "make {obj} {cmp} more leafy green")),
    "tone_curve": (("add some snap{adv}", "give {obj} {cmp} more punch", "give {obj} {cmp} more kick",
                    "give {obj} {cmp} more zing"),
                   ("give {obj} a {acmp} vintage look", "make {obj} {cmp} more vintage",
                    "make {obj} look like an old photo", "give {obj} a washed-out film look",
                    "give {obj} a {acmp} worn look", "make {obj} {cmp} more antique")),
    "shadows": (("lift the darks{adv}", "brighten the dark bits{adv}", "make the darks {cmp} lighter"),
                ("deepen the darks{adv}", "darken the dark bits{adv}", "make the darks {cmp} darker")),
    "highlights": (("make the bright bits {cmp} brighter", "brighten the whites{adv}",
                    "make the shiny parts {cmp} brighter", "make the reflections {cmp} brighter"),
                   ("the whites are {deg} blown", "bring down the whites{adv}", "knock back the highlights{adv}",
                    "make the bright bits {cmp} darker", "make the reflections {cmp} darker",
                    "calm the bright spots{adv}")),
    "hsl_saturation": (("make {obj} {cmp} more vivid", "make {obj} {cmp} more colourful", "make {obj} {cmp} bolder"),
                       ("make {obj} {cmp} paler", "make {obj} {cmp} less vivid", "make {obj} {cmp} greyer",
                        "make {obj} {cmp} more neutral")),
    "hsl_hue": (("turn {obj} {hue}{adv}", "make {obj} {cmp} {hue}"),
                ("turn {obj} {hue}{adv}", "make {obj} {cmp} {hue}")),
    "region_saturation": (("make {obj} {cmp} more vivid", "make {obj} {cmp} more colourful",
                           "make {obj} {cmp} lusher", "make {obj} {cmp} bolder"),
                          ("make {obj} {cmp} paler", "make {obj} {cmp} less vivid", "make {obj} {cmp} greyer",
                           "make {obj} {cmp} more neutral")),
    "region_temperature": (("make {obj} {cmp} sunnier", "give {obj} a warm feel", "make {obj} {cmp} balmier"),
                           ("make {obj} {cmp} icier", "give {obj} a chilly feel", "give {obj} an arctic look")),
    "radial_exposure": (("@edges:brighten the sides{adv}",),
                        ("@edges:darken the sides of the frame{adv}",)),
    "vibrance": (("make the dull colours {cmp} livelier",),
                 ("make the soft colours {cmp} quieter",)),
    "clarity": (("crisp up {obj}{adv}", "make {obj} {cmp} sharper"),
                ("make {obj} {cmp} blurrier", "soften {obj}{adv}")),
    "region_exposure": (("make {obj} {cmp} more radiant",),
                        ("make {obj} {cmp} gloomier", "make {obj} {cmp} shadier")),
    "hsl_luminance": (("make {obj} {cmp} more radiant",),
                      ("make {obj} {cmp} gloomier",)),
}
#: Everyday object phrases of targets, for the reader (added to the training ones): colour names of each hue
#: range, places and things of each region, and ("") the whole photo.
EVERYDAY_OBJECTS: dict[str, tuple[str, ...]] = {
    "sky": ("the clouds", "the sky and the clouds", "the overcast sky", "the sunset sky", "the sky overhead"),
    "skin": ("the face", "the portrait", "the cheeks", "the person", "the model's skin", "the arms and face"),
    "foliage": ("the lawn", "the meadow", "the bushes", "the forest", "the hedge", "the shrubs", "the woods",
                "the moss", "the ferns", "the treetops", "the garden plants"),
    "bottom": ("the ground", "the bottom of the picture", "the bottom strip", "the lower area"),
    "top": ("the top of the picture", "the top strip", "the upper area"),
    "edges": ("the sides", "the outside of the frame", "the border", "the outer rim"),
    "centre": ("the middle of the picture", "the central part", "the subject in the middle"),
    "reds": ("the red bits", "the red flowers", "the ruby tones", "the cherry tones", "the brick red tones"),
    "oranges": ("the orange bits", "the peach tones", "the copper tones", "the rust tones"),
    "yellows": ("the yellow bits", "the canary tones", "the sunflower tones", "the banana yellow bits"),
    "greens": ("the green bits", "the lime tones", "the moss green tones", "the sage tones"),
    "blues": ("the blue bits", "the sea", "the navy tones", "the sapphire tones", "the denim tones"),
    "purples": ("the purple flowers", "the plum tones", "the indigo tones", "the mauve tones"),
    "magentas": ("the pink flowers", "the hot pink tones", "the cerise tones", "the rose tones"),
    "aquas": ("the teal areas", "the teal tones", "the turquoise bits", "the sea green tones"),
    "": ("the photograph", "the scene", "the whole frame", "the entire image"),
}
#: Everyday objects of the global families that name what they act on (:data:`FAMILY_OBJECTS`).
EVERYDAY_FAMILY_OBJECTS: dict[str, tuple[str, ...]] = {
    "saturation": ("the colour", "the whole palette", "the photograph"),
    "shadows": ("the darks", "the dark bits", "the deep shadows", "the black areas"),
    "highlights": ("the whites", "the bright bits", "the shiny parts", "the reflections"),
    "clarity": ("the fine detail", "the edges of things", "the photograph"),
}
#: Everyday requests that name no edit, for the reader (training; none of :data:`NON_EDITS_HELDOUT`).
NON_EDITS_EVERYDAY = ("what a lovely day", "where was this taken?", "nice shot!", "what camera is this?",
                      "send it to my phone", "who is in the picture?", "i took this yesterday", "what do you think?",
                      "let me know", "good night", "is it raining?", "tell me a joke", "a red car", "a green field",
                      "a blue sky over the sea", "my garden in spring", "sunset at the beach", "do it again",
                      "make it amazing", "just make it look right", "can you do magic?",
                      # captions and chat about the scene or the day (statements about the world, not wishes)
                      "a dog running in the park", "my kids at the zoo", "happy birthday!", "what time is it?",
                      "how do i save this?", "the food was great", "we had so much fun", "two friends laughing",
                      "an old house by the river", "the mountains in the distance", "our first trip together",
                      "it rained all week", "the train was late", "a bowl of fruit on a table",
                      "my brother and his bike", "a quiet street at night", "the view from our hotel",
                      "is this one better than the last?", "keep this one", "delete the others",
                      "you choose", "do whatever", "make it look like a pro did it", "fix everything",
                      "the flowers in my mother's garden", "a bird on a branch", "the lake was cold",
                      "snow on the hills", "a picnic by the lake", "the car is red")


@functools.lru_cache(maxsize=None)
def everyday_patterns(family: str, direction: int) -> tuple[Pattern, ...]:
    """The reader's everyday patterns of a family and direction (``()`` where it has none)."""
    pair = EVERYDAY.get(family)
    return tuple(_pattern(t, True) for t in pair[0 if direction > 0 else 1]) if pair else ()


def render_everyday_part(family: str, direction: int, target: str, strength: str,
                         rng: np.random.Generator) -> tuple[str, bool]:
    """One instruction part in everyday wording (the reader's training only): half the time an
    everyday pattern, else a training pattern; the object an everyday one where the target has some
    (half the time), else a training one. Same return as :func:`render_part`."""
    pool = [p for p in everyday_patterns(family, direction) if p.fits(target)]
    if not pool or rng.random() < 0.5:
        pool = [p for p in patterns(family, direction, "train") if p.fits(target)]
    usable = [p for p in pool if strength == "normal" or has_strength_slot(p)] or pool
    p = usable[int(rng.integers(len(usable)))]
    objs = objects(family, target)
    extra = EVERYDAY_FAMILY_OBJECTS.get(family, ()) if family in FAMILY_OBJECTS else EVERYDAY_OBJECTS.get(target, ())
    if extra and rng.random() < 0.5:
        objs = extra
    hues = HUE_TOWARDS.get(target, (("",), ("",)))[0 if direction > 0 else 1]
    return _fill(p.text, str(rng.choice(objs)), strength, str(rng.choice(hues)), rng, False), p.imperative


def non_edit_text(rng: np.random.Generator, wording: str = "train") -> str:
    """A request that names no edit: a phrase of :data:`NON_EDITS` (held out: of
    :data:`NON_EDITS_HELDOUT`) or, a third of the time, a random string of letters."""
    if rng.random() < 1 / 3:
        letters = "abcdefghijklmnopqrstuvwxyz"
        return " ".join("".join(rng.choice(list(letters), size=int(rng.integers(2, 8))))
                        for _ in range(int(rng.integers(1, 4))))
    pool = NON_EDITS if wording == "train" else NON_EDITS_HELDOUT
    return str(rng.choice(pool))


def describe(family: str, target: str, strength: float) -> str:
    """A short reading of one edit, as the student's "understood as" line prints it.

    Args:
        family, target: a world family and its target ("" for a global family).
        strength: signed strength (amount / the family's unit; +1 is "normal", -0.5 "slightly" the other way).

    Returns:
        e.g. ``"sky warmer (+1.0)"``, ``"darker (-0.5)"``, ``"greens more cyan (+1.8)"``.
    """
    plus = strength >= 0
    adj = WORDINGS[family][0 if plus else 1].adjs[0]
    if "{hue}" in adj:
        adj = adj.format(hue=HUE_TOWARDS[target][0 if plus else 1][0])
    what = target or {"shadows": "shadows", "highlights": "highlights", "clarity": "texture"}.get(family, "")
    return f"{what + ' ' if what else ''}{adj} ({strength:+.1f})"


def example_instruction(family: str, target: str, positive: bool) -> str:
    """A plain training instruction for one edit, as the refusal message and the studio's
    alternatives offer it: ``("region_temperature", "sky", True)`` -> ``"make the sky warmer"``."""
    adj = WORDINGS[family][0 if positive else 1].adjs[0]
    if "{hue}" in adj:
        adj = adj.format(hue=HUE_TOWARDS[target][0 if positive else 1][0])
    if family == "clarity":
        return "add clarity" if positive else "reduce the clarity"
    return f"make {(FAMILY_OBJECTS.get(family) or OBJECTS[target])[0]} {adj}"


# --------------------------------------------------------------------------- vocabulary


def words(text: str) -> set[str]:
    """The words of a text (lower case; "s-curve" and "people's" stay one word)."""
    return set(re.findall(r"[a-z]+(?:[-'][a-z]+)*", text.lower()))


def _slot_free(text: str) -> str:
    return re.sub(r"\{\w+\}", " ", text)


def training_texts() -> Iterable[str]:
    """Every piece of training text: patterns, objects, slot words, wrappers, connectors, hue words."""
    for fam in WORDINGS:
        for d in (1, -1):
            for p in patterns(fam, d, "train"):
                yield _slot_free(p.text)
    yield from (o for objs in OBJECTS.values() for o in objs)
    yield from (o for objs in FAMILY_OBJECTS.values() for o in objs)
    yield from (w for slot in SLOT_WORDS.values() for ws in slot.values() for w in ws)
    yield from (_slot_free(w) for w in WRAPPERS)
    yield from CONNECTORS
    yield from (h for pair in HUE_TOWARDS.values() for hs in pair for h in hs)
    yield from NON_EDITS


@functools.lru_cache(maxsize=None)
def training_vocabulary() -> frozenset[str]:
    """Every word the training grammar can produce."""
    return frozenset(w for t in training_texts() for w in words(t))


def reader_training_texts() -> Iterable[str]:
    """Every piece of text the student's reader trains on: :func:`training_texts` and the everyday
    wording (:data:`EVERYDAY`, :data:`EVERYDAY_OBJECTS`, :data:`NON_EDITS_EVERYDAY`)."""
    yield from training_texts()
    for fam in EVERYDAY:
        for d in (1, -1):
            yield from (_slot_free(p.text) for p in everyday_patterns(fam, d))
    yield from (o for objs in EVERYDAY_OBJECTS.values() for o in objs)
    yield from (o for objs in EVERYDAY_FAMILY_OBJECTS.values() for o in objs)
    yield from NON_EDITS_EVERYDAY


@functools.lru_cache(maxsize=None)
def reader_vocabulary() -> frozenset[str]:
    """Every word the reader's training text can contain (:func:`reader_training_texts`)."""
    return frozenset(w for t in reader_training_texts() for w in words(t))


def synonym_texts() -> Iterable[str]:
    """Every piece of held-out synonym material: synonym patterns, objects and strength words."""
    for fam in WORDINGS:
        for d in (1, -1):
            for p in patterns(fam, d, "heldout_synonym"):
                yield _slot_free(p.text)
    yield from (o for objs in OBJECT_SYNONYMS.values() for o in objs)
    yield from (o for objs in FAMILY_OBJECT_SYNONYMS.values() for o in objs)
    yield from (w for slot in SLOT_SYNONYMS.values() for ws in slot.values() for w in ws)


def _heldout_synonyms() -> tuple[str, ...]:
    vocab = training_vocabulary() | reader_vocabulary()
    return tuple(sorted({w for t in synonym_texts() for w in words(t)} - vocab))


#: Words that appear only in ``heldout_synonym`` wording, never in training text (the world's nor
#: the reader's everyday wording). Chosen to measure generalisation: the most common word of a family
#: ("vivid", "paler", "icier", "vintage") is trained, rarer synonyms are held out.
HELDOUT_SYNONYMS: tuple[str, ...] = _heldout_synonyms()


def phrasing_counts(family: str, direction: int, targets: Sequence[str] = ("",)) -> dict[str, int]:
    """Distinct patterns per wording, and distinct training sentences at normal strength (no wrapper)."""
    out = {w: len(patterns(family, direction, w)) for w in WORDINGS_KINDS}
    sentences = set()
    rng = np.random.default_rng(0)
    for target in targets:
        objs = objects(family, target)
        hues = HUE_TOWARDS.get(target, (("",), ("",)))[0 if direction > 0 else 1]
        for p in patterns(family, direction, "train"):
            if not p.fits(target):
                continue
            for obj in objs if "{obj}" in p.text else objs[:1]:
                for hue in hues if "{hue}" in p.text else hues[:1]:
                    sentences.add(_fill(p.text, obj, "normal", hue, rng, False))
    out["train_sentences"] = len(sentences)
    return out
