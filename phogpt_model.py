"""PhoGPT (MosaicML MPT) for today's transformers, without remote code.

Why this file exists: PhoGPT's published remote code no longer imports on transformers >= 4.52, and
transformers' own MptForCausalLM silently drops every bias (PhoGPT has no_bias: false), so it writes
wrong text. This is the same network as llm-foundry's MPT, with the published parameter names:

    transformer.wte -> blocks[i]: x + attn(norm_1(x)), then x + ffn(norm_2(x)) -> transformer.norm_f -> wte.T

Attention runs in PyTorch's fused scaled_dot_product_attention, with ALiBi and the masks as one additive
bias. Works with generate() (DynamicCache, StaticCache + torch.compile), PEFT LoRA on attn.Wqkv,
attn.out_proj, ffn.up_proj, ffn.down_proj, gradient checkpointing, bitsandbytes 4/8-bit and packed rows.

    model, tokenizer = load_phogpt("vinai/PhoGPT-4B-Chat")
"""
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

# transformers 5.24 renamed the KV cache past_key_values -> cache, in forward() and in outputs; 5.23 has
# only the old name. Our forward takes both; outputs use the name of the installed release.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

LOSS_CHUNK = 2**24  # logits per lm_head call in the training loss: 819 tokens for 4B, 66 for 7B5

# Options of llm-foundry's MPT that change the maths, with the only value implemented here.
ATTN_DEFAULTS = {"attn_type": "multihead_attention", "alibi": True, "prefix_lm": False, "qk_ln": False,
                 "attn_uses_sequence_id": False, "qk_gn": False, "rope": False, "sliding_window_size": -1,
                 "kv_n_heads": None, "fused_qkv": True, "attn_logit_softcapping": None}
ATTN_FREE = {"attn_impl", "attn_pdrop", "alibi_bias_max", "clip_qkv", "softmax_scale"}  # read and honoured
IGNORED_ATTN = {"rope_theta", "rope_impl", "rope_dail_config", "rope_hf_config"}  # meaningless without rope


class PhoGPTConfig(PreTrainedConfig):
    """PhoGPT's config.json, read as published. Raises ValueError naming any option not implemented."""
    model_type = "mpt"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers",
                     "max_position_embeddings": "max_seq_len"}

    def __init__(self, d_model=2048, n_heads=16, n_layers=24, expansion_ratio=4, max_seq_len=2048,
                 vocab_size=50368, resid_pdrop=0.0, emb_pdrop=0.0, learned_pos_emb=True, attn_config=None,
                 ffn_config=None, init_device="cpu", logit_scale=None, no_bias=False, embedding_fraction=1.0,
                 norm_type="low_precision_layernorm", use_cache=False, init_config=None, verbose=0,
                 layer_norm_epsilon=1e-5, tie_word_embeddings=True, **kwargs):
        self.d_model, self.n_heads, self.n_layers = d_model, n_heads, n_layers
        self.expansion_ratio, self.max_seq_len, self.vocab_size = expansion_ratio, max_seq_len, vocab_size
        self.resid_pdrop, self.emb_pdrop, self.learned_pos_emb = resid_pdrop, emb_pdrop, learned_pos_emb
        self.attn_config = dict(attn_config or {"alibi": True, "alibi_bias_max": 8})
        self.ffn_config = ffn_config
        self.init_device, self.logit_scale, self.no_bias = init_device, logit_scale, no_bias
        self.embedding_fraction, self.norm_type, self.use_cache = embedding_fraction, norm_type, use_cache
        self.init_config, self.verbose, self.layer_norm_epsilon = init_config or {}, verbose, layer_norm_epsilon
        for key in ("block_overrides", "final_logit_softcapping"):
            if kwargs.get(key):
                raise ValueError(f"PhoGPT config option {key}={kwargs[key]!r} is not supported by phogpt_model.py")
        if kwargs.get("fc_type", "torch") not in ("torch", {"name": "torch"}):
            raise ValueError(f"PhoGPT config option fc_type={kwargs['fc_type']!r} is not supported (only 'torch')")
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.validate_phogpt()

    def validate_phogpt(self):
        if not self.attn_config.get("alibi", False):  # llm-foundry's default is alibi off: learned positions
            raise ValueError("PhoGPT config option attn_config.alibi=False (learned positions) is not supported")
        for key, value in self.attn_config.items():
            if key in ATTN_FREE or key in IGNORED_ATTN:
                continue
            if key not in ATTN_DEFAULTS:
                raise ValueError(f"PhoGPT config option attn_config.{key} is unknown to phogpt_model.py")
            if value != ATTN_DEFAULTS[key] and not (key == "sliding_window_size" and value is None):
                raise ValueError(f"PhoGPT config option attn_config.{key}={value!r} is not supported "
                                 f"(only {ATTN_DEFAULTS[key]!r})")
        logit_scale = self.logit_scale
        if not (logit_scale is None or logit_scale == "inv_sqrt_d_model" or isinstance(logit_scale, (int, float))):
            raise ValueError(f"PhoGPT config option logit_scale={logit_scale!r} is not supported")
        if self.norm_type not in ("low_precision_layernorm", "layernorm"):
            raise ValueError(f"PhoGPT config option norm_type={self.norm_type!r} is not supported "
                             "(only 'low_precision_layernorm' or 'layernorm')")
        ffn = self.ffn_config or {}
        exact_gelu = (None, {"name": "gelu", "approximate": "none"})
        if ffn.get("ffn_type", "mptmlp") != "mptmlp" or ffn.get("ffn_act_fn") not in exact_gelu:
            raise ValueError(f"PhoGPT config option ffn_config={ffn!r} is not supported (only the GELU 'mptmlp')")
        if ffn.get("ffn_hidden_size") not in (None, int(self.d_model * self.expansion_ratio)):
            raise ValueError("PhoGPT config option ffn_config.ffn_hidden_size is not supported")
        if not 0 < self.embedding_fraction <= 1:
            raise ValueError(f"PhoGPT config option embedding_fraction={self.embedding_fraction} must be in (0, 1]")
        if self.d_model % self.n_heads:
            raise ValueError(f"PhoGPT config: d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


def alibi_slopes(n_heads, alibi_bias_max=8, device=None):
    """llm-foundry's gen_slopes: slopes for the next power of two of heads, interleaved, cut to n_heads."""
    n = 2 ** math.ceil(math.log2(n_heads))
    slopes = 1.0 / torch.pow(2, torch.arange(1, n + 1, dtype=torch.float32, device=device) * (alibi_bias_max / n))
    if n != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


class LayerNorm(nn.LayerNorm):
    """LayerNorm with bias. 'low_precision_layernorm' runs in the autocast (low) dtype instead of fp32."""

    def __init__(self, d_model, bias, eps, low_precision):
        super().__init__(d_model, eps=eps, bias=bias)
        self.low_precision = low_precision

    def forward(self, x):
        if not self.low_precision:
            return super().forward(x)
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        weight = self.weight.to(x.dtype)  # no-op unless weights were upcast (e.g. prepare_model_for_kbit_training)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class Attention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        d, bias, attn = config.d_model, not config.no_bias, config.attn_config
        self.n_heads, self.layer_idx = config.n_heads, layer_idx
        self.softmax_scale = attn.get("softmax_scale") or 1 / math.sqrt(d / config.n_heads)
        self.clip_qkv, self.dropout = attn.get("clip_qkv"), attn.get("attn_pdrop", 0.0)
        self.Wqkv = nn.Linear(d, 3 * d, bias=bias)
        self.out_proj = nn.Linear(d, d, bias=bias)

    def forward(self, x, attn_bias, cache=None):
        B, T, C = x.shape
        qkv = self.Wqkv(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype), scale=self.softmax_scale,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        hidden, bias = int(config.d_model * config.expansion_ratio), not config.no_bias
        self.up_proj = nn.Linear(config.d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, config.d_model, bias=bias)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x), approximate="none"))  # exact erf GELU, as MPT


class PhoGPTBlock(GradientCheckpointingLayer):
    def __init__(self, config, layer_idx):
        super().__init__()
        norm = dict(bias=not config.no_bias, eps=config.layer_norm_epsilon,
                    low_precision=config.norm_type == "low_precision_layernorm")
        self.norm_1 = LayerNorm(config.d_model, **norm)
        self.attn = Attention(config, layer_idx)
        self.norm_2 = LayerNorm(config.d_model, **norm)
        self.ffn = MLP(config)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x, attn_bias, cache=None, **kwargs):
        x = x + self.resid_dropout(self.attn(self.norm_1(x), attn_bias, cache))
        return x + self.resid_dropout(self.ffn(self.norm_2(x)))


class PhoGPTPreTrainedModel(PreTrainedModel):
    config_class = PhoGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["PhoGPTBlock"]
    _supports_sdpa = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        std = 0.02  # only for fresh models; checkpoints overwrite every tensor
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class PhoGPTModel(PhoGPTPreTrainedModel):
    """The `transformer.` part of the published checkpoints: wte, blocks, norm_f (no wpe: ALiBi)."""

    def __init__(self, config):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.emb_drop = nn.Dropout(config.emb_pdrop)
        self.blocks = nn.ModuleList(PhoGPTBlock(config, i) for i in range(config.n_layers))
        self.norm_f = LayerNorm(config.d_model, bias=not config.no_bias, eps=config.layer_norm_epsilon,
                                low_precision=config.norm_type == "low_precision_layernorm")
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def attention_bias(self, attention_mask, position_ids, past_len, q_len, kv_len, device, dtype):
        """ALiBi plus causal, padding and packing masks as one (B|1, H, q_len, kv_len) additive bias.

        ALiBi is slope * (key_index - query_index): llm-foundry's bias up to a per-row constant (which softmax
        ignores), computed in fp32 before the cast. Relative distances make it immune to left padding.
        """
        q_idx = torch.arange(q_len, device=device) + past_len  # absolute index of each new token
        dist = torch.arange(kv_len, device=device)[None, :] - q_idx[:, None]  # (q_len, kv_len), <= 0 if visible
        allowed = (dist <= 0)[None, None]
        if attention_mask is not None and not torch.compiler.is_compiling() and bool(attention_mask.all()):
            attention_mask = None  # no padding (Trainer passes all ones): one bias shared by the whole batch
        if attention_mask is not None and attention_mask.dim() == 2:  # (B, keys): 1 = real token, 0 = padding
            if attention_mask.shape[-1] < kv_len:  # a static cache is longer than the tokens seen so far
                attention_mask = F.pad(attention_mask, (0, kv_len - attention_mask.shape[-1]))
            allowed = allowed & attention_mask[:, None, None, :kv_len].bool()
        elif attention_mask is not None:  # a prepared 4D mask: bool (True = attend) or additive float
            allowed = allowed & (attention_mask.bool() if attention_mask.dtype == torch.bool else attention_mask == 0)
        if position_ids is not None and isinstance(past_len, int) and past_len == 0 and q_len == kv_len:
            # Packed rows (trl padding-free): a new example starts wherever position_ids do not go up by one.
            step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
            example = (step != 1).cumsum(-1)
            allowed = allowed & (example[:, None, :, None] == example[:, None, None, :])
        allowed = allowed | (dist == 0)  # every row sees itself, so padding rows give no NaN
        slopes = alibi_slopes(self.config.n_heads, self.config.attn_config.get("alibi_bias_max", 8), device)
        if torch.compiler.is_compiling():  # the compiled decode step: inductor fuses this, no copies to avoid
            return (slopes[:, None, None] * dist).to(dtype)[None].masked_fill(~allowed, float("-inf"))
        # Eager: fp32 maths cast on store (CUDA kernels cast in registers: no fp32 copy, 6 GB at 8k tokens), rows
        # padded to a multiple of 16 so the memory-efficient SDPA kernel takes the bias as is, not a copy per layer.
        bias = torch.empty(1, len(slopes), q_len, -(-kv_len // 16) * 16, dtype=dtype, device=device)[..., :kv_len]
        torch.mul(slopes[:, None, None], dist, out=bias[0])
        if allowed.shape[0] == 1:
            return bias.masked_fill_(~allowed, float("-inf"))
        return bias.masked_fill(~allowed, float("-inf"))  # (B, H, q, k) with a padding mask

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                use_cache=None, cache_position=None, inputs_embeds=None, **kwargs):
        cache = kwargs.pop("past_key_values", cache)  # the name transformers 5.23 uses
        if use_cache is None:  # a cache passed in is used; otherwise the config decides (PhoGPT's says False)
            use_cache = cache is not None or self.config.use_cache
        if self.blocks[0].gradient_checkpointing and self.training:
            use_cache = False
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        f = self.config.embedding_fraction
        if f != 1:  # llm-foundry's trick to damp embedding gradients
            x = x * f + x.detach() * (1 - f)
        x = self.emb_drop(x)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        q_len = x.shape[1]
        past_len, kv_len = 0, q_len
        if cache is not None:
            past_len = cache.get_seq_length() if cache_position is None else cache_position[0]
            kv_len = cache.get_mask_sizes(q_len, 0)[0]
        bias_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        attn_bias = self.attention_bias(attention_mask, position_ids, past_len, q_len, kv_len, x.device, bias_dtype)
        for block in self.blocks:
            x = block(x, attn_bias, cache=cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm_f(x), **{CACHE_NAME: cache})


class PhoGPTForCausalLM(PhoGPTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.transformer = PhoGPTModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)  # tied to wte: logits = h @ wte.T
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, labels=None,
                use_cache=None, cache_position=None, inputs_embeds=None, logits_to_keep=0, **kwargs):
        cache = kwargs.pop("past_key_values", cache)  # the name transformers 5.23 uses
        out = self.transformer(input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, use_cache=use_cache, cache_position=cache_position,
                               inputs_embeds=inputs_embeds)
        cache = getattr(out, CACHE_NAME)
        x = out.last_hidden_state
        if labels is not None and self.training and torch.is_grad_enabled():  # training: loss only, no logits
            loss = self.answer_loss(x, labels, kwargs.get("num_items_in_batch"))
            return CausalLMOutputWithPast(loss=loss, logits=None, **{CACHE_NAME: cache})
        if logits_to_keep:  # generate() only needs the last position's logits
            x = x[:, -logits_to_keep:] if isinstance(logits_to_keep, int) else x[:, logits_to_keep]
        logits = self.logits(x)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_NAME: cache})

    def logits(self, x):
        logits = self.lm_head(x)
        scale = self.config.logit_scale
        if scale is not None:
            logits = logits * (1 / math.sqrt(self.config.d_model) if scale == "inv_sqrt_d_model" else scale)
        return logits

    def answer_loss(self, x, labels, num_items_in_batch=None):
        """The causal LM loss of transformers (mean next-token cross-entropy, -100 = not trained), without the
        (batch, length, vocab) logits: only trained positions go through lm_head, LOSS_CHUNK logits at a time,
        and each chunk is recomputed in the backward pass instead of kept. For 7B5's 250,880-token vocabulary the
        full fp32 logits of 16 x 1024 tokens would be 16 GB; a chunk with its gradient takes about 300 MB."""
        targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(x.device)  # position t predicts token t + 1
        trained = targets != -100
        x, targets = x[trained], targets[trained]
        total = x[:0].sum()  # zero, but connected to the graph even if nothing is trained
        step = max(1, LOSS_CHUNK // self.config.vocab_size)
        for i in range(0, len(targets), step):
            total = total + checkpoint(self.summed_cross_entropy, x[i:i + step], targets[i:i + step],
                                       use_reentrant=False)
        if num_items_in_batch is None:  # Trainer passes the count over all accumulated micro-batches
            num_items_in_batch = max(1, len(targets))
        return total / (num_items_in_batch.to(x.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)

    def summed_cross_entropy(self, x, targets):
        return F.cross_entropy(self.logits(x).float(), targets, reduction="sum")

    def create_masks_for_generate(self, attention_mask=None, cache=None, **kwargs):
        """generate() with a static cache: keep the 2D padding mask, padded to the cache length (fixed shapes)."""
        cache = kwargs.pop("past_key_values", cache)  # the name transformers 5.23 uses
        if attention_mask is None or attention_mask.dim() != 2:
            return attention_mask
        kv_len = cache.get_max_cache_shape() if cache is not None else -1
        if isinstance(kv_len, int) and kv_len > attention_mask.shape[-1]:
            attention_mask = F.pad(attention_mask, (0, kv_len - attention_mask.shape[-1]))
        return attention_mask

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load the published checkpoints (safetensors or .bin shards); a missing or unexpected tensor is an error."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = sorted(k for k in info.get("missing_keys", []) if k != "lm_head.weight")
        unexpected = sorted(info.get("unexpected_keys", []))
        mismatched = info.get("mismatched_keys", [])
        if missing or unexpected or mismatched:
            raise ValueError(f"the checkpoint does not match PhoGPT's architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, wrong shape {list(mismatched)[:5]}")
        return (model, info) if want_info else model


def pick_dtype(device=None):
    """bf16 on a CUDA GPU that has it, fp16 on older CUDA GPUs (T4), fp32 on CPU and MPS."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def load_tokenizer(name_or_path):
    """PhoGPT's tokenizer (AutoTokenizer fails on PhoGPT folders: it builds the native MptConfig first)."""
    kwargs = _source_kwargs(name_or_path)
    try:
        return PreTrainedTokenizerFast.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise OSError(_load_error(name_or_path, err)) from None


def _source_kwargs(name_or_path):
    """from_pretrained kwargs for a folder or hub id. Fails fast offline (the hub client retries for minutes)."""
    if os.path.isdir(name_or_path):
        return {}
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1 or "\\" in name_or_path:
        raise OSError(f"model folder {name_or_path} not found: check the path, "
                      "or give a hub id like vinai/PhoGPT-4B-Chat")
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache
    cached = isinstance(try_to_load_from_cache(name_or_path, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        return {"local_files_only": True}
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=5).close()
        return {}
    except OSError:
        if cached:
            return {"local_files_only": True}
        raise OSError(f"cannot reach {endpoint.hostname} to download {name_or_path}: connect to the internet, "
                      f"or download the model once and pass its local folder with --model") from None


def _load_error(name_or_path, err):
    if os.path.isdir(name_or_path):
        missing = [f for f in ("config.json", "tokenizer.json") if not os.path.exists(os.path.join(name_or_path, f))]
        if missing:
            return (f"{name_or_path} is not a PhoGPT model folder (no {' or '.join(missing)}): "
                    "pass the folder with the model's files")
        return f"{name_or_path} could not be loaded as PhoGPT: {(str(err).splitlines() or [''])[0][:200]}"
    return (f"could not load {name_or_path} from the Hugging Face Hub: check the model id (e.g. vinai/PhoGPT-4B-Chat), "
            f"or download it once and pass its local folder with --model")


def load_phogpt(name_or_path, load_in="none", dtype=None, device_map=None, trust_remote_code=False,
                quant_type="nf4", double_quant=True):
    """Load (model, tokenizer) from a hub id or a local folder. load_in: 'none', '4bit' (quant_type) or '8bit'."""
    if load_in not in ("none", "4bit", "8bit"):
        raise ValueError(f"load_in must be 'none', '4bit' or '8bit', not {load_in!r}")
    if dtype is None:
        dtype = pick_dtype(device_map if isinstance(device_map, (str, torch.device)) and device_map != "auto" else None)
    quantization_config = None
    if load_in != "none":
        from transformers import BitsAndBytesConfig  # imported here: bitsandbytes is slow to import
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=load_in == "4bit", load_in_8bit=load_in == "8bit", bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=dtype)
    tokenizer = load_tokenizer(name_or_path)
    kwargs = dict(dtype=dtype, device_map=device_map, quantization_config=quantization_config,
                  **_source_kwargs(name_or_path))
    try:
        if trust_remote_code:
            from transformers import AutoModelForCausalLM
            model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=True, **kwargs)
        else:
            model = PhoGPTForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        if trust_remote_code and os.path.isdir(name_or_path) and "configuration_mpt.py" in str(err):
            raise OSError(f"{name_or_path} has no remote code (configuration_mpt.py): load it without "
                          "trust_remote_code, with phogpt_model.py") from None
        raise OSError(_load_error(name_or_path, err)) from None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # the published generation_config has none
    model.generation_config.use_cache = True
    return model, tokenizer
