"""Teach VinAI's PhoGPT your own questions and answers: QLoRA fine-tuning (SFT) on one Colab T4.

    python phogpt_qlora.py --data data/faq_vi.jsonl            # train; the adapter goes to --output
    python phogpt_qlora.py --data data/faq_vi.jsonl --dry-run  # check the data, see the examples
    python phogpt_chat.py --adapter phogpt-adapter             # then chat with what it learnt

No GPU? `python tiny_phogpt.py`, then `--model tiny-phogpt --data data/faq_tiny_vi.jsonl
--output tiny-adapter --epochs 100 --lr 1e-2`: a tiny random PhoGPT memorises six answers in
about a minute on a 2-core CPU (it memorises; it does not understand).
"""
import argparse
import functools
import hashlib
import itertools
import json
import math
import os
import shlex
import signal
import statistics
import sys
import time
import warnings
from pathlib import Path

from plumbing import between, fail, say
import plumbing


# ---- flags: the knobs, each with its default ----
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows every default and keeps the command lines above as they are written."""


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
files = parser.add_argument_group("data and files")
files.add_argument("--model", default="vinai/PhoGPT-4B-Chat", help="hub id or local folder")
files.add_argument("--data", default="data/faq_vi.jsonl",
                   help="training rows: a .jsonl/.json/.csv file or a datasets hub name")
files.add_argument("--eval-data", default="none",
                   help="held-out rows, same formats: eval loss each epoch and a recall check")
files.add_argument("--output", default="phogpt-adapter",
                   help="folder for the adapter, checkpoints, loss curve, summary and model card")
files.add_argument("--overwrite", action="store_true",
                   help="replace the run in --output (once the new input is valid)")
files.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint in --output")
files.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"],
                   help="prompt template; auto: instruct if the model name says so, else chat")
files.add_argument("--dry-run", action="store_true",
                   help="tokenizer only: check the data, show examples and lengths")
files.add_argument("--report-to", default="none",
                   help="experiment tracking, comma-separated: tensorboard, wandb, trackio, ...")
lora = parser.add_argument_group("precision and LoRA (the seed recipe)")
lora.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                  help="where to train; auto: cuda, else mps, else cpu")
lora.add_argument("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"],
                  help="base weights; auto: 4bit on CUDA, none elsewhere")
lora.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                  help="compute dtype; auto: bf16 if the GPU has it, fp16 on a T4, fp32 on CPU")
lora.add_argument("--quant-type", default="nf4", choices=["nf4", "fp4"], help="4-bit format")
lora.add_argument("--double-quant", default=True, action=argparse.BooleanOptionalAction,
                  help="quantise the 4-bit scales too")
lora.add_argument("--lora-r", type=between(1, 1024, int), default=32, help="LoRA rank")
lora.add_argument("--lora-alpha", type=between(1, 4096, int), default=32,
                  help="LoRA scale numerator (scale = alpha / r)")
lora.add_argument("--lora-dropout", type=between(0, 0.99), default=0.05,
                  help="dropout on the LoRA input")
lora.add_argument("--lora-targets", default="attn.Wqkv,attn.out_proj,ffn.up_proj,ffn.down_proj",
                  help="comma-separated Linear layers of PhoGPT that get LoRA")
train = parser.add_argument_group("training")
train.add_argument("--epochs", type=between(0.01, 100_000), default=30,
                   help="passes over the data (the seed used 30 to memorise a FAQ)")
train.add_argument("--max-steps", type=between(0, 10**7, int), default=0,
                   help="stop after this many optimizer steps (0: use --epochs)")
train.add_argument("--batch-size", type=between(1, 4096, int), default=16,
                   help="examples per step per GPU (the seed used 1)")
train.add_argument("--grad-accum", type=between(1, 4096, int), default=1,
                   help="steps to accumulate before an update")
train.add_argument("--lr", type=between(1e-8, 1), default=1e-4, help="peak learning rate")
train.add_argument("--lr-scheduler", default="cosine",
                   help="learning-rate schedule (transformers name)")
train.add_argument("--warmup-steps", type=between(0, 10**7, int), default=0,
                   help="linear warm-up steps")
train.add_argument("--max-length", type=between(16, 10**6, int), default=1024,
                   help="longest example in tokens; longer ones are cut")
train.add_argument("--packing", action="store_true",
                   help="pack each batch into one row without padding (for short examples)")
train.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"],
                   help="recompute activations to save memory; auto: on with CUDA")
train.add_argument("--optim", default="auto",
                   help="optimizer (transformers name); auto: fused AdamW on CUDA, AdamW elsewhere")
train.add_argument("--save-steps", type=between(1, 10**12, int), default=100,
                   help="checkpoint (adapter + optimizer) every N steps")
train.add_argument("--logging-steps", type=between(0, 10**12, int), default=0,
                   help="print the loss every N steps (0: about 20 lines per run)")
train.add_argument("--recall-limit", type=between(-1, 10**12, int), default=0,
                   help="training answers to check after training (0: all, -1: none)")
train.add_argument("--seed", type=between(0, 2**32 - 1, int), default=42, help="random seed")
args = plumbing.parse_flags(parser)

# Until training starts there is nothing to save: Ctrl+C says so instead of a traceback.
plumbing.on_ctrl_c("stopped by Ctrl+C before training started: nothing was trained")

# peft 0.21 still asks the model for is_gradient_checkpointing, which transformers renamed.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
# Heavy imports come after the flags, so --help answers at once.
import torch

# bitsandbytes only for --load-in 4bit/8bit, before transformers and peft look for it.
plumbing.keep_hub_code_out(args.load_in, torch.cuda.is_available())
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import DataCollatorWithFlattening, Trainer, TrainerState, TrainingArguments
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_callback import ProgressCallback

import prompts
from phogpt_model import load_phogpt, load_tokenizer, pick_dtype

# ---- settle every default and check every input, before any work ----
model_name, data_name = prompts.nfc(args.model), prompts.nfc(args.data)
eval_name = None if args.eval_data == "none" else prompts.nfc(args.eval_data)
out_dir = Path(prompts.nfc(args.output))
template = args.template
if template == "auto":
    template = "instruct" if "instruct" in model_name.lower() else "chat"
device = plumbing.pick_device(args.device)
cuda = device == "cuda"
load_in = plumbing.pick_load_in(args.load_in, device)
gpu_name = torch.cuda.get_device_name() if cuda else device
if args.dtype == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
    fail(f"{gpu_name} has no bf16; fix: use --dtype fp16 (or leave --dtype auto)")
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype)
dtype = dtype or pick_dtype(device)
# The Linear layers of a PhoGPT block: the only places LoRA can go.
LORA_LAYERS = ("attn.Wqkv", "attn.out_proj", "ffn.up_proj", "ffn.down_proj")
targets = [name.strip() for name in args.lora_targets.split(",")]
for name in targets:
    # peft matches the end of a module's name: "Wqkv" and "attn.Wqkv" are the same layers.
    if not any(layer == name or layer.endswith("." + name) for layer in LORA_LAYERS):
        fail(f"--lora-targets: {name!r} is not a Linear layer of PhoGPT; "
             f"fix: choose among {','.join(LORA_LAYERS)}")
# The output folder is locked for this run at once: a second run into it stops here.
if not args.dry_run:
    plumbing.claim_output(out_dir, args.overwrite, args.resume, protect={
        "--model": model_name, "--data": data_name, "--eval-data": eval_name})
last, cut = plumbing.last_checkpoint(out_dir) if args.resume else (None, [])
if args.resume and last is None:
    fail(f"--resume: no complete checkpoint in {out_dir} ({'; '.join(cut) or 'none'}); "
         "fix: drop --resume and add --overwrite to start afresh")


# ---- data: check every row (no model needed), then tokenize ----
def text_field(row, field, where, fix):
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        problem = "missing" if value is None else "empty or not text"
        fail(f"{where}: field '{field}' is {problem}; fix: {fix}")
    return prompts.nfc(value)


# A row of any supported shape -> [{'role', 'content'}, ...], or (ready-made prompt, answer).
def row_to_messages(row, where):
    if not isinstance(row, dict):
        fail(f"{where}: expected an object, got {type(row).__name__}; "
             'fix: e.g. {"question": ..., "answer": ...}')
    roles = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
             "system": "system"}
    for field, role_key, text_key in (("messages", "role", "content"),
                                      ("conversations", "from", "value")):
        if field not in row:
            continue
        messages = []
        turns = row[field] if isinstance(row[field], list) else [row[field]]
        for i, turn in enumerate(turns):
            role = turn.get(role_key) if isinstance(turn, dict) else turn
            if role not in roles:
                fail(f"{where}: field '{field}[{i}].{role_key}' is {role!r}; "
                     f"fix: use one of {', '.join(roles)}")
            text = text_field(turn, text_key, where, f"give '{field}[{i}].{text_key}' some text")
            messages.append({"role": roles[role], "content": text})
        said = [m["role"] for m in messages if m["role"] != "system"]
        if not said or said != ["user", "assistant"] * (len(said) // 2):
            fail(f"{where}: field '{field}' has roles {said}; "
                 "fix: alternate user/assistant, user first, assistant last")
        return messages
    for ask, reply in (("prompt", "response"), ("instruction", "output"), ("question", "answer")):
        if ask not in row and reply not in row:
            continue
        question = text_field(row, ask, where, f"give every row a '{ask}'")
        answer = text_field(row, reply, where, f"give every row a non-empty '{reply}'")
        extra = row.get("input")
        if ask == "instruction" and extra is not None and not isinstance(extra, str):
            fail(f"{where}: field 'input' is {type(extra).__name__}, not text; "
                 "fix: write it as text, or leave it out")
        if ask == "instruction" and extra and extra.strip():
            question = question.strip() + "\n\n" + prompts.nfc(extra).strip()
        # VinAI's own fine-tuning rows carry the whole prompt: train the answer after it.
        if question.rstrip().endswith(prompts.PHOGPT_ASSISTANT.strip()):
            return question, answer
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    fail(f"{where}: no known fields (got {', '.join(row) or 'none'}); fix: use prompt/response, "
         "instruction/input/output, question/answer, messages or conversations")


def read_conversations(source):
    rows = list(plumbing.read_rows(source))
    if not rows:
        fail(f"{source}: no rows; fix: add at least one question and answer")
    shapes = [row_to_messages(row, where) for where, row in rows]
    # Text that looks like the template, or a literal "</s>", would teach the model to forge turns.
    found = []
    for (where, _), shape in zip(rows, shapes):
        # A ready-made prompt has the template in it by design: only its answer is checked.
        texts = [shape[1]] if isinstance(shape, tuple) else [m["content"] for m in shape]
        markers = [marker for text in texts for marker in prompts.turn_markers(text)]
        found += [(where, markers[0])] if markers else []
    if found:
        where, marker = found[0]
        fail(f"{where}: the text contains {marker!r} ({len(found)} of {len(rows)} rows do); "
             "fix: remove template markers (### Câu hỏi, ### Trả lời) and tokens like </s>")
    return shapes


# The tokenizer comes with the model download: read the data first, so a typo shows at once.
shapes = read_conversations(data_name)
eval_shapes = read_conversations(eval_name) if eval_name else []
try:
    tokenizer = load_tokenizer(model_name)
except (OSError, ValueError) as err:
    fail(err)


# (text, is_answer) pieces -> input_ids, and labels that are -100 outside answers; cut to length.
def tokenize(segments):
    input_ids, labels = [], []
    eos = tokenizer.eos_token
    for text, is_answer in segments:
        # The answer's EOS goes in as its id, never as the text "</s>".
        has_eos = is_answer and text.endswith(eos)
        text = text[: -len(eos)] if has_eos else text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += [tokenizer.eos_token_id] if has_eos else []
        input_ids += ids
        labels += ids if is_answer else [-100] * len(ids)
    kept = min(len(input_ids), args.max_length)
    example = {"input_ids": input_ids[:kept], "labels": labels[:kept], "attention_mask": [1] * kept}
    return example, len(input_ids) > kept


# Conversations -> examples with an answer left to learn, and how many were cut.
def tokenize_all(shapes):
    examples, truncated = [], 0
    for shape in shapes:
        if isinstance(shape, tuple):
            # A ready-made prompt: the answer follows it as conversation_segments would put it.
            segments = [(shape[0], False), (" " + shape[1].strip() + tokenizer.eos_token, True)]
        else:
            segments = prompts.conversation_segments(shape, tokenizer.eos_token, template)
        example, cut_short = tokenize(segments)
        truncated += cut_short
        # A cut that leaves no answer token leaves nothing to learn.
        if any(label != -100 for label in example["labels"]):
            examples.append(example)
    return examples, truncated


examples, truncated = tokenize_all(shapes)
eval_examples, _ = tokenize_all(eval_shapes)
if not examples:
    fail(f"--max-length {args.max_length} cuts every answer off; fix: raise --max-length")
lengths = [len(e["input_ids"]) for e in examples]
trained_tokens = sum(sum(label != -100 for label in e["labels"]) for e in examples)
dropped = len(shapes) - len(examples)
say(f"{len(examples)} examples from {data_name}, template '{template}': tokens min {min(lengths)}, "
    f"median {statistics.median(lengths):.0f}, max {max(lengths)}; {trained_tokens} trained "
    f"(answer) tokens; {truncated} truncated by --max-length {args.max_length}"
    + (f", {dropped} of them dropped (no answer left)" if dropped else ""))
if eval_name:
    say(f"{len(eval_examples)} held-out examples from {eval_name}")
# Optimizer steps, as the Trainer counts them (torchrun splits the rows between processes).
world = int(os.environ.get("WORLD_SIZE", "1"))
batches = math.ceil(math.ceil(len(examples) / world) / args.batch_size)
steps_per_epoch = max(1, math.ceil(batches / args.grad_accum))
total_steps = args.max_steps or math.ceil(args.epochs * steps_per_epoch)

# What the weights depend on: a resumed run must match the run it continues.
data_id = data_name
if Path(data_name).is_file():
    data_id = hashlib.sha256(Path(data_name).read_bytes()).hexdigest()[:16]
run = {"model": model_name, "data": data_name, "data_sha256": data_id, "template": template,
       "max_length": args.max_length, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
       "lora_targets": targets}
before = (plumbing.read_json(out_dir / "run.json") or {}) if last else {}
# The content decides, not the file name: a moved file is the same data.
for key in [key for key in run if key != "data" and before.get(key, run[key]) != run[key]]:
    was, now = (before["data"], data_name) if key == "data_sha256" else (before[key], run[key])
    name = key.removesuffix("_sha256")
    fail(f"--resume: this run trained with {name} {was}, not {now}; fix: resume with the "
         "same flags and data, or start afresh with --overwrite")
done_steps = plumbing.read_json(last / "trainer_state.json")["global_step"] if last else 0
# A finished run has its adapter; one whose final save failed has only the last checkpoint.
if done_steps >= total_steps and (out_dir / "adapter_config.json").exists():
    fail(f"--resume: {last.name} already reached step {done_steps} of {total_steps}; "
         "fix: raise --epochs (or --max-steps) to train longer, or drop --resume")

# The Trainer's settings: TrainingArguments judges --optim, --lr-scheduler and --report-to.
checkpointing = args.gradient_checkpointing == "on" or (
    args.gradient_checkpointing == "auto" and cuda)
optim = args.optim if args.optim != "auto" else "adamw_torch_fused" if cuda else "adamw_torch"
try:
    settings = TrainingArguments(
        output_dir=str(out_dir), seed=args.seed, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr, lr_scheduler_type=args.lr_scheduler,
        warmup_steps=args.warmup_steps, num_train_epochs=args.epochs,
        max_steps=args.max_steps or -1, optim=optim,
        # About 20 points on every curve; every step when a run has fewer than 40.
        logging_steps=args.logging_steps or max(1, total_steps // 20),
        save_steps=args.save_steps, save_total_limit=2,
        eval_strategy="epoch" if eval_examples else "no", prediction_loss_only=True,
        report_to=args.report_to.split(","), disable_tqdm=False,
        include_num_input_tokens_seen="non_padding", use_cpu=device == "cpu",
        bf16=cuda and dtype == torch.bfloat16, fp16=cuda and dtype == torch.float16,
        ddp_find_unused_parameters=False, remove_unused_columns=False,
        # Padded batches of similar lengths, or (--packing) one row whose positions restart.
        train_sampling_strategy="random" if args.packing else "group_by_length")
    # The trackers' callbacks check that their package is installed.
    [tracker() for tracker in get_reporting_integration_callbacks(settings.report_to)]
    Trainer.get_optimizer_cls_and_kwargs(settings)
except (ValueError, RuntimeError, ImportError) as err:
    reason = str(err).splitlines()[0][:200]
    flags = {"--optim": optim, "--lr-scheduler": args.lr_scheduler, "--report-to": args.report_to}
    flag = next((f"{f} {v}" for f, v in flags.items() if v in reason), "a flag")
    fail(f"{flag}: {reason}; fix: see python phogpt_qlora.py --help")

if args.dry_run:
    say(f"dry run: {data_name} is valid ({len(shapes)} rows).")
    for example in examples[:2]:
        pairs = zip(example["input_ids"], example["labels"])
        spans = itertools.groupby(pairs, key=lambda pair: pair[1] != -100)
        texts = ((is_answer, tokenizer.decode([i for i, _ in span])) for is_answer, span in spans)
        marked = "".join(f"⟦{text}⟧" if is_answer else text for is_answer, text in texts)
        say("---- example (trained tokens in ⟦ ⟧) ----\n" + marked)
    plumbing.on_ctrl_c(None)
    # Nothing below runs in a dry run.
    sys.exit(0)

# ---- model: the base (4-bit on a GPU) + LoRA ----
torch.manual_seed(args.seed)
if device == "cpu" and load_in == "none":
    say("no GPU: training LoRA on the full-precision base on the CPU; slow beyond tiny models")
# One whole model per torchrun process, on its own GPU.
device_map = {"": int(os.environ.get("LOCAL_RANK", "0"))} if cuda else None
try:
    base, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype, device_map=device_map,
                                  quant_type=args.quant_type, double_quant=args.double_quant)
except (OSError, ValueError) as err:
    fail(err)
# Recomputing activations in the backward pass trades a third more time for much less memory.
if checkpointing:
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
lora_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                         target_modules=targets, bias="none", task_type="CAUSAL_LM")
model = get_peft_model(base, lora_config)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
weights = {"4bit": f"4-bit {args.quant_type}", "8bit": "8-bit", "none": "unquantised"}[load_in]
say(f"{model_name}: {weights} weights, {str(dtype).split('.')[1]} compute on {gpu_name}; "
    f"LoRA r={args.lora_r}: {trainable:,} trainable parameters; gradient checkpointing "
    f"{'on' if checkpointing else 'off'}")


# ---- train ----
# Right-pad a batch: padding gets label -100 and mask 0 (ALiBi needs no position ids).
def pad_batch(batch):
    width = max(len(e["input_ids"]) for e in batch)
    padded = {}
    for key, value in (("input_ids", tokenizer.pad_token_id), ("labels", -100),
                       ("attention_mask", 0)):
        padded[key] = torch.tensor([e[key] + [value] * (width - len(e[key])) for e in batch])
    return padded


# Training (and held-out) loss per step, epochs on top; written atomically.
def draw_curve(history, title):
    # No pyplot: it would change a notebook's plotting backend.
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    train_points = [(log["step"], log["loss"]) for log in history if "loss" in log]
    eval_points = [(log["step"], log["eval_loss"]) for log in history if "eval_loss" in log]
    if not train_points:
        return False
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(*zip(*train_points), marker=".", label="training loss")
    if eval_points:
        axes.plot(*zip(*eval_points), marker="o", label="held-out loss")
    axes.set(xlabel="step", ylabel="loss", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    save = functools.partial(figure.savefig, dpi=100, format="png")
    plumbing.atomic_write(out_dir / "loss_curve.png", save)
    return True


# One readable line per log: the training loss, or the held-out loss each epoch.
def describe(logs):
    if "loss" in logs:
        return f"loss {logs['loss']:.3f}"
    if "eval_loss" in logs:
        return f"held-out loss {logs['eval_loss']:.3f}"


title = f"{Path(model_name).name} on {Path(data_name).name} ({len(examples)} rows)"
trainer = Trainer(model=model, args=settings, train_dataset=examples,
                  eval_dataset=eval_examples or None,
                  data_collator=DataCollatorWithFlattening() if args.packing else pad_batch)
progress = plumbing.progress_lines(describe, redraw=lambda history: draw_curve(history, title))
trainer.remove_callback(ProgressCallback)
trainer.add_callback(progress)
for note in cut:
    say(f"skipping {note}")
if last:
    say(f"resuming from {last} (adapter, optimizer, schedule and random state)")
# The new input is valid and the model is loaded: only now does an old run make way.
plumbing.make_way(out_dir)
if plumbing.RANK == 0:
    plumbing.atomic_write(out_dir / "run.json", json.dumps(run, indent=2, ensure_ascii=False))
if cuda:
    torch.cuda.reset_peak_memory_stats()
stop = plumbing.ctrl_c_saves()
trainer.add_callback(stop)
state_before = plumbing.read_json(last / "trainer_state.json") if last else {}
tokens_before = state_before.get("num_input_tokens_seen", 0)
started = time.time()


# What the student can rerun after a failure: --resume if a checkpoint survived.
def rerun():
    survived = plumbing.last_checkpoint(out_dir)[0]
    return "rerun with --resume" if survived else "rerun with --overwrite"


try:
    if done_steps < total_steps:
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    else:
        # Trained to the end, but the final save failed: the last checkpoint only needs saving.
        set_peft_model_state_dict(model, load_file(last / "adapter_model.safetensors"))
        trainer.state = TrainerState.load_from_json(str(last / "trainer_state.json"))
except torch.OutOfMemoryError:
    fail(f"out of GPU memory with --batch-size {args.batch_size} and --max-length "
         f"{args.max_length}; fix: halve --batch-size, or lower --max-length")
except KeyboardInterrupt:
    say(f"stopped at once by a second Ctrl+C; the last complete checkpoint in {out_dir} "
        "is kept (rerun with --resume)")
    sys.exit(130)
except Exception as err:
    if not plumbing.disk_full(err):
        raise
    fail(f"could not write a checkpoint in {out_dir} (the disk is full); "
         f"fix: free some disk space, then {rerun()}")
finally:
    # A run that stops early leaves its bar open: close it, so what follows has its own line.
    if progress.training_bar is not None:
        progress.training_bar.close()
train_seconds = time.time() - started
# While saving, Ctrl+C waits: a half-saved adapter would look finished.
plumbing.on_ctrl_c(signal.SIG_IGN)
if stop.interrupted and trainer.state.global_step < trainer.state.max_steps:
    say(f"stopped by Ctrl+C at step {trainer.state.global_step}; "
        f"checkpoint saved in {out_dir}; rerun with --resume")
    plumbing.on_ctrl_c(None)
    sys.exit(130)
# torchrun: only the first process saves and reports; no collective calls after this.
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
    if not trainer.is_world_process_zero():
        sys.stdout.flush()
        sys.stderr.flush()
        # A normal exit can abort in the process group's C++ teardown.
        os._exit(0)

# ---- save: under a name of this run, then moved in with adapter_config.json last ----
model = trainer.model
staging = plumbing.temp_name(out_dir / "adapter")
try:
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    # peft's own README.md is an empty template; ours comes with the report.
    (staging / "README.md").unlink(missing_ok=True)
    plumbing.move_in(staging, out_dir)
except Exception as err:
    if not plumbing.disk_full(err):
        raise
    # The last checkpoint holds the finished training: --resume only saves it.
    fail(f"could not save the adapter in {out_dir} (the disk is full); "
         "fix: free some disk space, then rerun with --resume (it only saves)")
plumbing.on_ctrl_c(f"stopped by Ctrl+C after training: the adapter in {out_dir} is complete; "
                   "the checks and the report were skipped")


# ---- report: recall, loss curve, summary, model card ----
# Greedy-decode each trained answer from its prompt; count exact matches that stop at EOS.
def answer_recall(examples, limit):
    # (prompt ids, answer ids ending in EOS): every answer of every conversation, unless cut.
    pairs = []
    for example in examples:
        ids, start = example["input_ids"], 0
        for is_answer, span in itertools.groupby(example["labels"], key=lambda x: x != -100):
            end = start + len(list(span))
            if is_answer and ids[end - 1] == tokenizer.eos_token_id:
                pairs.append((ids[:start], ids[start:end]))
            start = end
    pairs = pairs[:limit] if limit > 0 else pairs
    hits, misses = 0, []
    model.eval()
    for i in range(0, len(pairs), 16):
        batch = pairs[i : i + 16]
        width = max(len(p) for p, _ in batch)
        # Left padding: every prompt ends where the answer starts.
        input_ids = [[tokenizer.pad_token_id] * (width - len(p)) + p for p, _ in batch]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p, _ in batch]
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor(input_ids, device=model.device),
                                 attention_mask=torch.tensor(mask, device=model.device),
                                 do_sample=False, use_cache=True,
                                 max_new_tokens=max(len(a) for _, a in batch) + 8,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id,
                                 output_logits=True, return_dict_in_generate=True)
        # NaN/inf logits (an fp16 overflow) decode to empty answers: say why instead.
        if not all(torch.isfinite(step).all() for step in out.logits):
            say("recall check: the model gives NaN/inf logits (an fp16 overflow?), so its "
                "answers are empty; fix: --dtype fp32 (or bf16 on a GPU that has it)")
            return 0, len(pairs), []
        out = out.sequences
        for (prompt_ids, answer_ids), new in zip(batch, out[:, width:].tolist()):
            if new[: len(answer_ids)] == answer_ids:
                hits += 1
            else:
                question = tokenizer.decode(prompt_ids[-40:])
                misses.append((question, tokenizer.decode(new, skip_special_tokens=True)))
    return hits, len(pairs), misses


history = trainer.state.log_history
losses = [(log["step"], log["loss"]) for log in history if "loss" in log]
eval_losses = [(log["step"], log["eval_loss"]) for log in history if "eval_loss" in log]
tokens_seen = int(trainer.state.num_input_tokens_seen)
try:
    # The process's peak resident memory (Unix only), or the GPU's.
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
except ImportError:
    peak = 0
peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak
argv = [] if plumbing.NOTEBOOK else sys.argv[1:]
command = shlex.join(["python", "phogpt_qlora.py", *argv])
summary = {
    "model": model_name, "data": data_name, "rows": len(shapes), "examples": len(examples),
    "template": template, "device": gpu_name, "load_in": load_in,
    "dtype": str(dtype).split(".")[1], "steps": trainer.state.global_step, "epochs": args.epochs,
    "batch_size": args.batch_size, "packing": args.packing,
    "gradient_checkpointing": checkpointing, "truncated": truncated,
    "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
             "targets": targets},
    "final_loss": losses[-1][1] if losses else None, "train_seconds": round(train_seconds, 1),
    "tokens_seen": tokens_seen,
    "tokens_per_s": round((tokens_seen - tokens_before) / max(train_seconds, 1e-6), 1),
    "peak_memory_gib": round(peak, 2), "command": command, "losses": losses,
}
answered = []
if args.recall_limit >= 0:
    hits, total, misses = answer_recall(examples, args.recall_limit)
    summary["recall"] = {"exact": hits, "total": total}
    answered.append(f"{hits}/{total} trained")
    say(f"answered {hits}/{total} exactly (greedy, stopping at EOS)")
    for prompt, got in misses[:3]:
        say(f"  missed: ...{prompt!r} -> {got!r}")
if eval_name:
    hits, total, _ = answer_recall(eval_examples, 0)
    summary["eval"] = {"data": eval_name, "rows": len(eval_shapes), "losses": eval_losses,
                       "recall": {"exact": hits, "total": total}}
    answered.append(f"{hits}/{total} held-out")
    say(f"answered {hits}/{total} held-out questions exactly ({eval_name})")
# The model card: what this adapter is, how it was made, how to use it.
CARD = """# {name}: adapter LoRA cho `{model}`

Học bằng `phogpt_qlora.py` (SFT) trên `{data}`: {rows} dòng (rows), {steps} bước (steps),
loss cuối (final loss) {loss}, LoRA r={r} trên trọng số gốc {weights}.
Trả lời đúng từng chữ (answered exactly): {answered}.

    {command}
    python phogpt_chat.py --adapter {output}

Loss curve: `loss_curve.png`; figures: `training_summary.json`.
"""
card = CARD.format(name=out_dir.name, model=model_name, data=data_name, rows=len(shapes),
                   steps=summary["steps"], loss=f"{summary['final_loss'] or 0:.3f}",
                   r=args.lora_r, weights=weights, answered=", ".join(answered) or "—",
                   command=command, output=shlex.quote(str(out_dir)))
written = []
try:
    final_title = title + ("\nanswered exactly: " + ", ".join(answered) if answered else "")
    if draw_curve(history, final_title):
        written.append("loss_curve.png")
    else:
        (out_dir / "loss_curve.png").unlink(missing_ok=True)
    summary_text = json.dumps(summary, indent=2, ensure_ascii=False)
    plumbing.atomic_write(out_dir / "training_summary.json", summary_text)
    plumbing.atomic_write(out_dir / "README.md", card)
    written += ["training_summary.json", "README.md"]
except Exception as err:
    if not plumbing.disk_full(err):
        raise
    fail(f"could not write the report in {out_dir} (the disk is full); the adapter is saved; "
         "fix: free some disk space")
plumbing.on_ctrl_c(None)
say(f"{summary['tokens_per_s']:,.0f} tokens/s, peak {peak:.2f} GiB, {train_seconds:.0f} s; "
    f"adapter, {', '.join(written)} in {out_dir}")
# This run is done: the folder is free for the next one (a notebook reruns cells).
plumbing.release_outputs()
