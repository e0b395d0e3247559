"""Prompt text → SDXL conditioning, the Fooocus way (reference §5.1, §5.6).

A prompt is split into lines (line 1 main, the rest extra elements); each element is parsed for
``(text)`` / ``(text:1.3)`` emphasis, tokenised word by word into 75-token windows (never
truncated), encoded by both CLIP text encoders at ``hidden_states[-clip_skip]`` and concatenated.
Weighted tokens are pushed away from an all-padding "empty" encoding and the window is rescaled to
keep its mean (Fooocus's variant of A1111 emphasis).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from engine.guidance import TextConditioning
from engine.models.components import SDXLComponents
from engine.prompts.embeddings import EMBEDDING_PREFIX, EmbeddingLibrary
from engine.types import EngineInputError

WINDOW = 75  # tokens per chunk between BOS and EOS (77 with them)
LONG_WORD = 8  # words of this many tokens or more may be split across chunks
EMPHASIS = 1.1
_ESCAPED_OPEN = "\x00\x01"
_ESCAPED_CLOSE = "\x00\x02"


def parse_emphasis(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """Split ``text`` into (segment, weight) pairs.

    ``(x)`` multiplies the weight by 1.1 (nesting multiplies), ``(x:1.3)`` sets it to 1.3, and
    ``\\(`` / ``\\)`` are literal brackets. An unmatched ``)`` or an unclosed ``(`` stays literal.
    """
    text = text.replace("\\(", _ESCAPED_OPEN).replace("\\)", _ESCAPED_CLOSE)
    return [(_unescape(s), w) for s, w in _parse(text, weight)]


def _unescape(text: str) -> str:
    return text.replace(_ESCAPED_OPEN, "(").replace(_ESCAPED_CLOSE, ")")


def _parse(text: str, weight: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    literal = ""
    depth = 0
    start = 0
    for pos, char in enumerate(text):
        if char == "(":
            if depth == 0:
                start = pos
            depth += 1
        elif char == ")" and depth > 0:
            depth -= 1
            if depth == 0:
                if literal:
                    out.append((literal, weight))
                    literal = ""
                out.extend(_parse_group(text[start + 1 : pos], weight))
        elif depth == 0:
            literal += char
    if depth > 0:  # unclosed bracket: keep the rest as typed
        literal += text[start:]
    if literal:
        out.append((literal, weight))
    return out


def _parse_group(inner: str, weight: float) -> list[tuple[str, float]]:
    colon = inner.rfind(":")
    if colon > 0:
        try:
            return _parse(inner[:colon], float(inner[colon + 1 :]))
        except ValueError:
            pass
    return _parse(inner, weight * EMPHASIS)


Token = int | torch.Tensor
"""A token id, or a textual-inversion vector [width] that takes one token's place."""
Chunk = list[tuple[Token, float]]


@dataclass
class EmbeddingLookup:
    """Where ``embedding:NAME`` words find their vectors, and who hears about unknown names."""

    library: EmbeddingLibrary
    encoder_key: str  # "clip_l" or "clip_g"
    on_unknown: Callable[[str], None] = field(default=lambda name: None)


def _embedding_word(
    piece: str, weight: float, lookup: EmbeddingLookup | None
) -> tuple[list[tuple[Token, float]], str] | None:
    """(the vectors of an ``embedding:NAME`` word, text left after it), None when it is none.

    Trailing commas are not part of the name (``embedding:foo,`` names ``foo``); an unknown name
    leaves the word as text, as Fooocus does, and is reported through ``on_unknown``.
    """
    if lookup is None or not piece.startswith(EMBEDDING_PREFIX):
        return None
    name = piece[len(EMBEDDING_PREFIX) :]
    stripped = name.rstrip(",")
    found = lookup.library.find(stripped) if stripped else None
    if found is None:
        lookup.on_unknown(stripped)
        return None
    vectors = found.vectors[lookup.encoder_key]
    return [(vector, weight) for vector in vectors], name[len(stripped) :]


def tokenize_weighted(
    tokenizer: CLIPTokenizer, text: str, embeddings: EmbeddingLookup | None = None
) -> list[Chunk]:
    """(token, weight) chunks of exactly 77 entries: BOS, up to 75 tokens, EOS, padding.

    Whole words move to the next chunk when they do not fit; only words of 8+ tokens are split.
    Padding uses the tokenizer's pad token (EOS for CLIP-L, 0 for CLIP-G in SDXL). With
    ``embeddings``, each ``embedding:NAME`` word becomes its n vectors (one word of n tokens).
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    words: list[list[tuple[Token, float]]] = []
    for segment, weight in parse_emphasis(text):
        pieces = [w for w in segment.replace("\n", " ").split(" ") if w]
        texts: list[str] = []
        for piece in pieces:
            embedded = _embedding_word(piece, weight, embeddings)
            if embedded is None:
                texts.append(piece)
                continue
            if texts:
                words.extend(_text_words(tokenizer, texts, weight))
                texts = []
            words.append(embedded[0])
            if embedded[1]:
                texts.append(embedded[1])
        if texts:
            words.extend(_text_words(tokenizer, texts, weight))

    chunks: list[Chunk] = []
    current: Chunk = []

    def close_chunk() -> None:
        body = [(bos, 1.0), *current, (eos, 1.0)]
        chunks.append(body + [(pad, 1.0)] * (WINDOW + 2 - len(body)))

    for word in words:
        splittable = len(word) >= LONG_WORD
        while word:
            room = WINDOW - len(current)
            if len(word) <= room:
                current.extend(word)
                break
            if splittable:
                current.extend(word[:room])
                word = word[room:]
            close_chunk()
            current = []
    close_chunk()
    return chunks


def _text_words(
    tokenizer: CLIPTokenizer, pieces: list[str], weight: float
) -> list[list[tuple[Token, float]]]:
    ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
    return [[(int(t), weight) for t in word_ids] for word_ids in ids]


@contextmanager
def _vectors_inserted(
    encoder: CLIPTextModel | CLIPTextModelWithProjection, chunks: list[Chunk]
) -> Iterator[None]:
    """While held, the encoder's token embeddings at embedding positions are their vectors.

    The vectors replace what the token-embedding layer returns, before the position embeddings
    are added, so they pass through the encoder exactly like learned token embeddings.
    """
    layer = encoder.get_input_embeddings()
    inserted = [
        (row, col, token)
        for row, chunk in enumerate(chunks)
        for col, (token, _) in enumerate(chunk)
        if isinstance(token, torch.Tensor)
    ]
    if not inserted:
        yield
        return
    width = int(encoder.config.hidden_size)
    if any(vector.shape[-1] != width for _, _, vector in inserted):
        raise EngineInputError(
            "prompt", f"an embedding does not fit this model's {width}-wide encoder"
        )

    def replace(_module: torch.nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, col, vector in inserted:
            output[row, col] = vector.to(output)
        return output

    handle = layer.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class _EncoderOutput:
    hidden: torch.Tensor  # [chunks, 77, D]
    pooled: torch.Tensor | None  # [1, P], the first chunk's


class PromptEncoder:
    """Encodes prompt elements with a model's two CLIP encoders; caches by text."""

    def __init__(
        self,
        components: SDXLComponents,
        clip_skip: int,
        embeddings: EmbeddingLibrary | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.components = components
        self.clip_skip = clip_skip
        self.embeddings = embeddings
        self._on_note = on_note or (lambda message: None)
        self._unknown: set[str] = set()
        self._cache: dict[str, TextConditioning] = {}

    def _lookup(self, encoder_key: str) -> EmbeddingLookup | None:
        if self.embeddings is None:
            return None
        return EmbeddingLookup(self.embeddings, encoder_key, self._note_unknown)

    def _note_unknown(self, name: str) -> None:
        if name not in self._unknown:
            self._unknown.add(name)
            self._on_note(f"Embedding '{name}' not found in models/embeddings; kept as text")

    def encode(self, elements: Sequence[str], pooled_count: int | None = None) -> TextConditioning:
        """Encode each element separately and concatenate along the token axis.

        The pooled vector is the **sum** of the first ``pooled_count`` elements' pooled outputs
        (all when None), as Fooocus does.
        """
        parts = [self.encode_one(text) for text in (elements or [""])]
        count = len(parts) if pooled_count is None else pooled_count
        pooled = torch.stack([p.pooled for p in parts[: max(count, 1)]]).sum(dim=0)
        return TextConditioning(torch.cat([p.embeds for p in parts], dim=1), pooled)

    def encode_one(self, text: str) -> TextConditioning:
        """One element: [1, 77·chunks, D_L + D_G] hidden states and its [1, P] pooled vector."""
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        c = self.components
        if c.text_encoder is None:
            raise ValueError(f"{c.name} has no CLIP-L text encoder to encode prompts with")
        chunks_l = tokenize_weighted(c.tokenizer, text, self._lookup("clip_l"))
        chunks_g = tokenize_weighted(c.tokenizer_2, text, self._lookup("clip_g"))
        if len(chunks_l) != len(chunks_g):
            raise RuntimeError("the two CLIP tokenizers split the prompt differently")
        out_l = self._encode_chunks(c.text_encoder, chunks_l, c.tokenizer)
        out_g = self._encode_chunks(c.text_encoder_2, chunks_g, c.tokenizer_2)
        assert out_g.pooled is not None
        embeds = torch.cat([out_l.hidden, out_g.hidden], dim=-1)
        result = TextConditioning(embeds.reshape(1, -1, embeds.shape[-1]), out_g.pooled)
        self._cache[text] = result
        return result

    def _without_misfits(self, chunks: list[Chunk], width: int, pad: int) -> list[Chunk]:
        """Drop embedding vectors of another width than this encoder's, with a note.

        As Fooocus (``sd1_clip``): the rest of the chunk moves up, pad tokens fill its end, and
        each position keeps the weight it had (an SD1.5 embedding on CLIP-G, say).
        """
        out: list[Chunk] = []
        for chunk in chunks:
            kept = [t for t, _ in chunk if not isinstance(t, torch.Tensor) or t.shape[-1] == width]
            if len(kept) == len(chunk):
                out.append(chunk)
                continue
            note = f"An embedding does not fit the {width}-wide text encoder; skipped there"
            if note not in self._unknown:
                self._unknown.add(note)
                self._on_note(note)
            kept += [pad] * (len(chunk) - len(kept))
            out.append([(token, weight) for token, (_, weight) in zip(kept, chunk, strict=True)])
        return out

    @torch.no_grad()
    def _encode_chunks(
        self,
        encoder: CLIPTextModel | CLIPTextModelWithProjection,
        chunks: list[Chunk],
        tokenizer: CLIPTokenizer,
    ) -> _EncoderOutput:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        chunks = self._without_misfits(chunks, int(encoder.config.hidden_size), pad)
        weighted = any(w != 1.0 for chunk in chunks for _, w in chunk)
        ids = [[t if isinstance(t, int) else pad for t, _ in chunk] for chunk in chunks]
        if weighted:
            empty = [tokenizer.bos_token_id, tokenizer.eos_token_id]
            ids.append(empty + [pad] * (WINDOW + 2 - len(empty)))
        device = encoder.device
        with _vectors_inserted(encoder, chunks):
            out = encoder(torch.tensor(ids, device=device), output_hidden_states=True)
        layers = encoder.config.num_hidden_layers
        # Like Fooocus's CLIP, a skip deeper than the model falls back to the final output.
        if self.clip_skip > layers:
            hidden = out.last_hidden_state
        else:
            hidden = out.hidden_states[-self.clip_skip]
        hidden = hidden.float()
        pooled = getattr(out, "text_embeds", None)
        first_pooled = pooled[:1].float() if pooled is not None else None
        if not weighted:
            return _EncoderOutput(hidden, first_pooled)
        empty_hidden = hidden[-1]
        result = []
        for k, chunk in enumerate(chunks):
            z = hidden[k].clone()
            original_mean = z.mean()
            weights = torch.tensor([w for _, w in chunk], device=z.device).unsqueeze(-1)
            z = (z - empty_hidden) * weights + empty_hidden
            result.append(z * (original_mean / z.mean()))
        return _EncoderOutput(torch.stack(result), first_pooled)
