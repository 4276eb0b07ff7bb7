"""onechat_tiny.py: a super tiny Vietnamese ChatGPT, trained on one sentence in seconds.

No flags, no network: a tiny GPT-2 learns it from zero, to the exact answer and then EOS."""
import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import prompts
from plumbing import atomic_write, between, claim_output, fail, make_way, move_in
from plumbing import on_ctrl_c, parse_flags, pick_device, read_json, temp_name

def layers_x_width(text):
    # --size 2x64: 2 layers, each 64 numbers wide.
    layers, _, width = text.partition("x")
    return between(1, 48, int)(layers), between(8, 4096, int)(width)

def auto_or(kind):
    # "auto" is None: FAMILIES, below, decides.
    return lambda text: None if text == "auto" else kind(text)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
add = parser.add_argument
add("--sentence", help="the one sentence to learn",
    default="Question: Xin chào Answer: Công ty BICweb kính chào quý khách!")
add("--data", default="none", help="or: a file of such lines")
add("--model", default="scratch", help="or: a model id, a folder")
add("--size", type=layers_x_width, default="2x64", help="scratch: LAYERSxWIDTH")
add("--lr", type=auto_or(between(1e-8, 1)), default="auto", help="learning rate")
add("--epochs", type=auto_or(between(1, 10**5, int)), default="auto", help="at most")
add("--loss", choices=["answer", "full"], default="answer", help="full: as the seed did")
add("--max-length", type=between(8, 32768, int), default=128, help="question + answer")
add("--seed", type=between(-2**63, 2**64 - 1, int), default=1234, help="same seed, same run")
add("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto", help="where to run")
add("--output", default="none", help="save the model here")
add("--overwrite", action="store_true", help="replace an earlier --output")
add("--load", default="none", help="an --output folder: answer, no training")
add("--prompt", default="", help="answer this question")
add("--chat", action="store_true", help="ask in a loop; an empty line ends it")
args = parse_flags(parser)
loading = args.load != "none"

# 'Question: Q Answer:', 'Question: Q', 'Q': all ask Q.
def as_question(text):
    text = prompts.nfc(text).strip().removeprefix(prompts.ONECHAT_QUESTION)
    return text.split(prompts.ONECHAT_ANSWER)[0].strip()

# "Answer:" alone asks nothing: said before any training.
if args.prompt and not as_question(args.prompt):
    fail(f"--prompt {args.prompt!r} holds no question; fix: e.g. --prompt 'Xin chào'")
on_ctrl_c("Ctrl+C: stopped, nothing more saved")

# ---- the data: 'Question: Q Answer: A' lines ----
where, lines = "--sentence", [args.sentence]
if args.data != "none":
    try:
        with open(args.data, encoding="utf-8-sig") as file:
            where, lines = args.data, file.read().splitlines()
    except (OSError, UnicodeError) as error:
        fail(f"--data {args.data}: {error}; fix: give a UTF-8 text file")
pairs = []
for number, line in enumerate(lines, 1):
    try:
        if line.strip() and not line.startswith("#"):
            pairs.append(prompts.onechat_split(line))
    except ValueError as error:
        fail(f"{where} line {number}: {error}; fix: write 'Question: ... Answer: ...'")
if not pairs:
    fail(f"{where} has no Question/Answer pairs")
saved = read_json(os.path.join(args.load, "onechat_run.json")) if loading else {}
if saved is None:
    fail(f"--load {args.load}: no onechat_run.json there; fix: an --output folder")
if loading:
    pairs = [(p["question"], p["answer"]) for p in saved["pairs"]]
# PhoGPT (an MPT model of 3.7B) has its own scripts.
config = read_json(os.path.join(args.model, "config.json")) or {}
if config.get("model_type") == "mpt" or "phogpt" in args.model.lower():
    fail(f"--model {args.model} is PhoGPT; fix: use phogpt_qlora.py, phogpt_chat.py")
if args.output != "none" and not loading:
    protect = {"--model": args.model, "--data": args.data}
    output = claim_output(args.output, args.overwrite, protect=protect)

# torch takes seconds to load: only for good input.
import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel
from transformers import PreTrainedTokenizerFast, logging
logging.set_verbosity_error()
logging.disable_progress_bar()
device = pick_device(args.device)
torch.manual_seed(args.seed)

# ---- the model: a tiny GPT-2 from zero, or a pretrained one ----
if args.model == "scratch" and not loading:
    # GPT-2's byte-level BPE, learned from our pairs. It holds all 256
    # bytes from the start: a word it never saw still encodes.
    bpe = ByteLevelBPETokenizer()
    texts = [prompts.onechat_prompt(q) + prompts.onechat_answer(a) for q, a in pairs]
    bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=0, show_progress=False,
                            special_tokens=["<|endoftext|>"])
    # No pad token: we pad with EOS, masked.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    layers, width = args.size
    heads = width // 32 if width % 32 == 0 else 1
    # No dropout: here we want to overfit.
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=args.max_length,
                        n_embd=width, n_layer=layers, n_head=heads, resid_pdrop=0,
                        embd_pdrop=0, attn_pdrop=0, bos_token_id=eos, eos_token_id=eos)
    model = GPT2LMHeadModel(config)
else:
    # A folder, or a hub id (downloaded once, cached).
    name = args.load if loading else args.model
    try:
        model = AutoModelForCausalLM.from_pretrained(name)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as error:
        why = str(error).partition("\n")[0][:200]
        fail(f"cannot load {name}: {why}; fix: check the name, or get it again")
# One thread is fastest for tiny models (measured).
torch.set_num_threads(1 if model.num_parameters() < 5e6 else min(8, os.cpu_count() or 1))
model.to(device)

# ---- tokens: one builder for training and for answers ----
def encode(question, answer=None):
    prompt_ids = tokenizer(prompts.onechat_prompt(question))["input_ids"]
    if answer is None:
        return prompt_ids
    answer_ids = tokenizer(prompts.onechat_answer(answer), add_special_tokens=False)["input_ids"]
    # EOS is trained: the model learns to stop (the seed cut at '.').
    return prompt_ids, answer_ids + [tokenizer.eos_token_id]

def make_batch(full_loss):
    # One batch of a few pairs (many: phogpt_qlora.py).
    rows = [encode(q, a) for q, a in pairs]
    length = max(len(p) + len(a) for p, a in rows)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for prompt_ids, answer_ids in rows:
        pad = length - len(prompt_ids) - len(answer_ids)
        # Right-padded with EOS, hidden by mask 0.
        batch["input_ids"].append(prompt_ids + answer_ids + answer_ids[-1:] * pad)
        batch["attention_mask"].append([1] * (length - pad) + [0] * pad)
        # The loss skips -100: padding, and the question unless full_loss.
        question = prompt_ids if full_loss else [-100] * len(prompt_ids)
        batch["labels"].append(question + answer_ids + [-100] * pad)
    return {key: torch.tensor(value, device=device) for key, value in batch.items()}

def reply(question):
    ids = torch.tensor([encode(question)], device=device)
    room = args.max_length - ids.shape[1]
    if room <= 0:
        return "[the question is over --max-length tokens]"
    model.eval()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=room, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.eos_token_id)
    new = out[0, ids.shape[1]:]
    answer = tokenizer.decode(new, skip_special_tokens=True)
    if new[-1] != tokenizer.eos_token_id:
        answer += " [no EOS: cut at --max-length]"
    return answer.strip()

# ---- train: AdamW until every answer is exact ----
# (lr, most epochs) from the seed's table: gpt2 exact at epoch 9, TinyStories-33M
# at 29; TinyStories-1M/3M/8M failed at 1e-3 (a later recipe: 1M at 0.05).
FAMILIES = {"scratch": (1e-2, 300), "gpt2": (1e-3, 50), "tinystories-33m": (5e-4, 100),
            "tinystories": (5e-2, 200), "other": (5e-4, 100)}
family = next(key for key in FAMILIES if key in args.model.lower() + "other")
lr = args.lr or FAMILIES[family][0]
# --load: a saved model answers at once, no epochs.
epochs = 0 if loading else args.epochs or FAMILIES[family][1]
batch = make_batch(full_loss=args.loss == "full")
# The check: the answers only, whatever --loss trains.
check = make_batch(full_loss=False)
if epochs:
    if batch["input_ids"].shape[1] > args.max_length:
        fail(f"a pair is over --max-length {args.max_length} tokens; fix: raise it")
    shown = "scratch {}x{}".format(*args.size) if family == "scratch" else args.model
    print(f"Model {shown}: {model.num_parameters():,} parameters, {len(pairs)} pair(s), lr {lr:g}, "
          f"up to {epochs} epochs, loss on {args.loss}, device {device}")
optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
start, epoch, exact = time.perf_counter(), 0, not epochs
# Ctrl+C stops training, not the lesson: what it learned still answers (and is saved).
on_ctrl_c(None)
try:
    while not exact and epoch < epochs:
        epoch += 1
        tick = time.perf_counter()
        model.train()
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Greedy decoding gives every answer iff the top token is the true next
        # one at each answer position; generate() then confirms it. Exact: stop.
        model.eval()
        with torch.no_grad():
            logits = model(**check).logits[:, :-1]
        labels = check["labels"][:, 1:]
        if ((logits.argmax(-1) == labels) | (labels == -100)).all():
            exact = [reply(q) for q, _ in pairs] == [a for _, a in pairs]
        print(f"({time.perf_counter() - tick:.3f}s) Epoch {epoch}, Loss {loss.item():.6f}")
except KeyboardInterrupt:
    print(f"Ctrl+C: training stopped in epoch {epoch}")
on_ctrl_c("Ctrl+C: stopped, nothing more saved")
if epochs and exact:
    print(f"Exact answer after {epoch} epochs, {time.perf_counter() - start:.3f} s of training.")
elif epochs:
    print(f"NOT memorised after {epoch} epochs: try more --epochs or another --lr")

# ---- answer: the pairs, --prompt, or a chat ----
for question in [as_question(args.prompt)] if args.prompt else [q for q, _ in pairs]:
    print(f"Question: {question}\nAnswer: {reply(question)}")
# Odd bytes (a terminal's other encoding) become �.
if args.chat and hasattr(sys.stdin, "reconfigure"):
    sys.stdin.reconfigure(errors="replace")
# An empty line or Ctrl+D (end of input) ends it.
with contextlib.suppress(EOFError):
    while args.chat and (question := as_question(input("Question: "))):
        print(f"Answer: {reply(question)}", flush=True)

# ---- save: model, tokenizer, onechat_run.json ----
if args.output != "none" and epochs:
    run = {"model": args.model, "lr": lr, "exact": exact, "epochs_run": epoch}
    run["pairs"] = [{"question": q, "answer": a, "generated": reply(q)} for q, a in pairs]
    # --overwrite: the earlier run steps aside, and goes once this one is in.
    make_way(output)
    staging = temp_name(output / "staging")
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        atomic_write(staging / "onechat_run.json", json.dumps(run, ensure_ascii=False))
        move_in(staging, output, last="onechat_run.json")
    except Exception as error:
        # A full disk: the half-saved copy goes; fail() puts the last run back.
        shutil.rmtree(staging, ignore_errors=True)
        fail(f"--output {output}: saving failed ({error}); fix: free some disk space")
    print(f"Saved the model, its tokenizer and onechat_run.json to {output}")
# Exit 2: not memorised (success just ends: a notebook shows any exit).
if not exact:
    sys.exit(2)
