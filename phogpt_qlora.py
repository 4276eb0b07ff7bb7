"""QLoRA fine-tuning of VinAI's PhoGPT on your own questions and answers, on one Colab T4.

    python phogpt_qlora.py --data data/faq_vi.jsonl               # train; the adapter lands in --output
    python phogpt_qlora.py --data data/faq_vi.jsonl --dry-run     # check data, see estimates (tokenizer only)
    python phogpt_qlora.py --method dpo --data data/dpo_vi.jsonl --adapter phogpt-adapter --output phogpt-dpo
    python phogpt_qlora.py --merge --adapter phogpt-adapter --output phogpt-merged
"""
import argparse, sys
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
io = parser.add_argument_group("data and files")
io.add_argument("--model", default=None, help="hub id or folder (default vinai/PhoGPT-4B-Chat, or the base of --adapter)")
io.add_argument("--data", default="data/faq_vi.jsonl", help="JSONL/JSON/CSV file or a datasets hub name")
io.add_argument("--output", default="phogpt-adapter", help="folder for the adapter, checkpoints, loss curve and summary")
io.add_argument("--adapter", default=None, help="trained adapter folder: the start for --method dpo, the input of --merge")
io.add_argument("--overwrite", action="store_true", help="reuse an --output folder that already exists")
io.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
io.add_argument("--template", default=None, choices=["chat", "instruct"], help="prompt template (default: by model name)")
io.add_argument("--dry-run", action="store_true", help="tokenizer only: show examples, lengths and T4 estimates")
io.add_argument("--merge", action="store_true", help="merge --adapter into an fp16/bf16 base and save it to --output")
quant = parser.add_argument_group("precision and LoRA (the seed recipe)")
quant.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="where to train")
quant.add_argument("--load-in", default=None, choices=["4bit", "8bit", "none"], help="base weights (default 4bit on CUDA, none on CPU)")
quant.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="compute dtype (auto: bf16 if the GPU has it, fp16 on a T4)")
quant.add_argument("--quant-type", default="nf4", choices=["nf4", "fp4"], help="4-bit format")
quant.add_argument("--double-quant", default=True, action=argparse.BooleanOptionalAction, help="quantise the 4-bit scales too")
quant.add_argument("--lora-r", type=int, default=32, help="LoRA rank")
quant.add_argument("--lora-alpha", type=int, default=32, help="LoRA scale numerator (scale = alpha / r)")
quant.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the LoRA input")
quant.add_argument("--lora-targets", default="attn.Wqkv,attn.out_proj,ffn.up_proj,ffn.down_proj", help="layers that get LoRA")
train = parser.add_argument_group("training")
train.add_argument("--method", default="sft", choices=["sft", "dpo"], help="sft: learn the answers; dpo: prefer chosen over rejected")
train.add_argument("--epochs", type=float, default=30, help="passes over the data (the seed used 30 to memorise a FAQ)")
train.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: use --epochs)")
train.add_argument("--batch-size", type=int, default=16, help="examples per step per GPU (the seed used 1)")
train.add_argument("--grad-accum", type=int, default=1, help="steps to accumulate before an update")
train.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
train.add_argument("--lr-scheduler", default="cosine", help="learning-rate schedule (transformers name)")
train.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
train.add_argument("--max-length", type=int, default=1024, help="longest example in tokens; longer ones are cut")
train.add_argument("--packing", action="store_true", help="pack each batch into one row, no padding (for short examples: its attention bias grows with the row squared)")
train.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"], help="auto: on only when the T4-style memory estimate needs it")
train.add_argument("--optim", default="auto", help="optimizer (auto: fused AdamW on CUDA, AdamW on CPU)")
train.add_argument("--beta", type=float, default=0.1, help="DPO: how far the model may move from the SFT adapter")
train.add_argument("--save-steps", type=int, default=100, help="checkpoint (adapter + optimizer) every N steps")
train.add_argument("--logging-steps", type=int, default=10, help="print the loss every N steps")
train.add_argument("--recall-limit", type=int, default=0, help="training answers to check after training (0 all, -1 none)")
train.add_argument("--seed", type=int, default=42, help="random seed")
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

import csv, itertools, json, logging, math, os, resource, shutil, signal, statistics, time, warnings
from pathlib import Path
import torch
import prompts
warnings.filterwarnings("ignore", category=FutureWarning)  # the libraries' deprecation notices are for us, not students
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its hint about an optional CPU kernel package

T4_PRICE_PER_HOUR = 0.42  # Colab T4, as the seed reported
T4_FLOPS = 65e12 * 0.3  # ASSUMED: 30% of a T4's fp16 tensor-core peak
T4_BYTES_PER_S = 320e9 * 0.5  # ASSUMED: half of a T4's memory bandwidth
rank = int(os.environ.get("RANK", "0"))


def fail(message):
    """Bad input: one line, no traceback, non-zero exit."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def say(*text):
    if rank == 0:
        print(*text, flush=True)


def read_rows(source):
    """Yield (where, row) for each row of a JSONL/JSON/CSV file or a datasets hub dataset."""
    path = Path(source)
    if path.suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if line.strip():
                try:
                    yield f"{source}:{number}", json.loads(line)
                except json.JSONDecodeError as err:
                    fail(f"{source}:{number}: not valid JSON ({err.msg}); fix: one JSON object per line")
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as err:
            fail(f"{source}:{err.lineno}: not valid JSON ({err.msg}); fix: a list of objects")
        for number, row in enumerate(rows if isinstance(rows, list) else [rows], 1):
            yield f"{source} item {number}", row
    elif path.suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as file:  # -sig: Excel writes a BOM
            reader = csv.DictReader(file)
            for row in reader:
                yield f"{source}:{reader.line_num}", row
    elif path.exists() or path.suffix:
        fail(f"{source}: can't read this file; fix: use .jsonl, .json or .csv")
    else:
        import datasets
        try:
            for number, row in enumerate(datasets.load_dataset(source, split="train"), 1):
                yield f"{source} row {number}", row
        except Exception as err:
            fail(f"can't load the data set {source!r} ({type(err).__name__}); fix: check the file path or the hub name")


def text_field(row, field, where, fix):
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        fail(f"{where}: field '{field}' is {'missing' if value is None else 'empty or not text'}; fix: {fix}")
    return prompts.nfc(value)


def row_to_messages(row, where):
    """Any supported row shape -> [{'role', 'content'}, ...]; a ready-made PhoGPT prompt -> (prompt, answer)."""
    if not isinstance(row, dict):
        fail(f"{where}: expected an object, got {type(row).__name__}; fix: e.g. {{\"question\": ..., \"answer\": ...}}")
    for field, role_key, text_key in (("messages", "role", "content"), ("conversations", "from", "value")):
        if field not in row:
            continue
        roles = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
        messages = []
        for i, turn in enumerate(row[field] if isinstance(row[field], list) else [row[field]]):
            role = turn.get(role_key) if isinstance(turn, dict) else turn
            if role not in roles:
                fail(f"{where}: field '{field}[{i}].{role_key}' is {role!r}; fix: use one of {', '.join(roles)}")
            text = text_field(turn, text_key, where, f"give '{field}[{i}].{text_key}' some text")
            messages.append({"role": roles[role], "content": text})
        said = [m["role"] for m in messages if m["role"] != "system"]
        if not said or said != ["user", "assistant"] * (len(said) // 2):
            fail(f"{where}: field '{field}' has roles {said}; fix: alternate user/assistant, user first, assistant last")
        return messages
    for ask, reply in (("prompt", "response"), ("instruction", "output"), ("question", "answer")):
        if ask in row or reply in row:
            question = text_field(row, ask, where, f"give every row a '{ask}'")
            answer = text_field(row, reply, where, f"give every row a non-empty '{reply}'")
            if ask == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
                question = question.strip() + "\n\n" + prompts.nfc(row["input"]).strip()
            if question.rstrip().endswith(prompts.PHOGPT_ASSISTANT.strip()):  # VinAI's own fine-tuning rows
                return question, answer
            return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    fail(f"{where}: no known fields (got {', '.join(row) or 'none'}); fix: use prompt/response, "
         "instruction/input/output, question/answer, messages or conversations")


def tokenize(segments, tokenizer, max_length):
    """(text, is_answer) pieces -> input_ids and labels (-100 outside answers), EOS as its id; cut at max_length."""
    input_ids, labels = [], []
    for text, is_answer in segments:
        has_eos = is_answer and text.endswith(tokenizer.eos_token)
        ids = tokenizer(text[: -len(tokenizer.eos_token)] if has_eos else text, add_special_tokens=False)["input_ids"]
        ids += [tokenizer.eos_token_id] if has_eos else []
        input_ids += ids
        labels += ids if is_answer else [-100] * len(ids)
    kept = min(len(input_ids), max_length)
    return {"input_ids": input_ids[:kept], "labels": labels[:kept], "attention_mask": [1] * kept}, len(input_ids) > kept


def t4_estimate(config, load_in, checkpointing):
    """Rough T4 figures for this data and batch from the model's shape: (peak GiB, hours). Not measurements."""
    d, layers, vocab, heads = config.d_model, config.n_layers, config.vocab_size, config.n_heads
    biggest = sorted(lengths)[-args.batch_size:]  # the batch that needs the most memory
    batch_tokens = sum(biggest) if args.packing else len(biggest) * biggest[-1]
    linear = layers * 12 * d * d  # Wqkv, out_proj, up_proj, down_proj
    weights = linear * {"4bit": 0.53, "8bit": 1.0, "none": 2.0}[load_in] + vocab * d * 2
    lora = layers * 16 * args.lora_r * d * 16  # fp32 weight, gradient and two Adam moments
    per_layer = batch_tokens * 34 * d  # fp16 activations (Korthikanti et al. 2022); fused attention keeps no scores
    activations = batch_tokens * d * 2 * layers + per_layer if checkpointing else per_layer * layers
    bias = 2 * heads * (batch_tokens**2 if args.packing else len(biggest) * biggest[-1] ** 2)  # ALiBi + masks, shared
    loss = LOSS_CHUNK * 14  # one chunk of the answer loss: logits in fp16 and fp32, and gradients
    passes = 3 if checkpointing else 2  # forward, backward (frozen weights: no weight gradients), recompute
    steps = math.ceil(len(lengths) / args.batch_size) * args.epochs
    seconds = (sum(lengths) * args.epochs * 2 * passes * (linear + vocab * d) / T4_FLOPS  # matmuls
               + steps * passes * linear * 2 / T4_BYTES_PER_S)  # every pass streams all weights in 16 bits
    return (weights + lora + activations + bias + loss) / 2**30 + 0.5, seconds / 3600


def answer_recall(model, tokenizer, examples, limit):
    """Greedy-decode every trained answer from its prompt; count exact token matches that stop at EOS."""
    pairs = []  # (prompt ids, answer ids ending in EOS): every answer of every conversation, unless truncated
    for example in examples:
        ids, start = example["input_ids"], 0
        for is_answer, span in itertools.groupby(example["labels"], key=lambda label: label != -100):
            end = start + len(list(span))
            if is_answer and ids[end - 1] == tokenizer.eos_token_id:
                pairs.append((ids[:start], ids[start:end]))
            start = end
    pairs = pairs[:limit] if limit > 0 else pairs
    device, hits, misses = next(model.parameters()).device, 0, []
    model.eval()
    for i in range(0, len(pairs), 16):
        batch = pairs[i : i + 16]
        width = max(len(p) for p, _ in batch)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p, _ in batch], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in batch], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False, use_cache=True,
                                 max_new_tokens=max(len(a) for _, a in batch) + 8,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        for (prompt_ids, answer_ids), new in zip(batch, out[:, width:].tolist()):
            if new[: len(answer_ids)] == answer_ids:
                hits += 1
            else:
                misses.append((tokenizer.decode(prompt_ids[-40:]), tokenizer.decode(new, skip_special_tokens=True)))
    return hits, len(pairs), misses


# ---- what to do, with which model ----
from phogpt_model import LOSS_CHUNK, PhoGPTConfig, load_phogpt, load_tokenizer, pick_dtype
adapter_base = None
if args.adapter:
    adapter_config = Path(args.adapter, "adapter_config.json")
    if not adapter_config.exists():
        fail(f"--adapter {args.adapter}: no adapter_config.json there; fix: give the --output of a training run")
    try:
        adapter_base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (ValueError, AttributeError):
        fail(f"{adapter_config} is not valid; fix: the adapter is damaged, train it again")
elif args.merge or args.method == "dpo":
    fail("--merge and --method dpo start from a trained adapter; fix: add --adapter DIR (the --output of an SFT run)")
model_name = args.model or adapter_base or "vinai/PhoGPT-4B-Chat"
template = args.template or ("instruct" if "instruct" in model_name.lower() else "chat")
cuda = torch.cuda.is_available() and args.device != "cpu"
if args.device == "cuda" and not torch.cuda.is_available():
    fail("--device cuda, but no CUDA GPU is visible; fix: on Colab pick Runtime > Change runtime type > T4 GPU")
load_in = args.load_in or ("4bit" if cuda else "none")
if args.merge and load_in != "none":
    fail(f"can't merge an adapter into a {load_in} base (its weights are rounded); fix: drop --load-in: "
         "--merge reloads the base in fp16/bf16 (about 8 GB of RAM for 4B)")
if load_in != "none" and not args.dry_run:
    if not cuda:
        fail(f"--load-in {load_in} needs a CUDA GPU and none is visible; fix: use a GPU runtime, or --load-in none")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        fail(f"--load-in {load_in} needs bitsandbytes; fix: pip install bitsandbytes (or --load-in none)")
gpu_name = torch.cuda.get_device_name() if cuda else "cpu"
if args.dtype == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
    fail(f"{gpu_name} has no bf16; fix: use --dtype fp16 (or leave --dtype auto)")
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype)
dtype = dtype or pick_dtype("cuda" if cuda else "cpu")
out_dir = Path(args.output)
if not args.dry_run and not args.resume and out_dir.exists() and any(out_dir.iterdir()):
    if not args.overwrite:
        fail(f"--output {out_dir} already exists; fix: pick another --output, add --overwrite, or --resume to continue")
    for old in out_dir.glob("checkpoint-*") if rank == 0 else []:  # or --resume would pick up a stale run
        shutil.rmtree(old)

# ---- merge: base in fp16/bf16 + adapter -> one model folder ----
if args.merge:
    from peft import PeftModel
    merge_dtype = dtype if args.dtype != "auto" or cuda else torch.bfloat16  # PhoGPT ships bf16 weights
    try:
        base, tokenizer = load_phogpt(model_name, load_in="none", dtype=merge_dtype, device_map="cuda" if cuda else None)
    except (OSError, ValueError) as err:
        fail(err)
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    probe = prompts.generation_prompt([{"role": "user", "content": "Xin chào"}], tokenizer.eos_token, template)
    probe = torch.tensor([tokenizer(probe, add_special_tokens=False)["input_ids"]], device=base.device)
    with torch.no_grad():
        expected = model(probe).logits.float()
        merged = model.merge_and_unload()
        got = merged(probe).logits.float()
    error, scale = (got - expected).abs().max().item(), expected.abs().max().item()
    say(f"merged logits vs adapter-on-base: max difference {error:.2e} (logit scale {scale:.1f})")
    if error > 0.02 * scale + 1e-3:
        fail(f"the merged model disagrees with adapter-on-base ({error:.2e}); fix: merge with --dtype fp32")
    merged.save_pretrained(out_dir)  # safetensors
    tokenizer.save_pretrained(out_dir)
    say(f"saved the merged model ({merge_dtype}) and tokenizer to {out_dir}")
    sys.exit(0)

# ---- data: validate every row (no model needed), then tokenize, before the model loads ----
try:
    rows = list(read_rows(args.data))
except FileNotFoundError:
    fail(f"{args.data}: file not found; fix: check the path (or give a datasets hub name without an extension)")
except UnicodeDecodeError as err:
    fail(f"{args.data}: not UTF-8 text (byte {err.start}); fix: save the file as UTF-8")
if not rows:
    fail(f"{args.data}: no rows; fix: add at least one question and answer")
if args.method == "dpo":
    triples = []
    for where, row in rows:
        prompt = text_field(row if isinstance(row, dict) else {}, "prompt", where, "give every row a 'prompt'")
        chosen, rejected = (text_field(row, k, where, f"give every row a '{k}' answer") for k in ("chosen", "rejected"))
        triples.append((prompt, chosen, rejected))
else:
    shapes = [row_to_messages(row, where) for where, row in rows]
try:
    tokenizer = load_tokenizer(model_name)
except (OSError, ValueError) as err:
    fail(err)
eos = tokenizer.eos_token
if args.method == "dpo":
    pairs = []
    for prompt, chosen, rejected in triples:
        if not prompt.rstrip().endswith(prompts.PHOGPT_ASSISTANT.strip()):
            prompt = prompts.generation_prompt([{"role": "user", "content": prompt}], eos, template)
        pairs.append({"prompt": prompt, "chosen": " " + chosen.strip(), "rejected": " " + rejected.strip()})
    say(f"{len(pairs)} preference pairs from {args.data}, template '{template}'")
else:
    examples, truncated = [], 0
    for shape in shapes:
        if isinstance(shape, tuple):  # a ready-made prompt: train the answer after it, as conversation_segments does
            segments = [(shape[0], False), (" " + shape[1].strip() + eos, True)]
        else:
            segments = prompts.conversation_segments(shape, eos, template)
        example, cut = tokenize(segments, tokenizer, args.max_length)
        truncated += cut
        if any(label != -100 for label in example["labels"]):  # else the cut left no answer to learn
            examples.append(example)
    if not examples:
        fail(f"--max-length {args.max_length} cuts every answer off; fix: raise --max-length")
    lengths = [len(e["input_ids"]) for e in examples]
    trained = sum(sum(label != -100 for label in e["labels"]) for e in examples)
    say(f"{len(examples)} examples from {args.data}, template '{template}': tokens min {min(lengths)}, median "
        f"{statistics.median(lengths):.0f}, mean {statistics.mean(lengths):.0f}, max {max(lengths)}; {trained} trained "
        f"(answer) tokens; {truncated} truncated by --max-length {args.max_length}"
        + (f", {len(rows) - len(examples)} of them dropped (no answer left)" if len(examples) < len(rows) else ""))

if args.dry_run:
    say(f"dry run: {args.data} is valid ({len(rows)} rows).")
    if args.method == "sft":
        for example in examples[:2]:
            spans = itertools.groupby(zip(example["input_ids"], example["labels"]), key=lambda pair: pair[1] != -100)
            texts = ((is_answer, tokenizer.decode([i for i, _ in span])) for is_answer, span in spans)
            marked = "".join(f"⟦{text}⟧" if is_answer else text for is_answer, text in texts)
            say("---- example (trained tokens in ⟦ ⟧) ----\n" + marked)
        try:
            config = PhoGPTConfig.from_pretrained(model_name)
        except (OSError, ValueError) as err:
            fail(err)
        t4_load = args.load_in or "4bit"
        for checkpointing in (False, True):
            gib, hours = t4_estimate(config, t4_load, checkpointing)
            say(f"T4 estimate ({model_name}, {t4_load}, batch {args.batch_size} x {max(lengths)} tokens, checkpointing "
                f"{'on' if checkpointing else 'off'}): peak ~{gib:.1f} GiB; {args.epochs:g} epochs ~{hours * 60:.0f} min, "
                f"~${hours * T4_PRICE_PER_HOUR:.2f} at ${T4_PRICE_PER_HOUR}/h (rough formula, not measured)")
    sys.exit(0)

# ---- model: base (4-bit on a GPU) + LoRA ----
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments
torch.manual_seed(args.seed)
if load_in == "none" and not cuda:
    say("no CUDA GPU: training LoRA on the full-precision base on the CPU (no quantisation); slow beyond tiny models")
device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda else None  # one whole model per DDP process
try:
    base, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype, device_map=device_map,
                                  quant_type=args.quant_type, double_quant=args.double_quant)
except (OSError, ValueError) as err:
    fail(err)
checkpointing = args.gradient_checkpointing == "on"
if args.gradient_checkpointing == "auto" and cuda and args.method == "sft":
    budget = torch.cuda.get_device_properties(0).total_memory / 2**30 * 0.9
    checkpointing = t4_estimate(base.config, load_in, False)[0] > budget
    say(f"gradient checkpointing {'on' if checkpointing else 'off'} (memory estimate vs {budget:.0f} GiB)")
    if t4_estimate(base.config, load_in, True)[0] > budget:
        say(f"warning: batch {args.batch_size} x {max(lengths)} tokens may not fit in {budget:.0f} GiB even with "
            f"checkpointing; if it runs out of memory, try --batch-size {max(1, args.batch_size // 4)}")
if checkpointing:
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
if args.method == "dpo":
    model = PeftModel.from_pretrained(base, args.adapter, is_trainable=True)
else:
    model = get_peft_model(base, LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                            target_modules=args.lora_targets.split(","), bias="none", task_type="CAUSAL_LM"))
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
weights = {"4bit": f"4-bit {args.quant_type}", "8bit": "8-bit", "none": "unquantised"}[load_in]
say(f"{model_name}: {weights} weights, {str(dtype).split('.')[1]} compute on {gpu_name}; "
    f"LoRA r={model.peft_config['default'].r}: {trainable:,} trainable parameters")


def pad_batch(batch):
    """Right-pad a batch; padding gets label -100 and attention mask 0 (ALiBi needs no position ids)."""
    width = max(len(e["input_ids"]) for e in batch)
    pad = lambda key, value: torch.tensor([e[key] + [value] * (width - len(e[key])) for e in batch])
    return {"input_ids": pad("input_ids", tokenizer.pad_token_id), "labels": pad("labels", -100),
            "attention_mask": pad("attention_mask", 0)}


class SaveOnCtrlC(TrainerCallback):
    """First Ctrl+C: finish the step, save a checkpoint, stop. A second one stops at once (one process only)."""
    interrupted, tokens_before = False, 0

    def __init__(self):
        self.previous = signal.signal(signal.SIGINT, self.interrupt)  # put back after training (Jupyter)

    def interrupt(self, *_):
        SaveOnCtrlC.interrupted = True
        if not torch.distributed.is_initialized():  # torchrun sends its own Ctrl+C too: it must not abort the save
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_train_begin(self, args, state, control, **kwargs):  # after a resume: tokens seen before it
        SaveOnCtrlC.tokens_before = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if torch.distributed.is_initialized():  # every process stops after the same step, or one waits forever
            flag = torch.tensor([float(self.interrupted)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            SaveOnCtrlC.interrupted = bool(flag.item())
        if self.interrupted:
            control.should_save = control.should_training_stop = True


settings = dict(output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, seed=args.seed,
                gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, lr_scheduler_type=args.lr_scheduler,
                warmup_steps=args.warmup_steps, num_train_epochs=args.epochs, max_steps=args.max_steps,
                logging_steps=args.logging_steps, save_steps=args.save_steps, save_total_limit=2, report_to="none",
                bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16, use_cpu=not cuda,
                optim=args.optim if args.optim != "auto" else ("adamw_torch_fused" if cuda else "adamw_torch"),
                ddp_find_unused_parameters=False, disable_tqdm=True, include_num_input_tokens_seen="non_padding")
ctrl_c = SaveOnCtrlC()
if args.method == "dpo":
    import datasets
    from trl import DPOConfig, DPOTrainer
    trainer = DPOTrainer(model=model, args=DPOConfig(**settings, beta=args.beta, max_length=args.max_length),
                         train_dataset=datasets.Dataset.from_list(pairs), processing_class=tokenizer,
                         callbacks=[ctrl_c])
else:  # padded batches of similar lengths, or (--packing) one row per batch with position_ids restarting
    sampling = "random" if args.packing else "group_by_length"
    settings.update(remove_unused_columns=False, train_sampling_strategy=sampling)
    trainer = Trainer(model=model, args=TrainingArguments(**settings), train_dataset=examples, callbacks=[ctrl_c],
                      data_collator=DataCollatorWithFlattening() if args.packing else pad_batch)

# ---- train ----
last = max(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]), default=None) if args.resume else None
if args.resume and last is None:
    fail(f"--resume: no checkpoint-* folder in {out_dir}; fix: drop --resume to start afresh")
if last:
    say(f"resuming from {last} (adapter, optimizer, schedule and random state)")
if cuda:
    torch.cuda.reset_peak_memory_stats()
started = time.time()
try:
    trainer.train(resume_from_checkpoint=str(last) if last else None)
except torch.OutOfMemoryError:
    fail(f"out of GPU memory with --batch-size {args.batch_size} and --max-length {args.max_length}; fix: halve "
         "--batch-size, lower --max-length, or add --gradient-checkpointing on")
train_seconds = time.time() - started
signal.signal(signal.SIGINT, ctrl_c.previous)
if SaveOnCtrlC.interrupted:
    say(f"stopped by Ctrl+C at step {trainer.state.global_step}; checkpoint saved in {out_dir}; rerun with --resume")
    sys.exit(130)
if torch.distributed.is_initialized():  # DDP: only rank 0 saves and reports; no collective calls after this
    torch.distributed.destroy_process_group()
    if not trainer.is_world_process_zero():  # os._exit: a normal exit can abort in the group's C++ teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
model = trainer.model
if args.method == "dpo":
    model.save_pretrained(out_dir, selected_adapters=["default"])  # not trl's frozen "ref" copy
else:
    model.save_pretrained(out_dir)
tokenizer.save_pretrained(out_dir)

# ---- report: recall, loss curve, summary ----
peak_bytes = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
peak_gib = peak_bytes / 2**30
losses = [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log]
summary = {"model": model_name, "method": args.method, "template": template, "device": gpu_name, "load_in": load_in,
           "dtype": str(dtype).split(".")[1], "rows": len(rows), "steps": trainer.state.global_step, "epochs": args.epochs,
           "batch_size": args.batch_size, "packing": args.packing, "gradient_checkpointing": checkpointing,
           "final_loss": losses[-1][1] if losses else None, "train_seconds": round(train_seconds, 1),
           "tokens_seen": int(trainer.state.num_input_tokens_seen),
           "tokens_per_s": round((trainer.state.num_input_tokens_seen - SaveOnCtrlC.tokens_before) / train_seconds, 1),
           "peak_memory_gib": round(peak_gib, 2), "peak_memory_kind": "CUDA allocated" if cuda else "process RSS (CPU)",
           "losses": losses}
if args.method == "sft":
    summary["truncated"] = truncated
    if args.recall_limit >= 0:
        hits, total, misses = answer_recall(model, tokenizer, examples, args.recall_limit)
        summary["recall"] = {"exact": hits, "total": total}
        say(f"answered {hits}/{total} exactly (greedy, stopping at EOS)")
        for prompt, got in misses[:3]:
            say(f"  missed: ...{prompt!r} -> {got!r}")
    hours = train_seconds / 3600 if "T4" in gpu_name else t4_estimate(base.config, "4bit", checkpointing)[1]
    summary.update(t4_hours=round(hours, 3), t4_cost_usd=round(hours * T4_PRICE_PER_HOUR, 2),
                   t4_price_per_hour=T4_PRICE_PER_HOUR,
                   t4_basis="measured on this T4" if "T4" in gpu_name else "formula estimate (not measured)")
summary["wall_seconds"] = round(time.time() - started, 1)
if losses:
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's plotting backend alone
    figure = Figure(figsize=(6, 3.5), layout="tight")
    axes = figure.subplots()
    axes.plot(*zip(*losses), marker=".")
    axes.set(xlabel="step", ylabel="training loss", title=f"{Path(model_name).name} {args.method}")
    axes.grid(alpha=0.3)
    figure.savefig(out_dir / "loss_curve.png", dpi=100)
(out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
say(f"{summary['tokens_per_s']:.0f} tokens/s, peak {peak_gib:.2f} GiB, {train_seconds:.0f} s; "
    f"adapter, loss_curve.png and training_summary.json in {out_dir}")
