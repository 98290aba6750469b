"""Tiny randomly initialised LLaVA-NeXT and Qwen2-VL checkpoints for tests, benchmarks and offline demos.

Their answers are random; they exercise the real plumbing (processor, chat template, image tokens,
batching, scoring, generation) and are loaded back through the same ``from_pretrained`` path as a
real checkpoint. Nothing here touches the network.
"""
from __future__ import annotations

from pathlib import Path

# Words the default prompts and the sample classes use, so that prompts tokenize into real ids
# rather than a sea of [UNK]. Anything else maps to [UNK], which is fine for plumbing tests.
_PROMPT_WORDS = (
    "Which of these does NOT belong to the image ? Answer with letter only . Options : one "
    "option best describes What is shown in this label labels a an photo picture contain contains "
    "airplane automobile bird cat deer dog frog horse ship truck car plane vehicle animal object "
    "not is are from list single word , ( ) : - ) .").split()
_LETTERS = [chr(ord("A") + i) for i in range(26)]
_DIGITS = [str(i) for i in range(100)]

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "[INST]", "[/INST]"]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %} [/INST]"
    "{% else %} {% for content in message['content'] %}{% if content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}</s>{% endif %}{% endfor %}")

VOCAB_SIZE = 1000


def build_tokenizer(specials: list[str], extra_words: tuple[str, ...] = ()):
    """Return a PreTrainedTokenizerFast over a WordLevel vocabulary of ``VOCAB_SIZE`` ids.

    Special tokens come first (ids 0..), then letters, numbers, prompt words and fillers ``w<i>``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", *specials]
    for word in (*_LETTERS, *_DIGITS, *_PROMPT_WORDS, *extra_words):
        if word not in words:
            words.append(word)
    words += [f"w{i}" for i in range(VOCAB_SIZE - len(words))]
    vocab = {word: i for i, word in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        additional_special_tokens=specials, padding_side="left")
    return tokenizer


def _suppress_vision_tokens(model, tokenizer, tokens: list[str]) -> None:
    """Random weights may emit image tokens; forbid them so generate() never feeds them back."""
    ids = tokenizer.convert_tokens_to_ids(tokens)
    model.generation_config.suppress_tokens = ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False


def build_tiny_qwen2_vl(folder: str | Path, seed: int = 0) -> Path:
    """Save a ~0.3 M-parameter random Qwen2-VL model + processor with a chat template in ``folder``."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = build_tokenizer(QWEN_SPECIALS)
    ids = dict(zip(QWEN_SPECIALS, tokenizer.convert_tokens_to_ids(QWEN_SPECIALS)))
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]},
                         eos_token_id=ids["<|im_end|>"], bos_token_id=ids["<|endoftext|>"],
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    model = Qwen2VLForConditionalGeneration(config).eval()
    _suppress_vision_tokens(model, tokenizer, ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                               "<|vision_end|>"])
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14,
                                              merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_llava_next(folder: str | Path, seed: int = 0) -> Path:
    """Save a ~0.3 M-parameter random LLaVA-NeXT (CLIP + Mistral) model + processor in ``folder``."""
    import torch
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor, MistralConfig)

    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = build_tokenizer(LLAVA_SPECIALS)
    ids = dict(zip(LLAVA_SPECIALS, tokenizer.convert_tokens_to_ids(LLAVA_SPECIALS)))
    pinpoints = [[28, 28], [28, 56], [56, 28]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=28, patch_size=14),
        text_config=MistralConfig(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=4096, eos_token_id=ids["</s>"],
                                  bos_token_id=ids["<s>"], pad_token_id=tokenizer.pad_token_id),
        image_token_index=ids["<image>"], image_grid_pinpoints=pinpoints, vision_feature_layer=-1)
    model = LlavaNextForConditionalGeneration(config).eval()
    _suppress_vision_tokens(model, tokenizer, ["<image>"])
    model.generation_config.eos_token_id = ids["</s>"]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": 28},
                                                crop_size={"height": 28, "width": 28},
                                                image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


BUILDERS = {"qwen2-vl": build_tiny_qwen2_vl, "llava-next": build_tiny_llava_next}
