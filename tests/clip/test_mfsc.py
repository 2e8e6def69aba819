"""MFSC caption table (FineGrainedAD §3.2): coverage, schema validation, user files, prompts."""

from __future__ import annotations

import json

import pytest
from open_clip.tokenizer import SimpleTokenizer

from resad_kit.clip.mfsc import (
    CategoryCaptions,
    Vocabularies,
    caption_categories,
    load_captions,
    load_vocabularies,
    mfsc_prompts,
    parse_captions,
)
from resad_kit.data import STANDARD_CATEGORIES, SYNTHETIC_CATEGORIES

SHIPPED = (*STANDARD_CATEGORIES["mvtec"], *STANDARD_CATEGORIES["visa"], *SYNTHETIC_CATEGORIES)

CUP = {
    "foreground": "cup",
    "background": "white",
    "relation": "one handle on one cup",
    "caption": "a white cup seen from the side",
    "abnormal_states": ["damaged {}", "{} with a crack"],
    "entities": [
        {
            "name": "handle",
            "location": "right",
            "number": "1",
            "color": ["white"],
            "texture": ["glossy"],
            "shape": ["curved"],
            "caption": "a curved handle on the right",
        }
    ],
}


def test_table_covers_mvtec_visa_and_synthetic_categories():
    assert len(STANDARD_CATEGORIES["mvtec"]) == 15
    assert len(STANDARD_CATEGORIES["visa"]) == 12
    assert set(SHIPPED) == set(caption_categories())


@pytest.mark.parametrize("category", SHIPPED)
def test_every_shipped_category_validates_and_fits_the_clip_context(category):
    caps = load_captions(category)
    assert isinstance(caps, CategoryCaptions)
    groups = mfsc_prompts(caps, load_vocabularies())
    assert len(groups) == len(caps.entities) + 2
    tok = SimpleTokenizer()
    for g in groups:
        for text in (g.normal, g.learned, *g.abnormal):
            # <SOT> + 4 context + 1 abnormal token + text + "." + <EOT> within 77 tokens
            assert len(tok.encode(text + ".")) + 2 + 5 <= 77, text


def test_prompt_texts_follow_the_code_construction():
    vocab = Vocabularies(("white",), ("glossy",), ("curved",), ("right", "left"), ("1",))
    caps = parse_captions("cup", CUP, vocab)
    comp, image, background = mfsc_prompts(caps, vocab, seed=3)
    assert comp.name == "component:handle"
    assert comp.normal == comp.learned == "a curved handle on the right"
    # the only other location is "left"; the state is one of the two, filled in
    assert comp.abnormal[0] in {
        "a curved damaged handle on the left",
        "a curved handle with a crack on the left",
    }
    assert image.abnormal == (
        "a white damaged cup seen from the side",
        "a white cup with a crack seen from the side",
    )
    assert image.normal == image.learned == "a white cup seen from the side"
    assert background.normal == "white background"
    assert background.abnormal == ("damaged white background", "white background with a crack")


def test_plural_entity_name_and_centrally():
    vocab = Vocabularies(("white",), ("glossy",), ("round",), ("center", "top"), ("many",))
    raw = json.loads(json.dumps(CUP))
    raw["entities"][0].update(
        name="dot", location="center", number="many", shape=["round"],
        caption="Dots placed centrally",
    )  # fmt: skip
    raw["abnormal_states"] = ["{} with a crack"]
    (comp, _, _) = mfsc_prompts(parse_captions("cup", raw, vocab), vocab)
    assert comp.abnormal == ("dots with a crack placed top",)


def test_prompts_deterministic_given_the_seed():
    caps, vocab = load_captions("cable"), load_vocabularies()
    assert mfsc_prompts(caps, vocab, seed=5) == mfsc_prompts(caps, vocab, seed=5)
    texts = {mfsc_prompts(caps, vocab, seed=s)[0].abnormal for s in range(10)}
    assert len(texts) > 1


def test_user_file_adds_and_replaces_categories(tmp_path):
    replaced = json.loads(json.dumps(CUP)) | {"caption": "a white cup on a bottle shelf"}
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"categories": {"cup": CUP, "bottle": replaced}}))
    assert load_captions("cup", path=path).foreground == "cup"
    assert load_captions("bottle", path=path).caption == "a white cup on a bottle shelf"
    assert load_captions("bottle").foreground == "glass bottle"  # the shipped table is untouched
    assert "cup" in caption_categories(path)
    assert "cup" not in caption_categories()


def test_user_vocabularies_replace_ours(tmp_path):
    vocab = {"colors": ["white"], "textures": ["glossy"], "shapes": ["curved"],
             "locations": ["right", "left"], "numbers": ["1"]}  # fmt: skip
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"vocabularies": vocab, "categories": {"cup": CUP}}))
    assert load_vocabularies(path).locations == ("right", "left")
    assert load_captions("cup", path=path).entities[0].color == ("white",)


def test_unknown_category_error_says_how_to_supply_captions():
    with pytest.raises(ValueError, match=r"no captions for `category` 'teapot'.*`path`"):
        load_captions("teapot")


def _broken(**changes):
    raw = json.loads(json.dumps(CUP))
    entity = changes.pop("entity", {})
    raw["entities"][0].update(entity)
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({k: v for k, v in CUP.items() if k != "relation"}, "keys must be"),
        (_broken(caption="a white mug"), "foreground"),
        (_broken(abnormal_states=["damaged"]), "exactly one"),
        (_broken(abnormal_states=[]), "non-empty list"),
        (_broken(entities=[]), "non-empty list"),
        (_broken(background=""), "non-empty string"),
        (_broken(entity={"location": "above"}), "location"),
        (_broken(entity={"number": "7"}), "number"),
        (_broken(entity={"color": ["mauve"]}), "color"),
        (_broken(entity={"name": "spout"}), "name 'spout'"),
        (_broken(entity={"location": "left"}), "location 'left' must occur"),
    ],
)
def test_schema_errors_name_the_field(raw, match):
    with pytest.raises(ValueError, match=match):
        parse_captions("cup", raw, load_vocabularies())


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_captions("cup", path=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_captions("cup", path=bad)
    bad.write_text(json.dumps({"vocabularies": {"colors": ["red"]}, "categories": {}}))
    with pytest.raises(ValueError, match="vocabularies"):
        load_vocabularies(bad)
