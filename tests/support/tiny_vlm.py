"""A tiny LLaVA (CLIP vision tower + Llama LM) with random weights, built from configs.

No download: the tokenizer is a word-level ``tokenizers`` vocabulary built here, the image
processor a small ``CLIPImageProcessor``, the chat template written below. Saved with its
processor to a directory that ``hf_local`` (and vLLM) load like any local model.

The vocabulary is small (fewer tokens than the 20 log-probabilities the teachers ask for),
so every answer position carries all label words and soft labels always parse; the saved
generation config suppresses the special tokens (and a stop word), so descriptions are
never empty. What a
random model says means nothing; what the tests check is that the frames reach it.

``python -m tests.support.tiny_vlm OUT_DIR`` builds it (bench/gpu_check.sh does).
"""

from __future__ import annotations

import sys
from pathlib import Path

IMAGE_SIZE = 32
PATCH = 8
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH) ** 2
"""Image tokens per frame in the input ids (the CLS feature is dropped: ``default``)."""

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
WORDS = ["negative", "neutral", "positive", "-3", "-2", "-1", "0", "1", "2", "3", ":",
         "sentiment", "\n", "Transcript:", "abcdef"]
"""Label words of both soft-label templates, a word, the context_aware template's stop
strings' pieces, and ``abcdef``: transformers' stop-string matcher probes the vocabulary
with that word."""

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{{ '<s>' }}{{ m['role'] }}{{ ':' }}"
    "{% if m['content'] is string %}{{ ' ' + m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ ' ' + part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '</s>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>' }}assistant:{% endif %}"
)


def build_tiny_vlm(out: Path, seed: int = 0) -> Path:
    """Write the tiny LLaVA and its processor to ``out``; returns ``out``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>",
                                  extra_special_tokens={"image_token": "<image>"})
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tok.convert_tokens_to_ids("<image>")
    ip = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          num_additional_image_tokens=1, image_token="<image>")
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH,
                                       projection_dim=64),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=128, intermediate_size=256,
                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                head_dim=64, max_position_embeddings=4096, pad_token_id=0,
                                bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"]),
        image_token_id=image_id, vision_feature_layer=-1, vision_feature_select_strategy="default",
        projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=0,
        suppress_tokens=[vocab[t] for t in [*SPECIALS, "Transcript:"]])
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


if __name__ == "__main__":
    print(build_tiny_vlm(Path(sys.argv[1])))
