"""Textual-inversion embeddings: file formats, token positions, chunking, unknown names, images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from engine import Engine, EngineRequest
from engine.demo.writer import DEMO_CHECKPOINT, DEMO_EMBEDDING
from engine.models.components import SDXLComponents, build_tiny_sdxl
from engine.prompts.embeddings import EmbeddingLibrary
from engine.prompts.encoding import PromptEncoder, tokenize_weighted

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny() -> SDXLComponents:
    return build_tiny_sdxl(0)


def _token_vectors(c: SDXLComponents, text: str) -> dict[str, torch.Tensor]:
    """The two encoders' own token embeddings of ``text`` (as an embedding file would hold)."""
    out = {}
    for key, tokenizer, encoder in (
        ("clip_l", c.tokenizer, c.text_encoder),
        ("clip_g", c.tokenizer_2, c.text_encoder_2),
    ):
        assert encoder is not None
        ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
        out[key] = encoder.get_input_embeddings()(ids).detach().clone()
    return out


@pytest.fixture(scope="module")
def library(tiny: SDXLComponents, tmp_path_factory: pytest.TempPathFactory) -> EmbeddingLibrary:
    folder = tmp_path_factory.mktemp("embeddings")
    save_file(_token_vectors(tiny, "red dog"), str(folder / "reddog.safetensors"))
    generator = torch.Generator().manual_seed(3)
    random = {k: torch.randn(2, 32, generator=generator) for k in ("clip_l", "clip_g")}
    torch.save(random, folder / "random.pt")
    torch.save({"clip_l": torch.zeros(2, 32)}, folder / "half.bin")
    files = sorted(p.name for p in folder.iterdir())
    return EmbeddingLibrary(files, lambda name: folder / name, "prompt")


def test_embedding_vectors_stand_in_for_tokens(
    tiny: SDXLComponents, library: EmbeddingLibrary
) -> None:
    encoder = PromptEncoder(tiny, clip_skip=2, embeddings=library)
    # An embedding holding the token vectors of "red dog" encodes exactly like those words.
    same = encoder.encode_one("a embedding:reddog cat")
    typed = encoder.encode_one("a red dog cat")
    assert torch.allclose(same.embeds, typed.embeds, atol=1e-6)
    assert torch.allclose(same.pooled, typed.pooled, atol=1e-6)
    # A random one changes the encoding from its positions (1 and 2) on; CLIP attends causally,
    # so BOS and "a" before it are untouched.
    other = encoder.encode_one("a embedding:random cat")
    assert torch.equal(other.embeds[:, :2], typed.embeds[:, :2])
    assert not torch.allclose(other.embeds[:, 2], typed.embeds[:, 2])
    assert not torch.allclose(other.embeds[:, 3], typed.embeds[:, 3])


def test_embedding_tokens_count_toward_chunks_and_take_weights(
    tiny: SDXLComponents, library: EmbeddingLibrary
) -> None:
    lookup_encoder = PromptEncoder(tiny, clip_skip=2, embeddings=library)
    lookup = lookup_encoder._lookup("clip_l")
    # 74 one-token words leave one slot: the 2-vector embedding moves to the next chunk whole.
    chunks = tokenize_weighted(
        tiny.tokenizer, " ".join(["cat"] * 74) + " embedding:random,", lookup
    )
    assert len(chunks) == 2
    assert all(isinstance(t, torch.Tensor) for t, _ in chunks[1][1:3])
    assert isinstance(chunks[1][3][0], int)  # the trailing comma stays as text
    weighted = tokenize_weighted(tiny.tokenizer, "(embedding:random:1.2) cat", lookup)[0]
    assert [w for _, w in weighted[1:4]] == [1.2, 1.2, 1.0]
    vectors = library.find("random")
    assert vectors is not None
    first = weighted[1][0]
    assert isinstance(first, torch.Tensor)
    assert torch.equal(first, vectors.vectors["clip_l"][0])


def test_unknown_embedding_stays_text_and_is_noted(
    tiny: SDXLComponents, library: EmbeddingLibrary
) -> None:
    notes: list[str] = []
    encoder = PromptEncoder(tiny, clip_skip=2, embeddings=library, on_note=notes.append)
    unknown = encoder.encode_one("a embedding:nothere cat")
    plain = PromptEncoder(tiny, clip_skip=2).encode_one("a embedding:nothere cat")
    assert torch.equal(unknown.embeds, plain.embeds)
    assert len(notes) == 1
    assert "nothere" in notes[0]


def test_a_file_with_one_vector_set_reaches_both_encoders_as_in_fooocus(
    tiny: SDXLComponents, library: EmbeddingLibrary
) -> None:
    # half.bin holds clip_l only: Fooocus's load_embed gives CLIP-G the file's first tensor, which
    # fits the tiny CLIP-G (both 32 wide), so it is used there as well.
    encoder = PromptEncoder(tiny, clip_skip=2, embeddings=library)
    found = library.find("half")
    assert found is not None
    assert torch.equal(found.vectors["clip_g"], found.vectors["clip_l"])
    assert encoder.encode_one("embedding:half").embeds.shape[1] == 77


def _wider_clip_g(tiny: SDXLComponents, width: int) -> SDXLComponents:
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    torch.manual_seed(5)
    return replace(tiny, text_encoder_2=CLIPTextModelWithProjection(config).eval())


@pytest.mark.parametrize("layout", ["emb_params.safetensors", "a1111.pt"])
def test_an_sd15_embedding_applies_to_clip_l_and_is_skipped_on_clip_g(
    tiny: SDXLComponents, tmp_path: Path, layout: str
) -> None:
    wide = _wider_clip_g(tiny, 48)  # CLIP-L 32 wide, CLIP-G 48: an SD1.5 embedding fits only L
    vectors = _token_vectors(tiny, "red dog")["clip_l"]
    if layout.endswith(".pt"):  # A1111's textual-inversion .pt
        torch.save(
            {"string_to_param": {"*": vectors}, "name": "sd15", "step": 100}, tmp_path / "sd15.pt"
        )
    else:
        save_file({"emb_params": vectors}, str(tmp_path / "sd15.safetensors"))
    files = [p.name for p in tmp_path.iterdir()]
    library = EmbeddingLibrary(files, lambda name: tmp_path / name, "prompt")
    notes: list[str] = []
    encoder = PromptEncoder(wide, clip_skip=2, embeddings=library, on_note=notes.append)
    got = encoder.encode_one("a embedding:sd15 cat").embeds
    plain = PromptEncoder(wide, clip_skip=2)
    # CLIP-L: exactly the words the vectors came from. CLIP-G: the embedding's positions dropped,
    # the rest moved up and padded, which is the encoding of the prompt without it.
    assert torch.allclose(
        got[..., :32], plain.encode_one("a red dog cat").embeds[..., :32], atol=1e-6
    )
    assert torch.allclose(got[..., 32:], plain.encode_one("a cat").embeds[..., 32:], atol=1e-6)
    assert len(notes) == 1
    assert "48-wide" in notes[0]


def test_demo_embedding_changes_the_image(engine: Engine) -> None:
    request = EngineRequest(
        base_model_name=DEMO_CHECKPOINT,
        prompt="a cat",
        negative_prompt="",
        style_selections=(),
        width=64,
        height=64,
        image_number=1,
        seed=5,
        overwrite_step=2,
        sampler_name="euler",
    )
    name = DEMO_EMBEDDING.removesuffix(".safetensors")

    def pixels(r: EngineRequest) -> np.ndarray:
        return np.asarray(engine.generate(r).images[0].image, dtype=np.float32)

    plain = pixels(request)
    positive = pixels(replace(request, prompt=f"a cat, (embedding:{name}:1.2)"))
    negative = pixels(replace(request, negative_prompt=f"embedding:{name}"))
    assert not np.array_equal(plain, positive)
    assert not np.array_equal(plain, negative)
