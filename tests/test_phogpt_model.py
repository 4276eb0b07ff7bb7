"""phogpt_model.py: PhoGPT computes what llm-foundry's MPT computes, loads the published format,
and works with the stack (generate, caches, packing, LoRA, 4-bit, checkpointing).

CPU, offline, tiny shapes."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast

from phogpt_model import (
    CACHE_NAME,
    PhoGPTConfig,
    PhoGPTForCausalLM,
    alibi_slopes,
    load_phogpt,
    load_tokenizer,
    pick_dtype,
)

# The published config.json files, written out (vinai/PhoGPT-4B-Chat and vinai/PhoGPT-7B5-Instruct).
ATTN_CONFIG = {
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
}
INIT_CONFIG = {
    "emb_init_std": None,
    "emb_init_uniform_lim": None,
    "fan_mode": "fan_in",
    "init_div_is_residual": True,
    "init_gain": 0.0,
    "init_nonlinearity": "relu",
    "init_std": None,
    "name": "kaiming_normal_",
    "verbose": 0,
}
PHOGPT_4B_CHAT = {
    "architectures": ["MPTForCausalLM"],
    "attn_config": ATTN_CONFIG,
    "auto_map": {
        "AutoConfig": "configuration_mpt.MPTConfig",
        "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM",
    },
    "d_model": 3072,
    "emb_pdrop": 0.0,
    "embedding_fraction": 1.0,
    "expansion_ratio": 4,
    "init_config": INIT_CONFIG,
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
PHOGPT_7B5_INSTRUCT = dict(
    PHOGPT_4B_CHAT, d_model=4096, n_heads=32, max_seq_len=2048, vocab_size=250880
)


def tiny_config(**overrides):
    return PhoGPTConfig(
        **{
            **PHOGPT_4B_CHAT,
            "d_model": 48,
            "n_heads": 6,
            "n_layers": 2,
            "vocab_size": 96,
            "max_seq_len": 64,
            "torch_dtype": "float32",
            **overrides,
        }
    )


def random_model(seed=0, **overrides):
    """A tiny model with random biases and norms (so dropping any of them changes the output)."""
    torch.manual_seed(seed)
    model = PhoGPTForCausalLM(tiny_config(**overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
            else:
                # Larger than the init, so attention patterns matter
                p.normal_(std=0.1)
    return model.eval()


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "published", [PHOGPT_4B_CHAT, PHOGPT_7B5_INSTRUCT], ids=["4B-Chat", "7B5-Instruct"]
)
def test_every_published_config_key_is_read(published, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(published))
    config = PhoGPTConfig.from_pretrained(tmp_path)
    for key, value in published.items():
        if key == "torch_dtype":
            # Transformers 5 renames it
            assert config.dtype == torch.bfloat16
        else:
            assert getattr(config, key) == value, key
    assert config.hidden_size == published["d_model"] and config.num_hidden_layers == 32


@pytest.mark.parametrize(
    "published, n_params",
    [(PHOGPT_4B_CHAT, 3_688_077_312), (PHOGPT_7B5_INSTRUCT, 7_471_767_552)],
    ids=["4B-Chat", "7B5-Instruct"],
)
def test_published_shapes_have_the_published_parameter_count(published, n_params):
    with torch.device("meta"):
        model = PhoGPTForCausalLM(PhoGPTConfig(**published))
    # Lm_head is wte, counted once
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert model.lm_head.weight is model.transformer.wte.weight
    names = {name for name, _ in model.named_parameters()}
    assert {
        "transformer.blocks.31.attn.Wqkv.bias",
        "transformer.blocks.0.norm_1.bias",
        "transformer.norm_f.bias",
        "transformer.blocks.5.ffn.down_proj.bias",
    } <= names
    # Learned_pos_emb is ignored under ALiBi, as in llm-foundry
    assert not any("wpe" in name for name in names)


@pytest.mark.parametrize(
    "option, value",
    [
        ("attn_config.alibi", False),
        ("attn_config.qk_ln", True),
        ("attn_config.prefix_lm", True),
        ("attn_config.attn_uses_sequence_id", True),
        ("attn_config.attn_type", "grouped_query_attention"),
        ("attn_config.rope", True),
        ("attn_config.some_new_option", 1),
        ("norm_type", "rmsnorm"),
        ("ffn_config", {"ffn_type": "mptglu"}),
        ("logit_scale", "sqrt"),
        ("fc_type", "te"),
        ("block_overrides", {"order": []}),
    ],
)
def test_unsupported_option_is_an_error_naming_it(option, value):
    config = json.loads(json.dumps(PHOGPT_4B_CHAT))
    if option.startswith("attn_config."):
        config["attn_config"][option.split(".")[1]] = value
    else:
        config[option] = value
    with pytest.raises(ValueError, match=option.split(".")[-1]):
        PhoGPTConfig(**config)


# ---------------------------------------------------------------- numerics


def test_alibi_slopes_for_24_heads_follow_llm_foundry():
    slopes = alibi_slopes(24, 8)
    # The next power of two is 32: slopes 2^(-k/4), k = 1..32; odd-indexed ones first
    # (k = 2, 4, ..., 32), then k = 1, 3, ...
    expected = [2 ** (-k / 4) for k in range(2, 33, 2)] + [2 ** (-k / 4) for k in range(1, 16, 2)]
    assert torch.allclose(slopes, torch.tensor(expected), rtol=1e-6)
    assert torch.allclose(alibi_slopes(8, 8), torch.tensor([2.0**-k for k in range(1, 9)]))


@pytest.mark.parametrize("n_heads", [4, 6])
def test_no_bias_logits_equal_transformers_native_mpt(n_heads):
    from transformers import MptConfig, MptForCausalLM

    ours = random_model(no_bias=True, d_model=8 * n_heads, n_heads=n_heads)
    native_config = MptConfig(
        d_model=8 * n_heads,
        n_heads=n_heads,
        n_layers=2,
        vocab_size=96,
        max_seq_len=64,
        # Native rejects 0.0
        no_bias=True,
        attn_config={**ATTN_CONFIG, "attn_pdrop": 0},
    )
    native = MptForCausalLM(native_config).eval()
    assert not native.load_state_dict(ours.state_dict(), strict=True).missing_keys
    ids = torch.randint(4, 96, (2, 17))
    mask = torch.ones_like(ids)
    # Left padding
    mask[1, :5] = 0
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            ours_logits, native_logits = ours(ids, **kwargs).logits, native(ids, **kwargs).logits
            real = mask.bool() if kwargs else torch.ones_like(mask).bool()
            assert (ours_logits - native_logits)[real].abs().max() < 1e-5


def hand_forward(model, ids):
    """llm-foundry's MPT by hand: explicit softmax, absolute-position ALiBi, biases, erf GELU."""
    config, sd = model.config, model.state_dict()
    d, n_heads, T = config.d_model, config.n_heads, ids.shape[1]
    head = d // n_heads

    def layer_norm(x, prefix):
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + 1e-5) * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    def linear(x, prefix):
        return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]

    # Llm-foundry gen_slopes + build_alibi_bias(full=False)
    n = 2 ** math.ceil(math.log2(n_heads))
    m = torch.arange(1, n + 1).float() * (8 / n)
    slopes = 1.0 / torch.pow(2, m)
    slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads] if n != n_heads else slopes
    alibi = torch.arange(1 - T, 1).view(1, 1, 1, T) * slopes.view(1, n_heads, 1, 1)
    causal = torch.ones(T, T).triu(1).bool()
    x = sd["transformer.wte.weight"][ids]
    for i in range(config.n_layers):
        p = f"transformer.blocks.{i}."
        q, k, v = linear(layer_norm(x, p + "norm_1"), p + "attn.Wqkv").chunk(3, dim=-1)
        q, k, v = (t.view(1, T, n_heads, head).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head) + alibi
        attn = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1) @ v
        x = x + linear(attn.transpose(1, 2).reshape(1, T, d), p + "attn.out_proj")
        h = linear(layer_norm(x, p + "norm_2"), p + "ffn.up_proj")
        x = x + linear(0.5 * h * (1 + torch.erf(h / math.sqrt(2))), p + "ffn.down_proj")
    return layer_norm(x, "transformer.norm_f") @ sd["transformer.wte.weight"].T


def test_biases_on_match_a_hand_computation():
    model = random_model(n_layers=1)
    ids = torch.randint(4, 96, (1, 13))
    with torch.no_grad():
        assert (model(ids).logits - hand_forward(model, ids)).abs().max() < 1e-5
        # The test sees every bias
        for name in ("attn.Wqkv.bias", "norm_2.bias", "ffn.down_proj.bias"):
            broken = random_model(n_layers=1)
            dict(broken.named_parameters())["transformer.blocks.0." + name].zero_()
            assert (broken(ids).logits - model(ids).logits).abs().max() > 1e-3


def test_softmax_scale_logit_scale_and_clip_qkv_are_honoured():
    ids = torch.randint(4, 96, (1, 9))
    with torch.no_grad():
        base = random_model()(ids).logits
        scaled = random_model(logit_scale=0.5)(ids).logits
        assert torch.allclose(scaled, base * 0.5, atol=1e-6)
        other_scale = random_model(attn_config={**ATTN_CONFIG, "softmax_scale": 0.01})(ids).logits
        clipped = random_model(attn_config={**ATTN_CONFIG, "clip_qkv": 0.05})(ids).logits
        assert not torch.allclose(other_scale, base, atol=1e-4) and not torch.allclose(
            clipped, base, atol=1e-4
        )


def test_embedding_fraction_scales_only_the_embedding_gradient():
    ids = torch.randint(4, 96, (1, 9))
    grads = {}
    for fraction in (1.0, 0.1):
        model = random_model(embedding_fraction=fraction)
        # Untie, so wte's gradient comes from the input side only
        model.lm_head = torch.nn.Linear(48, 96, bias=False)
        out = model(ids, labels=ids)
        out.loss.backward()
        grads[fraction] = (out.logits.detach(), model.transformer.wte.weight.grad)
    # Llm-foundry: same forward, damped gradient
    assert torch.allclose(grads[1.0][0], grads[0.1][0], atol=1e-5)
    assert torch.allclose(grads[0.1][1], 0.1 * grads[1.0][1], atol=1e-7)


def test_low_precision_layernorm_stays_in_the_autocast_dtype():
    model = random_model()
    x = torch.randn(1, 5, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # Low_precision_layernorm
        assert model.transformer.norm_f(x).dtype == torch.bfloat16
        assert random_model(norm_type="layernorm").transformer.norm_f(x).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_and_stays_close(dtype):
    model = random_model()
    ids = torch.randint(4, 96, (2, 11))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        half = model.to(dtype)(ids, attention_mask=mask).logits
    assert half.dtype == dtype and torch.isfinite(half).all()
    assert (half.float() - full)[mask.bool()].abs().max() < 0.1


# ---------------------------------------------------------------- masks, padding, packing


def test_left_and_right_padded_batches_equal_single_rows():
    model = random_model()
    rows = [torch.randint(4, 96, (n,)) for n in (12, 7, 3)]
    with torch.no_grad():
        singles = [model(r[None]).logits[0] for r in rows]
        for side in ("left", "right"):
            ids = torch.full((3, 12), 3)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                cols = slice(12 - len(r), 12) if side == "left" else slice(0, len(r))
                ids[i, cols], mask[i, cols] = r, 1
            logits = model(ids, attention_mask=mask).logits
            assert torch.isfinite(logits).all()
            for i, single in enumerate(singles):
                assert (logits[i][mask[i].bool()] - single).abs().max() < 1e-5, (side, i)


def test_packed_row_gives_the_same_per_example_loss_as_separate_rows():
    model = random_model()
    examples = [torch.randint(4, 96, (n,)) for n in (6, 9, 4)]
    packed = torch.cat(examples)[None]
    position_ids = torch.cat([torch.arange(len(e)) for e in examples])[None]
    with torch.no_grad():
        logits = model(packed, position_ids=position_ids).logits[0]
        # Without position_ids the examples see each other
        unpacked = model(packed).logits[0]
        start = 0
        for example in examples:
            alone = model(example[None]).logits[0]
            piece = logits[start : start + len(example)]
            loss_alone = F.cross_entropy(alone[:-1], example[1:])
            assert abs(F.cross_entropy(piece[:-1], example[1:]) - loss_alone) < 1e-5
            assert (piece - alone).abs().max() < 1e-5
            start += len(example)
        assert (unpacked[6:] - logits[6:]).abs().max() > 1e-3
        labels = torch.cat([torch.cat([torch.tensor([-100]), e[1:]]) for e in examples])[None]
        # The model's own shifted loss
        loss = model(packed, position_ids=position_ids, labels=labels).loss
        total = sum(
            F.cross_entropy(model(e[None]).logits[0, :-1], e[1:], reduction="sum") for e in examples
        )
        assert abs(loss - total / sum(len(e) - 1 for e in examples)) < 1e-5


# ---------------------------------------------------------------- generation and caches

ANSWER = "### Câu hỏi: Xin chào\n### Trả lời: Chào bạn! Hà Nội là thủ đô của Việt Nam.</s>"


def test_training_loss_equals_the_full_logits_loss_without_building_them(monkeypatch):
    import phogpt_model

    # 5 positions per lm_head call: several chunks
    monkeypatch.setattr(phogpt_model, "LOSS_CHUNK", 96 * 5)
    model = random_model(logit_scale=0.5)
    ids = torch.randint(4, 96, (3, 20))
    # Prompts are not trained
    labels = ids.masked_fill(torch.arange(20) < 7, -100)
    # A shorter answer
    labels[1, 12:] = -100
    # Trainer passes the number of trained tokens of the whole step
    for count in (None, torch.tensor(40)):
        results = []
        # Eval: full logits + transformers' loss; train: chunked answer loss
        for training in (False, True):
            model.train(training).zero_grad()
            out = model(ids, labels=labels, num_items_in_batch=count)
            out.loss.backward()
            assert (out.logits is None) == training
            results.append(
                (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
            )
        (full, full_grads), (chunked, chunked_grads) = results
        torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-6)
        for name, grad in full_grads.items():
            torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    model.train().zero_grad()
    # A batch whose answers were all cut off
    nothing = model(ids, labels=torch.full_like(ids, -100)).loss
    nothing.backward()
    assert nothing.item() == 0


@pytest.fixture(scope="module")
def taught_phogpt(tiny_phogpt):
    """The tiny checkpoint taught one answer with AdamW (~40 steps, < 1 s), for greedy decoding."""
    model, tokenizer = load_phogpt(tiny_phogpt)
    ids = tokenizer([ANSWER], return_tensors="pt").input_ids
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        loss = model(ids, labels=ids).loss
        if loss < 0.02:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def test_generate_with_and_without_cache_gives_the_same_tokens(taught_phogpt):
    model, tokenizer = taught_phogpt
    inputs = tokenizer(["### Câu hỏi: Xin chào\n### Trả lời:"], return_tensors="pt")
    kwargs = dict(
        max_new_tokens=12,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
        eos_token_id=None,
    )
    cached = model.generate(**inputs, use_cache=True, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    static = model.generate(**inputs, cache_implementation="static", **kwargs)
    answer = tokenizer.decode(cached.sequences[0, inputs.input_ids.shape[1] :])
    # A real continuation, not one repeated token
    assert answer.startswith(" Chào bạn! Hà Nội")
    assert torch.equal(cached.sequences, uncached.sequences) and torch.equal(
        cached.sequences, static.sequences
    )
    for a, b, c in zip(cached.scores, uncached.scores, static.scores):
        assert (a - b).abs().max() < 1e-4 and (a - c).abs().max() < 1e-4


def test_left_padded_batch_generates_what_single_rows_generate(taught_phogpt):
    model, tokenizer = taught_phogpt
    tokenizer.padding_side = "left"
    prompts = [
        "### Câu hỏi: Xin chào\n### Trả lời:",
        "### Câu hỏi: Hà Nội là thủ đô của nước nào?\n### Trả lời:",
    ]
    batch = model.generate(
        **tokenizer(prompts, return_tensors="pt", padding=True),
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=None,
    )
    for row, prompt in zip(batch, prompts):
        single = model.generate(
            **tokenizer([prompt], return_tensors="pt"),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
        )
        assert row[-8:].tolist() == single[0, -8:].tolist()


def test_left_padded_batch_generates_the_same_with_and_without_cache(taught_phogpt):
    model, tokenizer = taught_phogpt
    tokenizer.padding_side = "left"
    questions = ["### Câu hỏi: Xin chào\n### Trả lời:", "### Câu hỏi: Hà Nội ở đâu?\n### Trả lời:"]
    inputs = tokenizer(questions, return_tensors="pt", padding=True)
    # Really padded
    assert (inputs.attention_mask == 0).any()
    kwargs = dict(max_new_tokens=12, do_sample=False, eos_token_id=None)
    cached = model.generate(**inputs, use_cache=True, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    # A static cache pads the mask to its own length: same tokens again
    static = model.generate(**inputs, cache_implementation="static", **kwargs)
    assert torch.equal(cached, static)


def test_generate_and_training_print_no_deprecation_notice(tiny_phogpt):
    """Run in a fresh process: transformers prints each deprecation notice only once per process."""
    code = f"""
import warnings
warnings.simplefilter("always")
import torch
from phogpt_model import load_phogpt
model, tokenizer = load_phogpt({tiny_phogpt!r})
ids = tokenizer(["Xin chào"], return_tensors="pt")
model.generate(**ids, max_new_tokens=4, do_sample=False)
model.activation_checkpointing_enable()
model.train()
model(ids.input_ids, labels=ids.input_ids).loss.backward()
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "deprecat" not in out.stderr.lower(), out.stderr


def test_static_cache_decode_step_compiles_without_graph_breaks(tiny_phogpt):
    from transformers import StaticCache

    model, tokenizer = load_phogpt(tiny_phogpt)
    ids = tokenizer(["Xin chào"], return_tensors="pt").input_ids
    # Not a multiple of 16, as in real use
    cache = StaticCache(config=model.config, max_cache_len=37)
    mask = F.pad(torch.ones(1, ids.shape[1] + 1, dtype=torch.long), (0, 37 - ids.shape[1] - 1))
    with torch.no_grad():
        model(ids, **{CACHE_NAME: cache}, use_cache=True)
        # Fullgraph: any break is an error
        step = torch.compile(model.forward, backend="eager", fullgraph=True)
        compiled = step(
            ids[:, -1:], **{CACHE_NAME: cache}, use_cache=True, attention_mask=mask
        ).logits
        # The same step without a cache
        expected = model(torch.cat([ids, ids[:, -1:]], dim=1)).logits[:, -1]
    assert (compiled[:, -1] - expected).abs().max() < 1e-4


# ---------------------------------------------------------------- loading


def test_tiny_checkpoint_is_phogpt_on_disk_format(tiny_phogpt):
    files = set(os.listdir(tiny_phogpt))
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= files
    config = json.load(open(os.path.join(tiny_phogpt, "config.json")))
    assert (
        set(PHOGPT_4B_CHAT) <= set(config)
        and config["model_type"] == "mpt"
        and config["no_bias"] is False
    )
    names = set(load_file(os.path.join(tiny_phogpt, "model.safetensors")))
    assert "transformer.blocks.0.attn.Wqkv.bias" in names and "lm_head.weight" not in names
    tokenizer = load_tokenizer(tiny_phogpt)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<pad>"]
    text = "Tiếng Việt có dấu: ắ ẵ ỹ đ"
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    chat = tokenizer.apply_chat_template(
        [
            {"role": "user", "content": " Chào bạn "},
            {"role": "assistant", "content": "Chào!"},
            {"role": "user", "content": "Bạn là ai?"},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert (
        chat
        == "### Câu hỏi: Chào bạn\n### Trả lời: Chào!</s>\n### Câu hỏi: Bạn là ai?\n### Trả lời:"
    )


def test_running_the_module_writes_a_tiny_phogpt_for_offline_demos(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(*args):
        script = os.path.join(root, "tiny_phogpt.py")
        return subprocess.run([sys.executable, script, *args], cwd=root, capture_output=True,
                              text=True, timeout=120)

    done = run("--output", str(tmp_path / "tiny-phogpt"))
    assert done.returncode == 0, done.stderr
    model, tokenizer = load_phogpt(str(tmp_path / "tiny-phogpt"))
    assert model.config.model_type == "mpt" and tokenizer.eos_token_id == 2
    # Words of data/: a few tokens each
    text = "### Câu hỏi: Trung tâm Tin học Sao Mai ở đâu?\n### Trả lời:"
    assert len(tokenizer(text).input_ids) < len(text.encode()) / 3
    bad = run("--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "other"))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--data" in bad.stderr
    # Never overwrites a folder silently
    again = run("--output", str(tmp_path / "tiny-phogpt"))
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr
    assert run("--output", str(tmp_path / "tiny-phogpt"), "--overwrite").returncode == 0


def test_tiny_phogpt_takes_a_shape_checks_it_and_writes_atomically(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "tiny_phogpt.py"), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = run(
        "--output", str(tmp_path / "wide"), "--d-model", "32", "--n-layers", "1", "--n-heads", "2"
    )
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "wide" / "config.json").read_text(encoding="utf-8"))
    assert (config["d_model"], config["n_layers"], config["n_heads"]) == (32, 1, 2)
    # Written under OUTPUT.partial, then renamed: nothing else is left.
    assert os.listdir(tmp_path) == ["wide"]
    for flags in (
        ["--d-model", "30", "--n-heads", "4"],
        ["--n-layers", "0"],
        ["--seed", str(2**70)],
        ["--no-such-flag"],
        ["--output", str(tmp_path / "wide" / "config.json")],
    ):
        bad = run(*flags)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
        assert bad.stderr.startswith("error: ")
    # --help is instant: torch is not imported to print it.
    code = (
        "import runpy, sys; sys.argv = ['tiny_phogpt.py', '--help']\n"
        "try:\n    runpy.run_path('tiny_phogpt.py', run_name='__main__')\n"
        "except SystemExit:\n    print('torch' in sys.modules)"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert shown.stdout.strip().endswith("False") and "(default: 64)" in shown.stdout


def test_missing_or_unexpected_tensors_are_errors(tiny_phogpt, tmp_path):
    import shutil

    state = load_file(os.path.join(tiny_phogpt, "model.safetensors"))
    for name, broken in [
        (
            "missing",
            {k: v for k, v in state.items() if k != "transformer.blocks.1.ffn.up_proj.bias"},
        ),
        ("unexpected", {**state, "transformer.wpe.weight": torch.zeros(512, 64)}),
    ]:
        folder = tmp_path / name
        shutil.copytree(tiny_phogpt, folder)
        save_file(broken, folder / "model.safetensors", metadata={"format": "pt"})
        with pytest.raises(ValueError, match="up_proj.bias" if name == "missing" else "wpe"):
            PhoGPTForCausalLM.from_pretrained(folder)
        with pytest.raises(ValueError, match="does not match"):
            load_phogpt(str(folder))


def test_bf16_pytorch_model_bin_shards_load_like_the_published_weights(tiny_phogpt, tmp_path):
    import shutil

    shutil.copytree(tiny_phogpt, tmp_path / "bin", ignore=shutil.ignore_patterns("*.safetensors"))
    state = {
        k: v.to(torch.bfloat16)
        for k, v in load_file(os.path.join(tiny_phogpt, "model.safetensors")).items()
    }
    names = sorted(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
        "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :],
    }
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, tmp_path / "bin" / shard)
    index = {
        "metadata": {},
        "weight_map": {k: shard for shard, keys in shards.items() for k in keys},
    }
    (tmp_path / "bin" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    model, _ = load_phogpt(str(tmp_path / "bin"), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert torch.equal(
        model.transformer.blocks[1].attn.Wqkv.bias, state["transformer.blocks.1.attn.Wqkv.bias"]
    )
    last = "pytorch_model-00002-of-00002.bin"
    torch.save(
        {**{k: state[k] for k in shards[last]}, "transformer.extra": torch.zeros(1)},
        tmp_path / "bin" / last,
    )
    index["weight_map"]["transformer.extra"] = last
    (tmp_path / "bin" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="extra"):
        PhoGPTForCausalLM.from_pretrained(tmp_path / "bin")


def test_load_errors_are_one_clear_line(tmp_path):
    for name, expected in [
        (str(tmp_path / "nope"), "not found"),
        (str(tmp_path), "not a PhoGPT model folder"),
        ("not-a-hub-id", "not found"),
    ]:
        with pytest.raises(OSError, match=expected) as err:
            load_phogpt(name)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="load_in"):
        load_phogpt(str(tmp_path), load_in="3bit")
    assert pick_dtype("cpu") == torch.float32


class CodeInAPickle:
    """Unpickling this runs a shell command: what a hostile pytorch_model.bin would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def cut_in_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def as_bin(folder, path, spoil):
    """Replace the safetensors weights by pytorch_model.bin, then spoil it."""
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, path)
    spoil(path)


# (file, how it is spoiled): each must give one line naming the file, never a traceback.
DAMAGED_FILES = {
    "truncated safetensors": ("model.safetensors", lambda f, p: cut_in_half(p)),
    "empty safetensors": ("model.safetensors", lambda f, p: p.write_bytes(b"")),
    "garbled safetensors header": (
        "model.safetensors",
        lambda f, p: p.write_bytes(p.read_bytes()[:8] + b"x" * 99),
    ),
    "UTF-16 config.json": (
        "config.json",
        lambda f, p: p.write_bytes(p.read_text("utf-8").encode("utf-16")),
    ),
    "garbled config.json": ("config.json", lambda f, p: p.write_bytes(b"\x80\x81{garbage")),
    "truncated config.json": ("config.json", lambda f, p: cut_in_half(p)),
    "garbled tokenizer.json": ("tokenizer.json", lambda f, p: p.write_bytes(bytes(range(256)))),
    "truncated tokenizer.json": ("tokenizer.json", lambda f, p: cut_in_half(p)),
    "empty tokenizer_config.json": ("tokenizer_config.json", lambda f, p: p.write_bytes(b"")),
    "truncated pytorch_model.bin": ("pytorch_model.bin", lambda f, p: as_bin(f, p, cut_in_half)),
    "garbage pytorch_model.bin": (
        "pytorch_model.bin",
        lambda f, p: as_bin(f, p, lambda p: p.write_bytes(b"\x80" * 99)),
    ),
    "empty pytorch_model.bin": (
        "pytorch_model.bin",
        lambda f, p: as_bin(f, p, lambda p: p.write_bytes(b"")),
    ),
}


@pytest.mark.parametrize("case", DAMAGED_FILES)
def test_a_damaged_file_is_one_line_naming_it_and_the_fix(tiny_phogpt, tmp_path, case):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_phogpt, folder)
    name, spoil = DAMAGED_FILES[case]
    spoil(folder, folder / name)
    loaders = [load_phogpt]
    if name.startswith("tokenizer"):
        loaders.append(load_tokenizer)
    for loader in loaders:
        with pytest.raises(OSError) as err:
            loader(str(folder))
        message = str(err.value)
        assert "\n" not in message
        assert str(folder / name) in message and "fix:" in message


WQKV = "transformer.blocks.0.attn.Wqkv.weight"


def spoil_tensor(change):
    """Rewrite model.safetensors with the first block's Wqkv weight changed."""

    def spoil(folder, monkeypatch):
        state = load_file(folder / "model.safetensors")
        state[WQKV] = change(state[WQKV]).contiguous()
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return str(folder), ["model.safetensors", WQKV]

    return spoil


def spoil_tokenizer(folder, monkeypatch):
    # Valid JSON, but no tokenizer: the model section is gone.
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    del tokenizer["model"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    return str(folder), ["tokenizer.json"]


def spoil_vocabulary(folder, monkeypatch):
    # Another model's tokenizer, with more tokens than these embeddings: ids past them crash.
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    size = json.loads((folder / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    tokenizer.add_tokens([f"tokenmoi{i}" for i in range(size - len(tokenizer) + 1)])
    tokenizer.save_pretrained(folder)
    return str(folder), ["tokenizer.json", f"{size + 1} tokens, the model {size}"]


def adapter_as_model(folder, monkeypatch):
    # A LoRA adapter saved as phogpt_qlora.py saves it, then passed as --model.
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_phogpt(str(folder))
    adapter = folder.parent / "adapter"
    get_peft_model(model, LoraConfig(target_modules=["Wqkv"])).save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    return str(adapter), ["is a LoRA adapter", "--adapter", f"its base model is {folder}"]


def offline_hub_id(folder, monkeypatch):
    from huggingface_hub import constants

    # HF_HUB_OFFLINE=1, as on a plane; an id no cache here holds.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return "vinai/PhoGPT-never-downloaded", ["python tiny_phogpt.py", "--model tiny-phogpt"]


# How a model folder can lie: each is one line naming the file (and tensor), with the fix.
LYING_FOLDERS = {
    "int8 weight": spoil_tensor(lambda w: (w * 100).to(torch.int8)),
    "all-NaN weight": spoil_tensor(lambda w: torch.full_like(w, float("nan"))),
    "one inf in a weight": spoil_tensor(lambda w: w.index_fill(0, torch.tensor([0]), math.inf)),
    "wrong shape": spoil_tensor(lambda w: w[:, :32]),
    "malformed tokenizer.json": spoil_tokenizer,
    "a tokenizer larger than the model": spoil_vocabulary,
    "adapter folder as the model": adapter_as_model,
    "offline hub id": offline_hub_id,
}


@pytest.mark.parametrize("case", LYING_FOLDERS)
def test_a_folder_that_lies_is_one_line_before_any_work(tiny_phogpt, tmp_path, monkeypatch, case):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_phogpt, folder)
    name, words = LYING_FOLDERS[case](folder, monkeypatch)
    # Said before any work: the weights are never loaded.
    monkeypatch.setattr(PhoGPTForCausalLM, "from_pretrained", None)
    with pytest.raises((OSError, ValueError)) as err:
        load_phogpt(name)
    message = str(err.value)
    assert "\n" not in message and "fix:" in message, message
    assert name in message and all(word in message for word in words), message


def test_chat_on_a_lying_model_prints_one_error_line(tiny_phogpt, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_phogpt, folder)
    LYING_FOLDERS["all-NaN weight"](folder, None)
    chat = [sys.executable, "phogpt_chat.py", "--model", str(folder), "--prompt", "x"]
    done = subprocess.run(chat, cwd=ROOT, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1 and WQKV in errors[0] and "NaN" in errors[0], done.stderr
    assert done.stdout == ""


def test_a_pickle_holding_code_is_refused_in_one_line_and_never_run(tiny_phogpt, tmp_path):
    import pickle
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_phogpt, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "the_pickle_ran"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": CodeInAPickle(marker)}, f)
    code = f"""
from phogpt_model import load_phogpt
try:
    load_phogpt({str(folder)!r})
except OSError as err:
    print(f"error: {{err}}")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert not marker.exists()
    assert done.stdout.startswith("error: ") and done.stdout.count("\n") == 1, done.stdout
    assert str(folder / "pytorch_model.bin") in done.stdout and "fix:" in done.stdout
    # Nothing else reaches the student: no traceback, no torch notice about the pickle.
    assert "Traceback" not in done.stderr and "pickle" not in done.stderr, done.stderr


def test_trust_remote_code_only_when_asked(tiny_phogpt):
    with pytest.raises(OSError, match="configuration_mpt.py"):
        load_phogpt(tiny_phogpt, trust_remote_code=True)
    model, _ = load_phogpt(tiny_phogpt)
    assert type(model) is PhoGPTForCausalLM


# ---------------------------------------------------------------- training stack


def test_gradient_checkpointing_gives_the_same_gradients():
    model = random_model().train()
    ids = torch.randint(4, 96, (2, 10))
    calls = []
    model.transformer.blocks[0].ffn.register_forward_pre_hook(lambda *args: calls.append(1))

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.activation_checkpointing_enable()
    calls.clear()
    checkpointed = grads()
    # The block really ran again in the backward pass
    assert len(calls) == 2
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-6), name


def test_lora_on_a_4bit_model_runs_forward_and_backward_on_cpu(tiny_phogpt):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_phogpt(tiny_phogpt, load_in="4bit")
    assert type(model.transformer.blocks[0].attn.Wqkv).__name__ == "Linear4bit"
    targets = ["attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj"]
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM")
    )
    ids = tokenizer(
        ["### Câu hỏi: Xin chào\n### Trả lời: Chào bạn!</s>"], return_tensors="pt"
    ).input_ids
    # Train first: a no-grad 4-bit forward on CPU before training corrupts later gradients
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    for target in targets:
        grads = [p.grad for n, p in model.named_parameters() if target in n and "lora_B" in n]
        assert len(grads) == 2 and all(
            g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads
        )
    full, _ = load_phogpt(tiny_phogpt)
    with torch.no_grad(), model.disable_adapter():
        quantized_logits = model(ids).logits.float()
        reference = full(ids).logits
    assert (
        torch.corrcoef(torch.stack([quantized_logits.flatten(), reference.flatten()]))[0, 1] > 0.9
    )


def test_4bit_format_and_double_quantisation_are_honoured(tiny_phogpt):
    pytest.importorskip("bitsandbytes")
    for quant_type, double_quant in [("nf4", True), ("fp4", False)]:
        model, _ = load_phogpt(
            tiny_phogpt, load_in="4bit", quant_type=quant_type, double_quant=double_quant
        )
        state = model.transformer.blocks[0].attn.Wqkv.weight.quant_state
        assert state.quant_type == quant_type and (state.state2 is not None) == double_quant


def test_sft_trainer_padding_free_packing_gives_the_loss_of_padded_batches(tiny_phogpt, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [
        {"prompt": "### Câu hỏi: Xin chào\n### Trả lời:", "completion": " Chào bạn!"},
        {
            "prompt": "### Câu hỏi: Thủ đô của Việt Nam là gì?\n### Trả lời:",
            "completion": " Hà Nội.",
        },
        {
            "prompt": "### Câu hỏi: Bạn là ai?\n### Trả lời:",
            "completion": " Tôi là PhoGPT, một trợ lý ảo.",
        },
    ]
    losses, positions = {}, []
    for packing in (True, False):
        model, tokenizer = load_phogpt(tiny_phogpt)
        forward = model.transformer.forward
        model.transformer.forward = lambda *a, **k: (
            positions.append(k.get("position_ids")) or forward(*a, **k)
        )
        args = SFTConfig(
            output_dir=str(tmp_path / str(packing)),
            packing=packing,
            max_length=64,
            max_steps=1,
            per_device_train_batch_size=3,
            bf16=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            learning_rate=0.0,
            seed=0,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        trainer.train()
        losses[packing] = trainer.state.log_history[-1]["train_loss"]
        # One row, positions restarting at every example: the model saw a packed batch
        if packing:
            assert positions[0].shape[0] == 1 and (positions[0][0] == 0).sum() == 3
    # Examples attending across each other: ~2e-4
    assert abs(losses[True] - losses[False]) < 1e-5


def test_8bit_and_device_map_loads_give_the_same_model(tiny_phogpt):
    pytest.importorskip("bitsandbytes")
    reference, tokenizer = load_phogpt(tiny_phogpt)
    ids = tokenizer(["### Câu hỏi: Xin chào"], return_tensors="pt").input_ids
    placed, _ = load_phogpt(tiny_phogpt, device_map="cpu")
    eight_bit, _ = load_phogpt(tiny_phogpt, load_in="8bit")
    assert type(eight_bit.transformer.blocks[0].ffn.up_proj).__name__ == "Linear8bitLt"
    with torch.no_grad():
        expected = reference(ids).logits
        assert torch.equal(placed(ids).logits, expected)
        quantized = eight_bit(ids).logits.float()
    assert torch.corrcoef(torch.stack([quantized.flatten(), expected.flatten()]))[0, 1] > 0.95
