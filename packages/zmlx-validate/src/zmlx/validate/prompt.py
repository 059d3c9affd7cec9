"""The default prompt and how a prompt becomes token ids (the same way for both sides)."""

from __future__ import annotations

from typing import Any

DEFAULT_PROMPT = (
    "Explain the difference between TCP and UDP, and say when each one is the better choice for an application. "
    "Then write a short Python function that sends one datagram, and explain what happens when it is lost."
)


def encode_prompt(tokenizer: Any, prompt: str, *, chat_template: bool = True) -> list[int]:
    """Token ids of ``prompt``: through the tokenizer's chat template when it has one (as ``mlx_lm.generate``
    does by default), else plain encoding."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some transformers versions return an encoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer.encode(prompt)]
