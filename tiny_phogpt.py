"""A tiny random PhoGPT-4B-Chat checkpoint, in the published on-disk format, for offline tours.

    python tiny_phogpt.py         # writes tiny-phogpt/ in seconds; then --model tiny-phogpt
    python tiny_phogpt.py --d-model 128 --n-layers 4 --output tiny-phogpt-128

The byte-level BPE tokenizer is trained on the project's data in milliseconds, with PhoGPT's
special tokens and ids; the weights are random. A tiny model can memorise a small FAQ; it does
not understand anything. Tests build theirs with save_tiny_checkpoint (tests/conftest.py).
"""
import argparse
import glob
import json
import math
import os
import shutil
import sys

import prompts

# PhoGPT-4B-Chat's published config.json (the tiny checkpoints are written from it).
PHOGPT_4B_CHAT_CONFIG = {
    "architectures": ["MPTForCausalLM"],
    "attn_config": {
        "alibi": True,
        "alibi_bias_max": 8,
        "attn_impl": "torch",
        "attn_pdrop": 0.0,
        "attn_type": "multihead_attention",
        "attn_uses_sequence_id": False,
        "clip_qkv": None,
        "prefix_lm": False,
        "qk_ln": False,
        "softmax_scale": None,
    },
    "auto_map": {
        "AutoConfig": "configuration_mpt.MPTConfig",
        "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM",
    },
    "d_model": 3072,
    "emb_pdrop": 0.0,
    "embedding_fraction": 1.0,
    "expansion_ratio": 4,
    "init_config": {
        "emb_init_std": None,
        "emb_init_uniform_lim": None,
        "fan_mode": "fan_in",
        "init_div_is_residual": True,
        "init_gain": 0.0,
        "init_nonlinearity": "relu",
        "init_std": None,
        "name": "kaiming_normal_",
        "verbose": 0,
    },
    "init_device": "cpu",
    "learned_pos_emb": True,
    "logit_scale": None,
    "max_seq_len": 8192,
    "model_type": "mpt",
    "n_heads": 24,
    "n_layers": 32,
    "no_bias": False,
    "norm_type": "low_precision_layernorm",
    "resid_pdrop": 0.0,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.34.1",
    "use_cache": False,
    "verbose": 0,
    "vocab_size": 20480,
}
# PhoGPT's special tokens; their ids are 0, 1, 2, 3 in this order.
SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}


def save_tiny_checkpoint(path, texts, d_model=64, n_heads=4, n_layers=2, max_seq_len=512,
                         vocab_size=None, no_bias=False, seed=0):
    """Write a tiny random PhoGPT-4B-Chat-format checkpoint into the folder `path`.

    config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the chat
    template), special_tokens_map.json and generation_config.json, as published. The
    byte-level BPE is trained on `texts` in milliseconds. Every bias and LayerNorm is random,
    so code that drops them gives different logits.
    """
    # Imported here: `python tiny_phogpt.py --help` stays instant.
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM

    os.makedirs(path, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=list(SPECIAL_TOKENS.values()),
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([str(t) for t in texts] or ["xin chào"], trainer)
    bpe.save(os.path.join(path, "tokenizer.json"))
    # Padded to a multiple of 64, like PhoGPT's 20480.
    vocab_size = vocab_size or 64 * math.ceil(bpe.get_vocab_size() / 64)
    tokenizer_config = {
        "add_prefix_space": False,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": max_seq_len,
        "pad_token": "<pad>",
        "padding_side": "right",
        "tokenizer_class": "BloomTokenizer",
        "unk_token": "<unk>",
        "chat_template": prompts.PHOGPT_CHAT_TEMPLATE_JINJA,
    }
    config = dict(PHOGPT_4B_CHAT_CONFIG, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                  max_seq_len=max_seq_len, vocab_size=vocab_size, no_bias=no_bias,
                  torch_dtype="float32")
    # As published: no EOS, and use_cache false.
    generation_config = {"_from_model_config": True, "transformers_version": "4.34.1",
                         "use_cache": False}
    files = {
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": SPECIAL_TOKENS,
        "config.json": config,
        "generation_config.json": generation_config,
    }
    for name, content in files.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, indent=2)
    torch.manual_seed(seed)
    model = PhoGPTForCausalLM(PhoGPTConfig(**config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Random, not 0 and 1, so a dropped bias or norm shows in the logits.
            if name.endswith("bias") or "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
        # wte is also lm_head: at std 0.02 a 64-wide model's logits are too flat for LoRA
        # (which cannot touch wte) to ever become confident, so tests could not train to
        # exact answers.
        model.transformer.wte.weight.normal_(std=0.16)
    state = model.state_dict()
    state = {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return path


if __name__ == "__main__":
    # ---- flags ----
    parser = argparse.ArgumentParser(
        description="Write a tiny random PhoGPT-4B-Chat-format checkpoint for offline demos; "
        "then pass --model tiny-phogpt to phogpt_qlora.py and phogpt_chat.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default="tiny-phogpt", help="folder to write")
    parser.add_argument("--data", default="data",
                        help="a .jsonl file, or a folder of them, to train the tokenizer on")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument("--d-model", type=int, default=64, help="width (PhoGPT-4B: 3072)")
    parser.add_argument("--n-layers", type=int, default=2, help="blocks (PhoGPT-4B: 32)")
    parser.add_argument("--n-heads", type=int, default=4, help="attention heads (PhoGPT-4B: 24)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --output that already has files")

    def fail(message):
        sys.exit(f"error: {message}")

    # argparse's own errors (unknown flag, bad value) get the same one line and exit 1.
    parser.error = fail
    args = parser.parse_args([] if "ipykernel" in sys.modules else None)

    # ---- check every input (before any work) ----
    # Any integer torch takes is a seed.
    if not -(2**63) <= args.seed < 2**64:
        fail(f"--seed {args.seed} is out of range: use -2**63 to 2**64 - 1; fix: e.g. --seed 0")
    if not 1 <= args.n_heads <= 64:
        fail(f"--n-heads {args.n_heads} is out of range: use 1 to 64; fix: e.g. --n-heads 4")
    if not 1 <= args.n_layers <= 64:
        fail(f"--n-layers {args.n_layers} is out of range: use 1 to 64; fix: e.g. --n-layers 2")
    if not 8 <= args.d_model <= 4096 or args.d_model % args.n_heads:
        fail(f"--d-model {args.d_model} is out of range: use 8 to 4096, a multiple of --n-heads "
             f"{args.n_heads}; fix: e.g. --d-model 64")
    output = args.output.rstrip("/\\") or args.output
    if os.path.exists(output) and not os.path.isdir(output):
        fail(f"--output {output} is a file; fix: give a folder name")
    if os.path.isdir(output) and os.listdir(output) and not args.overwrite:
        fail(f"--output {output} already exists; fix: add --overwrite or pick another --output")
    files = [args.data]
    if os.path.isdir(args.data):
        files = sorted(glob.glob(os.path.join(args.data, "*.jsonl")))
    if not files or not all(os.path.isfile(f) for f in files):
        fail(f"--data {args.data}: no .jsonl file there; fix: point it at data/ or a .jsonl file")
    texts = []
    for name in files:
        try:
            with open(name, encoding="utf-8") as f:
                texts += [prompts.nfc(line) for line in f]
        except UnicodeDecodeError:
            fail(f"--data {name}: not UTF-8 text; fix: save the file as UTF-8")
    # The template strings, so a prompt costs a few tokens.
    texts += [prompts.PHOGPT_USER_FIRST + prompts.PHOGPT_ASSISTANT,
              prompts.INSTRUCT_USER + prompts.INSTRUCT_ASSISTANT]

    # ---- write into OUTPUT.partial, then rename: a kill never leaves a half-written model ----
    partial = output + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        save_tiny_checkpoint(partial, texts, d_model=args.d_model, n_heads=args.n_heads,
                             n_layers=args.n_layers, seed=args.seed)
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(partial, output)
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        fail(f"could not write {output} ({error.strerror or error}); fix: free some disk space "
             "or pick another --output")
    except KeyboardInterrupt:
        shutil.rmtree(partial, ignore_errors=True)
        fail(f"interrupted (Ctrl+C): nothing was written to {output}")
    print(f"wrote a tiny random PhoGPT ({', '.join(sorted(os.listdir(output)))}) to {output}")
