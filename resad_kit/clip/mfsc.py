"""Multi-level fine-grained semantic captions (MFSC) of FineGrainedAD, as data, and their prompts.

FineGrainedAD (paper §3.2) describes a normal image of every category at three levels —
image (foreground, background), foreground (components: location, number, relation) and
component (colour, texture, shape, one caption per component) — plus a summary caption,
and builds its prompt groups from them (§3.3, MLLP). The paper generated the captions with
an MLLM; resad_kit ships its own hand-written table (``mfsc_captions.json`` beside this
module) for the 15 MVTec AD and 12 VisA categories and the 5 synthetic categories of
:func:`resad_kit.data.synthesize_dataset`, with per-category abnormal-state templates and the
attribute vocabularies. A user JSON file in the same schema adds or replaces categories
(``load_captions(category, path=...)``); an unknown category is an error that says how
to supply one (no generic fallback: a caption that does not describe the object would
silently change the method). Schema: docs/finegrainedad.md.

:func:`mfsc_prompts` builds the texts of every group the way the released code
(RetoFan233/FineGrainedAD, ``PromptAD/model.py``, commit aa6b041) does, with two fixes
named in its docstring.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "CategoryCaptions",
    "Entity",
    "PromptGroup",
    "Vocabularies",
    "caption_categories",
    "load_captions",
    "load_vocabularies",
    "mfsc_prompts",
    "parse_captions",
]

_TABLE = "mfsc_captions.json"
_ENTITY_KEYS = {"name", "location", "number", "color", "texture", "shape", "caption"}
_CATEGORY_KEYS = {"foreground", "background", "entities", "relation", "caption", "abnormal_states"}
_VOCAB_KEYS = {"colors", "textures", "shapes", "locations", "numbers"}


@dataclass(frozen=True)
class Vocabularies:
    """Base attribute values (the code's ``fine_grained_{color,…}_list``)."""

    colors: tuple[str, ...]
    textures: tuple[str, ...]
    shapes: tuple[str, ...]
    locations: tuple[str, ...]
    numbers: tuple[str, ...]


@dataclass(frozen=True)
class Entity:
    """A component (level 2: name, location, number; level 3: attributes and caption)."""

    name: str
    location: str
    number: str
    color: tuple[str, ...]
    texture: tuple[str, ...]
    shape: tuple[str, ...]
    caption: str


@dataclass(frozen=True)
class CategoryCaptions:
    """The MFSC of one category.

    Attributes:
        category: the category name.
        foreground: level 1, the object's noun phrase; it must occur in ``caption``.
        background: level 1, e.g. ``"black"`` (prompt text ``"black background"``).
        entities: level 2-3 components, at least one.
        relation: level 2 sentence on counts and positions of the components.
        caption: the image-level summary (the image group's normal text).
        abnormal_states: templates with one ``{}`` for a noun, e.g. ``"{} with a crack"``.
    """

    category: str
    foreground: str
    background: str
    entities: tuple[Entity, ...]
    relation: str
    caption: str
    abnormal_states: tuple[str, ...]


@dataclass(frozen=True)
class PromptGroup:
    """The texts of one prompt group (without the learnable context tokens).

    Attributes:
        name: ``"component:<entity>"``, ``"image"`` or ``"background"``.
        normal: the normal hand-written text (NHP).
        abnormal: the abnormal hand-written texts (AHPs).
        learned: the text that follows the learnable abnormal token(s) in the ALPs.
    """

    name: str
    normal: str
    abnormal: tuple[str, ...]
    learned: str


def _read_table(path: str | Path | None) -> dict:
    if path is None:
        text = resources.files("resad_kit.clip").joinpath(_TABLE).read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise ValueError(f"load_captions: cannot read `path` {str(path)!r}: {err}") from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"load_captions: {path or _TABLE} is not valid JSON: {err}") from None
    if not isinstance(table, dict) or not isinstance(table.get("categories", {}), dict):
        raise ValueError(f"load_captions: {path or _TABLE} must hold an object with 'categories'")
    return table


def load_vocabularies(path: str | Path | None = None) -> Vocabularies:
    """The attribute vocabularies: the user file's ``"vocabularies"`` if it has one, else ours.

    Example:
        >>> from resad_kit.clip.mfsc import load_vocabularies
        >>> "center" in load_vocabularies().locations
        True
    """
    table = _read_table(path) if path is not None else {}
    raw = table.get("vocabularies") or _read_table(None)["vocabularies"]
    if not isinstance(raw, dict) or set(raw) != _VOCAB_KEYS:
        raise ValueError(
            f"load_vocabularies: 'vocabularies' must have the keys {sorted(_VOCAB_KEYS)}"
        )
    vocab = {k: _strings(f"vocabularies.{k}", v) for k, v in raw.items()}
    if len(vocab["locations"]) < 2:
        raise ValueError("load_vocabularies: 'locations' needs at least 2 values to swap one")
    return Vocabularies(**vocab)


def caption_categories(path: str | Path | None = None) -> tuple[str, ...]:
    """The categories with captions: ours, plus those of the user file, sorted.

    Example:
        >>> from resad_kit.clip.mfsc import caption_categories
        >>> len(caption_categories()), "bottle" in caption_categories()
        (32, True)
    """
    names = set(_read_table(None)["categories"])
    if path is not None:
        names |= set(_read_table(path)["categories"])
    return tuple(sorted(names))


def load_captions(category: str, *, path: str | Path | None = None) -> CategoryCaptions:
    """The validated MFSC of ``category``; a user file at ``path`` wins over the shipped table.

    Args:
        category: e.g. ``"bottle"`` (MVTec AD), ``"pcb1"`` (VisA), ``"coins"`` (synthetic).
        path: optional JSON file in the schema of docs/finegrainedad.md; its categories add
            to or replace ours, and its ``"vocabularies"`` (optional) replace ours.

    Returns:
        :class:`CategoryCaptions`.

    Raises:
        ValueError: an unknown category (the message says how to supply captions), an
            unreadable file, or captions that break the schema (the message names the field).

    Example:
        >>> from resad_kit.clip.mfsc import load_captions
        >>> caps = load_captions("transistor")
        >>> caps.foreground, [e.name for e in caps.entities]
        ('transistor', ['black case', 'metal leads'])
    """
    user = _read_table(path)["categories"] if path is not None else {}
    raw = user.get(category) or _read_table(None)["categories"].get(category)
    if raw is None:
        raise ValueError(
            f"load_captions: no captions for `category` {category!r}; known: "
            f"{', '.join(caption_categories(path))}. Write them in a JSON file "
            "(schema in docs/finegrainedad.md) and pass it as `path`."
        )
    return parse_captions(category, raw, load_vocabularies(path))


def parse_captions(category: str, raw: Mapping, vocab: Vocabularies) -> CategoryCaptions:
    """Validate one category's JSON object against the schema and ``vocab``.

    Raises:
        ValueError: a missing or extra key, an empty text, an attribute outside ``vocab``,
            a ``foreground`` absent from ``caption``, an entity name or location absent from
            its caption, an abnormal state without exactly one ``{}``.

    Example:
        >>> from resad_kit.clip.mfsc import load_vocabularies, parse_captions
        >>> raw = {
        ...     "foreground": "cup",
        ...     "background": "white",
        ...     "relation": "one handle",
        ...     "caption": "a white cup",
        ...     "abnormal_states": ["{} with a crack"],
        ...     "entities": [
        ...         {
        ...             "name": "handle",
        ...             "location": "right",
        ...             "number": "1",
        ...             "color": ["white"],
        ...             "texture": ["glossy"],
        ...             "shape": ["curved"],
        ...             "caption": "a curved handle on the right",
        ...         }
        ...     ],
        ... }
        >>> parse_captions("cup", raw, load_vocabularies()).entities[0].location
        'right'
    """
    where = f"captions of {category!r}"
    if not isinstance(raw, Mapping) or set(raw) != _CATEGORY_KEYS:
        got = sorted(raw) if isinstance(raw, Mapping) else type(raw).__name__
        raise ValueError(f"{where}: the keys must be {sorted(_CATEGORY_KEYS)}; got {got}")
    texts = {k: _text(f"{where}.{k}", raw[k]) for k in ("foreground", "background", "relation")}
    caption = _text(f"{where}.caption", raw["caption"])
    if texts["foreground"] not in caption:
        raise ValueError(f"{where}: `foreground` {texts['foreground']!r} must occur in `caption`")
    states = _strings(f"{where}.abnormal_states", raw["abnormal_states"])
    for s in states:
        if s.count("{}") != 1:
            raise ValueError(f"{where}: abnormal state {s!r} must hold exactly one '{{}}'")
    if not isinstance(raw["entities"], list) or not raw["entities"]:
        raise ValueError(f"{where}: `entities` must be a non-empty list")
    entities = tuple(
        _entity(f"{where}.entities[{i}]", e, vocab) for i, e in enumerate(raw["entities"])
    )
    return CategoryCaptions(
        category, entities=entities, caption=caption, abnormal_states=states, **texts
    )


def _entity(where: str, raw: object, vocab: Vocabularies) -> Entity:
    if not isinstance(raw, Mapping) or set(raw) != _ENTITY_KEYS:
        raise ValueError(f"{where}: the keys must be {sorted(_ENTITY_KEYS)}")
    name, caption = _text(f"{where}.name", raw["name"]), _text(f"{where}.caption", raw["caption"])
    location, number = _text(f"{where}.location", raw["location"]), str(raw["number"])
    if location not in vocab.locations:
        raise ValueError(f"{where}: `location` {location!r} is not in {vocab.locations}")
    if number not in vocab.numbers:
        raise ValueError(f"{where}: `number` {number!r} is not in {vocab.numbers}")
    attrs = {}
    for key, allowed in (
        ("color", vocab.colors),
        ("texture", vocab.textures),
        ("shape", vocab.shapes),
    ):
        attrs[key] = _strings(f"{where}.{key}", raw[key])
        if not set(attrs[key]) <= set(allowed):
            raise ValueError(f"{where}: `{key}` {attrs[key]} must be values of {allowed}")
    low = caption.lower()
    if name.lower() not in low:
        raise ValueError(f"{where}: the name {name!r} must occur in its caption {caption!r}")
    if location not in low and not (location == "center" and "centrally" in low):
        raise ValueError(f"{where}: the location {location!r} must occur in its caption")
    return Entity(name, location, number, caption=caption, **attrs)


def _text(where: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string; got {value!r}")
    return value


def _strings(where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of strings; got {value!r}")
    return tuple(_text(f"{where}[{i}]", v) for i, v in enumerate(value))


def mfsc_prompts(
    captions: CategoryCaptions, vocab: Vocabularies, *, seed: int = 0
) -> tuple[PromptGroup, ...]:
    """The texts of FineGrainedAD's prompt groups: components, then image, then background.

    As the released code (``FineGrainedPatchPromptLearner``):

    * image: NHP ``caption``; AHPs ``caption`` with ``foreground`` replaced by every abnormal
      state filled with it; ALP text ``caption``;
    * background: NHP ``"<background> background"``; AHPs every abnormal state filled with
      it; ALP text the NHP;
    * component ``e``: NHP its caption; one AHP, the lower-cased caption with the entity
      name (its plural ``name + "s"`` if that occurs) followed by a random abnormal state
      and its location (also ``"centrally"`` for ``"center"``) replaced by a random other
      location of ``vocab``; ALP text the NHP.

    Two fixes: the code pastes the state with ``{}`` removed after the noun, which reads
    ``"handledamaged "`` for a prefix state such as ``"damaged {}"``; here every state is
    filled in (``"damaged handle"``). The random choices use ``random.Random(seed)``
    (the code uses the global ``random`` module). The relation, colour, texture and shape
    prompts of the Attr-MoE gates are :func:`~resad_kit.clip.mfsc_attributes.attribute_prompts`'.

    Example:
        >>> from resad_kit.clip.mfsc import load_captions, load_vocabularies, mfsc_prompts
        >>> groups = mfsc_prompts(load_captions("bottle"), load_vocabularies())
        >>> [g.name for g in groups]
        ['component:bottle opening', 'component:glass rim', 'image', 'background']
        >>> groups[-1].normal, groups[-1].abnormal[1]
        ('black background', 'black background with a large break')
    """
    rnd = random.Random(seed)
    states = captions.abnormal_states
    groups = []
    for e in captions.entities:
        text = e.caption.lower()
        noun = e.name.lower()
        if not noun.endswith("s") and noun + "s" in text:
            noun += "s"
        text = text.replace(noun, rnd.choice(states).format(noun))
        other = rnd.choice([v for v in vocab.locations if v != e.location])
        text = text.replace(e.location, other)
        if e.location == "center":
            text = text.replace("centrally", other)
        groups.append(PromptGroup(f"component:{e.name}", e.caption, (text,), e.caption))
    fg = captions.foreground
    image_abnormal = tuple(captions.caption.replace(fg, s.format(fg)) for s in states)
    groups.append(PromptGroup("image", captions.caption, image_abnormal, captions.caption))
    bg = f"{captions.background} background"
    groups.append(PromptGroup("background", bg, tuple(s.format(bg) for s in states), bg))
    return tuple(groups)
