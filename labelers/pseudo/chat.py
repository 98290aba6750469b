"""One user turn (an image placeholder, then the question) in a VLM processor's chat template: the prompt
every question of the chain, closed or open, is asked with."""
from __future__ import annotations


def chat(processor, text: str) -> str:
    """Return ``text`` after one image placeholder, in the processor's chat template, ready for the answer."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
