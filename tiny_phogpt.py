"""A tiny random PhoGPT-4B-Chat, in the published format, for offline tours.

    python tiny_phogpt.py   # tiny-phogpt/ in seconds; then --model tiny-phogpt
"""
import argparse
import glob
import json
import math
import os

import plumbing
import prompts
from plumbing import between, fail

# PhoGPT-4B-Chat's published config.json: tiny ones change the shape only.
PHOGPT_4B_CHAT_CONFIG = {
    "architectures": ["MPTForCausalLM"],
    "attn_config": {
        "alibi": True, "alibi_bias_max": 8,
        "attn_impl": "torch", "attn_pdrop": 0.0,
        "attn_type": "multihead_attention",
        "attn_uses_sequence_id": False,
        "clip_qkv": None, "prefix_lm": False,
        "qk_ln": False, "softmax_scale": None,
    },
    "auto_map": {
        "AutoConfig": "configuration_mpt.MPTConfig",
        "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM",
    },
    "d_model": 3072, "emb_pdrop": 0.0,
    "embedding_fraction": 1.0, "expansion_ratio": 4,
    "init_config": {
        "emb_init_std": None, "emb_init_uniform_lim": None,
        "fan_mode": "fan_in", "init_div_is_residual": True,
        "init_gain": 0.0, "init_nonlinearity": "relu",
        "init_std": None, "name": "kaiming_normal_",
        "verbose": 0,
    },
    "init_device": "cpu", "learned_pos_emb": True,
    "logit_scale": None, "max_seq_len": 8192,
    "model_type": "mpt", "n_heads": 24, "n_layers": 32,
    "no_bias": False, "norm_type": "low_precision_layernorm",
    "resid_pdrop": 0.0, "torch_dtype": "bfloat16",
    "transformers_version": "4.34.1", "use_cache": False,
    "verbose": 0, "vocab_size": 20480,
}
# PhoGPT's special tokens: ids 0, 1, 2, 3 in this order.
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>",
                  "eos_token": "</s>", "pad_token": "<pad>"}


def save_tiny_checkpoint(path, texts, d_model=64, n_heads=4, n_layers=2, max_seq_len=512,
                         vocab_size=None, no_bias=False, seed=0):
    """A tiny random PhoGPT-4B-Chat checkpoint in the folder `path`."""
    # Imported here: `python tiny_phogpt.py --help` stays instant.
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models
    from tokenizers import pre_tokenizers, trainers

    from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM
    os.makedirs(path, exist_ok=True)
    # A byte-level BPE, as PhoGPT's: any Vietnamese text
    # round-trips. Trained on `texts` in milliseconds.
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    texts = [str(t) for t in texts] or ["xin chào"]
    bpe.train_from_iterator(texts, trainer)
    bpe.save(os.path.join(path, "tokenizer.json"))
    # Padded to a multiple of 64, like PhoGPT's 20480.
    vocab = 64 * math.ceil(bpe.get_vocab_size() / 64)
    tokenizer_config = {
        **SPECIAL_TOKENS, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_seq_len,
        "padding_side": "right",
        "tokenizer_class": "BloomTokenizer",
        "chat_template": prompts.PHOGPT_CHAT_TEMPLATE_JINJA,
    }
    config = dict(PHOGPT_4B_CHAT_CONFIG, d_model=d_model,
                  n_heads=n_heads, n_layers=n_layers,
                  max_seq_len=max_seq_len, no_bias=no_bias,
                  vocab_size=vocab_size or vocab,
                  torch_dtype="float32")
    # As published: no EOS, and use_cache false
    # (load_phogpt fixes both).
    generation = {"_from_model_config": True,
                  "transformers_version": "4.34.1",
                  "use_cache": False}
    files = {"tokenizer_config.json": tokenizer_config,
             "special_tokens_map.json": SPECIAL_TOKENS,
             "config.json": config,
             "generation_config.json": generation}
    for name, content in files.items():
        with open(os.path.join(path, name), "w", encoding="utf-8") as f:
            json.dump(content, f, ensure_ascii=False, indent=2)
    torch.manual_seed(seed)
    model = PhoGPTForCausalLM(PhoGPTConfig(**config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Random, not 0 and 1: a dropped bias
            # or norm shows in the logits.
            if name.endswith("bias") or "norm" in name:
                one = 1.0 if name.endswith("weight") else 0.0
                p.copy_(one + 0.1 * torch.randn_like(p))
        # wte is also lm_head, which LoRA cannot
        # touch: at std 0.02 a tiny model's logits
        # stay too flat to learn an answer exactly.
        model.transformer.wte.weight.normal_(std=0.16)
    # lm_head is wte: the checkpoints store it once.
    state = model.state_dict()
    state = {k: v.contiguous() for k, v in state.items()
             if k != "lm_head.weight"}
    weights = os.path.join(path, "model.safetensors")
    save_file(state, weights, metadata={"format": "pt"})
    return path


if __name__ == "__main__":
    # ---- flags ----
    parser = argparse.ArgumentParser(
        description="Write a tiny random PhoGPT for offline demos; then pass "
        "--model tiny-phogpt to phogpt_qlora.py and phogpt_chat.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default="tiny-phogpt", help="folder to write")
    parser.add_argument("--data", default="data",
                        help="a .jsonl file, or a folder of them, for the tokenizer")
    # Any integer torch takes is a seed.
    seeds = between(-(2**63), 2**64 - 1, int)
    parser.add_argument("--seed", type=seeds, default=0,
                        help="random seed of the weights")
    # The shape: PhoGPT-4B is 3072 wide, 32 blocks, 24 heads.
    parser.add_argument("--d-model", default=64,
                        type=between(8, 4096, int), help="width")
    parser.add_argument("--n-layers", default=2,
                        type=between(1, 64, int), help="blocks")
    parser.add_argument("--n-heads", default=4,
                        type=between(1, 64, int), help="heads")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --output that an earlier run made")
    args = plumbing.parse_flags(parser)

    # ---- check every input, before any work ----
    # Each head gets d_model / n_heads of the width.
    if args.d_model % args.n_heads:
        fail(f"--d-model {args.d_model} is not a multiple of "
             f"--n-heads {args.n_heads}; fix: e.g. --d-model 64")
    files = [args.data]
    if os.path.isdir(args.data):
        files = sorted(glob.glob(os.path.join(args.data, "*.jsonl")))
    if not files or not all(os.path.isfile(f) for f in files):
        fail(f"--data {args.data}: no .jsonl file there; "
             "fix: point it at data/ or a .jsonl file")
    texts = []
    for name in files:
        try:
            with open(name, encoding="utf-8") as f:
                # NFC: Vietnamese has two spellings of most accents.
                texts += [prompts.nfc(line) for line in f]
        except UnicodeDecodeError:
            fail(f"--data {name}: not UTF-8 text; fix: save the file as UTF-8")
    # The template strings too, so that a prompt costs a few tokens.
    texts += [prompts.PHOGPT_USER_FIRST + prompts.PHOGPT_ASSISTANT,
              prompts.INSTRUCT_USER + prompts.INSTRUCT_ASSISTANT]
    output = plumbing.claim_output(args.output, args.overwrite)

    # ---- write under a name of this run, moved in when complete ----
    # With --overwrite the earlier tiny model steps aside first.
    plumbing.make_way(output)
    staging = plumbing.temp_name(output / "tiny")
    try:
        save_tiny_checkpoint(
            str(staging), texts, d_model=args.d_model,
            n_heads=args.n_heads, n_layers=args.n_layers,
            seed=args.seed)
    except OSError as error:
        fail(f"could not write {output} ({error.strerror}); "
             "fix: free some disk space")
    plumbing.move_in(staging, output, last="config.json")
    plumbing.release_outputs()
    # What a student sees: our marker files start with a dot.
    names = [n for n in os.listdir(output) if n[0] != "."]
    names = ", ".join(sorted(names))
    print(f"wrote a tiny random PhoGPT ({names}) to {output}")
