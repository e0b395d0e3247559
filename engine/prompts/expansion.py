"""Fooocus V2: GPT-2 prompt expansion (reference §5.5).

A GPT-2 fine-tuned on image prompts continues the user's main line with extra words. Sampling is
constrained: only tokens spelling a whole word from ``positive.txt`` (with its leading space) and
the comma may be drawn, a token already in the sequence may not be drawn again, and exactly
enough tokens are generated to fill the prompt to the next multiple of 75 GPT-2 tokens (the CLIP
window). The draw is seeded with the image seed (mod 2^32), so one seed gives one expansion.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoTokenizer, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList

from engine.prompts.syntax import safe_str

SEED_LIMIT = 2**32  # numpy's seed range, which Fooocus's set_seed call inherits
TOP_K = 100
WINDOW = 75
BLOCKED = -8192.0  # Fooocus's "minus infinity": large enough, and finite in float16
WORD_PREFIX = "Ġ"  # GPT-2's byte-level marker of a leading space


class _WhitelistProcessor(LogitsProcessor):
    """Adds ``BLOCKED`` to every token but the allowed words and the comma, and to every token
    already present in the sequence (so no word repeats)."""

    def __init__(self, bias: torch.Tensor, comma: int) -> None:
        self.bias = bias
        self.comma = comma

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        bias = self.bias.to(scores).clone()
        bias[0, input_ids[0].long()] = BLOCKED
        bias[0, self.comma] = 0.0
        result: torch.FloatTensor = scores + bias  # type: ignore[assignment]
        return result


class PromptExpansion:
    """The loaded expansion model; ``expansion(prompt, seed)`` returns the expanded prompt."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        words = (folder / "positive.txt").read_text(encoding="utf-8").splitlines()
        allowed = {WORD_PREFIX + w.lower() for w in words if w}
        vocab = self.tokenizer.get_vocab()
        self.model = GPT2LMHeadModel.from_pretrained(folder, dtype=dtype)
        self.model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
        size = max(len(vocab), int(self.model.config.vocab_size))
        bias = torch.full((1, size), BLOCKED, dtype=torch.float32)
        for token, index in vocab.items():
            if token in allowed:
                bias[0, index] = 0.0
        self.allowed_words = int((bias == 0.0).sum())
        self.device = device
        comma = self.tokenizer.convert_tokens_to_ids(",")
        assert isinstance(comma, int)
        self._processor = _WhitelistProcessor(bias, comma)

    @torch.no_grad()
    def __call__(self, prompt: str, seed: int) -> str:
        """The expanded prompt for ``prompt`` (its main line) and the image seed.

        An empty prompt expands to nothing; a prompt already a multiple of 75 tokens long (with
        its trailing comma) is returned as it is.
        """
        if prompt == "":
            return ""
        text = safe_str(prompt) + ","
        encoded = self.tokenizer(text, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        length = int(input_ids.shape[1])
        new_tokens = WINDOW * math.ceil(length / WINDOW) - length
        if new_tokens == 0:
            return text[:-1]
        devices = [self.device] if self.device.type == "cuda" else []
        # Seed the global generator the way Fooocus does, without disturbing the caller's stream.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed % SEED_LIMIT)
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=encoded["attention_mask"].to(self.device),
                do_sample=True,
                top_k=TOP_K,
                max_new_tokens=new_tokens,
                logits_processor=LogitsProcessorList([self._processor]),
                pad_token_id=self.tokenizer.eos_token_id,
            )
        decoded = self.tokenizer.batch_decode(output, skip_special_tokens=True)[0]
        return safe_str(decoded)
