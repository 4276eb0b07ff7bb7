"""A tiny random PhoGPT-4B-Chat checkpoint, in exactly the published on-disk format, for offline demos and tests.

    python tiny_phogpt.py               # writes tiny-phogpt/ (seconds); then --model tiny-phogpt anywhere

The byte-level BPE tokenizer is trained on the project's data in milliseconds, with PhoGPT's special tokens
and ids; the weights are random. A tiny model can memorise a small FAQ; it does not understand anything.
"""
import argparse
import glob
import json
import math
import os

import prompts

# PhoGPT-4B-Chat's published config.json (the tiny checkpoints are written from it).
PHOGPT_4B_CHAT_CONFIG = {
    "architectures": ["MPTForCausalLM"],
    "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0.0,
                    "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
                    "prefix_lm": False, "qk_ln": False, "softmax_scale": None},
    "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
    "d_model": 3072, "emb_pdrop": 0.0, "embedding_fraction": 1.0, "expansion_ratio": 4,
    "init_config": {"emb_init_std": None, "emb_init_uniform_lim": None, "fan_mode": "fan_in",
                    "init_div_is_residual": True, "init_gain": 0.0, "init_nonlinearity": "relu", "init_std": None,
                    "name": "kaiming_normal_", "verbose": 0},
    "init_device": "cpu", "learned_pos_emb": True, "logit_scale": None, "max_seq_len": 8192, "model_type": "mpt",
    "n_heads": 24, "n_layers": 32, "no_bias": False, "norm_type": "low_precision_layernorm", "resid_pdrop": 0.0,
    "torch_dtype": "bfloat16", "transformers_version": "4.34.1", "use_cache": False, "verbose": 0,
    "vocab_size": 20480,
}
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}  # ids 0,1,2,3


def save_tiny_checkpoint(path, texts, d_model=64, n_heads=4, n_layers=2, max_seq_len=512, vocab_size=None,
                         no_bias=False, seed=0):
    """Write a tiny random PhoGPT-4B-Chat-format checkpoint (config.json, model.safetensors, tokenizer files).

    The byte-level BPE is trained on `texts` in milliseconds; ids <unk>=0 <s>=1 </s>=2 <pad>=3 as PhoGPT.
    Every bias and LayerNorm is random, so code that drops them gives different logits.
    """
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM

    os.makedirs(path, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([str(t) for t in texts] or ["xin chào"], trainer)
    bpe.save(os.path.join(path, "tokenizer.json"))
    vocab_size = vocab_size or 64 * math.ceil(bpe.get_vocab_size() / 64)  # padded like PhoGPT's 20480
    tokenizer_config = {"add_prefix_space": False, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
                        "eos_token": "</s>", "model_max_length": max_seq_len, "pad_token": "<pad>",
                        "padding_side": "right", "tokenizer_class": "BloomTokenizer", "unk_token": "<unk>",
                        "chat_template": prompts.PHOGPT_CHAT_TEMPLATE_JINJA}
    config = dict(PHOGPT_4B_CHAT_CONFIG, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                  max_seq_len=max_seq_len, vocab_size=vocab_size, no_bias=no_bias, torch_dtype="float32")
    files = {"tokenizer_config.json": tokenizer_config, "special_tokens_map.json": SPECIAL_TOKENS,
             "config.json": config,
             "generation_config.json": {"_from_model_config": True, "transformers_version": "4.34.1",
                                        "use_cache": False}}  # as published: no eos, use_cache false
    for name, content in files.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, indent=2)
    torch.manual_seed(seed)
    model = PhoGPTForCausalLM(PhoGPTConfig(**config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:  # random, not 0/1, so a dropped bias or norm shows
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
        # wte is also lm_head: at std 0.02 a 64-wide model's logits are too flat for LoRA (which cannot
        # touch wte) to ever become confident, so tests could not train to exact answers.
        model.transformer.wte.weight.normal_(std=0.16)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return path


if __name__ == "__main__":  # python tiny_phogpt.py: a tiny PhoGPT to try the scripts offline
    parser = argparse.ArgumentParser(description="Write a tiny random PhoGPT-4B-Chat-format checkpoint, for offline "
                                     "demos: then pass --model tiny-phogpt to phogpt_qlora.py and phogpt_chat.py.")
    parser.add_argument("--output", default="tiny-phogpt", help="folder to write")
    parser.add_argument("--data", default="data", help="a .jsonl file, or a folder of them, to train the tokenizer on")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an --output that exists")
    args = parser.parse_args()
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.overwrite:
        raise SystemExit(f"error: --output {args.output} already exists; fix: add --overwrite or pick another --output")
    files = sorted(glob.glob(os.path.join(args.data, "*.jsonl"))) if os.path.isdir(args.data) else [args.data]
    if not files or not all(os.path.isfile(f) for f in files):
        raise SystemExit(f"error: --data {args.data}: no .jsonl file there; fix: point it at data/ or a .jsonl file")
    try:
        texts = [prompts.nfc(line) for name in files for line in open(name, encoding="utf-8")]
    except UnicodeDecodeError:
        raise SystemExit(f"error: --data {args.data}: not UTF-8 text; fix: save the file as UTF-8") from None
    texts += [prompts.PHOGPT_USER_FIRST + prompts.PHOGPT_ASSISTANT, prompts.INSTRUCT_USER + prompts.INSTRUCT_ASSISTANT]
    save_tiny_checkpoint(args.output, texts, seed=args.seed)
    print(f"wrote a tiny random PhoGPT ({', '.join(sorted(os.listdir(args.output)))}) to {args.output}")
