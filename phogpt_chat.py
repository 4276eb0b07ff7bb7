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
from plumbing import NOTEBOOK, append_row, between, fail, keep_hub_code_out, parse_flags
from plumbing import pick_device, pick_load_in, read_json, whole

def tokens_or_auto(text):
    # --max-length: auto (the model's own context) or a number of tokens.
    return text if text == "auto" else between(16, 10**6, int)(text)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# the model
parser.add_argument("--model", default="auto",
                    help="hub id or folder (auto: the --adapter's base, else PhoGPT-4B-Chat)")
parser.add_argument("--adapter", default="none", help="LoRA folder of phogpt_qlora.py")
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
parser.add_argument("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"],
                    help="base weights (auto: 4bit nf4 on CUDA, else none)")
parser.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"],
                    help="prompt (auto: instruct if the model's name says so)")
# the conversation
parser.add_argument("--system", default="", help="instructions for the whole chat")
parser.add_argument("--max-length", type=tokens_or_auto, default="auto",
                    help="context in tokens, prompt + answer (auto: the model's)")
# sampling: VinAI's README uses temperature 1.0, top_k 50, top_p 0.9
parser.add_argument("--temperature", type=float, default=1.0, help="0..10, 0 = greedy")
parser.add_argument("--top-p", type=between(0.01, 1), default=0.9,
                    help="sample from the likeliest tokens holding this probability")
parser.add_argument("--top-k", type=between(0, 10**6, int), default=50,
                    help="sample among the k likeliest tokens (0 = all)")
parser.add_argument("--repetition-penalty", type=between(0.01, 10), default=1.0,
                    help="above 1 discourages repeating the chat")
parser.add_argument("--max-new-tokens", type=between(1, 10**6, int), default=1024,
                    help="longest answer (at most half the context)")
parser.add_argument("--seed", type=between(0, 2**32 - 1, int), default=1337,
                    help="the same seed and input give the same answers")
# what to run
parser.add_argument("--prompt", default="", help="answer this one question and end (or stdin)")
parser.add_argument("--ui", action="store_true", help="a web page instead of the terminal")
parser.add_argument("--port", type=between(1, 65535, int), default=7860,
                    help="port of the web page, on 127.0.0.1 only")
parser.add_argument("--share", action="store_true", help="also a public gradio.live link")
parser.add_argument("--auth", default="none", help="user:password the web page asks for")
parser.add_argument("--stats", action="store_true", help="print tok/s after each answer")
parser.add_argument("--compile", action="store_true",
                    help="GPU: static KV cache + torch.compile (first answer waits)")

# ---- before any loading: the adapter, the question, the port ----
def pick_model(args):
    # (model, the adapter's base). A save cut short is better said now than after loading.
    folder, trained_on = Path(args.adapter), None
    config, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    fix = "fix: pass the --output folder of phogpt_qlora.py (a merged model goes in --model)"
    if args.adapter == "none":
        pass
    elif not folder.exists():
        fail(f"--adapter {folder} does not exist yet; fix: train first: python "
             f"phogpt_qlora.py --data data/faq_vi.jsonl --output {folder}")
    elif not isinstance(read_json(config), dict):
        fail(f"{config} is missing or damaged; {fix}")
    elif not whole(weights):
        fail(f"{weights} is missing or damaged; {fix}")
    else:
        trained_on = read_json(config).get("base_model_name_or_path")
    if args.model == "auto":
        return trained_on or "vinai/PhoGPT-4B-Chat", trained_on
    return args.model, trained_on

def read_question(args):
    # The one question of --prompt or piped stdin; "" for a chat.
    question = args.prompt
    if not question and not args.ui and not sys.stdin.isatty() and not NOTEBOOK:
        question = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        if not question.strip():
            fail('the question on stdin is empty; fix: pass --prompt "..." or pipe text')
    try:
        # Bytes that are not UTF-8 (piped, or from the terminal) come as lone surrogates.
        (question + args.system).encode("utf-8")
    except UnicodeEncodeError:
        fail("the question or --system is not UTF-8 text; fix: use UTF-8 (terminal, file)")
    return prompts.nfc(question).strip()

def check_port(port):
    # Probed as the server will bind it (a port in TIME_WAIT is fine), before loading.
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            fail(f"--port {port} is already in use or needs root; "
                 f"fix: pass --port {port + 1} or stop the other program")

# Run as a script (or pasted in a notebook), the cheap checks come before torch's
# seconds of import. Imported by a test: nothing runs.
if __name__ == "__main__":
    args = parse_flags(parser)
    if not 0 <= args.temperature <= 10:
        fail("--temperature must be between 0 and 10; fix: 0 for greedy, 1 for varied")
    user, _, password = args.auth.partition(":")
    if args.auth != "none" and not (user and password):
        fail("--auth takes user:password, both non-empty; fix: e.g. --auth lan:matkhau")
    model_name, trained_on = pick_model(args)
    question = read_question(args)
    if args.ui:
        check_port(args.port)
    device = pick_device(args.device)
    load_in = pick_load_in(args.load_in, device)
    # Before transformers and peft are imported: no code from the hub.
    keep_hub_code_out(load_in)

import torch  # noqa: E402
from transformers import DynamicCache, StaticCache, TextIteratorStreamer  # noqa: E402

from phogpt_model import CACHE_NAME, load_phogpt, pick_dtype  # noqa: E402

# ---- the model ----
def load_chat(args, model_name, trained_on, device, load_in):
    # Model, tokenizer and everything an answer needs, in one dict.
    dtype = pick_dtype(device)
    name = model_name + (f" + {args.adapter}" if args.adapter != "none" else "")
    print(f"đang tải {name} ({load_in}, {str(dtype)[6:]}, {device})", file=sys.stderr)
    try:
        model, tokenizer = load_phogpt(model_name, load_in=load_in, dtype=dtype,
                                       device_map={"": device})
    except (ValueError, OSError) as err:
        fail(err)
    if args.adapter != "none":
        from peft import PeftModel
        try:
            # peft's FutureWarning (a name transformers 5 renamed) is for peft's authors.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = PeftModel.from_pretrained(model, args.adapter)
        except (RuntimeError, ValueError, KeyError):
            # peft says "size mismatch for ...lora_A...": another base shape.
            fail(f"the adapter in {args.adapter} was trained on another base model "
                 f"({trained_on}); its shapes do not fit {model_name}; "
                 f"fix: pass --model {trained_on}")
        # Plain weights again: no LoRA cost per token.
        if load_in == "none":
            model = model.merge_and_unload()
    context = args.max_length
    if context == "auto":
        context = model.config.max_seq_len
    # An answer takes at most half the context: the rest is for the chat so far.
    sampling = {name: getattr(args, name) for name in SLIDERS}
    sampling["max_new_tokens"] = min(args.max_new_tokens, context // 2)
    if sampling["max_new_tokens"] < args.max_new_tokens:
        print(f"lưu ý: --max-new-tokens hạ xuống {context // 2}, "
              f"nửa ngữ cảnh {context} token", file=sys.stderr)
    template = args.template
    if template == "auto":
        template = "instruct" if "instruct" in model_name.lower() else "chat"
    # The KV cache and its tokens, from one answer to the next. --compile: a
    # StaticCache (fixed shapes), which generate() compiles on CUDA.
    state = {"cache": None, "ids": [], "static": context if args.compile else 0}
    return dict(model=model.eval(), tokenizer=tokenizer, name=name, context=context,
                template=template, stop=prompts.STOP_STRINGS[template],
                system=prompts.defuse(args.system).strip(),
                state=state, dropped=[], sampling=sampling)

# ---- the prompt: the chat so far, cut to fit the context ----
# Prompt ids for messages (ending with a question), in budget tokens if it can: (ids,
# first). The oldest turns go first, from messages[first:] on: an earlier cut stays put.
def fit_history(tokenizer, messages, budget, template="chat", system="", first=0):
    while True:
        eos = tokenizer.eos_token
        text = prompts.generation_prompt(messages[first:], eos, template, system)
        # As phogpt_qlora.py tokenises; verbose=False: cutting it is our job, right here.
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) <= budget or len(messages) - first <= 1:
            return ids, first
        first += 2

def prompt_for(chat, messages, system, max_new_tokens, knob):
    # (ids, notice); a ValueError says what to change, knob being a flag or a slider.
    context, dropped = chat["context"], chat["dropped"]
    # Keep an earlier cut while the chat goes on: the KV cache of the kept turns stays valid.
    same_start = messages[:len(dropped)] == dropped and len(messages) > len(dropped)
    kept_from = len(dropped) if same_start else 0
    budget = context - max_new_tokens
    ids, first = fit_history(chat["tokenizer"], messages, budget, chat["template"],
                             system, kept_from)
    size = f"câu hỏi dài {len(ids)} token"
    if len(ids) >= context:
        raise ValueError(f"{size}, vượt cả ngữ cảnh {context} token của mô hình: "
                         "hãy hỏi ngắn hơn hoặc chia thành nhiều câu")
    if len(ids) > budget:
        raise ValueError(f"{size}, cộng câu trả lời tối đa {max_new_tokens} token "
                         f"thì vượt ngữ cảnh {context} token: hãy giảm {knob} "
                         f"xuống {context - len(ids)} hoặc hỏi ngắn hơn")
    chat["dropped"] = messages[:first]
    if first == kept_from:
        return ids, None
    return ids, (f"đã bỏ {first // 2} lượt hỏi đáp cũ nhất để câu hỏi và câu trả "
                 f"lời {max_new_tokens} token vừa ngữ cảnh {context} token")

# ---- one answer: generate() in a thread, its text shown as it comes ----
def reuse_cache(model, state, prompt_ids):
    # Keep the cached keys and values of the prompt's longest prefix; return its length.
    held, reused = state["ids"], 0
    # At least one token stays new: its logits give the first answer token.
    limit = min(len(held), len(prompt_ids) - 1)
    while reused < limit and held[reused] == prompt_ids[reused]:
        reused += 1
    if state["cache"] is None and state["static"]:
        state["cache"] = StaticCache(config=model.config, max_cache_len=state["static"])
    elif state["cache"] is None:
        state["cache"] = DynamicCache(config=model.config)
    if reused < len(held) and state["cache"].is_croppable:
        # crop() takes minus the tokens to drop.
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
    # Held back: an ending that may become the stop string ("\n##"), and half a
    # character (a byte-level tokenizer can split one; the half decodes as U+FFFD).
    hold = max([k for k in range(1, len(stop)) if raw.endswith(stop[:k])], default=0)
    return raw[:len(raw) - hold].lstrip().rstrip("\ufffd"), False

def finite_only(ids, scores):
    # Sampling masks tokens with -inf; NaN, +inf or nothing left (fp16 overflow) is a fault.
    if scores.isnan().any() or scores.isposinf().any() or scores.isneginf().all():
        raise ValueError("mô hình cho logit NaN/inf (tràn số?), câu trả lời sẽ rỗng; "
                         "fix: chạy với --device cpu (fp32) hoặc kiểm tra trọng số")
    return scores

# The answer to prompt_ids, piece by piece, the stop string never shown. state: the KV
# cache from turn to turn (see load_chat); the answer's speed is left in state["stats"].
def stream_answer(model, tokenizer, prompt_ids, state, stop, temperature=1.0,
                  top_p=0.9, top_k=50, repetition_penalty=1.0, max_new_tokens=1024):
    start = time.perf_counter()
    reused = reuse_cache(model, state, prompt_ids)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop_now, token_times, out = threading.Event(), [], {}

    # Asked after each token: we note the time, and stop on Ctrl+C, a closed page,
    # or a stop string that generate() did not see.
    def until_stopped(ids, scores, **kwargs):
        token_times.append(time.perf_counter())
        return torch.full(ids.shape[:1], stop_now.is_set(), device=ids.device)

    # Temperature 0 is greedy. (Floats: the page's sliders may send ints.)
    sampling = dict(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    ids = torch.tensor([prompt_ids], device=model.device)

    def generate():
        try:
            out["ids"] = model.generate(
                ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                max_new_tokens=int(max_new_tokens), eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, stop_strings=stop,
                tokenizer=tokenizer, stopping_criteria=[until_stopped],
                logits_processor=[finite_only],
                repetition_penalty=float(repetition_penalty),
                do_sample=temperature > 0, **(sampling if temperature > 0 else {}),
                # The turns before are in the cache: only what is new gets encoded.
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
        # Ctrl+C and a closed page too: stop generate() and wait, so the cache is whole.
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
    first_s = stats["first_token_s"]
    decode_s = stats["seconds"] - first_s
    speed = max(stats["tokens"] - 1, 0) / max(decode_s, 1e-9)
    return (f"{stats['tokens']} token, {speed:.1f} tok/s, token đầu sau "
            f"{1000 * first_s:.0f} ms, prompt {stats['prompt']} "
            f"token ({stats['reused']} dùng lại từ KV cache)")

def answer_pieces(chat, messages, knob, system=None, **sampling):
    # What every way to chat does: the prompt, then the answer. (notice, pieces)
    system = chat["system"] if system is None else system
    sampling = {**chat["sampling"], **sampling}
    ids, notice = prompt_for(chat, messages, system, sampling["max_new_tokens"], knob)
    pieces = stream_answer(chat["model"], chat["tokenizer"], ids, chat["state"],
                           chat["stop"], **sampling)
    return notice, pieces

# ---- one question, or a chat in the terminal ----
def ask(chat, history, question, show_stats, one_shot=False):
    # One turn: the history with it (without, if it could not start). One shot
    # (--prompt, stdin): only the answer on stdout, for scripts and pipes.
    messages = history + [{"role": "user", "content": question}]
    answer = ""
    try:
        notice, pieces = answer_pieces(chat, messages, "--max-new-tokens")
        print(f"({notice})\nPhoGPT: " if notice else "" if one_shot else "PhoGPT: ",
              end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
            answer += piece
    except ValueError as err:
        if one_shot:
            fail(err)
        print(f"({err})")
        return history
    except KeyboardInterrupt:
        if one_shot:
            sys.exit(130)
        # Ctrl+C stops this answer; what it said so far stays a turn.
        print(" [đã dừng]", end="")
    print()
    if show_stats and "stats" in chat["state"]:
        print(f"[{stats_line(chat['state']['stats'])}]", file=sys.stderr)
    return messages + [{"role": "assistant", "content": answer.strip()}]

def chat_row(messages, system):
    # The chat as one row of phogpt_qlora.py --data.
    system_turn = [{"role": "system", "content": system}] if system else []
    return {"messages": system_turn + messages}

# Why /save failed, in the student's words.
SAVE_ERRORS = {
    errno.ENOENT: "chưa có thư mục chứa {path}; hãy tạo thư mục đó trước",
    errno.EACCES: "không có quyền ghi vào {path}; hãy chọn tệp khác",
    errno.ENOSPC: "ổ đĩa đầy, không ghi vào {path} được; hội thoại vẫn còn",
}

def save_chat(path, history, system):
    # Append the chat to path as one JSONL line; return the notice to print.
    if not path or not history:
        return "(cách dùng: /save TỆP.jsonl, sau ít nhất một câu trả lời)"
    path = os.path.expanduser(path)
    try:
        append_row(path, chat_row(history, system))
    except ValueError:
        # A model's config.json or weights, notes: anything but a JSONL of rows.
        return (f"(không lưu được: {path} không phải tệp .jsonl dữ liệu; "
                "hãy chọn tệp khác, ví dụ chat.jsonl)")
    except OSError as err:
        reason = SAVE_ERRORS.get(err.errno, "{path}: " + str(err.strerror))
        return f"(không lưu được: {reason.format(path=path)})"
    return f"(đã thêm hội thoại này, {len(history) // 2} lượt, vào {path})"

COMMANDS = ("/reset (hội thoại mới), /undo (bỏ lượt cuối), "
            "/save TỆP (lưu hội thoại), /exit (thoát)")

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
        command, _, path = line.partition(" ")
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
        elif command == "/save":
            print(save_chat(path.strip(), history, chat["system"]))
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
# The sampling flags as the page's sliders: (label, lowest, highest, step).
SLIDERS = {
    "temperature": ("Nhiệt độ (0 = luôn cùng một câu trả lời)", 0, 2, 0.05),
    "top_p": ("top-p", 0.05, 1, 0.05),
    "top_k": ("top-k (0 = mọi token)", 0, 200, 1),
    "repetition_penalty": ("Phạt lặp từ", 1, 2, 0.05),
    "max_new_tokens": ("Số token tối đa của câu trả lời", 1, None, 1),
}
# The download happens in the browser: the page gets the line and saves it.
DOWNLOAD_JS = """(line) => {
  if (!line) return;
  const link = document.createElement("a");
  link.href = "data:application/jsonl;charset=utf-8," + encodeURIComponent(line);
  link.download = "phogpt-hoi-thoai.jsonl";
  link.click();
}"""
PAGE_JS = "() => { document.documentElement.lang = 'vi'; }"
# A phone's margins 4 px, not 32. (In the head: gradio scopes css= inside the app.)
PAGE_HEAD = """<style>
@media (max-width: 600px) { .gradio-container .main { padding: 4px !important; } }
#status { font-size: 0.85em; opacity: 0.8; min-height: 1.5em; }
</style>"""

def page_messages(history):
    # The page's chat as clean turns: text only, defused, failed turns left out.
    messages = []
    for message in history:
        text = prompts.defuse(text_of(message["content"])).strip()
        if message["role"] == "user":
            messages.append({"role": "user", "content": text})
        elif ERROR_SIGN in text:
            # A failed turn: its question goes too, so no prompt ever holds it.
            messages = messages[:-1]
        elif messages[-1:] and messages[-1]["role"] == "user":
            messages.append({"role": "assistant", "content": text})
    return messages

def text_of(content):
    # A message's text as gradio hands it over: a string, or a list of parts.
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [])

def checked(sliders, values):
    # The settings as sent: a browser keeps them in range, a script can send anything.
    for slider, value in zip(sliders, values):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and slider.minimum <= value <= slider.maximum):
            raise ValueError(f"“{slider.label}” phải là một số từ {slider.minimum} "
                             f"đến {slider.maximum} (nhận được {value!r})")
    return dict(zip(SLIDERS, values))

def web_page(chat, args):
    # The Gradio page: one shared model, a chat per browser tab.
    # Before gradio is imported: no telemetry and no version check.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def respond(message, history, system, *values):
        # Streams (answer so far, status line under the chat).
        answer, busy = "", "PhoGPT đang trả lời…"
        try:
            question = prompts.defuse(text_of(message)).strip()
            if not question:
                raise ValueError("câu hỏi trống: hãy nhập câu hỏi")
            messages = page_messages(history) + [{"role": "user", "content": question}]
            notice, pieces = answer_pieces(
                chat, messages, "“Số token tối đa của câu trả lời”",
                prompts.defuse(system or "").strip(), **checked(settings[1:], values))
            if notice:
                gr.Info(notice)
            for piece in pieces:
                answer += piece
                yield answer, busy
            yield answer, stats_line(chat["state"]["stats"])
        except ValueError as err:
            # The student's input or settings: what to change, in the chat and here.
            print(f"trang web: {err}", file=sys.stderr)
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
        row = chat_row(messages[:len(messages) // 2 * 2], prompts.defuse(system or "").strip())
        return json.dumps(row, ensure_ascii=False) + "\n"

    # The settings start from the flags; ChatInterface puts them under the chat.
    settings = [gr.Textbox(chat["system"], label="Lời dặn hệ thống (system prompt)",
                           placeholder="Ví dụ: Hãy trả lời ngắn gọn.", lines=2,
                           render=False)]
    for name, (label, low, high, step) in SLIDERS.items():
        value = chat["sampling"][name]
        high = chat["context"] // 2 if name == "max_new_tokens" else high
        settings.append(gr.Slider(min(low, value), max(high, value), value=value,
                                  step=step, label=label, render=False))
        # Gradio's own range check prints a traceback here: checked() says it instead.
        settings[-1].preprocess = lambda value: value
    with gr.Blocks(title="PhoGPT") as page:
        status = gr.Markdown(elem_id="status", render=False)
        ui = gr.ChatInterface(
            respond, additional_inputs=settings, additional_outputs=[status],
            chatbot=gr.Chatbot(label="PhoGPT", buttons=["copy"]),
            examples=[["Xin chào, bạn là ai?"], ["Hà Nội có những món ăn nào nổi tiếng?"],
                      ["Viết bài văn nghị luận xã hội về an toàn giao thông"]],
            cache_examples=False, title="PhoGPT", description=f"Mô hình: {chat['name']}")
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
                auth=auth, auth_message="Nhập tên và mật khẩu (--auth) để mở trang.",
                quiet=not args.share, ssr_mode=False, head=PAGE_HEAD, js=PAGE_JS,
                i18n=gr.I18n(en=PAGE_WORDS, vi=PAGE_WORDS))

# ---- run: the model, then the chat ----
if __name__ == "__main__":
    chat = load_chat(args, model_name, trained_on, device, load_in)
    torch.manual_seed(args.seed)
    if question:
        ask(chat, [], prompts.defuse(question), args.stats, one_shot=True)
    elif args.ui:
        web_page(chat, args)
    else:
        terminal_chat(chat, args.stats)
