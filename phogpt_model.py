"""PhoGPT (VinAI's MPT decoder) for today's transformers, without remote code.

    model, tokenizer = load_phogpt("vinai/PhoGPT-4B-Chat")  # or a folder, load_in="4bit"

The layers come first, in the order data flows through them:
    wte -> blocks[i]: x + attn(norm_1(x)), then x + ffn(norm_2(x)) -> norm_f -> h @ wte.T
then the config, the model, and loading (skip that on a first read).
"""
import json
import math
import os
import socket
import traceback
import warnings
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from safetensors import safe_open
from tokenizers import Tokenizer
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, GenerationMixin,
                          PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast)
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

# Why ours? VinAI's remote code fails on transformers >= 4.52 (issue #33);
# MptForCausalLM drops PhoGPT's biases: wrong text, no error.

# transformers 5.24 renamed past_key_values to cache: we take both; callers pass **{CACHE_NAME: c}.
_NEW = "cache" in BaseModelOutputWithPast.__dataclass_fields__
CACHE_NAME = "cache" if _NEW else "past_key_values"

# Logits per lm_head call in the training loss: 819 tokens for 4B, 66 for 7B5.
LOSS_CHUNK = 2**24

# ---- the layers ----
class LayerNorm(nn.LayerNorm):
    def __init__(self, config):
        bias = not config.no_bias
        super().__init__(config.d_model, eps=config.layer_norm_epsilon, bias=bias)
        self.low_precision = config.norm_type == "low_precision_layernorm"

    def forward(self, x):
        if not self.low_precision:
            return super().forward(x)
        # Under autocast: bf16/fp16, not the fp32 autocast picks.
        device = x.device.type
        if torch.is_autocast_enabled(device):
            x = x.to(torch.get_autocast_dtype(device))
        # No-op unless peft upcast weights to fp32.
        weight = self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        with torch.autocast(device, enabled=False):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)

class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        d, attn = config.d_model, config.attn_config
        self.n_heads = config.n_heads
        self.layer_idx = layer_idx
        # PhoGPT: None, so 1/sqrt(head size).
        self.scale = attn.get("softmax_scale") or 1 / math.sqrt(d / config.n_heads)
        self.clip_qkv = attn.get("clip_qkv")
        self.dropout = attn.get("attn_pdrop", 0.0)
        self.Wqkv = nn.Linear(d, 3 * d, bias=not config.no_bias)
        self.out_proj = nn.Linear(d, d, bias=not config.no_bias)

    def forward(self, x, attn_bias, cache=None):
        B, T, C = x.shape
        qkv = self.Wqkv(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        # q, k, v, each (B, heads, T, head size)
        q, k, v = qkv.view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        dropout = self.dropout if self.training else 0.0
        # One bias, ALiBi + masks: no (T, T) matrix.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype),
                                           scale=self.scale, dropout_p=dropout)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))

class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, bias = config.d_model, not config.no_bias
        hidden = int(d * config.expansion_ratio)
        self.up_proj = nn.Linear(d, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d, bias=bias)

    def forward(self, x):
        # The exact (erf) GELU, as MPT: not tanh's.
        return self.down_proj(F.gelu(self.up_proj(x), approximate="none"))

class PhoGPTBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.norm_1 = LayerNorm(config)
        self.attn = Attention(config, layer_idx)
        self.norm_2 = LayerNorm(config)
        self.ffn = MLP(config)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attn_bias, cache=None, **kw):
        # Pre-norm residuals, as GPT-2 and nanoGPT.
        x = x + self.resid_dropout(self.attn(self.norm_1(x), attn_bias, cache))
        return x + self.resid_dropout(self.ffn(self.norm_2(x)))

# ---- the config ----
# attn_config: what changes the maths, and the one value we implement.
ATTN_DEFAULTS = {
    "attn_type": "multihead_attention", "alibi": True, "prefix_lm": False,
    "qk_ln": False, "qk_gn": False, "attn_uses_sequence_id": False, "rope": False,
    "sliding_window_size": -1, "kv_n_heads": None, "fused_qkv": True,
    "attn_logit_softcapping": None,
}
# What we read, or what changes nothing here: any value.
ATTN_FREE = {"attn_impl", "attn_pdrop", "alibi_bias_max", "clip_qkv", "softmax_scale",
             "rope_theta", "rope_impl", "rope_dail_config", "rope_hf_config"}

# PhoGPT's config.json as published: llm-foundry's keys and defaults.
class PhoGPTConfig(PreTrainedConfig):
    # learned_pos_emb is ignored under ALiBi, as in llm-foundry (no wpe).
    model_type = "mpt"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads",
                     "num_hidden_layers": "n_layers", "max_position_embeddings": "max_seq_len"}
    d_model: int = 2048
    n_heads: int = 16
    n_layers: int = 24
    expansion_ratio: int = 4
    max_seq_len: int = 2048
    vocab_size: int = 50368
    resid_pdrop: float = 0.0
    emb_pdrop: float = 0.0
    attn_config: dict | None = None
    ffn_config: dict | None = None
    logit_scale: float | str | None = None
    no_bias: bool = False
    embedding_fraction: float = 1.0
    norm_type: str = "low_precision_layernorm"
    use_cache: bool = False
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        self.attn_config = dict(self.attn_config or {"alibi": True, "alibi_bias_max": 8})
        super().__post_init__(**kwargs)
        # Refuse what we do not implement, naming it: never a silent other model.
        ffn, scale = self.ffn_config or {}, self.logit_scale
        gelu = {"name": "gelu", "approximate": "none"}
        hidden = int(self.d_model * self.expansion_ratio)
        checks = {
            "logit_scale": scale in (None, "inv_sqrt_d_model") or isinstance(scale, (int, float)),
            "norm_type": self.norm_type in ("layernorm", "low_precision_layernorm"),
            "ffn_config.ffn_type": ffn.get("ffn_type", "mptmlp") == "mptmlp",
            "ffn_config.ffn_act_fn": ffn.get("ffn_act_fn") in (None, gelu),
            "ffn_config.ffn_hidden_size": ffn.get("ffn_hidden_size") in (None, hidden),
            "embedding_fraction": 0 < self.embedding_fraction <= 1,
            f"d_model={self.d_model} for {self.n_heads} heads": self.d_model % self.n_heads == 0,
            "fc_type": kwargs.get("fc_type", "torch") in ("torch", {"name": "torch"}),
            "block_overrides": not kwargs.get("block_overrides"),
        }
        # No alibi key: llm-foundry's default, False.
        for key, value in {"alibi": False, **self.attn_config}.items():
            # null: "no sliding window", as -1.
            no_window = key == "sliding_window_size" and value is None
            ok = key in ATTN_FREE or value == ATTN_DEFAULTS.get(key, "unknown") or no_window
            checks[f"attn_config.{key}={value!r}"] = ok
        for option, implemented in checks.items():
            if not implemented:
                raise ValueError(f"PhoGPT config option {option} is not supported")

# ---- ALiBi and masks: one attention bias ----
# llm-foundry's gen_slopes: one slope per head, steeper = more local.
def alibi_slopes(n_heads, alibi_bias_max=8, device=None):
    # 24 heads: 32 slopes, odd ones first, cut.
    n = 2 ** math.ceil(math.log2(n_heads))
    steps = torch.arange(1, n + 1, dtype=torch.float32, device=device)
    slopes = 1.0 / torch.pow(2, steps * (alibi_bias_max / n))
    if n != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes

# ALiBi plus causal, padding and packing masks: one (B or 1, heads, q, k) bias.
def alibi_bias(config, mask, position_ids, past_len, q_len, kv_len, dtype, device):
    # dist = key index - query index: 0 for itself, < 0 for the past.
    q_idx = torch.arange(q_len, device=device) + past_len
    dist = torch.arange(kv_len, device=device)[None, :] - q_idx[:, None]
    # Causal: no future token. (1, 1, q, k): shared by batch and heads.
    allowed = (dist <= 0)[None, None]
    # All ones (Trainer passes that): no padding, one bias for the batch.
    if mask is not None and not torch.compiler.is_compiling() and bool(mask.all()):
        mask = None
    if mask is not None:
        # 1 = a token, 0 = padding; a static cache's empty slots too.
        mask = F.pad(mask, (0, max(0, kv_len - mask.shape[-1])))
        allowed = allowed & mask[:, None, None, :kv_len].bool()
    first_pass = isinstance(past_len, int) and past_len == 0 and q_len == kv_len
    if position_ids is not None and first_pass:
        # Packed rows (trl's padding-free packing): an example starts where
        # position_ids do not go up by one; examples never see each other.
        start = position_ids[:, :1] - 1
        example = (torch.diff(position_ids, prepend=start, dim=-1) != 1).cumsum(-1)
        allowed = allowed & (example[:, None, :, None] == example[:, None, None, :])
    # Each token sees itself: no NaN rows.
    blocked = ~(allowed | (dist == 0))
    # ALiBi: a score gets slope * (key - query), a penalty growing with the
    # distance (llm-foundry's differs by a constant per row: same softmax).
    bias_max = config.attn_config.get("alibi_bias_max", 8)
    slopes = alibi_slopes(config.n_heads, bias_max, device)[:, None, None]
    if torch.compiler.is_compiling():
        # Compiled decode: inductor fuses this.
        return (slopes * dist).to(dtype)[None].masked_fill(blocked, float("-inf"))
    # Eager: fp32 maths cast as stored (no fp32 copy: 6 GB at 8k tokens on CUDA);
    # rows padded to 16, so SDPA uses the bias without a copy.
    padded = -(-kv_len // 16) * 16
    bias = torch.empty(1, len(slopes), q_len, padded, dtype=dtype, device=device)
    bias = bias[..., :kv_len]
    torch.mul(slopes, dist, out=bias[0])
    # In place if one bias serves the batch; padding gives each row its own.
    fill = bias.masked_fill_ if blocked.shape[0] == 1 else bias.masked_fill
    return fill(blocked, float("-inf"))

# ---- the model ----
class PhoGPTPreTrainedModel(PreTrainedModel):
    config_class = PhoGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    # device_map splits between blocks only.
    _no_split_modules = ["PhoGPTBlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = True

class PhoGPTModel(PhoGPTPreTrainedModel):
    # Where transformers and peft find wte.
    _input_embed_layer = "wte"

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.emb_drop = nn.Dropout(config.emb_pdrop)
        self.blocks = nn.ModuleList(PhoGPTBlock(config, i) for i in range(config.n_layers))
        self.norm_f = LayerNorm(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                use_cache=None, cache_position=None, inputs_embeds=None, **kwargs):
        # past_key_values: transformers 5.23's name for the cache.
        cache = kwargs.pop("past_key_values", cache)
        if use_cache is None:
            use_cache = cache is not None or self.config.use_cache
        # Checkpointing reruns blocks: no cache.
        if not use_cache or (self.blocks[0].gradient_checkpointing and self.training):
            cache = None
        elif cache is None:
            cache = DynamicCache(config=self.config)
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        f = self.config.embedding_fraction
        if f != 1:
            # llm-foundry: same forward, embedding grad times f.
            x = x * f + x.detach() * (1 - f)
        x = self.emb_drop(x)
        q_len = kv_len = x.shape[1]
        past_len = 0
        if cache is not None:
            # Tokens cached so far (a static cache: cache_position).
            past_len = cache.get_seq_length() if cache_position is None else cache_position[0]
            kv_len = cache.get_mask_sizes(q_len, 0)[0]
        # The bias in attention's dtype.
        on = x.device.type
        dtype = torch.get_autocast_dtype(on) if torch.is_autocast_enabled(on) else x.dtype
        bias = alibi_bias(self.config, attention_mask, position_ids, past_len, q_len, kv_len,
                          dtype, x.device)
        for block in self.blocks:
            x = block(x, bias, cache=cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm_f(x), **{CACHE_NAME: cache})

class PhoGPTForCausalLM(PhoGPTPreTrainedModel, GenerationMixin):
    # The output layer is wte: logits = h @ wte.T
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.transformer = PhoGPTModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                labels=None, use_cache=None, cache_position=None, inputs_embeds=None,
                logits_to_keep=0, **kwargs):
        # past_key_values (5.23's name for cache) travels in kwargs.
        out = self.transformer(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, use_cache=use_cache, cache_position=cache_position,
                               inputs_embeds=inputs_embeds, **kwargs)
        x = out.last_hidden_state
        cache = {CACHE_NAME: getattr(out, CACHE_NAME)}
        if labels is not None and self.training and torch.is_grad_enabled():
            # Training: loss only, no logits.
            loss = self.answer_loss(x, labels, kwargs.get("num_items_in_batch"))
            return CausalLMOutputWithPast(loss=loss, **cache)
        # generate() wants only the last position's.
        if isinstance(logits_to_keep, int):
            logits_to_keep = slice(-logits_to_keep, None)
        logits = self.logits(x[:, logits_to_keep])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **cache)

    def logits(self, x):
        scale = self.config.logit_scale
        if scale == "inv_sqrt_d_model":
            scale = 1 / math.sqrt(self.config.d_model)
        logits = self.lm_head(x)
        return logits if scale is None else logits * scale

    def answer_loss(self, x, labels, num_items_in_batch=None):
        # No 16 GB of logits (7B5, 16 x 1024 tokens): trained positions only, a chunk
        # at a time, recomputed in backward. Position t predicts t + 1; -100: not trained.
        targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(x.device)
        trained = targets != -100
        x, targets = x[trained], targets[trained]
        # Zero, in the graph even if nothing trains.
        total = x[:0].sum()
        step = max(1, LOSS_CHUNK // self.config.vocab_size)
        for i in range(0, len(targets), step):
            total = total + checkpoint(self.summed_cross_entropy, x[i:i + step],
                                       targets[i:i + step], use_reentrant=False)
        # Trainer counts all accumulated batches.
        count = num_items_in_batch or max(1, len(targets))
        return total / (count.to(x.device) if torch.is_tensor(count) else count)

    def summed_cross_entropy(self, x, targets):
        return F.cross_entropy(self.logits(x).float(), targets, reduction="sum")

    def create_masks_for_generate(self, attention_mask=None, cache=None, **kwargs):
        # A static cache has fixed shapes (CUDA compiles the step): pad to it.
        cache = kwargs.pop("past_key_values", cache)
        if attention_mask is None or cache is None:
            return attention_mask
        width = max(attention_mask.shape[-1], cache.get_max_length())
        return F.pad(attention_mask, (0, width - attention_mask.shape[-1]))

    @classmethod
    def from_pretrained(cls, *args, output_loading_info=False, **kwargs):
        # Missing tensor: an error, not random init.
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        # lm_head is wte: not in the checkpoints.
        missing = sorted(set(info["missing_keys"]) - {"lm_head.weight"})
        unexpected, wrong = sorted(info["unexpected_keys"]), list(info["mismatched_keys"])
        if missing or unexpected or wrong:
            raise ValueError(f"the checkpoint does not match PhoGPT's architecture: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
        return (model, info) if output_loading_info else model

# ---- loading: one line per bad file ----
# bf16 on a CUDA GPU that has it, fp16 on older ones (T4), else fp32;
# device "auto" (or a device_map dict): this machine's first device.
def pick_dtype(device=None):
    if device in (None, "auto") or isinstance(device, dict):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type != "cuda":
        return torch.float32
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if bf16 else torch.float16

# from_pretrained's kwargs for a folder or a hub id (asks the hub once).
def model_source(name_or_path):
    if os.path.isdir(name_or_path):
        # Files on disk: no network at all.
        return {}
    is_path = name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path
    if is_path or name_or_path.count("/") != 1:
        raise OSError(f"model folder {name_or_path} not found; fix: check the path or hub id")
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return {"local_files_only": True}
    # The hub client retries for minutes: knock once.
    url = urlparse(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError:
        return {"local_files_only": True}
    return {}

# One line (OSError) naming the first of these files that is damaged.
def check_files(folder, names):
    for path in [os.path.join(folder, name) for name in names]:
        try:
            if path.endswith("tokenizer.json"):
                # Valid JSON is not enough: tokenizers must read it.
                Tokenizer.from_file(path)
            elif path.endswith(".json"):
                with open(path, encoding="utf-8") as f:
                    json.load(f)
            else:
                # Header only: do the tensors fill the file?
                safe_open(path, framework="pt")
        except Exception as err:
            # Cut short, empty, or UTF-16 from Notepad: the reason, in brackets.
            why = str(err).split(": ")[-1][:80] if os.path.getsize(path) else "empty"
            raise OSError(f"{path} is damaged or not UTF-8 ({why}); fix: copy it again, "
                          "whole (did the copy stop early, the disk fill?)") from None

# One line (ValueError) for a tensor of the wrong dtype or shape, or NaN.
def check_tensors(path, expected):
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            # The header gives dtype and shape: no tensor is read for them.
            part = f.get_slice(key)
            dtype, shape = part.get_dtype(), part.get_shape()
            want = list(expected[key].shape) if key in expected else shape
            # NaN: ~4000 values from the first, middle and last rows, in ms.
            take = max(1, 1365 // max(1, math.prod(shape[1:])))
            rows = {0, max(0, shape[0] - take) // 2, max(0, shape[0] - take)} if shape else ()
            if dtype not in ("F64", "F32", "F16", "BF16"):
                why = f"is stored as {dtype}, not float; fix: download the original weights"
            elif shape != want:
                why = f"has shape {shape}, config.json says {want}; fix: copy both from one model"
            elif not all(torch.isfinite(part[r:r + take]).all() for r in rows):
                why = "holds NaN or inf; fix: use an earlier checkpoint, or download it again"
            else:
                continue
            raise ValueError(f"{path}: tensor {key} {why}")

# Before any work, one line for what a model folder gets wrong.
def check_folder(folder):
    names = sorted(os.listdir(folder))
    if "adapter_config.json" in names and "config.json" not in names:
        check_files(folder, ["adapter_config.json"])
        with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
            base = json.load(f).get("base_model_name_or_path")
        raise OSError(f"{folder} is a LoRA adapter (its base model is {base}); fix: pass it "
                      "as --adapter")
    missing = [n for n in ("config.json", "tokenizer.json") if n not in names]
    if missing:
        raise OSError(f"{folder} is not a PhoGPT model folder (no {missing[0]}); fix: pass "
                      "the folder with the model's files")
    check_files(folder, [n for n in names if n.endswith((".json", ".safetensors"))])
    config = PhoGPTConfig.from_pretrained(folder)
    # bitsandbytes saves 4-bit and 8-bit weights as ints, in other shapes.
    if getattr(config, "quantization_config", None):
        return
    # The shapes config.json asks for, on the meta device: no memory, 0.04 s.
    with torch.device("meta"):
        expected = PhoGPTForCausalLM(config).state_dict()
    for name in names:
        if name.endswith(".safetensors"):
            check_tensors(os.path.join(folder, name), expected)

# The one line for a model that did not load, with its fix.
def load_error(name_or_path, err, source):
    if source.get("local_files_only"):
        return OSError(f"{name_or_path} is not downloaded and the Hub is offline; fix: connect "
                       "once, or try python tiny_phogpt.py, then --model tiny-phogpt")
    if not os.path.isdir(name_or_path):
        return OSError(f"could not load {name_or_path} from the Hugging Face Hub; fix: check "
                       "the id (e.g. vinai/PhoGPT-4B-Chat), or pass a downloaded folder")
    first_line = (str(err).splitlines() or [""])[0][:200]
    return OSError(f"{name_or_path} could not be loaded as PhoGPT: {first_line}")

def load_tokenizer(name_or_path, source=None):
    # Not AutoTokenizer: MptConfig rejects ours.
    source = model_source(name_or_path) if source is None else source
    if os.path.isdir(name_or_path):
        check_folder(name_or_path)
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(name_or_path, **source)
    except Exception as err:
        raise load_error(name_or_path, err, source) from None
    # A token id past the embeddings would crash mid-training: say it before any work.
    local = os.path.isdir(name_or_path)
    size = PhoGPTConfig.from_pretrained(name_or_path).vocab_size if local else len(tokenizer)
    if len(tokenizer) > size:
        raise ValueError(f"{os.path.join(name_or_path, 'tokenizer.json')} has {len(tokenizer)} "
                         f"tokens, the model {size}; fix: use this model's tokenizer files")
    return tokenizer

# (model, tokenizer); any failure is one line (OSError or ValueError).
def load_phogpt(name_or_path, load_in="none", dtype=None, device_map=None,
                trust_remote_code=False, quant_type="nf4", double_quant=True):
    if load_in not in ("none", "4bit", "8bit"):
        raise ValueError(f"load_in must be 'none', '4bit' or '8bit', not {load_in!r}")
    dtype = dtype or pick_dtype(device_map)
    # One look at the hub (none for a folder); the tokenizer checks a folder first.
    source = model_source(name_or_path)
    tokenizer = load_tokenizer(name_or_path, source)
    kwargs = dict(dtype=dtype, device_map=device_map, **source)
    if load_in != "none":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=load_in == "4bit", load_in_8bit=load_in == "8bit",
            bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype)
    model_class = PhoGPTForCausalLM
    if trust_remote_code:
        model_class = AutoModelForCausalLM
        kwargs["trust_remote_code"] = True
    try:
        with warnings.catch_warnings():
            # torch's pickle notice: we say it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = model_class.from_pretrained(name_or_path, **kwargs)
    except Exception as err:
        # Did torch.load refuse a .bin (damaged, or a pickle with code)?
        frames = traceback.extract_tb(err.__traceback__)
        if any(f.filename.endswith(("serialization.py", "_unpickler.py")) for f in frames):
            bins = [n for n in os.listdir(name_or_path) if n.endswith(".bin")]
            where = os.path.join(name_or_path, bins[0]) if len(bins) == 1 else name_or_path
            raise OSError(f"{where}: not plain PyTorch weights (damaged, or code in a pickle, "
                          "never run); fix: download it again from a source you trust") from None
        # Not about files (a bad config): as is.
        if not isinstance(err, OSError):
            raise
        raise load_error(name_or_path, err, source) from None
    # bitsandbytes repacks 4-bit weights for a CPU kernel at the first no-grad forward (an
    # eval); that kernel has no backward, so training after it would fail. Keep the plain one.
    for layer in model.modules():
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False
    # Published: no EOS, and use_cache false.
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.use_cache = True
    return model, tokenizer
