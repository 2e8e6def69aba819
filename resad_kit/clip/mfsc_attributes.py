"""The attribute texts of FineGrainedAD's Attr-MoE gates (paper §3.3), from the MFSC.

Split from :mod:`resad_kit.clip.mfsc` (the captions and the group texts); the gates
themselves are in :class:`~resad_kit.clip.mllp.MultiLevelPrompts`.
"""

from __future__ import annotations

from dataclasses import dataclass

from resad_kit.clip.mfsc import CategoryCaptions, Vocabularies

__all__ = ["AttributePrompts", "attribute_prompts"]


@dataclass(frozen=True)
class AttributePrompts:
    """The attribute texts that the Attr-MoE gates add to one prompt group (paper §3.3).

    Attributes:
        group: index of the group in :func:`~resad_kit.clip.mfsc.mfsc_prompts`' order.
        names: the attributes, e.g. ``("relation", "color", "texture", "shape")``.
        normal: one normal text per attribute.
        abnormal: per attribute, its hand-written abnormal texts.
    """

    group: int
    names: tuple[str, ...]
    normal: tuple[str, ...]
    abnormal: tuple[tuple[str, ...], ...]


def _attribute_texts(
    values: tuple[str, ...], vocabulary: tuple[str, ...]
) -> tuple[str, tuple[str, ...]]:
    return ".".join(values), tuple(v for v in vocabulary if v not in values)


def attribute_prompts(
    captions: CategoryCaptions, vocab: Vocabularies, level: str
) -> tuple[AttributePrompts, ...]:
    """The attribute texts of the Attr-MoE gates for ``level`` (``"none"``, ``"image"``,
    ``"components"``).

    As the released code (``FineGrainedPatchPromptLearner``), which builds them for the
    image group: a colour (texture, shape) NHP text is the attribute's values joined by
    ``"."`` (here the values of all components, in order, without repeats), its AHP texts
    are the vocabulary's other values, one each; the relation NHP text is ``relation``, its
    AHP texts ``relation`` with every component name replaced by each abnormal state
    filled with it. ``"components"`` (the paper's level) gives each component its own
    colour, texture and shape texts (no relation: it is the foreground's).

    Example:
        >>> from resad_kit.clip.mfsc import load_captions, load_vocabularies
        >>> from resad_kit.clip.mfsc_attributes import attribute_prompts
        >>> caps, vocab = load_captions("screw"), load_vocabularies()
        >>> [(a.group, a.names) for a in attribute_prompts(caps, vocab, "image")]
        [(2, ('relation', 'color', 'texture', 'shape'))]
        >>> a = attribute_prompts(caps, vocab, "components")[0]
        >>> a.group, a.normal[0], a.normal[0] in a.abnormal[0]
        (0, 'silver', False)
    """
    if level == "none":
        return ()
    entities = captions.entities
    if level == "image":

        def union(field: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(v for e in entities for v in getattr(e, field)))

        relation = []
        for state in captions.abnormal_states:
            text = captions.relation
            for e in entities:
                text = text.replace(e.name, state.format(e.name))
            relation.append(text)
        texts = [
            _attribute_texts(union(f), getattr(vocab, f + "s"))
            for f in ("color", "texture", "shape")
        ]
        return (
            AttributePrompts(
                len(entities),
                ("relation", "color", "texture", "shape"),
                (captions.relation, *(t[0] for t in texts)),
                (tuple(relation), *(t[1] for t in texts)),
            ),
        )
    if level == "components":
        out = []
        for i, e in enumerate(entities):
            texts = [
                _attribute_texts(getattr(e, f), getattr(vocab, f + "s"))
                for f in ("color", "texture", "shape")
            ]
            out.append(
                AttributePrompts(
                    i,
                    ("color", "texture", "shape"),
                    tuple(t[0] for t in texts),
                    tuple(t[1] for t in texts),
                )
            )
        return tuple(out)
    raise ValueError(
        f"attribute_prompts: `level` must be 'none', 'image' or 'components'; got {level!r}"
    )
