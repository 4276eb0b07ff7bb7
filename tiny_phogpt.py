"""A tiny random PhoGPT-4B-Chat for offline tours.

    python tiny_phogpt.py  # then --model tiny-phogpt
"""
import argparse
import json
from pathlib import Path

import plumbing
import prompts

# PhoGPT-4B-Chat's config.json, as published.
PHOGPT_4B_CHAT_CONFIG = {
    "architectures": ["MPTForCausalLM"],
    "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0.0,
                    "attn_type": "multihead_attention", "attn_uses_sequence_id": False,
                    "clip_qkv": None, "prefix_lm": False, "qk_ln": False, "softmax_scale": None},
    "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig",
                 "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
    "d_model": 3072, "emb_pdrop": 0.0, "embedding_fraction": 1.0, "expansion_ratio": 4,
    "init_config": {"emb_init_std": None, "emb_init_uniform_lim": None, "fan_mode": "fan_in",
                    "init_div_is_residual": True, "init_gain": 0.0, "init_nonlinearity": "relu",
                    "init_std": None, "name": "kaiming_normal_", "verbose": 0},
    "init_device": "cpu", "learned_pos_emb": True, "logit_scale": None, "max_seq_len": 8192,
    "model_type": "mpt", "n_heads": 24, "n_layers": 32, "no_bias": False,
    "norm_type": "low_precision_layernorm", "resid_pdrop": 0.0, "torch_dtype": "bfloat16",
    "transformers_version": "4.34.1", "use_cache": False, "verbose": 0, "vocab_size": 20480,
}
# PhoGPT's special tokens, ids 0 to 3 in order.
SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>",
                  "eos_token": "</s>", "pad_token": "<pad>"}

def save_tiny_checkpoint(path, texts, d_model=64, n_heads=4, n_layers=2, max_seq_len=512,
                         vocab_size=None, no_bias=False, seed=0):
    # Imported here: --help stays instant.
    import torch
    from safetensors.torch import save_file
    from tokenizers import ByteLevelBPETokenizer
    from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM
    Path(path).mkdir(parents=True, exist_ok=True)
    # Byte-level BPE, as PhoGPT's: any Vietnamese
    # text round-trips. Trained in milliseconds.
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts) or ["xin chào"], vocab_size=2000, min_frequency=0,
                            show_progress=False, special_tokens=list(SPECIAL_TOKENS.values()))
    bpe.save(str(Path(path, "tokenizer.json")))
    tokenizer_config = dict(
        SPECIAL_TOKENS, add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=max_seq_len, padding_side="right",
        tokenizer_class="BloomTokenizer",
        chat_template=prompts.PHOGPT_CHAT_TEMPLATE_JINJA)
    # Up to a multiple of 64, as PhoGPT's 20480.
    vocab_size = vocab_size or (bpe.get_vocab_size() + 63) // 64 * 64
    config = dict(PHOGPT_4B_CHAT_CONFIG, d_model=d_model, n_heads=n_heads,
                  n_layers=n_layers, max_seq_len=max_seq_len, no_bias=no_bias,
                  vocab_size=vocab_size, torch_dtype="float32")
    torch.manual_seed(seed)
    model = PhoGPTForCausalLM(PhoGPTConfig(**config))
    for name, p in model.named_parameters():
        # Random, not 0 and 1: a dropped bias
        # or norm shows in the logits.
        if name.endswith("bias") or "norm" in name:
            one = float(name.endswith("weight"))
            p.data = one + 0.1 * torch.randn_like(p)
    # wte is also lm_head, which LoRA cannot
    # touch: at std 0.02 a tiny model's logits
    # stay too flat to learn an answer exactly.
    model.transformer.wte.weight.data.normal_(std=0.16)
    # lm_head is wte: saved once, as transformer.wte.
    state = model.transformer.state_dict(prefix="transformer.")
    save_file(state, Path(path, "model.safetensors"), metadata={"format": "pt"})
    # As published: no EOS, use_cache false (load_phogpt fixes both).
    generation = {"_from_model_config": True, "use_cache": False, "transformers_version": "4.34.1"}
    files = {"config.json": config, "generation_config.json": generation,
             "tokenizer_config.json": tokenizer_config, "special_tokens_map.json": SPECIAL_TOKENS}
    for name, content in files.items():
        text = json.dumps(content, ensure_ascii=False, indent=2)
        Path(path, name).write_text(text, encoding="utf-8")
    return path

if __name__ == "__main__":
    # ---- flags ----
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--output", default="tiny-phogpt", help="folder to write")
    add("--data", default="data", help="a .jsonl file, or a folder of them, for the tokenizer")
    add("--seed", type=plumbing.between(0, 2**32 - 1, int), default=0, help="seed of the weights")
    # PhoGPT-4B: 3072 wide, 32 blocks, 24 heads.
    add("--d-model", default=64, type=plumbing.between(8, 4096, int), help="width")
    add("--n-layers", default=2, type=plumbing.between(1, 64, int), help="blocks")
    add("--n-heads", default=4, type=plumbing.between(1, 64, int), help="heads")
    add("--overwrite", action="store_true", help="replace an --output an earlier run made")
    args = plumbing.parse_flags(parser)

    # ---- check every input, before any work ----
    # Each head gets d_model / n_heads of the width.
    if args.d_model % args.n_heads:
        plumbing.fail(f"--d-model {args.d_model} is not a multiple of --n-heads "
                      f"{args.n_heads}; fix: e.g. --d-model 64")
    data = Path(args.data)
    files = sorted(data.glob("*.jsonl")) if data.is_dir() else [data]
    if not files or not all(f.is_file() for f in files):
        plumbing.fail(f"--data {data}: no .jsonl file; fix: point it at data/ or a .jsonl file")
    # Template strings: a prompt costs a few tokens.
    texts = [prompts.PHOGPT_USER_FIRST + prompts.PHOGPT_ASSISTANT,
             prompts.INSTRUCT_USER + prompts.INSTRUCT_ASSISTANT]
    # Read as training reads them: checked, and NFC.
    rows = [row for file in files for _, row in plumbing.read_rows(file)]
    texts += [json.dumps(row, ensure_ascii=False) for row in rows]
    output = plumbing.claim_output(args.output, args.overwrite)

    # ---- write under a temporary name, moved in ----
    staging = plumbing.temp_name(output / "tiny")
    try:
        save_tiny_checkpoint(staging, texts, args.d_model, args.n_heads, args.n_layers,
                             seed=args.seed)
        # Complete: only now does an earlier one go.
        plumbing.make_way(output)
        plumbing.move_in(staging, output, last="config.json")
    except OSError as error:
        plumbing.fail(f"could not write {output} ({error.strerror}); fix: free some space")
    plumbing.release_outputs()
    print(f"wrote a tiny random PhoGPT to {output}")
