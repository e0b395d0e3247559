"""Prompt lines, emphasis parsing, 75-token chunking and CLIP encoding on the tiny model."""

from __future__ import annotations

import pytest
import torch

from engine.models.components import SDXLComponents, build_tiny_sdxl
from engine.prompts.encoding import PromptEncoder, parse_emphasis, tokenize_weighted
from engine.prompts.syntax import safe_str, split_lines

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> SDXLComponents:
    return build_tiny_sdxl(0)


def test_lines_are_cleaned_and_split() -> None:
    assert safe_str("  a  cat ,. ") == "a cat"
    assert split_lines("a cat.\n\n  second,\nthird  ") == ("a cat", ["second", "third"])
    assert split_lines("  \n ") == ("", [])


def test_emphasis_parsing() -> None:
    parsed = parse_emphasis(r"a (b) ((c)) (d:1.5) \(e\)")
    expected = [
        ("a ", 1.0),
        ("b", 1.1),
        (" ", 1.0),
        ("c", 1.21),
        (" ", 1.0),
        ("d", 1.5),
        (" (e)", 1.0),
    ]
    assert [s for s, _ in parsed] == [s for s, _ in expected]
    assert [w for _, w in parsed] == pytest.approx([w for _, w in expected])
    # (x:w) sets the weight even inside another group; a bad number falls back to 1.1
    nested = parse_emphasis("(a (b:2))")
    assert nested == [("a ", pytest.approx(1.1)), ("b", 2.0)]
    assert parse_emphasis("(a:b)") == [("a:b", pytest.approx(1.1))]
    assert parse_emphasis("x) (y") == [("x) (y", 1.0)]


def test_chunks_are_77_tokens_and_long_prompts_are_not_truncated(tiny: SDXLComponents) -> None:
    chunks = tokenize_weighted(tiny.tokenizer, "a (cat:1.5)")
    assert len(chunks) == 1
    assert len(chunks[0]) == 77
    cat = tiny.tokenizer("cat", add_special_tokens=False)["input_ids"][0]
    assert chunks[0][:4] == [(49406, 1.0), (320, 1.0), (cat, 1.5), (49407, 1.0)]
    assert chunks[0][-1] == (49407, 1.0)  # CLIP-L pads with EOS
    assert tokenize_weighted(tiny.tokenizer_2, "a")[0][-1] == (0, 1.0)  # CLIP-G pads with 0

    long = tokenize_weighted(tiny.tokenizer, " ".join(["cat"] * 100))
    assert len(long) == 2
    assert all(len(c) == 77 for c in long)
    assert sum(1 for c in long for t, _ in c if t == cat) == 100


def test_whole_words_move_to_the_next_chunk(tiny: SDXLComponents) -> None:
    # 74 one-token words, then a two-token word: it does not fit in the last slot and moves on.
    word = "photosynthesis"
    pieces = tiny.tokenizer(word, add_special_tokens=False)["input_ids"]
    assert 2 <= len(pieces) < 8
    chunks = tokenize_weighted(tiny.tokenizer, " ".join(["cat"] * 74 + [word]))
    assert len(chunks) == 2
    assert [t for t, _ in chunks[1][1 : 1 + len(pieces)]] == pieces


def test_encoding_uses_clip_skip_without_final_norm(tiny: SDXLComponents) -> None:
    encoder = PromptEncoder(tiny, clip_skip=2)
    cond = encoder.encode_one("a cat")
    assert cond.embeds.shape == (1, 77, 64)
    assert cond.pooled.shape == (1, 32)
    ids = torch.tensor([[t for t, _ in tokenize_weighted(tiny.tokenizer, "a cat")[0]]])
    assert tiny.text_encoder is not None
    with torch.no_grad():
        expected = tiny.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.allclose(cond.embeds[..., :32], expected)
    deeper = PromptEncoder(tiny, clip_skip=1).encode_one("a cat")
    assert not torch.allclose(deeper.embeds, cond.embeds)
    assert torch.allclose(deeper.pooled, cond.pooled)  # pooled is independent of clip skip

    long = encoder.encode_one(" ".join(["cat"] * 100))
    assert long.embeds.shape == (1, 154, 64)


def test_weighting_scales_from_the_empty_prompt_and_keeps_the_mean(tiny: SDXLComponents) -> None:
    encoder = PromptEncoder(tiny, clip_skip=2)
    plain = encoder.encode_one("a cat")
    assert torch.allclose(encoder.encode_one("a (cat:1.0)").embeds, plain.embeds)
    weighted = encoder.encode_one("a (cat:1.5)")
    assert not torch.allclose(weighted.embeds, plain.embeds)
    for part in (slice(0, 32), slice(32, 64)):
        assert float(weighted.embeds[..., part].mean()) == pytest.approx(
            float(plain.embeds[..., part].mean()), rel=1e-4
        )


def test_elements_concatenate_and_pooled_is_summed(tiny: SDXLComponents) -> None:
    encoder = PromptEncoder(tiny, clip_skip=2)
    a, b = encoder.encode_one("a cat"), encoder.encode_one("a dog")
    both = encoder.encode(["a cat", "a dog"])
    assert both.embeds.shape == (1, 154, 64)
    assert torch.allclose(both.pooled, a.pooled + b.pooled)
    assert torch.allclose(encoder.encode(["a cat", "a dog"], pooled_count=1).pooled, a.pooled)
