"""Chat speed over a 10-turn conversation: phogpt_chat.py against the seed's way, random weights.

PhoGPT-4B shape (3.7B parameters), greedy, a fixed answer length per turn, the history growing to
~2K tokens.
- chat: phogpt_chat.py's fit_history + stream_answer on phogpt_model.py: generate() with a
  streamer, the KV cache of earlier turns passed back in, so only the new tokens are encoded
  (DynamicCache, eager).
- chatcompiled: the same with phogpt_chat.py --compile: a StaticCache, whose decode step
  generate() compiles on CUDA (cropped back when a turn does not simply append; started over
  where transformers cannot crop a StaticCache, 5.23).
- seed: the PhoGPT-4B multiturn Gradio seed's way: transformers' native MptForCausalLM, the whole
  history re-encoded by generate() every turn.
Each in bf16 and in nf4, after one warm-up answer. Per turn: prompt tokens, tokens reused from
the cache, time to first token, decode tok/s. Needs a CUDA GPU; writes
bench/results/phogpt_chat_bench.json.

    python bench/phogpt_chat_bench.py            # on a GPU
    python bench/phogpt_chat_bench.py --smoke    # tiny shape on the CPU: the code path, no figures
"""
import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import prompts  # noqa: E402
from phogpt_chat import fit_history, stream_answer  # noqa: E402
from phogpt_model import PhoGPTConfig, PhoGPTForCausalLM, load_tokenizer  # noqa: E402
from tiny_phogpt import PHOGPT_4B_CHAT_CONFIG, save_tiny_checkpoint  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--turns", type=int, default=10, help="questions in the conversation")
parser.add_argument("--question-tokens", type=int, default=64, help="tokens per question")
parser.add_argument("--new-tokens", type=int, default=128,
                    help="tokens per answer (EOS is made unreachable)")
parser.add_argument("--variants",
                    default="chat-bf16,chatcompiled-bf16,chat-nf4,chatcompiled-nf4,seed-bf16,seed-nf4",
                    help="which runs, comma-separated")
parser.add_argument("--output",
                    default=os.path.join(ROOT, "bench", "results", "phogpt_chat_bench.json"))
parser.add_argument("--smoke", action="store_true",
                    help="tiny shape on the CPU, to check the code path")
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

if not torch.cuda.is_available() and not args.smoke:
    print("error: phogpt_chat_bench.py measures GPU speed and needs CUDA; run it on a GPU machine "
          "(or --smoke for a CPU check of the code path)", file=sys.stderr)
    sys.exit(1)
device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
if args.smoke:
    args.turns, args.question_tokens, args.new_tokens = 3, 16, 8
    args.output = args.output.replace(".json", "_smoke.json")
shape = dict(d_model=64, n_heads=4, n_layers=2, max_seq_len=512) if args.smoke else {}
config_dict = dict(PHOGPT_4B_CHAT_CONFIG, **shape)
SENTENCES = ["Hà Nội là thủ đô của Việt Nam, một thành phố có hơn một nghìn năm lịch sử.",
             "Phở là món ăn nổi tiếng, thường được ăn vào buổi sáng với hành và rau thơm.",
             "Sinh viên cần học đều đặn mỗi ngày, ngủ đủ giấc và tập thể dục thường xuyên.",
             "Mô hình ngôn ngữ sinh văn bản bằng cách dự đoán từng token tiếp theo."]


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def question(turn, tokenizer):
    """A Vietnamese question of about --question-tokens tokens."""
    text = f"Câu hỏi {turn + 1}:"
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < args.question_tokens:
        text += " " + SENTENCES[(turn + len(text)) % len(SENTENCES)]
    return text + " Bạn nghĩ sao?"


def native_model(folder, **kwargs):
    """transformers' own MPT class on the same weights (it drops the biases, as the seed did)."""
    from transformers import MptConfig, MptForCausalLM
    keys = ("d_model", "n_heads", "n_layers", "vocab_size", "max_seq_len", "expansion_ratio")
    config = MptConfig(**{k: config_dict[k] for k in keys}, no_bias=True,
                       # it rejects the real 0.0
                       attn_config={**config_dict["attn_config"], "attn_pdrop": 0})
    return MptForCausalLM.from_pretrained(folder, config=config, **kwargs)


def seed_turn(model, tokenizer, prompt_ids):
    """The seed's turn: generate() on the full history; (answer ids, first token s, tok/s)."""
    from transformers.generation.streamers import BaseStreamer
    times = []

    # records when each token arrives (the first put() is the prompt)
    class Clock(BaseStreamer):
        def put(self, value):
            sync()
            times.append(time.perf_counter())

        def end(self):
            pass

    ids = torch.tensor([prompt_ids], device=device)
    sync()
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                         streamer=Clock(), min_new_tokens=args.new_tokens,
                         max_new_tokens=args.new_tokens, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    first, last = times[1], times[-1]
    return out[0, len(prompt_ids):].tolist(), first - start, (len(times) - 2) / (last - first)


torch.manual_seed(0)
shape_keys = ("d_model", "n_heads", "n_layers", "vocab_size")
results = {
    "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke test)",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "torch": torch.__version__,
    "shape": {k: config_dict[k] for k in shape_keys},
    "dtype (bf16 variants)": str(dtype).replace("torch.", ""),
    "turns": args.turns,
    "question_tokens": args.question_tokens,
    "new_tokens": args.new_tokens,
    "runs": {},
}
with tempfile.TemporaryDirectory() as folder:
    # only its tokenizer is used
    markers = [prompts.PHOGPT_USER_NEXT, prompts.PHOGPT_ASSISTANT]
    save_tiny_checkpoint(folder, SENTENCES * 4 + markers)
    tokenizer = load_tokenizer(folder)
    # random weights
    model = PhoGPTForCausalLM(PhoGPTConfig(**config_dict)).to(device=device, dtype=dtype)
    # answers run to --new-tokens: EOS and ids the small tokenizer lacks get logit 0
    with torch.no_grad():
        model.transformer.wte.weight[len(tokenizer):] = 0
        model.transformer.wte.weight[tokenizer.eos_token_id] = 0
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"{billions:.3f}B parameters on {results['device']}")
    # every variant loads it back, the nf4 ones through BitsAndBytesConfig
    model.save_pretrained(folder)
    del model
    for variant in args.variants.split(","):
        impl, precision = variant.split("-")
        quantization = None
        if precision == "nf4":
            from transformers import BitsAndBytesConfig
            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                              bnb_4bit_use_double_quant=True,
                                              bnb_4bit_compute_dtype=dtype)
        load = dict(dtype=dtype, quantization_config=quantization, device_map=device)
        if impl == "seed":
            model = native_model(folder, **load)
        else:
            model = PhoGPTForCausalLM.from_pretrained(folder, **load)
        model.eval()
        state, turns = {"cache": None, "ids": [], "static": 0}, []
        if impl == "chatcompiled":
            state["static"] = config_dict["max_seq_len"]
        # warm-up answer (and compilation), not recorded
        history = [{"role": "user", "content": "Xin chào"}]
        warm_ids, _ = fit_history(tokenizer, history, 1000)
        if impl == "seed":
            with torch.inference_mode():
                seed_turn(model, tokenizer, warm_ids)
        else:
            "".join(stream_answer(model, tokenizer, warm_ids, state, "\n###", temperature=0,
                                  max_new_tokens=args.new_tokens))
        history = []
        for turn in range(args.turns):
            history.append({"role": "user", "content": question(turn, tokenizer)})
            ids, _ = fit_history(tokenizer, history, config_dict["max_seq_len"] - args.new_tokens)
            if impl != "seed":
                answer = "".join(stream_answer(model, tokenizer, ids, state,
                                               prompts.STOP_STRINGS["chat"], temperature=0,
                                               max_new_tokens=args.new_tokens))
                stats = state["stats"]
                decode_s = stats["seconds"] - stats["first_token_s"]
                first_s, reused = stats["first_token_s"], stats["reused"]
                speed = (stats["tokens"] - 1) / decode_s
            else:
                with torch.inference_mode():
                    answer_ids, first_s, speed = seed_turn(model, tokenizer, ids)
                answer, reused = tokenizer.decode(answer_ids, skip_special_tokens=True).strip(), 0
            history.append({"role": "assistant", "content": answer})
            turns.append(dict(turn=turn + 1, prompt_tokens=len(ids), reused_tokens=reused,
                              ttft_ms=round(first_s * 1000, 1), tokens_per_s=round(speed, 1)))
            print(variant, json.dumps(turns[-1]))
        results["runs"][variant] = turns
        del model
        if device == "cuda":
            torch.cuda.empty_cache()

columns = " | ".join(f"{v} tok/s, TTFT ms" for v in results["runs"])
print(f"\n| turn | prompt tokens | {columns} |")
print("|---|---|" + "---|" * len(results["runs"]))
for i in range(args.turns):
    row = [f"{r[i]['tokens_per_s']}, {r[i]['ttft_ms']}" for r in results["runs"].values()]
    prompt_tokens = next(iter(results["runs"].values()))[i]["prompt_tokens"]
    print(f"| {i + 1} | {prompt_tokens} | " + " | ".join(row) + " |")
os.makedirs(os.path.dirname(args.output), exist_ok=True)
with open(args.output, "w") as f:
    json.dump(results, f, indent=2, ensure_ascii=False)
print(f"wrote {args.output}")
