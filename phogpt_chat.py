"""Chat with PhoGPT (plus your LoRA adapter) in the terminal, in a web page, or for one question.

    python phogpt_chat.py --adapter phogpt-adapter          # terminal chat, answers stream
    python phogpt_chat.py --adapter phogpt-adapter --ui     # web page on http://127.0.0.1:7860
    python phogpt_chat.py --prompt "Xin chào"               # one answer (piped stdin works too)

In the terminal: /reset starts over, /undo drops the last turn, /save FILE appends the chat to
FILE as one JSONL line (training data for phogpt_qlora.py --data), /exit quits. Ctrl+C stops
an answer, Ctrl+D quits. The web page has the same, plus a system-prompt box, a download of
the chat in the /save format, and the speed of each answer.
"""
import argparse
import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

import prompts
from plumbing import between, fail, keep_hub_code_out, parse_flags, pick_device
from plumbing import pick_load_in, whole

def tokens_or_auto(text):
    # --max-length: auto (the model's own context) or a number of tokens.
    return text if text == "auto" else between(16, 10**6, int)(text)

parser = argparse.ArgumentParser(
    description="Multi-turn chat with PhoGPT, in the terminal or in a web page.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# the model
parser.add_argument("--model", default="auto",
                    help="hub id or folder (auto: the base the --adapter "
                         "was trained on, else vinai/PhoGPT-4B-Chat)")
parser.add_argument("--adapter", default="none",
                    help="LoRA folder of phogpt_qlora.py (none: the model alone)")
parser.add_argument("--device", default="auto",
                    choices=["auto", "cpu", "cuda", "mps"],
                    help="auto: cuda, else mps, else cpu")
parser.add_argument("--load-in", default="auto",
                    choices=["auto", "4bit", "8bit", "none"],
                    help="base weights (auto: 4bit nf4 on CUDA, else none)")
parser.add_argument("--template", default="auto",
                    choices=["auto", "chat", "instruct"],
                    help="prompt (auto: instruct if the model's name says so)")
# the conversation
parser.add_argument("--system", default="",
                    help="instructions for the whole chat")
parser.add_argument("--max-length", type=tokens_or_auto, default="auto",
                    help="context in tokens, prompt + answer "
                         "(auto: the model's, 8192 for 4B)")
# sampling: VinAI's README uses temperature 1.0, top_k 50, top_p 0.9
parser.add_argument("--temperature", type=float, default=1.0,
                    help="randomness, 0..10 (0 = greedy: the same answer every time)")
parser.add_argument("--top-p", type=between(0.01, 1), default=0.9,
                    help="sample from the likeliest tokens holding this much "
                         "probability")
parser.add_argument("--top-k", type=between(0, 10**6, int), default=50,
                    help="sample among the k likeliest tokens (0 = all)")
parser.add_argument("--repetition-penalty", type=between(0.01, 10),
                    default=1.0, help="above 1 discourages repeating the chat")
parser.add_argument("--max-new-tokens", type=between(1, 10**6, int),
                    default=1024, help="longest answer (at most half the context)")
parser.add_argument("--seed", type=between(0, 2**32 - 1, int), default=1337,
                    help="the same seed and input give the same answers")
# what to run
parser.add_argument("--prompt", default="",
                    help="answer this one question and end (piped stdin too)")
parser.add_argument("--ui", action="store_true",
                    help="a web page instead of the terminal chat")
parser.add_argument("--port", type=between(1, 65535, int), default=7860,
                    help="port of the web page, on 127.0.0.1 only")
parser.add_argument("--share", action="store_true",
                    help="also a temporary public gradio.live link (opt-in)")
parser.add_argument("--auth", default="none",
                    help="user:password asked by the web page (none: no login)")
parser.add_argument("--stats", action="store_true",
                    help="print tok/s and the first token's time after each answer")
parser.add_argument("--compile", action="store_true",
                    help="GPU: static KV cache + torch.compile (first answer waits)")

# ---- before any loading: the question, the adapter, the port ----
def read_question(args):
    # The one question of --prompt or piped stdin; "" for a chat.
    question = args.prompt
    piped = not args.ui and not sys.stdin.isatty()
    if not question and piped and "ipykernel" not in sys.modules:
        try:
            # Bytes, decoded strictly: Python's own stdin lets bad bytes through.
            question = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            fail("stdin is not UTF-8 text; fix: save what you pipe in as UTF-8")
        if not question.strip():
            fail('the question on stdin is empty; fix: pass --prompt "..." or pipe text')
    try:
        # A terminal that is not UTF-8 hands its bytes over as lone surrogates.
        (question + args.system).encode("utf-8")
    except UnicodeEncodeError:
        fail("--prompt or --system is not UTF-8 text; fix: use a UTF-8 terminal")
    return prompts.nfc(question).strip()

def pick_model(args):
    # (model, adapter, the base the adapter was trained on), checked.
    model, adapter, trained_on = args.model, args.adapter, None
    config = os.path.join(adapter, "adapter_config.json")
    if adapter != "none":
        # A full disk or a kill during phogpt_qlora.py's save leaves files
        # cut short: better said now than after minutes of loading.
        fix = ("fix: pass the --output folder of phogpt_qlora.py, or train "
               "again (a merged model goes in --model)")
        try:
            with open(config, encoding="utf-8") as f:
                trained_on = json.load(f).get("base_model_name_or_path")
        except FileNotFoundError:
            fail(f"no adapter_config.json in {adapter}; {fix}")
        except (ValueError, AttributeError):
            fail(f"{config} is damaged (not a JSON object); {fix}")
        weights = os.path.join(adapter, "adapter_model.safetensors")
        if not whole(Path(weights)):
            fail(f"{weights} is damaged or missing; {fix}")
    if model == "auto":
        model = trained_on or "vinai/PhoGPT-4B-Chat"
    return model, adapter, trained_on

def check_port(port):
    # Probed as the server will bind it (a port in TIME_WAIT is fine, one
    # with a listener is not), before minutes of loading instead of after.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            fail(f"--port {port} is already in use or needs root; "
                 f"fix: pass --port {port + 1} or stop the other program")

# Run as a script (or pasted in a notebook): every check that is cheap comes now,
# before torch takes seconds to import. Imported by a test, nothing runs.
if __name__ == "__main__":
    args = parse_flags(parser)
    if not 0 <= args.temperature <= 10:
        fail("--temperature must be between 0 and 10; fix: 0 for greedy, 1 for varied")
    user, _, password = args.auth.partition(":")
    if args.auth != "none" and not (user and password):
        fail("--auth takes user:password, both non-empty; fix: e.g. --auth lan:matkhau")
    question = read_question(args)
    model_name, adapter, trained_on = pick_model(args)
    if args.ui:
        check_port(args.port)
    device = pick_device(args.device)
    load_in = pick_load_in(args.load_in, device)
    # bitsandbytes only for 4-bit or 8-bit, and no code fetched from the hub: set
    # before transformers and peft are imported, just below.
    keep_hub_code_out(load_in)

import torch  # noqa: E402
from transformers import DynamicCache, StaticCache, TextIteratorStreamer  # noqa: E402

from phogpt_model import CACHE_NAME, load_phogpt, pick_dtype  # noqa: E402

# ---- the model ----
def load_chat(args, model_name, adapter, trained_on, device, load_in):
    # Model, tokenizer and everything an answer needs, in one dict.
    dtype = pick_dtype(device)
    name = model_name + (f" + {adapter}" if adapter != "none" else "")
    print(f"đang tải {name} ({load_in}, {str(dtype)[6:]}, {device})",
          file=sys.stderr)
    try:
        model, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype,
                                       device_map={"": device})
    except (ValueError, OSError) as err:
        fail(err)
    if adapter != "none":
        from peft import PeftModel
        try:
            # peft reads a name that transformers 5 renamed: its FutureWarning
            # is for peft's authors, not for a student mid-chat.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = PeftModel.from_pretrained(model, adapter)
        except (RuntimeError, ValueError, KeyError):
            # peft says "size mismatch for ...lora_A...": another base shape.
            fail(f"the adapter in {adapter} was trained on another base model "
                 f"({trained_on}); its shapes do not fit {model_name}; "
                 f"fix: pass --model {trained_on}")
        if load_in == "none":
            # Plain weights again: no LoRA cost per token.
            model = model.merge_and_unload()
    model.eval()
    context = args.max_length
    if context == "auto":
        context = model.config.max_seq_len
    # An answer takes at most half the context: the rest is for the chat so far.
    max_new_tokens = min(args.max_new_tokens, context // 2)
    if max_new_tokens < args.max_new_tokens:
        print(f"lưu ý: --max-new-tokens hạ xuống {max_new_tokens}, "
              f"nửa ngữ cảnh {context} token", file=sys.stderr)
    template = args.template
    if template == "auto":
        instruct = "instruct" in model_name.lower()
        template = "instruct" if instruct else "chat"
    # The KV cache and the tokens it holds, kept from one answer to the next.
    # --compile: a StaticCache (fixed shapes), which generate() compiles on CUDA.
    state = {"cache": None, "ids": [], "static": context if args.compile else 0}
    sampling = dict(temperature=args.temperature, top_p=args.top_p,
                    top_k=args.top_k, max_new_tokens=max_new_tokens,
                    repetition_penalty=args.repetition_penalty)
    return dict(model=model, tokenizer=tokenizer, name=name, context=context,
                template=template, stop=prompts.STOP_STRINGS[template],
                system=prompts.defuse(args.system).strip(),
                state=state, dropped=[], sampling=sampling)

# ---- the prompt: the chat so far, cut to fit the context ----
# Prompt ids for messages (ending with a question), in budget tokens if it can:
# (ids, first). The oldest question/answer pairs go first, from messages[first:]
# on: an earlier cut stays put, so the KV cache of the kept turns stays valid.
def fit_history(tokenizer, messages, budget, template="chat", system="", first=0):
    while True:
        eos = tokenizer.eos_token
        text = prompts.generation_prompt(messages[first:], eos, template, system)
        # Tokenised as phogpt_qlora.py tokenises its training text (verbose=False:
        # no notice that it is long; cutting it is our job, right here).
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) <= budget or len(messages) - first <= 1:
            return ids, first
        first += 2

def prompt_for(chat, messages, system, max_new_tokens, knob):
    # (ids, notice) for messages; a ValueError says what to change, and knob names
    # the setting that shortens answers (a flag, or a slider on the page).
    context = chat["context"]
    # Keep an earlier cut while the chat goes on: the cache of the kept turns stays valid.
    dropped = chat["dropped"]
    same_start = messages[:len(dropped)] == dropped
    first = len(dropped) if same_start and len(messages) > len(dropped) else 0
    budget = context - max_new_tokens
    ids, first_now = fit_history(chat["tokenizer"], messages, budget,
                                 chat["template"], system, first)
    size = f"câu hỏi dài {len(ids)} token"
    if len(ids) >= context:
        raise ValueError(f"{size}, vượt cả ngữ cảnh {context} token của mô hình: "
                         "hãy hỏi ngắn hơn hoặc chia thành nhiều câu")
    if len(ids) > budget:
        raise ValueError(f"{size}, cộng câu trả lời tối đa {max_new_tokens} token "
                         f"thì vượt ngữ cảnh {context} token: hãy giảm {knob} "
                         f"xuống {context - len(ids)} hoặc hỏi ngắn hơn")
    chat["dropped"] = messages[:first_now]
    if first_now == first:
        return ids, None
    return ids, (f"đã bỏ {first_now // 2} lượt hỏi đáp cũ nhất để câu hỏi và câu trả "
                 f"lời {max_new_tokens} token vừa ngữ cảnh {context} token")

# ---- one answer: generate() in a thread, its text shown as it comes ----
def reuse_cache(model, state, prompt_ids):
    # Keep the cached keys and values of the prompt's longest prefix; return its length.
    held = state["ids"]
    reused = 0
    # At least one token stays new: its logits give the first answer token.
    limit = min(len(held), len(prompt_ids) - 1)
    while reused < limit and held[reused] == prompt_ids[reused]:
        reused += 1
    if state["cache"] is None and state["static"]:
        state["cache"] = StaticCache(config=model.config, max_cache_len=state["static"])
    elif state["cache"] is None:
        state["cache"] = DynamicCache(config=model.config)
    if reused < len(held) and state["cache"].is_croppable:
        # crop takes minus the number of tokens to drop.
        state["cache"].crop(reused - len(held))
    elif reused < len(held):
        # A StaticCache of transformers 5.23 cannot crop: start it over.
        state["cache"].reset()
        reused = 0
    return reused

def shown_part(raw, stop):
    # What of the answer so far can be shown, and whether the stop string came.
    if stop in raw:
        return raw[:raw.index(stop)].strip(), True
    # Hold back an ending that may become the stop string ("\n##"), and half
    # a UTF-8 character: a byte-level tokenizer can split one across tokens,
    # and the half decodes as U+FFFD.
    starts = [k for k in range(1, len(stop)) if raw.endswith(stop[:k])]
    hold = max(starts, default=0)
    return raw[:len(raw) - hold].lstrip().rstrip("\ufffd"), False

# The answer to prompt_ids, piece by piece, from generate() in a thread. It stops at
# EOS or at the stop string, which never shows. state = {"cache": None, "ids": [],
# "static": 0} carries the KV cache from turn to turn ("static": n, a StaticCache of
# n tokens); the answer's speed is left in state["stats"].
# NaN/inf logits (an fp16 overflow, damaged weights) decode to an empty answer: say so.
NOT_FINITE = ("mô hình cho logit NaN/inf (tràn số?), câu trả lời sẽ rỗng; "
              "fix: chạy với --device cpu (fp32) hoặc kiểm tra trọng số")


def finite_only(ids, scores):
    # Sampling masks tokens with -inf on purpose; NaN, +inf or nothing left is a fault.
    if scores.isnan().any() or scores.isposinf().any() or scores.isneginf().all():
        raise ValueError(NOT_FINITE)
    return scores


def stream_answer(model, tokenizer, prompt_ids, state, stop, temperature=1.0,
                  top_p=0.9, top_k=50, repetition_penalty=1.0, max_new_tokens=1024):
    start = time.perf_counter()
    reused = reuse_cache(model, state, prompt_ids)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True,
                                    skip_special_tokens=True)
    stop_now, token_times, out = threading.Event(), [], {}

    # generate() asks this after each token: we note the time, and stop it on
    # Ctrl+C, on a closed page, or at a stop string that it did not see.
    def until_stopped(ids, scores, **kwargs):
        token_times.append(time.perf_counter())
        return torch.full(ids.shape[:1], stop_now.is_set(), device=ids.device)

    # Temperature 0 is greedy. (Floats: the page's sliders may send ints.)
    sampling = dict(do_sample=temperature > 0)
    if temperature > 0:
        sampling.update(temperature=float(temperature), top_p=float(top_p),
                        top_k=int(top_k))
    ids = torch.tensor([prompt_ids], device=model.device)

    def generate():
        try:
            out["ids"] = model.generate(
                ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                max_new_tokens=int(max_new_tokens), eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, stop_strings=stop,
                tokenizer=tokenizer, stopping_criteria=[until_stopped],
                logits_processor=[finite_only],
                repetition_penalty=float(repetition_penalty), **sampling,
                # The cache of the turns before: only what is new gets encoded.
                # (transformers 5.24 calls it cache=, 5.23 past_key_values=.)
                use_cache=True, **{CACHE_NAME: state["cache"]})[0].tolist()
        except BaseException as err:
            # Raised again below; end() lets the loop below finish.
            out["error"] = err
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    raw, shown, stopped = "", "", False
    try:
        for piece in streamer:
            raw += piece
            visible, stopped = shown_part(raw, stop)
            if stopped:
                stop_now.set()
            if len(visible) > len(shown):
                yield visible[len(shown):]
                shown = visible
    finally:
        # Ctrl+C or a closed page land here too: stop generate() and wait, so
        # the cache is whole and we know its tokens for the next turn.
        stop_now.set()
        thread.join()
        tokens = out.get("ids", [])
        # The cache holds the prompt and the answer but its last token.
        state["ids"] = tokens[:state["cache"].get_seq_length()]
        if not tokens:
            state["cache"] = None
        answer = tokens[len(prompt_ids):]
        state["stats"] = dict(
            tokens=len(answer) - answer.count(tokenizer.eos_token_id),
            prompt=len(prompt_ids), reused=reused,
            first_token_s=(token_times or [start])[0] - start,
            seconds=time.perf_counter() - start)
    if "error" in out:
        raise out["error"]
    # What was held back (a "#" that was not the stop string after all) shows now.
    rest = raw.rstrip("\ufffd").strip()[len(shown):]
    if rest and not stopped:
        yield rest

def stats_line(stats):
    # The speed of one answer, in the words the chat uses.
    decode_s = stats["seconds"] - stats["first_token_s"]
    speed = (stats["tokens"] - 1) / max(decode_s, 1e-9)
    return (f"{stats['tokens']} token, {max(speed, 0):.1f} tok/s, token đầu sau "
            f"{1000 * stats['first_token_s']:.0f} ms, prompt {stats['prompt']} "
            f"token ({stats['reused']} dùng lại từ KV cache)")

def answer_pieces(chat, messages, knob, system=None, **sampling):
    # What every way to chat (one question, terminal, page) does: the prompt,
    # then the answer's pieces. Returns (notice, pieces).
    system = chat["system"] if system is None else system
    sampling = {**chat["sampling"], **sampling}
    ids, notice = prompt_for(chat, messages, system, sampling["max_new_tokens"], knob)
    pieces = stream_answer(chat["model"], chat["tokenizer"], ids, chat["state"],
                           chat["stop"], **sampling)
    return notice, pieces

# ---- one question, one answer (--prompt or piped stdin) ----
def one_shot(chat, question, show_stats):
    # Only the answer goes to stdout, for scripts and pipes.
    messages = [{"role": "user", "content": prompts.defuse(question)}]
    try:
        _, pieces = answer_pieces(chat, messages, "--max-new-tokens")
        for piece in pieces:
            print(piece, end="", flush=True)
    except ValueError as err:
        fail(err)
    except KeyboardInterrupt:
        sys.exit(130)
    print()
    if show_stats:
        print(f"[{stats_line(chat['state']['stats'])}]", file=sys.stderr)

# ---- the terminal chat ----
COMMANDS = ("/reset (hội thoại mới), /undo (bỏ lượt cuối), "
            "/save TỆP (lưu hội thoại), /exit (thoát)")
# Why /save failed, in the student's words.
NO_FOLDER = "chưa có thư mục chứa {path}; hãy tạo thư mục đó trước"
NOT_ALLOWED = "không có quyền ghi vào {path}; hãy chọn tệp khác"
SAVE_ERRORS = {
    errno.EISDIR: "{path} là một thư mục; hãy ghi tên tệp, ví dụ {path}/chat.jsonl",
    errno.ENOENT: NO_FOLDER, errno.ENOTDIR: NO_FOLDER,
    errno.EACCES: NOT_ALLOWED, errno.EPERM: NOT_ALLOWED,
    errno.ENOSPC: "ổ đĩa đầy, không ghi vào {path} được; hội thoại vẫn còn",
}

def conversation_line(messages, system):
    # The chat as one JSONL line, the format of phogpt_qlora.py --data.
    system_turn = [{"role": "system", "content": system}] if system else []
    row = {"messages": system_turn + messages}
    return json.dumps(row, ensure_ascii=False) + "\n"

def save_chat(path, history, system):
    # Append the chat to path as one JSONL line; return the notice to print.
    if not path or not history:
        return "(cách dùng: /save TỆP, sau ít nhất một câu trả lời)"
    path = os.path.expanduser(path)
    data = conversation_line(history, system).encode("utf-8")
    try:
        # Unbuffered, so a failed write can be cut off again right here.
        with open(path, "ab", buffering=0) as f:
            size = f.tell()
            try:
                if f.write(data) != len(data):
                    raise OSError(errno.ENOSPC, "disk full")
            except OSError:
                # A full disk: cut the half-written line; the file stays as it was.
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise
    except OSError as err:
        reason = SAVE_ERRORS.get(err.errno, "{path}: " + str(err.strerror))
        return f"(không lưu được: {reason.format(path=path)})"
    return f"(đã thêm hội thoại này, {len(history) // 2} lượt, vào {path})"

def ask(chat, history, question, show_stats):
    # One turn; returns the history with it (without it if it could not start).
    messages = history + [{"role": "user", "content": question}]
    answer = ""
    try:
        notice, pieces = answer_pieces(chat, messages, "--max-new-tokens")
        if notice:
            print(f"({notice})")
        print("PhoGPT: ", end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
            answer += piece
    except ValueError as err:
        print(f"({err})")
        return history
    except KeyboardInterrupt:
        # Ctrl+C stops this answer; what it said so far stays a turn.
        print(" [đã dừng]", end="")
    print()
    if show_stats and "stats" in chat["state"]:
        print(f"[{stats_line(chat['state']['stats'])}]", file=sys.stderr)
    return messages + [{"role": "assistant", "content": answer.strip()}]

def terminal_chat(chat, show_stats):
    # Questions from the keyboard, answers streamed, until /exit or Ctrl+D.
    print(f"Trò chuyện với {chat['name']}. Lệnh: {COMMANDS}. "
          "Ctrl+C dừng câu trả lời, Ctrl+D thoát.")
    # Arrow keys and a history of what was typed, in input().
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401
    history = []
    while True:
        try:
            line = prompts.nfc(input("\nBạn: ")).strip()
            # readline hands bytes that are not UTF-8 over as lone surrogates.
            line.encode("utf-8")
        except EOFError:
            print()
            break
        except KeyboardInterrupt:
            print("\n(Ctrl+D hoặc /exit để thoát)")
            continue
        except UnicodeError:
            print("(dòng vừa gõ không phải văn bản UTF-8: hãy gõ lại)")
            continue
        # Typed text cannot forge a turn of the template (see prompts.defuse).
        question = prompts.defuse(line).strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = []
            print("(hội thoại mới)")
        elif line == "/undo":
            history = history[:-2]
            print(f"(đã bỏ lượt cuối; còn {len(history) // 2} lượt)")
        elif line.split()[:1] == ["/save"]:
            path = line[len("/save"):].strip()
            print(save_chat(path, history, chat["system"]))
        elif line.startswith("/"):
            print(f"(lệnh: {COMMANDS})")
        elif question:
            history = ask(chat, history, question, show_stats)

# ---- the web page ----
# Shown instead of an answer when something failed (the page then leaves that turn out).
ERROR_SIGN = "⚠️ Lỗi:"
# Gradio has no Vietnamese; these replace its English words.
PAGE_WORDS = {
    "chat_interface.message_placeholder": "Nhập câu hỏi rồi nhấn Enter…",
    "chat_interface.chatbot": "PhoGPT",
    "chatbot.retry": "Hỏi lại",
    "chatbot.undo": "Hoàn tác",
    "chatbot.clear": "Xoá hội thoại",
    "chatbot.copy_message": "Chép",
    "chatbot.copied_message": "Đã chép",
    "chat_interface.additional_inputs": "⚙️ Cài đặt",
    "common.clear": "Xoá",
    "common.error": "Lỗi",
    "common.loading": "Đang tải",
    "common.settings": "Cài đặt",
    "common.built_with_gradio": "Làm bằng Gradio",
    "errors.use_via_api": "Dùng qua API",
    "errors.use_via_api_or_mcp": "Dùng qua API hoặc MCP",
}
# The page's settings: (label, lowest, highest, step), in respond()'s order.
SLIDERS = {
    "temperature": ("Nhiệt độ (0 = luôn cùng một câu trả lời)", 0, 2, 0.05),
    "top_p": ("top-p", 0.05, 1, 0.05),
    "top_k": ("top-k (0 = mọi token)", 0, 200, 1),
    "repetition_penalty": ("Phạt lặp từ", 1, 2, 0.05),
    "max_new_tokens": ("Số token tối đa của câu trả lời", 1, None, 1),
}
EXAMPLES = ["Xin chào, bạn là ai?",
            "Viết bài văn nghị luận xã hội về an toàn giao thông",
            "Hà Nội có những món ăn nào nổi tiếng?"]
# The download happens in the browser: the page gets the line and saves it.
DOWNLOAD_JS = """(line) => {
  if (!line) return;
  const link = document.createElement("a");
  const file = new Blob([line], {type: "application/jsonl"});
  link.href = URL.createObjectURL(file);
  link.download = "phogpt-hoi-thoai.jsonl";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}"""
PAGE_JS = "() => { document.documentElement.lang = 'vi'; }"
# On a 390 px phone the page's 32 px margins would take a sixth of the width.
# (In the head: gradio scopes css= to the inside of the app, not that margin.)
PAGE_HEAD = """<style>
@media (max-width: 600px) {
  .gradio-container .main { padding: 4px !important; }
}
#status { font-size: 0.85em; opacity: 0.8; min-height: 1.5em; }
</style>"""

def text_of(content):
    # A message's text as gradio hands it over: a string, or a list of parts.
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [])

def page_messages(history):
    # The page's chat as clean turns: text only, defused, failed turns left out.
    messages = []
    for message in history:
        text = prompts.defuse(text_of(message["content"])).strip()
        role = message["role"]
        if role == "user":
            messages.append({"role": "user", "content": text})
        elif role == "assistant" and ERROR_SIGN in text:
            # A failed turn: its question goes too, so no prompt ever holds it.
            messages = messages[:-1]
        elif role == "assistant" and messages[-1:] and messages[-1]["role"] == "user":
            messages.append({"role": "assistant", "content": text})
    return messages

def web_page(chat, args):
    # The Gradio page: one shared model, a chat per browser tab.
    # Before gradio is imported: no telemetry and no version check.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio as gr

    def respond(message, history, system, *values):
        # Streams (answer so far, status line under the chat).
        answer, busy = "", "PhoGPT đang trả lời…"
        try:
            question = prompts.defuse(text_of(message)).strip()
            if not question:
                raise ValueError("câu hỏi trống: hãy nhập câu hỏi")
            messages = page_messages(history)
            messages.append({"role": "user", "content": question})
            # The sliders check the ranges; stream_answer settles the types.
            notice, pieces = answer_pieces(
                chat, messages, "“Số token tối đa của câu trả lời”",
                system=prompts.defuse(system or "").strip(),
                **dict(zip(SLIDERS, values)))
            if notice:
                gr.Info(notice)
            for piece in pieces:
                answer += piece
                yield answer, busy
            yield answer, stats_line(chat["state"]["stats"])
        except ValueError as err:
            # The student's input or settings: say what to change, in the chat.
            yield f"{ERROR_SIGN} {err}", ""
        except Exception as err:
            # Whatever else broke, the student reads it and the page goes on.
            chat["state"].update(cache=None, ids=[])
            reason = f"{type(err).__name__}: {err}"
            print(f"web page: {reason}", file=sys.stderr)
            yield (answer + "\n\n" if answer else "") + f"{ERROR_SIGN} {reason}", ""

    def download(history, system):
        # The chat as the JSONL line of /save, or a notice when there is none.
        messages = page_messages(history)
        if not any(m["role"] == "assistant" for m in messages):
            gr.Info("Chưa có câu trả lời nào để tải về.")
            return ""
        messages = messages[:len(messages) // 2 * 2]
        return conversation_line(messages, prompts.defuse(system or "").strip())

    # The settings start from the flags; ChatInterface puts them under the chat.
    settings = [gr.Textbox(chat["system"], label="Lời dặn hệ thống (system prompt)",
                           placeholder="Ví dụ: Hãy trả lời ngắn gọn.", lines=2,
                           render=False)]
    for name, (label, low, high, step) in SLIDERS.items():
        value = chat["sampling"][name]
        high = chat["context"] // 2 if name == "max_new_tokens" else high
        settings.append(gr.Slider(min(low, value), max(high, value), value=value,
                                  step=step, label=label, render=False))
    with gr.Blocks(title="PhoGPT") as page:
        status = gr.Markdown(elem_id="status", render=False)
        ui = gr.ChatInterface(
            respond, additional_inputs=settings, additional_outputs=[status],
            chatbot=gr.Chatbot(label="PhoGPT", buttons=["copy"]),
            examples=[[e] for e in EXAMPLES], cache_examples=False,
            title="PhoGPT", description=f"Mô hình: {chat['name']}",
            analytics_enabled=False)
        status.render()
        save = gr.Button("⬇️ Tải hội thoại (.jsonl)", size="sm")
        line = gr.Textbox(visible=False)
        saved = save.click(download, [ui.chatbot, settings[0]], line,
                           api_visibility="undocumented")
        saved.then(None, line, None, js=DOWNLOAD_JS)
    share_note = "; đường dẫn công khai ở dưới" if args.share else ""
    print(f"Trang web: http://127.0.0.1:{args.port} (Ctrl+C để dừng{share_note})",
          flush=True)
    # --auth user:password: the page asks for them before it opens.
    auth = tuple(args.auth.split(":", 1)) if args.auth != "none" else None
    page.launch(server_name="127.0.0.1", server_port=args.port, share=args.share,
                auth=auth, inbrowser=False, ssr_mode=False,
                auth_message="Nhập tên và mật khẩu (--auth) để mở trang.",
                quiet=not args.share, show_error=True, head=PAGE_HEAD, js=PAGE_JS,
                i18n=gr.I18n(en=PAGE_WORDS, vi=PAGE_WORDS))

# ---- run: the model, then the chat ----
if __name__ == "__main__":
    chat = load_chat(args, model_name, adapter, trained_on, device, load_in)
    torch.manual_seed(args.seed)
    if question:
        one_shot(chat, question, args.stats)
    elif args.ui:
        web_page(chat, args)
    else:
        terminal_chat(chat, args.stats)
