"""PhoGPT (MosaicML MPT) for today's transformers, without remote code.

    from phogpt_model import load_phogpt
    model, tokenizer = load_phogpt("vinai/PhoGPT-4B-Chat")                 # bf16/fp16 GPU, fp32 CPU
    model, tokenizer = load_phogpt("vinai/PhoGPT-4B-Chat", load_in="4bit") # nf4 + double quant
    model, tokenizer = load_phogpt("path/to/a/local/folder")               # no network

One readable file: the layers, the config, the model, then the loading helpers. It loads the
published checkpoints (vinai/PhoGPT-4B, PhoGPT-4B-Chat, PhoGPT-7B5-Instruct) under their own
parameter names, and needs no trust_remote_code.

    transformer.wte -> blocks[i]: x + attn(norm_1(x)), then x + ffn(norm_2(x))
                    -> transformer.norm_f -> logits = h @ wte.T

Why not the published remote code, or transformers' MptForCausalLM
- The remote code (llm-foundry's modeling_mpt.py) fails to import from transformers 4.52 on
  (VinAIResearch/PhoGPT issue #33), and it runs code downloaded from the hub.
- The built-in MptForCausalLM hard-codes bias=False. PhoGPT has no_bias: false (biases in Wqkv,
  out_proj, up_proj, down_proj and every LayerNorm): the built-in class loads the weights, drops
  those biases and writes wrong text, with no error. Its config class also rejects PhoGPT's
  "attn_pdrop": 0.0, so AutoTokenizer fails on a PhoGPT folder too.
- The built-in class is slow: it builds ALiBi for 8,192 positions at every step and materialises
  the attention matrix. Measured on an H100: 42.5 tok/s decoding after a 64-token prompt, 8.9
  tok/s after 2,048 tokens, and a 31 GiB peak when training on 2,048 tokens.

What it computes (the same as llm-foundry's MPT)
- ALiBi: slopes for the next power of two of the head count, interleaved (24 heads use 32
  slopes, odd-indexed first), with alibi_bias_max. The bias is slope * (key - query): llm-foundry's
  up to a constant per row, which softmax ignores. Computed in fp32 before the cast, so slightly
  more precise than the original, and independent of padding.
- Biases wherever no_bias: false puts them. LayerNorm eps 1e-5; low_precision_layernorm runs in
  the autocast dtype. GELU is exact (erf). Softmax scale: softmax_scale or 1/sqrt(head_dim).
  logit_scale and clip_qkv are applied when set. lm_head is tied to wte.
- Masks: causal and padding masks, left or right padding; rows never give NaN.
- Packed rows (trl's padding-free packing=True): position_ids restart at 0 for each example; each
  example attends only to itself and its ALiBi distances start over (tested through SFTTrainer).
- Config options it does not implement raise a ValueError naming the option (alibi: false, qk_ln,
  prefix_lm, attn_uses_sequence_id, grouped-query attention, rope, GLU or MoE FFNs, fc_type: te).
  learned_pos_emb: true is ignored under ALiBi, as in llm-foundry: the checkpoints have no wpe.
- Loading reads the published pytorch_model.bin (bf16, one file or shards, weights only: a
  pickle that holds code is refused) and safetensors. A missing, unexpected or wrongly shaped
  tensor is a ValueError, never a silent random init. A damaged file (truncated, empty, not
  UTF-8) is one line naming the file and the fix.

Works with
- generate() with a DynamicCache: the same tokens as without a cache, and a left-padded batch
  gives what single rows give. PhoGPT's generation_config.json says use_cache: false and has no
  EOS; load_phogpt fixes both. Calling PhoGPTForCausalLM.from_pretrained yourself, pass
  use_cache=True and eos_token_id.
- The KV cache arrives as `cache` (transformers 5.24) or `past_key_values` (5.23); outputs use the
  installed release's name, CACHE_NAME: pass **{CACHE_NAME: cache} when you call the model.
- Fast decoding: generate(..., cache_implementation="static") decodes into a StaticCache with
  fixed shapes, and on CUDA transformers compiles the step (fullgraph=True, tested). The full
  inductor compile also ran once on the CPU: about 19 s for the tiny model, same tokens.
- Training: PEFT LoRA on attn.Wqkv, attn.out_proj, ffn.up_proj, ffn.down_proj; activation
  checkpointing (same gradients); Trainer and trl's SFTTrainer, padding-free packing included.
- bitsandbytes 4-bit (nf4) and 8-bit, also on the CPU; fp16 for a T4, bf16 on newer GPUs;
  device_map, with blocks kept whole.
- No network call at import. Offline, or with a wrong id or folder, load_phogpt raises OSError
  with one sentence, in seconds instead of the hub client's minutes of retries.

Performance notes (bench/phogpt_decode.py, bench/phogpt_train_memory.py need CUDA)
- Attention runs in PyTorch's scaled_dot_product_attention with ALiBi, causal, padding and
  packing masks as one additive bias: never the attention matrix. The kernel is the memory-
  efficient one, since flash attention takes no arbitrary bias.
- The bias takes heads x q x k elements in the compute dtype, shared by all layers: 200 MB at
  2,048 tokens, 3.2 GB at 8,192 tokens for 24 heads. On CUDA PyTorch casts as it writes, so we
  expect no fp32 copy (not measured); on the CPU it makes a temporary fp32 copy (measured).
  Without padding it is shared by the batch; with padding it is batch x that size. If that is
  too much, FlexAttention (ALiBi inside the kernel) is the next step.
- Training loss: with labels in training mode the model returns the loss and no logits. Only
  trained positions go through the tied LM head, LOSS_CHUNK (2^24) logits at a time (819 tokens
  for 4B, 66 for 7B5), each chunk recomputed in the backward pass. Same value and gradients as
  transformers' causal LM loss (tested). CPU, 7B5 vocabulary, 4 x 1,024 tokens: 0.89 GiB above
  the model instead of 11.7 GiB (bench/phogpt_loss_memory.py); the GPU figure is not measured.
"""
import json
import math
import os
import socket
import struct
import traceback
import warnings
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

# transformers 5.24 renamed the KV cache past_key_values -> cache, in forward() and in outputs;
# 5.23 has only the old name. Our forward takes both; outputs use the installed release's name.
_OUTPUT_FIELDS = BaseModelOutputWithPast.__dataclass_fields__
CACHE_NAME = "cache" if "cache" in _OUTPUT_FIELDS else "past_key_values"

# Logits per lm_head call in the training loss: 819 tokens for 4B, 66 for 7B5.
LOSS_CHUNK = 2**24

# Where torch.load fails on a damaged or hostile .bin/.pt (from_pretrained turns it into one line).
TORCH_LOAD_FILES = {"serialization.py", "_weights_only_unpickler.py"}


# ---- layers ----

def alibi_slopes(n_heads, alibi_bias_max=8, device=None):
    """llm-foundry's gen_slopes: slopes for the next power of two of heads, interleaved, cut."""
    n = 2 ** math.ceil(math.log2(n_heads))
    exponents = torch.arange(1, n + 1, dtype=torch.float32, device=device) * (alibi_bias_max / n)
    slopes = 1.0 / torch.pow(2, exponents)
    if n != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


class LayerNorm(nn.LayerNorm):
    """LayerNorm with bias; 'low_precision_layernorm' runs in the autocast (low) dtype."""

    def __init__(self, d_model, bias, eps, low_precision):
        super().__init__(d_model, eps=eps, bias=bias)
        self.low_precision = low_precision

    def forward(self, x):
        if not self.low_precision:
            return super().forward(x)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        # A no-op unless the weights were upcast (prepare_model_for_kbit_training does that).
        weight = self.weight.to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


def make_norm(config):
    low_precision = config.norm_type == "low_precision_layernorm"
    return LayerNorm(config.d_model, bias=not config.no_bias, eps=config.layer_norm_epsilon,
                     low_precision=low_precision)


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        d = config.d_model
        attn = config.attn_config
        self.n_heads = config.n_heads
        self.layer_idx = layer_idx
        self.softmax_scale = attn.get("softmax_scale") or 1 / math.sqrt(d / config.n_heads)
        self.clip_qkv = attn.get("clip_qkv")
        self.dropout = attn.get("attn_pdrop", 0.0)
        self.Wqkv = nn.Linear(d, 3 * d, bias=not config.no_bias)
        self.out_proj = nn.Linear(d, d, bias=not config.no_bias)

    def forward(self, x, attn_bias, cache=None):
        B, T, C = x.shape
        qkv = self.Wqkv(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        # 3 x (B, heads, T, head_dim)
        q, k, v = qkv.view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype),
                                           scale=self.softmax_scale, dropout_p=dropout)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden = int(config.d_model * config.expansion_ratio)
        self.up_proj = nn.Linear(config.d_model, hidden, bias=not config.no_bias)
        self.down_proj = nn.Linear(hidden, config.d_model, bias=not config.no_bias)

    def forward(self, x):
        # The exact (erf) GELU, as MPT: the tanh one gives other logits.
        return self.down_proj(F.gelu(self.up_proj(x), approximate="none"))


class PhoGPTBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.norm_1 = make_norm(config)
        self.attn = Attention(config, layer_idx)
        self.norm_2 = make_norm(config)
        self.ffn = MLP(config)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attn_bias, cache=None, **kwargs):
        x = x + self.resid_dropout(self.attn(self.norm_1(x), attn_bias, cache))
        return x + self.resid_dropout(self.ffn(self.norm_2(x)))


# ---- config ----

# Options of llm-foundry's MPT that change the maths, with the only value implemented here.
ATTN_DEFAULTS = {
    "attn_type": "multihead_attention",
    "alibi": True,
    "prefix_lm": False,
    "qk_ln": False,
    "attn_uses_sequence_id": False,
    "qk_gn": False,
    "rope": False,
    "sliding_window_size": -1,
    "kv_n_heads": None,
    "fused_qkv": True,
    "attn_logit_softcapping": None,
}
# Read and honoured, whatever their value.
ATTN_FREE = {"attn_impl", "attn_pdrop", "alibi_bias_max", "clip_qkv", "softmax_scale"}
# Meaningless without rope.
IGNORED_ATTN = {"rope_theta", "rope_impl", "rope_dail_config", "rope_hf_config"}


class PhoGPTConfig(PreTrainedConfig):
    """PhoGPT's config.json, read as published; a ValueError names any option not implemented."""
    model_type = "mpt"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
        "max_position_embeddings": "max_seq_len",
    }

    def __init__(self, d_model=2048, n_heads=16, n_layers=24, expansion_ratio=4, max_seq_len=2048,
                 vocab_size=50368, resid_pdrop=0.0, emb_pdrop=0.0, learned_pos_emb=True,
                 attn_config=None, ffn_config=None, init_device="cpu", logit_scale=None,
                 no_bias=False, embedding_fraction=1.0, norm_type="low_precision_layernorm",
                 use_cache=False, init_config=None, verbose=0, layer_norm_epsilon=1e-5,
                 tie_word_embeddings=True, **kwargs):
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.expansion_ratio = expansion_ratio
        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        self.resid_pdrop = resid_pdrop
        self.emb_pdrop = emb_pdrop
        self.learned_pos_emb = learned_pos_emb
        self.attn_config = dict(attn_config or {"alibi": True, "alibi_bias_max": 8})
        self.ffn_config = ffn_config
        self.init_device = init_device
        self.logit_scale = logit_scale
        self.no_bias = no_bias
        self.embedding_fraction = embedding_fraction
        self.norm_type = norm_type
        self.use_cache = use_cache
        self.init_config = init_config or {}
        self.verbose = verbose
        self.layer_norm_epsilon = layer_norm_epsilon
        for key in ("block_overrides", "final_logit_softcapping"):
            if kwargs.get(key):
                raise ValueError(f"PhoGPT config option {key}={kwargs[key]!r} "
                                 "is not supported by phogpt_model.py")
        if kwargs.get("fc_type", "torch") not in ("torch", {"name": "torch"}):
            raise ValueError(f"PhoGPT config option fc_type={kwargs['fc_type']!r} "
                             "is not supported (only 'torch')")
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_phogpt()

    def validate_phogpt(self):
        # llm-foundry's default is alibi off, with learned positions: a different model.
        if not self.attn_config.get("alibi", False):
            raise ValueError("PhoGPT config option attn_config.alibi=False "
                             "(learned positions) is not supported")
        for key, value in self.attn_config.items():
            if key in ATTN_FREE or key in IGNORED_ATTN:
                continue
            if key not in ATTN_DEFAULTS:
                raise ValueError(f"PhoGPT config option attn_config.{key} "
                                 "is unknown to phogpt_model.py")
            if value != ATTN_DEFAULTS[key] and not (key == "sliding_window_size" and value is None):
                raise ValueError(f"PhoGPT config option attn_config.{key}={value!r} "
                                 f"is not supported (only {ATTN_DEFAULTS[key]!r})")
        scale = self.logit_scale
        if not (scale is None or scale == "inv_sqrt_d_model" or isinstance(scale, (int, float))):
            raise ValueError(f"PhoGPT config option logit_scale={scale!r} is not supported")
        if self.norm_type not in ("low_precision_layernorm", "layernorm"):
            raise ValueError(f"PhoGPT config option norm_type={self.norm_type!r} is not supported "
                             "(only 'low_precision_layernorm' or 'layernorm')")
        ffn = self.ffn_config or {}
        exact_gelu = (None, {"name": "gelu", "approximate": "none"})
        if ffn.get("ffn_type", "mptmlp") != "mptmlp" or ffn.get("ffn_act_fn") not in exact_gelu:
            raise ValueError(f"PhoGPT config option ffn_config={ffn!r} is not supported "
                             "(only the GELU 'mptmlp')")
        if ffn.get("ffn_hidden_size") not in (None, int(self.d_model * self.expansion_ratio)):
            raise ValueError("PhoGPT config option ffn_config.ffn_hidden_size is not supported")
        if not 0 < self.embedding_fraction <= 1:
            raise ValueError(f"PhoGPT config option embedding_fraction={self.embedding_fraction} "
                             "must be in (0, 1]")
        if self.d_model % self.n_heads:
            raise ValueError(f"PhoGPT config: d_model {self.d_model} is not divisible "
                             f"by n_heads {self.n_heads}")


# ---- model ----

class PhoGPTPreTrainedModel(PreTrainedModel):
    config_class = PhoGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PhoGPTBlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        # Only fresh models use this: a checkpoint overwrites every tensor.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class PhoGPTModel(PhoGPTPreTrainedModel):
    """The `transformer.` part of the published checkpoints: wte, blocks, norm_f (no wpe)."""

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.emb_drop = nn.Dropout(config.emb_pdrop)
        self.blocks = nn.ModuleList(PhoGPTBlock(config, i) for i in range(config.n_layers))
        self.norm_f = make_norm(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def attention_bias(self, attention_mask, position_ids, past_len, q_len, kv_len, device, dtype):
        """ALiBi plus causal, padding and packing masks as one (B|1, H, q_len, kv_len) bias.

        ALiBi is slope * (key_index - query_index): llm-foundry's bias up to a per-row constant
        (which softmax ignores), in fp32 before the cast. Relative distances ignore left padding.
        """
        # The absolute index of each new token, and its distance to each key (<= 0: visible).
        q_idx = torch.arange(q_len, device=device) + past_len
        dist = torch.arange(kv_len, device=device)[None, :] - q_idx[:, None]
        allowed = (dist <= 0)[None, None]
        mask = attention_mask
        # No padding (Trainer passes all ones): one bias shared by the whole batch.
        if mask is not None and not torch.compiler.is_compiling() and bool(mask.all()):
            mask = None
        if mask is not None and mask.dim() == 2:
            # (B, keys): 1 = real token, 0 = padding. A static cache can be longer than the
            # tokens seen so far: those slots count as padding.
            if mask.shape[-1] < kv_len:
                mask = F.pad(mask, (0, kv_len - mask.shape[-1]))
            allowed = allowed & mask[:, None, None, :kv_len].bool()
        elif mask is not None:
            # A prepared 4D mask: bool (True = attend) or additive float (0 = attend).
            allowed = allowed & (mask.bool() if mask.dtype == torch.bool else mask == 0)
        first_pass = isinstance(past_len, int) and past_len == 0 and q_len == kv_len
        if position_ids is not None and first_pass:
            # Packed rows (trl padding-free): an example starts where position_ids do not go +1.
            step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
            example = (step != 1).cumsum(-1)
            allowed = allowed & (example[:, None, :, None] == example[:, None, None, :])
        # Every row sees itself, so padding rows give no NaN.
        allowed = allowed | (dist == 0)
        bias_max = self.config.attn_config.get("alibi_bias_max", 8)
        slopes = alibi_slopes(self.config.n_heads, bias_max, device)
        if torch.compiler.is_compiling():
            # The compiled decode step: inductor fuses this, there are no copies to avoid.
            alibi = (slopes[:, None, None] * dist).to(dtype)[None]
            return alibi.masked_fill(~allowed, float("-inf"))
        # Eager: fp32 maths cast on store (CUDA kernels cast in registers: no fp32 copy, 6 GB at
        # 8k tokens). Rows are padded to a multiple of 16 so the memory-efficient SDPA kernel
        # takes the bias as is, instead of copying it in every layer.
        padded_len = -(-kv_len // 16) * 16
        bias = torch.empty(1, len(slopes), q_len, padded_len, dtype=dtype, device=device)
        bias = bias[..., :kv_len]
        torch.mul(slopes[:, None, None], dist, out=bias[0])
        if allowed.shape[0] == 1:
            return bias.masked_fill_(~allowed, float("-inf"))
        # (B, H, q, k) with a padding mask
        return bias.masked_fill(~allowed, float("-inf"))

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                use_cache=None, cache_position=None, inputs_embeds=None, **kwargs):
        # past_key_values is the name transformers 5.23 uses.
        cache = kwargs.pop("past_key_values", cache)
        # A cache passed in is used; otherwise the config decides (PhoGPT's says False).
        if use_cache is None:
            use_cache = cache is not None or self.config.use_cache
        if self.blocks[0].gradient_checkpointing and self.training:
            use_cache = False
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        f = self.config.embedding_fraction
        if f != 1:
            # llm-foundry's trick to damp the embedding gradients.
            x = x * f + x.detach() * (1 - f)
        x = self.emb_drop(x)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        q_len = x.shape[1]
        past_len = 0
        kv_len = q_len
        if cache is not None:
            past_len = cache.get_seq_length() if cache_position is None else cache_position[0]
            kv_len = cache.get_mask_sizes(q_len, 0)[0]
        bias_dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            bias_dtype = torch.get_autocast_dtype(x.device.type)
        attn_bias = self.attention_bias(attention_mask, position_ids, past_len, q_len, kv_len,
                                        x.device, bias_dtype)
        for block in self.blocks:
            x = block(x, attn_bias, cache=cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm_f(x), **{CACHE_NAME: cache})


class PhoGPTForCausalLM(PhoGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.transformer = PhoGPTModel(config)
        # Tied to wte: logits = h @ wte.T
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                labels=None, use_cache=None, cache_position=None, inputs_embeds=None,
                logits_to_keep=0, **kwargs):
        # past_key_values is the name transformers 5.23 uses.
        cache = kwargs.pop("past_key_values", cache)
        out = self.transformer(input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, cache=cache, use_cache=use_cache,
                               cache_position=cache_position, inputs_embeds=inputs_embeds)
        cache = getattr(out, CACHE_NAME)
        x = out.last_hidden_state
        if labels is not None and self.training and torch.is_grad_enabled():
            # Training: the loss only, without the (batch, length, vocab) logits.
            loss = self.answer_loss(x, labels, kwargs.get("num_items_in_batch"))
            return CausalLMOutputWithPast(loss=loss, logits=None, **{CACHE_NAME: cache})
        # generate() only needs the last position's logits.
        if logits_to_keep:
            keep = logits_to_keep
            if isinstance(keep, int):
                keep = slice(-keep, None)
            x = x[:, keep]
        logits = self.logits(x)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_NAME: cache})

    def logits(self, x):
        logits = self.lm_head(x)
        scale = self.config.logit_scale
        if scale == "inv_sqrt_d_model":
            scale = 1 / math.sqrt(self.config.d_model)
        if scale is not None:
            logits = logits * scale
        return logits

    def answer_loss(self, x, labels, num_items_in_batch=None):
        """transformers' causal LM loss (mean next-token cross-entropy, -100 = not trained),
        without the (batch, length, vocab) logits.

        Only trained positions go through lm_head, LOSS_CHUNK logits at a time, and each chunk
        is recomputed in the backward pass instead of kept. For 7B5's 250,880-token vocabulary
        the fp32 logits of 16 x 1024 tokens would be 16 GB; a chunk with its gradient ~300 MB.
        """
        # Position t predicts token t + 1.
        targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(x.device)
        trained = targets != -100
        x = x[trained]
        targets = targets[trained]
        # Zero, but connected to the graph even if nothing is trained.
        total = x[:0].sum()
        step = max(1, LOSS_CHUNK // self.config.vocab_size)
        for i in range(0, len(targets), step):
            total = total + checkpoint(self.summed_cross_entropy, x[i:i + step],
                                       targets[i:i + step], use_reentrant=False)
        # Trainer passes the count over all the accumulated micro-batches.
        count = num_items_in_batch
        if count is None:
            count = max(1, len(targets))
        if torch.is_tensor(count):
            count = count.to(x.device)
        return total / count

    def summed_cross_entropy(self, x, targets):
        return F.cross_entropy(self.logits(x).float(), targets, reduction="sum")

    def create_masks_for_generate(self, attention_mask=None, cache=None, **kwargs):
        """generate() with a static cache: the 2D padding mask, padded to the cache length."""
        # past_key_values is the name transformers 5.23 uses.
        cache = kwargs.pop("past_key_values", cache)
        if attention_mask is None or attention_mask.dim() != 2:
            return attention_mask
        kv_len = cache.get_max_cache_shape() if cache is not None else -1
        if isinstance(kv_len, int) and kv_len > attention_mask.shape[-1]:
            attention_mask = F.pad(attention_mask, (0, kv_len - attention_mask.shape[-1]))
        return attention_mask

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """The published checkpoints (safetensors or .bin shards); a missing or unexpected
        tensor is a ValueError, a damaged file one line naming it (OSError)."""
        want_info = kwargs.pop("output_loading_info", False)
        folder = str(args[0]) if args else ""
        if os.path.isdir(folder):
            check_weight_files(folder)
        try:
            with warnings.catch_warnings():
                # torch's notice about a foreign pickle: the error below says it in one line.
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except Exception as err:
            # A .bin is read by torch.load(weights_only=True): a pickle that holds code is
            # refused there, unrun, as is a damaged one; each with its own exception type.
            frames = traceback.extract_tb(err.__traceback__)
            if not any(os.path.basename(f.filename) in TORCH_LOAD_FILES for f in frames):
                raise
            raise DamagedFileError(damaged_weights_message(folder)) from None
        missing = sorted(k for k in info.get("missing_keys", []) if k != "lm_head.weight")
        unexpected = sorted(info.get("unexpected_keys", []))
        mismatched = list(info.get("mismatched_keys", []))
        if missing or unexpected or mismatched:
            raise ValueError(f"the checkpoint does not match PhoGPT's architecture: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}, "
                             f"wrong shape {mismatched[:5]}")
        return (model, info) if want_info else model


# ---- loading: dtype, hub, damaged files, tokenizer, model ----

class DamagedFileError(OSError):
    """A model file that is empty, truncated, not UTF-8, or not plain weights: its message is
    one line naming the file and the fix."""

def pick_dtype(device=None):
    """bf16 on a CUDA GPU that has it, fp16 on older CUDA GPUs (T4), fp32 on CPU and MPS."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type != "cuda":
        return torch.float32
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float16


def hub_host():
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname


def hub_reachable(timeout=5):
    """True if a connection to the Hugging Face hub opens within timeout seconds.

    False at once when HF_HUB_OFFLINE is set. We ask because the hub client retries for minutes
    before it gives up; a student offline deserves one line in seconds.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def looks_like_hub_id(name):
    """'owner/name', not a path: what from_pretrained would look up on the hub."""
    is_path = name.startswith((".", "/", "~")) or "\\" in name
    return not is_path and name.count("/") == 1


def cached_hub_folder(name, filename="config.json"):
    """The local snapshot folder of a hub model already downloaded once, else None."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, filename)
    except ValueError:
        # Not a valid model id.
        return None
    return os.path.dirname(cached) if isinstance(cached, str) else None


def model_source(name_or_path):
    """from_pretrained kwargs for a folder or hub id; OSError in seconds when it cannot work."""
    if os.path.isdir(name_or_path):
        return {}
    if not looks_like_hub_id(name_or_path):
        raise OSError(f"model folder {name_or_path} not found: check the path, "
                      "or give a hub id like vinai/PhoGPT-4B-Chat")
    from huggingface_hub import constants

    # Offline on purpose: only the local cache (from_pretrained says so if it is not there).
    if constants.HF_HUB_OFFLINE:
        return {"local_files_only": True}
    if hub_reachable():
        return {}
    if cached_hub_folder(name_or_path) is not None:
        return {"local_files_only": True}
    raise OSError(f"cannot reach {hub_host()} to download {name_or_path}: connect to the internet, "
                  "or download the model once and pass its local folder with --model")


def check_json_files(folder, names):
    """One line naming the first of these JSON files that is empty, not UTF-8 or not JSON."""
    for name in names:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            raw = f.read()
        fix = "fix: download or copy it again (a UTF-8 JSON file)"
        if not raw.strip():
            raise DamagedFileError(f"{path} is empty; {fix}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DamagedFileError(f"{path} is not UTF-8 text (byte {err.start}: another encoding, "
                          f"or damaged); {fix}") from None
        try:
            json.loads(text)
        except ValueError as err:
            raise DamagedFileError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}; "
                          f"truncated?); {fix}") from None


def check_safetensors(path):
    """One line if a .safetensors file is empty, truncated or has a garbled header."""
    size = os.path.getsize(path)
    fix = "fix: download or save it again (the copy stopped early, or the disk was full?)"
    if size < 8:
        raise DamagedFileError(f"{path} is empty or truncated ({size} bytes); {fix}")
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        if 8 + header_len > size:
            raise DamagedFileError(f"{path} is truncated ({size:,} bytes, less than its "
                                   f"header says); {fix}")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            raise DamagedFileError(f"{path} is damaged (its header is not safetensors JSON); "
                                   f"{fix}") from None
    if 8 + header_len + end > size:
        expected = 8 + header_len + end
        raise DamagedFileError(f"{path} is truncated ({size:,} bytes of {expected:,}); {fix}")


def check_weight_files(folder):
    """The config and weight files of a local model folder are whole and readable, or OSError."""
    indexes = sorted(n for n in os.listdir(folder) if n.endswith(".index.json"))
    check_json_files(folder, ["config.json", "generation_config.json"] + indexes)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            check_safetensors(os.path.join(folder, name))
        elif name.endswith((".bin", ".pt")) and os.path.getsize(os.path.join(folder, name)) == 0:
            raise DamagedFileError(f"{os.path.join(folder, name)} is empty; "
                          "fix: download or copy it again")


def damaged_weights_message(folder):
    """What to say when torch.load refused a .bin/.pt (garbage, truncated, or code inside)."""
    names = []
    if os.path.isdir(folder):
        names = sorted(n for n in os.listdir(folder) if n.endswith((".bin", ".pt")))
    where = os.path.join(folder, names[0]) if len(names) == 1 else f"the weights of {folder}"
    return (f"{where} could not be read as plain PyTorch weights (damaged, or a pickle that "
            "holds code, which is never run); fix: download it again from a source you trust, "
            "or use model.safetensors")


def load_error_message(name_or_path, err):
    if not os.path.isdir(name_or_path):
        return (f"could not load {name_or_path} from the Hugging Face Hub: check the model id "
                "(e.g. vinai/PhoGPT-4B-Chat), or download it once and pass its local folder "
                "with --model")
    files = ("config.json", "tokenizer.json")
    missing = [f for f in files if not os.path.exists(os.path.join(name_or_path, f))]
    if missing:
        return (f"{name_or_path} is not a PhoGPT model folder (no {' or '.join(missing)}): "
                "pass the folder with the model's files")
    first_line = (str(err).splitlines() or [""])[0][:200]
    return f"{name_or_path} could not be loaded as PhoGPT: {first_line}"


def load_tokenizer(name_or_path):
    """PhoGPT's tokenizer (AutoTokenizer fails on PhoGPT folders: it builds MptConfig first)."""
    kwargs = model_source(name_or_path)
    if os.path.isdir(name_or_path):
        check_json_files(name_or_path, ["tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json"])
    try:
        return PreTrainedTokenizerFast.from_pretrained(name_or_path, **kwargs)
    except DamagedFileError:
        raise
    except (OSError, ValueError) as err:
        raise OSError(load_error_message(name_or_path, err)) from None


def load_phogpt(name_or_path, load_in="none", dtype=None, device_map=None,
                trust_remote_code=False, quant_type="nf4", double_quant=True):
    """(model, tokenizer) from a hub id or a local folder.

    load_in: 'none', '4bit' (quant_type, double_quant) or '8bit'. dtype: pick_dtype's by default.
    Every failure is an OSError or ValueError with one line saying what to do.
    """
    if load_in not in ("none", "4bit", "8bit"):
        raise ValueError(f"load_in must be 'none', '4bit' or '8bit', not {load_in!r}")
    if dtype is None:
        placed = isinstance(device_map, (str, torch.device)) and device_map != "auto"
        dtype = pick_dtype(device_map if placed else None)
    quantization_config = None
    if load_in != "none":
        # Imported here: bitsandbytes is slow to import.
        from transformers import BitsAndBytesConfig

        quantization_config = BitsAndBytesConfig(
            load_in_4bit=load_in == "4bit",
            load_in_8bit=load_in == "8bit",
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
    tokenizer = load_tokenizer(name_or_path)
    kwargs = dict(dtype=dtype, device_map=device_map, quantization_config=quantization_config,
                  **model_source(name_or_path))
    if os.path.isdir(name_or_path):
        check_weight_files(name_or_path)
    try:
        if trust_remote_code:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=True,
                                                         **kwargs)
        else:
            model = PhoGPTForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        remote_code_missing = "configuration_mpt.py" in str(err)
        if trust_remote_code and os.path.isdir(name_or_path) and remote_code_missing:
            raise OSError(f"{name_or_path} has no remote code (configuration_mpt.py): load it "
                          "without trust_remote_code, with phogpt_model.py") from None
        if isinstance(err, DamagedFileError):
            raise
        raise OSError(load_error_message(name_or_path, err)) from None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # The published generation_config has no EOS, and says use_cache: false.
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.use_cache = True
    return model, tokenizer
