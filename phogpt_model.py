"""PhoGPT (VinAI's MPT decoder) for today's transformers, without remote code.

    from phogpt_model import load_phogpt
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
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.cache_utils import DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

# Why ours? VinAI's remote code fails on transformers >= 4.52 (issue #33);
# MptForCausalLM drops PhoGPT's biases: wrong text, no error.

# transformers 5.24 renamed the KV cache past_key_values -> cache: we take
# both; callers write model(ids, **{CACHE_NAME: cache}).
_NEW = "cache" in BaseModelOutputWithPast.__dataclass_fields__
CACHE_NAME = "cache" if _NEW else "past_key_values"

# Logits per lm_head call in the training loss: 819 tokens for 4B, 66 for 7B5.
LOSS_CHUNK = 2**24

# ---- the layers ----
class LayerNorm(nn.LayerNorm):
    def __init__(self, config):
        eps, bias = config.layer_norm_epsilon, not config.no_bias
        super().__init__(config.d_model, eps=eps, bias=bias)
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
        # The KV cache files keys/values by layer.
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
            # Append this step's; attend to all.
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
# Attention options that change the maths, and the only value we implement.
ATTN_DEFAULTS = {
    "attn_type": "multihead_attention", "alibi": True, "prefix_lm": False,
    "qk_ln": False, "qk_gn": False, "attn_uses_sequence_id": False, "rope": False,
    "sliding_window_size": -1, "kv_n_heads": None, "fused_qkv": True,
    "attn_logit_softcapping": None,
}
NORMS = ("layernorm", "low_precision_layernorm")
ATTN_FREE = {"attn_impl", "attn_pdrop", "alibi_bias_max", "clip_qkv", "softmax_scale",
             "rope_theta", "rope_impl", "rope_dail_config", "rope_hf_config"}

class PhoGPTConfig(PreTrainedConfig):
    """PhoGPT's config.json as published: llm-foundry's keys and defaults."""
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
        attn, ffn, scale = self.attn_config, self.ffn_config or {}, self.logit_scale
        gelu = (None, {"name": "gelu", "approximate": "none"})
        checks = [
            ("attn_config.alibi=False", attn.get("alibi", False)),
            (f"logit_scale={scale!r}", scale in (None, "inv_sqrt_d_model")
             or isinstance(scale, (int, float))),
            (f"norm_type={self.norm_type!r}", self.norm_type in NORMS),
            (f"ffn_config={ffn!r}", ffn.get("ffn_type", "mptmlp") == "mptmlp"
             and ffn.get("ffn_act_fn") in gelu),
            ("ffn_config.ffn_hidden_size", ffn.get("ffn_hidden_size")
             in (None, int(self.d_model * self.expansion_ratio))),
            (f"embedding_fraction={self.embedding_fraction}", 0 < self.embedding_fraction <= 1),
            (f"d_model={self.d_model} for {self.n_heads} heads", self.d_model % self.n_heads == 0),
            (f"fc_type={kwargs.get('fc_type')!r}",
             kwargs.get("fc_type", "torch") in ("torch", {"name": "torch"})),
            ("block_overrides", not kwargs.get("block_overrides")),
        ]
        for key, value in attn.items():
            default = ATTN_DEFAULTS.get(key, "unknown")
            # null: "no sliding window".
            no_window = key == "sliding_window_size" and value is None
            ok = key in ATTN_FREE or value == default or no_window
            checks.append((f"attn_config.{key}={value!r}", ok))
        for option, implemented in checks:
            if not implemented:
                raise ValueError(f"PhoGPT config option {option} is not supported")

# ---- ALiBi and masks: one attention bias ----
def alibi_slopes(n_heads, alibi_bias_max=8, device=None):
    """llm-foundry's gen_slopes: one slope per head, steeper = more local."""
    # 24 heads: 32 slopes, odd ones first, cut.
    n = 2 ** math.ceil(math.log2(n_heads))
    steps = torch.arange(1, n + 1, dtype=torch.float32, device=device)
    slopes = 1.0 / torch.pow(2, steps * (alibi_bias_max / n))
    if n != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes

def alibi_bias(config, mask, position_ids, past_len, q_len, kv_len, dtype, device):
    """ALiBi plus causal, padding and packing masks: one (B or 1, heads, q, k) bias."""
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
    # Eager: fp32 maths cast as stored (on CUDA no fp32 copy: 6 GB at 8k
    # tokens); rows padded to 16, so SDPA uses the bias without a copy.
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
        cache = self.kv_cache(kwargs.pop("past_key_values", cache), use_cache)
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

    def kv_cache(self, cache, use_cache):
        # Unsaid: a cache given, or the config.
        if use_cache is None:
            use_cache = cache is not None or self.config.use_cache
        # Checkpointing reruns blocks: no cache.
        if self.blocks[0].gradient_checkpointing and self.training:
            use_cache = False
        if not use_cache:
            return None
        return DynamicCache(config=self.config) if cache is None else cache

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
        out = self.transformer(
            input_ids, attention_mask=attention_mask, position_ids=position_ids,
            cache=kwargs.pop("past_key_values", cache), use_cache=use_cache,
            cache_position=cache_position, inputs_embeds=inputs_embeds)
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
        # transformers' loss without 7B5's 16 GB of logits (16 x 1024
        # tokens): trained positions only, a chunk at a time, recomputed in
        # the backward pass. Position t predicts t + 1; -100: not trained.
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
    def from_pretrained(cls, *args, **kwargs):
        # Missing tensor: an error, not random init.
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        # lm_head is wte: not in the checkpoints.
        missing = sorted(k for k in info["missing_keys"] if k != "lm_head.weight")
        unexpected = sorted(info["unexpected_keys"])
        wrong = list(info["mismatched_keys"])
        if missing or unexpected or wrong:
            raise ValueError(f"the checkpoint does not match PhoGPT's architecture: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
        return (model, info) if want_info else model

# ---- loading: one line per bad file ----
def pick_dtype(device=None):
    """bf16 on a CUDA GPU that has it, fp16 on older ones (T4), else fp32."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda":
        return torch.float32
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if bf16 else torch.float16

def model_source(name_or_path):
    """from_pretrained's kwargs for a folder or a hub id (asks the hub once)."""
    if os.path.isdir(name_or_path):
        # Files on disk: no network at all.
        return {}
    is_path = name_or_path.startswith((".", "/", "~")) or "\\" in name_or_path
    if is_path or name_or_path.count("/") != 1:
        raise OSError(f"model folder {name_or_path} not found; fix: check the path or hub id")
    from huggingface_hub import constants
    # The hub client retries minutes: knock once.
    url = urlparse(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    if constants.HF_HUB_OFFLINE:
        return {"local_files_only": True}
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError:
        return {"local_files_only": True}
    return {}

def check_files(folder, names):
    """One line (OSError) naming the first of these files that is damaged."""
    for path in [os.path.join(folder, name) for name in names]:
        try:
            if path.endswith(".safetensors"):
                # Header only: do the tensors fill the file?
                safe_open(path, framework="pt")
            elif os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    json.load(f)
        except Exception as err:
            # Cut short, empty, or UTF-16 from Notepad: the reason, in brackets.
            why = str(err).split(": ")[-1][:80] if os.path.getsize(path) else "empty"
            raise OSError(f"{path} is damaged, cut short or not UTF-8 ({why}); fix: download "
                          "or copy it again (did the copy stop early, the disk fill?)") from None

def check_tensors(path, expected):
    """One line (ValueError) for a tensor of the wrong dtype or shape, or NaN."""
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

def check_folder(folder):
    """Before any work, one line for what a model folder gets wrong."""
    names = sorted(os.listdir(folder))
    if "adapter_config.json" in names and "config.json" not in names:
        try:
            with open(os.path.join(folder, "adapter_config.json"), "rb") as f:
                base = json.load(f)["base_model_name_or_path"]
        except (OSError, ValueError, LookupError, TypeError):
            base = "unknown"
        raise OSError(f"{folder} is a LoRA adapter, not a model; fix: pass it as --adapter "
                      f"(its base model is {base})")
    missing = [n for n in ("config.json", "tokenizer.json") if n not in names]
    if missing:
        raise OSError(f"{folder} is not a PhoGPT model folder (no {' or '.join(missing)}): "
                      "pass the folder with the model's files")
    weights = [n for n in names if n.endswith((".index.json", ".safetensors"))]
    check_files(folder, ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                         "config.json", "generation_config.json", *weights])
    config = PhoGPTConfig.from_pretrained(folder)
    # bitsandbytes saves 4-bit and 8-bit weights as ints, in other shapes.
    if getattr(config, "quantization_config", None):
        return
    # The shapes config.json asks for, on the meta device: no memory, 0.04 s.
    with torch.device("meta"):
        expected = PhoGPTForCausalLM(config).state_dict()
    for name in weights:
        if name.endswith(".safetensors"):
            check_tensors(os.path.join(folder, name), expected)

def load_error_message(name_or_path, err, source, torch_load=False):
    if torch_load:
        bins = [n for n in os.listdir(name_or_path) if n.endswith((".bin", ".pt"))]
        where = f"the weights of {name_or_path}"
        where = os.path.join(name_or_path, bins[0]) if len(bins) == 1 else where
        return (f"{where} is not plain PyTorch weights (damaged, or a pickle with code, "
                "never run); fix: download it again from a source you trust")
    if source.get("local_files_only"):
        return (f"{name_or_path} is not downloaded here and the Hugging Face Hub is offline; "
                "fix: connect once, pass the model's folder with --model, or try the offline "
                "tour: python tiny_phogpt.py, then --model tiny-phogpt")
    if not os.path.isdir(name_or_path):
        return (f"could not load {name_or_path} from the Hugging Face Hub: check the model "
                "id (e.g. vinai/PhoGPT-4B-Chat), or download it once and pass its folder")
    first_line = (str(err).splitlines() or [""])[0][:200]
    return f"{name_or_path} could not be loaded as PhoGPT: {first_line}"

def load_tokenizer(name_or_path, source=None):
    # Not AutoTokenizer: MptConfig rejects ours.
    source = model_source(name_or_path) if source is None else source
    if os.path.isdir(name_or_path):
        check_folder(name_or_path)
    try:
        return PreTrainedTokenizerFast.from_pretrained(name_or_path, **source)
    except Exception as err:
        if not os.path.isdir(name_or_path):
            raise OSError(load_error_message(name_or_path, err, source)) from None
        # JSON, but not a tokenizer: a KeyError, or tokenizers' own Exception.
        why = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        raise OSError(f"{os.path.join(name_or_path, 'tokenizer.json')} does not load ({why}); "
                      "fix: copy it again from the model it came with") from None

def load_phogpt(name_or_path, load_in="none", dtype=None, device_map=None,
                trust_remote_code=False, quant_type="nf4", double_quant=True):
    """(model, tokenizer); any failure is one line (OSError or ValueError)."""
    if load_in not in ("none", "4bit", "8bit"):
        raise ValueError(f"load_in must be 'none', '4bit' or '8bit', not {load_in!r}")
    if dtype is None:
        # device_map="cpu" or "cuda:0" says where: pick for that device.
        placed = isinstance(device_map, (str, torch.device)) and device_map != "auto"
        dtype = pick_dtype(device_map if placed else None)
    # One look at the hub (none for a folder); the tokenizer checks a folder first.
    source = model_source(name_or_path)
    tokenizer = load_tokenizer(name_or_path, source)
    kwargs = dict(dtype=dtype, device_map=device_map, **source)
    if load_in != "none":
        # Only when asked: bitsandbytes is slow.
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=load_in == "4bit", load_in_8bit=load_in == "8bit",
            bnb_4bit_quant_type=quant_type, bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=dtype)
    model_class = PhoGPTForCausalLM
    if trust_remote_code:
        from transformers import AutoModelForCausalLM as model_class
        kwargs["trust_remote_code"] = True
    try:
        with warnings.catch_warnings():
            # torch's pickle notice: we say it.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            model = model_class.from_pretrained(name_or_path, **kwargs)
    except Exception as err:
        # Did torch.load refuse a .bin?
        frames = traceback.extract_tb(err.__traceback__)
        torch_load = any(f.filename.endswith(("serialization.py", "_unpickler.py"))
                         for f in frames)
        # Not about files (a bad config): as is.
        if not (torch_load or isinstance(err, OSError)):
            raise
        message = load_error_message(name_or_path, err, source, torch_load)
        raise OSError(message) from None
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
