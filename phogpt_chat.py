"""Chat with PhoGPT (plus your LoRA adapter) in the terminal, in a web page, or for one question.

    python phogpt_chat.py --adapter phogpt-adapter          # terminal chat, answers stream
    python phogpt_chat.py --adapter phogpt-adapter --ui     # web page on http://127.0.0.1:7860
    python phogpt_chat.py --prompt "Xin chào"               # one answer (piped stdin works too)
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
from plumbing import NOTEBOOK, between, fail, keep_hub_code_out, parse_flags
from plumbing import pick_device, pick_load_in, read_json, whole

# --max-length: the model's own context, or a number of tokens.
def tokens_or_auto(text):
    return text if text == "auto" else between(16, 10**6, int)(text)

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# the model
parser.add_argument("--model", default="auto", help="auto: the --adapter's base, else PhoGPT")
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
parser.add_argument("--temperature", type=between(0, 10), default=1.0, help="0 = greedy")
parser.add_argument("--top-p", type=between(0.01, 1), default=0.9, help="nucleus sampling")
parser.add_argument("--top-k", type=between(0, 10**6, int), default=50, help="0 = all tokens")
parser.add_argument("--repetition-penalty", type=between(0.01, 10), default=1.0,
                    help="above 1 discourages repeating the chat")
parser.add_argument("--max-new-tokens", type=between(1, 10**6, int), default=1024,
                    help="longest answer (at most half the context)")
parser.add_argument("--seed", type=between(0, 2**32 - 1, int), default=1337)
# what to run
parser.add_argument("--prompt", default="", help="answer this one question and end (or stdin)")
parser.add_argument("--ui", action="store_true", help="a web page instead of the terminal")
parser.add_argument("--port", type=between(1, 65535, int), default=7860, help="on 127.0.0.1")
parser.add_argument("--share", action="store_true", help="also a public gradio.live link")
parser.add_argument("--auth", default="none", help="user:password the web page asks for")
parser.add_argument("--stats", action="store_true", help="print tok/s after each answer")
parser.add_argument("--compile", action="store_true", help="GPU: static KV cache, torch.compile")

# ---- the cheap checks, before torch's slow import ----
# (A test imports this file: then nothing runs.)
if __name__ == "__main__":
    args = parse_flags(parser)
    user, _, password = args.auth.partition(":")
    if args.auth != "none" and not (user and password):
        fail("--auth takes user:password, both non-empty; fix: e.g. --auth lan:matkhau")
    # A cut-short save: said before minutes of loading
    base = "vinai/PhoGPT-4B-Chat"
    if args.adapter != "none":
        adapter = Path(args.adapter)
        if not adapter.exists():
            fail(f"--adapter {adapter} does not exist yet; fix: train first: python "
                 f"phogpt_qlora.py --data data/faq_vi.jsonl --output {adapter}")
        # whole(): all the bytes its header names
        for path in [adapter / "adapter_config.json", adapter / "adapter_model.safetensors"]:
            if not whole(path):
                fail(f"{path} is missing or damaged; fix: pass phogpt_qlora.py's --output")
        base = read_json(adapter / "adapter_config.json").get("base_model_name_or_path", base)
    model_name = base if args.model == "auto" else args.model
    # --prompt, or piped stdin; "" for a chat
    question = args.prompt
    if not question and not args.ui and not sys.stdin.isatty() and not NOTEBOOK:
        question = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        if not question.strip():
            fail('the question on stdin is empty; fix: pass --prompt "..." or pipe text')
    # Bytes that are not UTF-8 come as lone surrogates.
    if any("\ud800" <= char <= "\udfff" for char in question + args.system):
        fail("the question or --system is not UTF-8; fix: use UTF-8 (terminal, file)")
    if args.ui:
        try:
            # As the server binds it (SO_REUSEADDR: a port in TIME_WAIT is fine).
            socket.create_server(("127.0.0.1", args.port)).close()
        except OSError:
            fail(f"--port {args.port} is already in use or needs root; fix: another --port")
    device = pick_device(args.device)
    load_in = pick_load_in(args.load_in, device)
    # Before transformers and peft: no hub code.
    keep_hub_code_out(load_in)

import torch
from transformers import DynamicCache, StaticCache, TextIteratorStreamer

from phogpt_model import CACHE_NAME, load_phogpt, pick_dtype

# Typed text that cannot forge a turn; from gradio,
# it may come as a list of parts.
def clean(content):
    if not isinstance(content, str):
        content = " ".join(part.get("text", "") for part in content or [])
    return prompts.defuse(content).strip()

# ---- the model ----
def load_chat(args, model_name, base, device, load_in):
    dtype = pick_dtype(device)
    name = model_name + (f" + {args.adapter}" if args.adapter != "none" else "")
    print(f"đang tải {name} ({load_in}, {str(dtype)[6:]}, {device})", file=sys.stderr)
    try:
        model, tokenizer = load_phogpt(model_name, load_in, dtype, device_map={"": device})
    except (ValueError, OSError) as err:
        fail(err)
    if args.adapter != "none":
        from peft import PeftModel
        # peft's own deprecation notice: not for students.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        try:
            model = PeftModel.from_pretrained(model, args.adapter)
        except (RuntimeError, ValueError, KeyError):
            # "size mismatch for ...lora_A": another base
            fail(f"the adapter in {args.adapter} was trained on {base}; fix: --model {base}")
        # Plain weights again: no LoRA cost per token.
        if load_in == "none":
            model = model.merge_and_unload()
    context = model.config.max_seq_len if args.max_length == "auto" else args.max_length
    # An answer takes at most half the context.
    sampling = {key: getattr(args, key) for key in SLIDERS}
    sampling["max_new_tokens"] = min(args.max_new_tokens, context // 2)
    if sampling["max_new_tokens"] < args.max_new_tokens:
        print(f"lưu ý: --max-new-tokens hạ xuống {context // 2}, nửa ngữ cảnh", file=sys.stderr)
    template = prompts.pick_template(args.template, model_name)
    # The KV cache (--compile: static, compiled on CUDA)
    state = {"cache": None, "ids": [], "static": context if args.compile else 0}
    return dict(model=model.eval(), tokenizer=tokenizer, name=name, context=context, state=state,
                template=template, system=clean(args.system), dropped=[], sampling=sampling)

# ---- the prompt: the chat so far, cut to fit ----
# (ids, first): the prompt of messages[first:], in
# budget tokens if it can. Oldest turns go first.
def fit_history(tokenizer, messages, budget, template="chat", system="", first=0):
    while True:
        eos = tokenizer.eos_token
        text = prompts.generation_prompt(messages[first:], eos, template, system)
        # verbose=False: cutting is our job, right here.
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) <= budget or len(messages) - first <= 1:
            return ids, first
        first += 2

def prompt_for(chat, messages, system, max_new_tokens, knob):
    # (ids, notice); a ValueError names the knob to turn.
    context, dropped = chat["context"], chat["dropped"]
    # An earlier cut stays: its KV cache stays valid.
    kept_from = len(dropped) if messages[:len(dropped)] == dropped else 0
    budget = context - max_new_tokens
    tokenizer, template = chat["tokenizer"], chat["template"]
    ids, first = fit_history(tokenizer, messages, budget, template, system, kept_from)
    size = f"câu hỏi dài {len(ids)} token"
    if len(ids) >= context:
        raise ValueError(f"{size}, vượt cả ngữ cảnh {context} token: hãy hỏi ngắn hơn")
    if len(ids) > budget:
        raise ValueError(f"{size}, cộng câu trả lời vượt ngữ cảnh {context} token: hãy giảm "
                         f"{knob} xuống {context - len(ids)} hoặc hỏi ngắn hơn")
    chat["dropped"] = messages[:first]
    notice = f"đã bỏ {first // 2} lượt hỏi đáp cũ nhất cho vừa ngữ cảnh {context} token"
    return ids, notice if first > kept_from else None

# ---- one answer: generate() in a thread ----
def reuse_cache(model, state, prompt_ids):
    held = len(state["ids"])
    # One token stays new: its logits start the answer.
    reused = len(os.path.commonprefix([state["ids"], prompt_ids[:-1]]))
    if state["cache"] is None and state["static"]:
        state["cache"] = StaticCache(config=model.config, max_cache_len=state["static"])
    elif state["cache"] is None:
        state["cache"] = DynamicCache(config=model.config)
    if reused < held and state["cache"].is_croppable:
        # crop() takes minus the tokens to drop.
        state["cache"].crop(reused - held)
    elif reused < held:
        # transformers 5.23's StaticCache cannot crop.
        state["cache"].reset()
        reused = 0
    return reused

def shown_part(raw, stop):
    # (what can be shown, whether the stop string came)
    if stop in raw:
        return raw[:raw.index(stop)].strip(), True
    # Held back: a start of the stop string, half a char
    hold = max([k for k in range(1, len(stop)) if raw.endswith(stop[:k])], default=0)
    return raw[:len(raw) - hold].lstrip().rstrip("\ufffd"), False

def finite_only(ids, scores):
    # NaN, +inf or all -inf (fp16 overflow): no answer
    if scores.isnan().any() or scores.isposinf().any() or scores.isneginf().all():
        raise ValueError("mô hình cho logit NaN/inf (tràn số?), câu trả lời sẽ rỗng; "
                         "fix: chạy với --device cpu (fp32) hoặc kiểm tra trọng số")
    return scores

# The answer in pieces; its speed in state["stats"]
def stream_answer(model, tokenizer, prompt_ids, state, stop, temperature=1.0,
                  top_p=0.9, top_k=50, repetition_penalty=1.0, max_new_tokens=1024):
    start = time.perf_counter()
    reused = reuse_cache(model, state, prompt_ids)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stop_now, token_times, out = threading.Event(), [], {}

    # Stops on Ctrl+C, a closed page, a stop string.
    def until_stopped(ids, scores, **kwargs):
        token_times.append(time.perf_counter())
        return torch.full(ids.shape[:1], stop_now.is_set(), device=ids.device)

    # Floats: the page's sliders may send ints.
    sampling = dict(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    ids = torch.tensor([prompt_ids], device=model.device)

    def generate():
        try:
            # EOS, padding: in load_phogpt's generation_config
            out["ids"] = model.generate(
                ids, attention_mask=torch.ones_like(ids), streamer=streamer, tokenizer=tokenizer,
                max_new_tokens=int(max_new_tokens), repetition_penalty=float(repetition_penalty),
                stop_strings=stop, logits_processor=[finite_only], do_sample=temperature > 0,
                stopping_criteria=[until_stopped], **(sampling if temperature > 0 else {}),
                # Earlier turns are cached: only the new is encoded.
                **{CACHE_NAME: state["cache"]})[0].tolist()
        except BaseException as err:
            # Raised below; end() lets the loop finish.
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
        # Ctrl+C, a closed page: wait for a whole cache.
        stop_now.set()
        thread.join()
        tokens = out.get("ids", [])
        # The cache holds all but the last token.
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
    # A held-back "#" that was no stop string after all
    rest = raw.rstrip("\ufffd").strip()[len(shown):]
    if rest and not stopped:
        yield rest

def stats_line(stats):
    first_s = stats["first_token_s"]
    speed = max(stats["tokens"] - 1, 0) / max(stats["seconds"] - first_s, 1e-9)
    return (f"{stats['tokens']} token, {speed:.1f} tok/s, token đầu sau {1000 * first_s:.0f} ms, "
            f"prompt {stats['prompt']} token ({stats['reused']} dùng lại từ KV cache)")

def answer_pieces(chat, messages, knob, system=None, **sampling):
    # (notice, pieces): what every way to chat does
    system = chat["system"] if system is None else system
    sampling = {**chat["sampling"], **sampling}
    ids, notice = prompt_for(chat, messages, system, sampling["max_new_tokens"], knob)
    stop = prompts.STOP_STRINGS[chat["template"]]
    pieces = stream_answer(chat["model"], chat["tokenizer"], ids, chat["state"], stop, **sampling)
    return notice, pieces

# ---- one question, or a chat in the terminal ----
def ask(chat, history, question, show_stats, one_shot=False):
    # The history with this turn (without, if it failed).
    messages = history + [{"role": "user", "content": question}]
    answer = ""
    try:
        notice, pieces = answer_pieces(chat, messages, "--max-new-tokens")
        # One shot: only the answer on stdout, for pipes.
        if not one_shot:
            print(f"({notice})\nPhoGPT: " if notice else "PhoGPT: ", end="", flush=True)
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
        # What it said so far stays a turn.
        print(" [đã dừng]", end="")
    print()
    # No stats if Ctrl+C came before the answer.
    if show_stats and "stats" in chat["state"]:
        print(f"[{stats_line(chat['state']['stats'])}]", file=sys.stderr)
    return messages + [{"role": "assistant", "content": answer.strip()}]

def chat_row(messages, system):
    # One row of phogpt_qlora.py --data
    system_turn = [{"role": "system", "content": system}] if system else []
    return {"messages": system_turn + messages}

# Why /save failed, in the student's words.
SAVE_ERRORS = {
    errno.ENOENT: "chưa có thư mục chứa {path}; hãy tạo thư mục đó trước",
    errno.EACCES: "không có quyền ghi vào {path}; hãy chọn tệp khác",
    errno.ENOSPC: "ổ đĩa đầy, không ghi vào {path} được; hội thoại vẫn còn",
}

# /save: append row to a .jsonl of rows; any other file (config.json, notes): ValueError.
def append_row(path, row):
    path = Path(path)
    old = path.read_bytes() if path.is_file() else b""
    try:
        rows = [json.loads(text) for text in old.decode("utf-8-sig").splitlines() if text.strip()]
    except ValueError:
        rows = [None]
    if path.suffix != ".jsonl" or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path} is not a .jsonl file of rows")
    line = b"\n" if old and not old.endswith(b"\n") else b""
    line += json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"
    # Unbuffered: a write that fails (a full disk) says so here, and is cut off.
    with open(path, "ab", buffering=0) as file:
        try:
            if file.write(line) != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            with contextlib.suppress(OSError):
                file.truncate(len(old))
            raise

def save_chat(path, history, system):
    if not path or not history:
        return "(cách dùng: /save TỆP.jsonl, sau ít nhất một câu trả lời)"
    path = os.path.expanduser(path)
    try:
        append_row(path, chat_row(history, system))
    except ValueError:
        # A config, weights, notes: not a JSONL of rows
        return f"(không lưu được: {path} không phải tệp .jsonl dữ liệu; hãy chọn tệp khác)"
    except OSError as err:
        reason = SAVE_ERRORS.get(err.errno, "{path}: " + str(err.strerror))
        return f"(không lưu được: {reason.format(path=path)})"
    return f"(đã thêm hội thoại này, {len(history) // 2} lượt, vào {path})"

COMMANDS = ("/reset (hội thoại mới), /undo (bỏ lượt cuối), "
            "/save TỆP (lưu hội thoại), /exit (thoát)")

def terminal_chat(chat, show_stats):
    print(f"Trò chuyện với {chat['name']}. Lệnh: {COMMANDS}. "
          "Ctrl+C dừng câu trả lời, Ctrl+D thoát.")
    # Arrow keys and a history of lines, in input()
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401
    history = []
    while True:
        try:
            line = input("\nBạn: ").strip()
            # Bytes that are not UTF-8 come as surrogates.
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
        if line == "/exit":
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
        elif clean(line):
            history = ask(chat, history, clean(line), show_stats)

# ---- the web page ----
# Instead of a failed answer; that turn is left out.
ERROR_SIGN = "⚠️ Lỗi:"
# Gradio has no Vietnamese: its words, translated.
PAGE_WORDS = {
    "chat_interface.message_placeholder": "Nhập câu hỏi rồi nhấn Enter…",
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
# The sampling flags as sliders: (label, low, high, step)
SLIDERS = {
    "temperature": ("Nhiệt độ (0 = luôn cùng một câu trả lời)", 0, 2, 0.05),
    "top_p": ("top-p", 0.05, 1, 0.05),
    "top_k": ("top-k (0 = mọi token)", 0, 200, 1),
    "repetition_penalty": ("Phạt lặp từ", 1, 2, 0.05),
    "max_new_tokens": ("Số token tối đa của câu trả lời", 1, None, 1),
}
# The browser saves the chat's line as a file.
DOWNLOAD_JS = """(line) => line && Object.assign(document.createElement("a"), {
  href: "data:application/jsonl;charset=utf-8," + encodeURIComponent(line),
  download: "phogpt-hoi-thoai.jsonl"}).click()"""
PAGE_JS = "() => { document.documentElement.lang = 'vi'; }"
# A phone's margins 4 px, not 32 (gradio scopes css=)
PAGE_HEAD = """<style>
@media (max-width: 600px) { .gradio-container .main { padding: 4px !important; } }
#status { font-size: 0.85em; opacity: 0.8; min-height: 1.5em; }
</style>"""

def page_messages(history):
    # Clean turns: text only, failed turns left out.
    messages = []
    for message in history:
        text = clean(message["content"])
        if message["role"] == "assistant" and ERROR_SIGN in text:
            # Its question goes too: no prompt holds it.
            messages = messages[:-1]
        else:
            messages.append({"role": message["role"], "content": text})
    return messages

def checked(sliders, values):
    # A browser keeps sliders in range; a script may not.
    for slider, value in zip(sliders, values):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and slider.minimum <= value <= slider.maximum):
            raise ValueError(f"“{slider.label}” phải là một số từ {slider.minimum} "
                             f"đến {slider.maximum} (nhận được {value!r})")
    return dict(zip(SLIDERS, values))

def web_page(chat, args):
    # No telemetry, no version check: before the import
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def respond(message, history, system, *values):
        # Streams (answer so far, status line).
        answer = ""
        try:
            messages = page_messages(history + [{"role": "user", "content": message}])
            notice, pieces = answer_pieces(
                chat, messages, f"“{SLIDERS['max_new_tokens'][0]}”", clean(system),
                **checked(settings[1:], values))
            if notice:
                gr.Info(notice)
            for piece in pieces:
                answer += piece
                yield answer, "PhoGPT đang trả lời…"
            yield answer, stats_line(chat["state"]["stats"])
        except ValueError as err:
            # Input or settings: what to change.
            print(f"trang web: {err}", file=sys.stderr)
            yield f"{ERROR_SIGN} {err}", ""
        except Exception as err:
            # Anything else: said (stream_answer dropped a broken cache).
            print(f"web page: {type(err).__name__}: {err}", file=sys.stderr)
            yield f"{answer}\n\n{ERROR_SIGN} {type(err).__name__}: {err}".lstrip(), ""

    def download(history, system):
        messages = page_messages(history)
        if not any(m["role"] == "assistant" for m in messages):
            gr.Info("Chưa có câu trả lời nào để tải về.")
            return ""
        row = chat_row(messages[:len(messages) // 2 * 2], clean(system))
        return json.dumps(row, ensure_ascii=False) + "\n"

    # Settings under the chat, from the flags.
    settings = [gr.Textbox(chat["system"], label="Lời dặn hệ thống (system prompt)",
                           placeholder="Ví dụ: Hãy trả lời ngắn gọn.", lines=2)]
    for name, (label, low, high, step) in SLIDERS.items():
        value = chat["sampling"][name]
        high = high or chat["context"] // 2
        settings.append(gr.Slider(min(low, value), max(high, value), value=value,
                                  step=step, label=label))
        # Gradio's own check prints a traceback.
        settings[-1].preprocess = lambda value: value
    with gr.Blocks(title="PhoGPT") as page:
        status = gr.Markdown(elem_id="status", render=False)
        ui = gr.ChatInterface(respond, additional_inputs=settings, additional_outputs=[status],
                              chatbot=gr.Chatbot(label="PhoGPT", buttons=["copy"]),
                              examples=[["Xin chào, bạn là ai?"], ["Hà Nội có món gì ngon?"]],
                              title="PhoGPT", description=f"Mô hình: {chat['name']}")
        status.render()
        line = gr.Textbox(visible=False)
        save = gr.Button("⬇️ Tải hội thoại (.jsonl)", size="sm")
        saved = save.click(download, [ui.chatbot, settings[0]], line, api_visibility="undocumented")
        saved.then(None, line, None, js=DOWNLOAD_JS)
    print(f"Trang web: http://127.0.0.1:{args.port} (Ctrl+C để dừng)", flush=True)
    auth = tuple(args.auth.split(":", 1)) if args.auth != "none" else None
    # Vietnamese whatever the browser's language
    words = gr.I18n(en=PAGE_WORDS, vi=PAGE_WORDS)
    page.launch(server_name="127.0.0.1", server_port=args.port, share=args.share, auth=auth,
                auth_message="Nhập tên và mật khẩu (--auth) để mở trang.", quiet=not args.share,
                ssr_mode=False, head=PAGE_HEAD, js=PAGE_JS, i18n=words)

# ---- run: the model, then the chat ----
if __name__ == "__main__":
    chat = load_chat(args, model_name, base, device, load_in)
    torch.manual_seed(args.seed)
    if question.strip():
        ask(chat, [], clean(question), args.stats, one_shot=True)
    elif args.ui:
        web_page(chat, args)
    else:
        terminal_chat(chat, args.stats)
