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
import logging
import os
import socket
import sys
import time
import warnings

import prompts

# ---- flags ----
parser = argparse.ArgumentParser(
    description="Multi-turn chat with PhoGPT, in the terminal or in a web page.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
# the model
parser.add_argument("--model", default="auto",
                    help="hub id or folder, a merged model too "
                         "(auto: the base the --adapter was trained on, else vinai/PhoGPT-4B-Chat)")
parser.add_argument("--adapter", default="none",
                    help="LoRA adapter folder written by phogpt_qlora.py (none: the model alone)")
parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                    help="auto: cuda, else mps, else cpu (dtype: bf16, fp16 on a T4, fp32 on CPU)")
parser.add_argument("--load-in", default="auto", choices=["auto", "4bit", "8bit", "none"],
                    help="base weights (auto: 4bit nf4 on CUDA, none elsewhere)")
parser.add_argument("--template", default="auto", choices=["auto", "chat", "instruct"],
                    help="prompt template (auto: instruct if the model's name says so)")
# the conversation
parser.add_argument("--system", default="",
                    help="instructions for the whole chat, put before the first question")
parser.add_argument("--max-length", default="auto",
                    help="context in tokens, prompt + answer (auto: the model's, 8192 for 4B)")
# sampling: VinAI's README uses do_sample, temperature 1.0, top_k 50, top_p 0.9
parser.add_argument("--temperature", type=float, default=1.0,
                    help="randomness, 0..10 (0 = greedy: the same answer every time)")
parser.add_argument("--top-p", type=float, default=0.9,
                    help="sample from the likeliest tokens holding this much probability (0..1]")
parser.add_argument("--top-k", type=int, default=50,
                    help="sample among the k likeliest tokens (0 = all)")
parser.add_argument("--repetition-penalty", type=float, default=1.0,
                    help="above 1 discourages repeating what is already in the chat (0..10]")
parser.add_argument("--max-new-tokens", type=int, default=1024,
                    help="longest answer in tokens (at most half the context)")
parser.add_argument("--seed", type=int, default=1337,
                    help="random seed: the same seed and input give the same answers")
# what to run
parser.add_argument("--prompt", default="",
                    help="answer this one question and end (empty: chat; piped stdin works too)")
parser.add_argument("--ui", action="store_true", help="a web page instead of the terminal chat")
parser.add_argument("--port", type=int, default=7860,
                    help="port of the web page (1..65535); it listens on 127.0.0.1 only")
parser.add_argument("--share", action="store_true",
                    help="also publish a temporary public gradio.live link (opt-in)")
parser.add_argument("--auth", default="none",
                    help="user:password asked before the web page opens (none: no login)")
parser.add_argument("--stats", action="store_true",
                    help="print tok/s and the first token's time after each answer")
parser.add_argument("--compile", action="store_true",
                    help="GPU: static KV cache + torch.compile (the first answer waits for it)")


def fail(message):
    sys.exit(f"error: {message}")


parser.error = fail
# Imported (by the tests, the benchmark), this file only lends its functions: no flags read then.
args = parser.parse_args([] if "ipykernel" in sys.modules or __name__ != "__main__" else None)

# ---- check every flag before any work (torch is not even imported yet) ----
ranges = [
    ("--temperature", args.temperature, 0 <= args.temperature <= 10, "between 0 and 10",
     "0 for greedy, 0.7 for varied answers"),
    ("--top-p", args.top_p, 0 < args.top_p <= 1, "above 0 and at most 1", "try 0.9"),
    ("--top-k", args.top_k, 0 <= args.top_k <= 1_000_000, "between 0 and 1000000",
     "0 for all tokens, or 50"),
    ("--repetition-penalty", args.repetition_penalty, 0 < args.repetition_penalty <= 10,
     "above 0 and at most 10", "1 (off) to 1.2"),
    ("--max-new-tokens", args.max_new_tokens, 1 <= args.max_new_tokens <= 1_000_000,
     "between 1 and 1000000", "try 512"),
    ("--seed", args.seed, -2**63 <= args.seed < 2**64, "between -2**63 and 2**64-1", "1337"),
    ("--port", args.port, 1 <= args.port <= 65535, "between 1 and 65535", "try 7860"),
]
for flag, value, ok, allowed, hint in ranges:
    if not ok:
        fail(f"{flag} must be {allowed} (got {value}); fix: {hint}")
if args.max_length != "auto":
    try:
        args.max_length = int(args.max_length)
    except ValueError:
        fail(f"--max-length takes a number of tokens or auto (got {args.max_length!r}); "
             "fix: leave it out to use the model's own context")
    if not 16 <= args.max_length <= 1_000_000:
        fail(f"--max-length must be between 16 and 1000000 tokens (got {args.max_length}); "
             "fix: leave it out to use the model's own context")
auth = None
if args.auth != "none":
    user, _, password = args.auth.partition(":")
    if not user or not password:
        fail("--auth takes user:password, both non-empty; fix: for example --auth lan:matkhau")
    auth = (user, password)
for flag, text in (("--prompt", args.prompt), ("--system", args.system)):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"{flag} is not UTF-8 text; fix: type it again in a UTF-8 terminal")

# The libraries' notices (deprecations, optional kernels) are for us, not for a student mid-chat.
warnings.filterwarnings("ignore")
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

# Heavy imports after the flags, so --help and a flag error are instant.
import torch  # noqa: E402

import plumbing  # noqa: E402

# bitsandbytes only for --load-in 4bit/8bit, before transformers and peft look for it
# (imported by the tests or the benchmark, this file leaves the process as it is).
if __name__ == "__main__":
    plumbing.keep_hub_code_out(args.load_in, torch.cuda.is_available())
from transformers import (  # noqa: E402
    DynamicCache,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StaticCache,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from transformers.utils import logging as transformers_logging  # noqa: E402

from phogpt_model import CACHE_NAME, load_phogpt, pick_dtype  # noqa: E402

# "Token indices sequence length is longer than...": we cut the history ourselves.
transformers_logging.set_verbosity_error()

# ---- one answer: prompt, KV cache, sampling, streaming ----
# Shown instead of an answer when something failed (the web page then leaves that turn out).
ERROR_SIGN = "⚠️ Lỗi:"


def fit_history(tokenizer, messages, budget, template="chat", system="", first=0):
    """Token ids of the prompt for messages (ending with a question), in budget tokens if it can.

    Drops the oldest question/answer pairs first, starting from messages[first:] (so an earlier
    cut stays put and the KV cache of the kept turns stays valid). Returns (ids, first); the ids
    are longer than budget only when the last question alone does not fit.
    """
    while True:
        text = prompts.generation_prompt(messages[first:], tokenizer.eos_token, template, system)
        # Tokenised exactly as phogpt_qlora.py tokenises its training text.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget or len(messages) - first <= 1:
            return ids, first
        first += 2


def sampler(temperature, top_p, top_k, repetition_penalty):
    """transformers' logits processors, in generate()'s order, for these settings."""
    # A browser sends a slider at 1 as the int 1; the warpers only take floats.
    processors = LogitsProcessorList()
    if repetition_penalty != 1:
        processors.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty)))
    if temperature > 0:
        processors.append(TemperatureLogitsWarper(float(temperature)))
        if top_k > 0:
            processors.append(TopKLogitsWarper(int(top_k)))
        if top_p < 1:
            processors.append(TopPLogitsWarper(float(top_p)))
    return processors


def reuse_cache(model, state, prompt_ids):
    """Keep the cached keys and values of the prompt's longest prefix; return its length."""
    held = state["ids"]
    reused = 0
    # Keep at least one new token: its logits give the first answer token.
    while reused < min(len(held), len(prompt_ids) - 1) and held[reused] == prompt_ids[reused]:
        reused += 1
    if state["cache"] is None and state.get("static"):
        state["cache"] = StaticCache(config=model.config, max_cache_len=state["static"])
    elif state["cache"] is None:
        state["cache"] = DynamicCache(config=model.config)
    if reused < len(held) and state["cache"].is_croppable:
        # crop takes minus the number of tokens to drop.
        state["cache"].crop(reused - len(held))
    elif reused < len(held):
        # A StaticCache of transformers 5.23 cannot crop: start it over and encode everything.
        state["cache"].reset()
        reused = 0
    state["ids"] = prompt_ids[:reused]
    return reused


def shown_part(raw, stop):
    """What of the answer so far can be shown, and whether the stop string has come."""
    if stop in raw:
        return raw[:raw.index(stop)].strip(), True
    # Hold back an ending that may be the start of the stop string, and half a UTF-8 character.
    hold = next((k for k in range(min(len(stop) - 1, len(raw)), 0, -1)
                 if raw.endswith(stop[:k])), 0)
    return raw[:len(raw) - hold].lstrip().rstrip("\ufffd"), False


@torch.inference_mode()
def stream_answer(model, tokenizer, prompt_ids, state, stop, temperature=1.0, top_p=0.9, top_k=50,
                  repetition_penalty=1.0, max_new_tokens=1024):
    """Generate an answer to prompt_ids, yielding its text piece by piece.

    state = {"cache": None, "ids": []} carries the KV cache from turn to turn: only the tokens
    after the common prefix are encoded. With state["static"] = n the cache is a StaticCache of
    n tokens and state["step"] (e.g. torch.compile(model)) decodes one token at a time on it.
    Stops at EOS or at the stop string, which is never shown. Leaves {"tokens", "prompt",
    "reused", "first_token_s", "seconds"} in state["stats"].
    """
    start = time.perf_counter()
    processors = sampler(temperature, top_p, top_k, repetition_penalty)
    reused = reuse_cache(model, state, prompt_ids)
    device = next(model.parameters()).device
    seen = torch.tensor([prompt_ids], device=device)
    new_ids, answer_ids, shown, first_token_s = prompt_ids[reused:], [], "", 0.0
    compiled = state.get("step")
    for _ in range(max_new_tokens):
        # The prompt goes through the eager model; single tokens through the compiled step.
        step = compiled if compiled is not None and len(new_ids) == 1 else model
        out = step(input_ids=torch.tensor([new_ids], device=device), use_cache=True,
                   logits_to_keep=1, **{CACHE_NAME: state["cache"]})
        state["ids"] = state["ids"] + new_ids
        logits = processors(seen, out.logits[:, -1, :].float())
        if temperature > 0:
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1)[0, 0].item()
        else:
            token = logits.argmax(dim=-1)[0].item()
        first_token_s = first_token_s or time.perf_counter() - start
        if token == tokenizer.eos_token_id:
            break
        answer_ids.append(token)
        seen = torch.cat([seen, torch.tensor([[token]], device=device)], dim=1)
        new_ids = [token]
        visible, stopped = shown_part(tokenizer.decode(answer_ids, skip_special_tokens=True), stop)
        if len(visible) > len(shown):
            yield visible[len(shown):]
            shown = visible
        if stopped:
            break
    # What was held back (a "#" that was not the stop string after all) is shown now.
    raw = tokenizer.decode(answer_ids, skip_special_tokens=True)
    visible = shown_part(raw, stop)[0] if stop in raw else raw.strip().rstrip("\ufffd")
    if len(visible) > len(shown):
        yield visible[len(shown):]
    state["stats"] = {"tokens": len(answer_ids), "prompt": len(prompt_ids), "reused": reused,
                      "first_token_s": first_token_s, "seconds": time.perf_counter() - start}


def stats_line(stats):
    """Speed of one answer, in the words the chat uses."""
    decode_s = stats["seconds"] - stats["first_token_s"]
    speed = (stats["tokens"] - 1) / decode_s if stats["tokens"] > 1 and decode_s > 0 else 0.0
    return (f"{stats['tokens']} token, {speed:.1f} tok/s, token đầu sau "
            f"{1000 * stats['first_token_s']:.0f} ms, prompt {stats['prompt']} token "
            f"({stats['reused']} dùng lại từ KV cache)")


def prompt_for(chat, messages, system, max_new_tokens, knob):
    """Prompt ids for messages, the oldest turns dropped to fit the context: (ids, notice).

    Raises ValueError with a message for the student when the last question alone is too long;
    knob names the setting that shortens answers (a flag in the terminal, a slider on the page).
    """
    context = chat["context"]
    # Keep an earlier cut while the chat goes on, so the KV cache of the kept turns stays valid.
    dropped = chat["dropped"]
    same_start = messages[:len(dropped)] == dropped and len(messages) > len(dropped)
    first = len(dropped) if same_start else 0
    budget = context - max_new_tokens
    ids, first_now = fit_history(chat["tokenizer"], messages, budget, chat["template"], system,
                                 first)
    if len(ids) >= context:
        raise ValueError(f"câu hỏi dài {len(ids)} token, vượt cả ngữ cảnh {context} token của "
                         "mô hình: hãy hỏi ngắn hơn hoặc chia thành nhiều câu")
    if len(ids) > budget:
        raise ValueError(f"câu hỏi dài {len(ids)} token, cộng câu trả lời tối đa "
                         f"{max_new_tokens} token thì vượt ngữ cảnh {context} token: hãy giảm "
                         f"{knob} xuống {context - len(ids)} hoặc hỏi ngắn hơn")
    chat["dropped"] = messages[:first_now]
    notice = None
    if first_now > first:
        notice = (f"đã bỏ {first_now // 2} lượt hỏi đáp cũ nhất để câu hỏi và câu trả lời "
                  f"{max_new_tokens} token vừa ngữ cảnh {context} token")
    return ids, notice


def conversation_line(messages, system):
    """The chat as one JSONL line, {"messages": [...]}: the format of phogpt_qlora.py --data."""
    system_turn = [{"role": "system", "content": system}] if system else []
    return json.dumps({"messages": system_turn + messages}, ensure_ascii=False) + "\n"


# ---- the terminal chat ----
COMMANDS = "/reset (hội thoại mới), /undo (bỏ lượt cuối), /save TỆP (lưu hội thoại), /exit (thoát)"


def save_chat(path, history, system):
    """Append the chat to path as one JSONL line; return the notice to print."""
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
                # A full disk: cut the half-written line, so the file stays as it was.
                with contextlib.suppress(OSError):
                    f.truncate(size)
                raise
    except IsADirectoryError:
        return f"(không lưu được: {path} là một thư mục; hãy ghi tên tệp, ví dụ {path}/chat.jsonl)"
    except (FileNotFoundError, NotADirectoryError):
        return f"(không lưu được: chưa có thư mục chứa {path}; hãy tạo thư mục đó trước)"
    except PermissionError:
        return f"(không lưu được: không có quyền ghi vào {path}; hãy chọn tệp khác)"
    except OSError as err:
        reason = "ổ đĩa đã đầy" if err.errno == errno.ENOSPC else err.strerror or err
        return f"(không lưu được vào {path}: {reason}; hội thoại vẫn còn)"
    return f"(đã thêm hội thoại này, {len(history) // 2} lượt, vào {path})"


def terminal_chat(chat, show_stats):
    """Questions from the keyboard, answers streamed to the screen, until /exit or Ctrl+D."""
    print(f"Trò chuyện với {chat['name']}. Lệnh: {COMMANDS}. Ctrl+C dừng câu trả lời, "
          "Ctrl+D thoát.")
    try:
        # Arrow keys and a history of what was typed, in input().
        import readline  # noqa: F401
    except ImportError:
        pass
    history = []
    while True:
        try:
            line = prompts.nfc(input("\nBạn: ")).strip()
            # readline hands bytes that are not UTF-8 over as lone surrogates: catch them here.
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
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = []
            print("(hội thoại mới)")
        elif line == "/undo":
            history = history[:-2]
            print(f"(đã bỏ lượt cuối; còn {len(history) // 2} lượt)")
        elif line.split()[:1] == ["/save"]:
            print(save_chat(line[len("/save"):].strip(), history, chat["system"]))
        elif line.startswith("/"):
            print(f"(lệnh: {COMMANDS})")
        elif prompts.defuse(line).strip():
            history = ask(chat, history, prompts.defuse(line).strip(), show_stats)


def ask(chat, history, question, show_stats):
    """One turn of the terminal chat; returns the history with it (or without, if it failed)."""
    messages = history + [{"role": "user", "content": question}]
    sampling = chat["sampling"]
    try:
        ids, notice = prompt_for(chat, messages, chat["system"], sampling["max_new_tokens"],
                                 "--max-new-tokens")
    except ValueError as err:
        print(f"({err})")
        return history
    if notice:
        print(f"({notice})")
    print("PhoGPT: ", end="", flush=True)
    answer = ""
    state = chat["state"]
    try:
        for piece in stream_answer(chat["model"], chat["tokenizer"], ids, state, chat["stop"],
                                   **sampling):
            print(piece, end="", flush=True)
            answer += piece
    except KeyboardInterrupt:
        print(" [đã dừng]", end="")
        # An interrupted forward may leave the cache half-updated: start it over.
        state.update(cache=None, ids=[], stats=None)
    print()
    if show_stats and state.get("stats"):
        print(f"[{stats_line(state['stats'])}]", file=sys.stderr)
    return messages + [{"role": "assistant", "content": answer.strip()}]


# ---- one question, one answer (--prompt or piped stdin) ----
def one_shot(chat, question, show_stats):
    """Print only the answer on stdout, for scripts and pipes."""
    sampling = chat["sampling"]
    messages = [{"role": "user", "content": prompts.defuse(question)}]
    try:
        ids, _ = prompt_for(chat, messages, chat["system"], sampling["max_new_tokens"],
                            "--max-new-tokens")
    except ValueError as err:
        fail(err)
    try:
        for piece in stream_answer(chat["model"], chat["tokenizer"], ids, chat["state"],
                                   chat["stop"], **sampling):
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        sys.exit(130)
    print()
    if show_stats:
        print(f"[{stats_line(chat['state']['stats'])}]", file=sys.stderr)


# ---- the web page ----
# Gradio has no Vietnamese; these replace its English words (flat keys win over its own).
PAGE_WORDS = {
    "chat_interface.message_placeholder": "Nhập câu hỏi rồi nhấn Enter…",
    "chat_interface.chatbot": "PhoGPT",
    "chatbot.retry": "Hỏi lại",
    "chatbot.undo": "Hoàn tác",
    "chatbot.clear": "Xoá hội thoại",
    "chatbot.copy_message": "Chép",
    "chatbot.copied_message": "Đã chép",
    "common.clear": "Xoá",
    "common.error": "Lỗi",
    "common.loading": "Đang tải",
    "common.settings": "Cài đặt",
    "common.built_with_gradio": "Làm bằng Gradio",
    "errors.use_via_api": "Dùng qua API",
    "errors.use_via_api_or_mcp": "Dùng qua API hoặc MCP",
}
EXAMPLES = ["Xin chào, bạn là ai?", "Viết bài văn nghị luận xã hội về an toàn giao thông",
            "Sửa lỗi chính tả:\nTriệt phá băng nhóm kướp ô tô, sử dụng \"vũ khí nóng\"",
            "Hà Nội có những món ăn nào nổi tiếng?"]
# The download happens in the browser: the page gets the line and saves it as a file.
DOWNLOAD_JS = """(line) => {
  if (!line) return;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([line], {type: "application/jsonl"}));
  link.download = "phogpt-hoi-thoai.jsonl";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}"""
PAGE_JS = "() => { document.documentElement.lang = 'vi'; }"
# On a 390 px phone the page's 32 px margins would take a sixth of the width. (In the page's
# head: gradio scopes its css= option to the inside of the app, where that margin is not.)
PAGE_HEAD = """<style>
@media (max-width: 600px) { .gradio-container .main { padding: 4px !important; } }
#status { font-size: 0.85em; opacity: 0.8; min-height: 1.5em; }
</style>"""


def text_of(content):
    """The text of a chat message as gradio hands it over (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "")
    return " ".join(text_of(part) for part in content or [])


def page_messages(history):
    """The chat from the page as clean turns: text only, NFC, defused, failed turns left out."""
    messages = []
    for message in history:
        text = prompts.defuse(text_of(message["content"])).strip()
        if message["role"] == "user":
            messages.append({"role": "user", "content": text})
        elif message["role"] == "assistant" and ERROR_SIGN in text:
            # A failed turn: its question goes too, so the next prompt never holds it.
            messages = messages[:-1]
        elif message["role"] == "assistant" and messages and messages[-1]["role"] == "user":
            messages.append({"role": "assistant", "content": text})
    return messages


def web_page(chat, args, auth):
    """The Gradio page: one shared model, a chat per browser tab."""
    # Before gradio is imported: no telemetry and no version check.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import gradio as gr

    def respond(message, history, system, temperature, top_p, top_k, repetition_penalty,
                max_new_tokens):
        """Answer message after history, streaming (answer, status line)."""
        answer = ""
        try:
            # The sliders check the ranges; a browser sends a slider at 1 as the int 1, so the
            # types are settled here (transformers' warpers only take floats).
            sampling = dict(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                            repetition_penalty=float(repetition_penalty),
                            max_new_tokens=int(max_new_tokens))
            question = prompts.defuse(text_of(message)).strip()
            if not question:
                raise ValueError("câu hỏi trống: hãy nhập câu hỏi")
            messages = page_messages(history) + [{"role": "user", "content": question}]
            system = prompts.defuse(system or "").strip()
            ids, notice = prompt_for(chat, messages, system, sampling["max_new_tokens"],
                                     "“Số token tối đa của câu trả lời”")
            if notice:
                gr.Info(notice)
            yield "", "PhoGPT đang trả lời…"
            for piece in stream_answer(chat["model"], chat["tokenizer"], ids, chat["state"],
                                       chat["stop"], **sampling):
                answer += piece
                yield answer, "PhoGPT đang trả lời…"
            yield answer, stats_line(chat["state"]["stats"])
        except ValueError as err:
            # The student's input or settings: say what to change, in the chat.
            yield f"{ERROR_SIGN} {err}", ""
        except Exception as err:
            # Whatever else broke, the student reads it in the chat and the page keeps working.
            chat["state"].update(cache=None, ids=[])
            print(f"web page: {type(err).__name__}: {err}", file=sys.stderr)
            reason = f"{type(err).__name__}: {err}"
            yield (answer + "\n\n" if answer else "") + f"{ERROR_SIGN} {reason}", ""

    def download(history, system):
        """The chat as the JSONL line of /save, or a notice when there is nothing yet."""
        messages = page_messages(history)
        if not any(m["role"] == "assistant" for m in messages):
            gr.Info("Chưa có câu trả lời nào để tải về.")
            return ""
        messages = messages[:len(messages) // 2 * 2]
        return conversation_line(messages, prompts.defuse(system or "").strip())

    start = chat["sampling"]
    # Built now, placed under the chat later (render=False); the page starts from the flags.
    settings = [
        gr.Textbox(chat["system"], label="Lời dặn hệ thống (system prompt)", lines=2,
                   placeholder="Ví dụ: Hãy trả lời ngắn gọn, lịch sự.", render=False),
        gr.Slider(0, max(2, start["temperature"]), value=start["temperature"], step=0.05,
                  label="Nhiệt độ (0 = luôn cùng một câu trả lời)", render=False),
        gr.Slider(0.05, 1, value=start["top_p"], step=0.05, label="top-p", render=False),
        gr.Slider(0, max(200, start["top_k"]), value=start["top_k"], step=1,
                  label="top-k (0 = mọi token)", render=False),
        gr.Slider(min(1, start["repetition_penalty"]), max(2, start["repetition_penalty"]),
                  value=start["repetition_penalty"], step=0.05, label="Phạt lặp từ",
                  render=False),
        gr.Slider(1, chat["context"] // 2, value=start["max_new_tokens"], step=1,
                  label="Số token tối đa của câu trả lời", render=False),
    ]
    with gr.Blocks(title="PhoGPT") as page:
        # The chat goes first on the page but is built last, once its inputs and outputs exist.
        chat_area = gr.Column()
        status = gr.Markdown(elem_id="status")
        save = gr.Button("⬇️ Tải hội thoại (.jsonl)", size="sm")
        with gr.Accordion("⚙️ Cài đặt", open=False):
            for box in settings:
                box.render()
        with chat_area:
            ui = gr.ChatInterface(
                respond, additional_inputs=settings, additional_outputs=[status],
                chatbot=gr.Chatbot(label="PhoGPT", buttons=["copy"]),
                examples=[[e] for e in EXAMPLES], cache_examples=False, title="PhoGPT",
                description=f"Mô hình: {chat['name']}", analytics_enabled=False)
        line = gr.Textbox(visible=False)
        save.click(download, [ui.chatbot, settings[0]], line, api_visibility="undocumented").then(
            None, line, None, js=DOWNLOAD_JS)
    share_note = "; đường dẫn công khai ở dưới" if args.share else ""
    print(f"Trang web: http://127.0.0.1:{args.port} (Ctrl+C để dừng{share_note})", flush=True)
    try:
        page.launch(server_name="127.0.0.1", server_port=args.port, share=args.share, auth=auth,
                    auth_message="Nhập tên và mật khẩu (--auth) để mở trang.", inbrowser=False,
                    ssr_mode=False, quiet=not args.share, show_error=True,
                    i18n=gr.I18n(en=PAGE_WORDS, vi=PAGE_WORDS), head=PAGE_HEAD, js=PAGE_JS)
    except OSError as err:
        fail(f"cannot listen on 127.0.0.1:{args.port} ({err}); fix: pass another --port")


# ---- settle what to load and what to answer (files, devices, ports: still no model) ----
def read_question(args):
    """The one question to answer (--prompt or piped stdin), or "" for a chat."""
    question = args.prompt
    piped = not args.ui and not sys.stdin.isatty() and "ipykernel" not in sys.modules
    if not question and piped:
        try:
            # Bytes, decoded strictly: Python's own stdin would let invalid bytes through.
            question = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            fail("stdin is not UTF-8 text; fix: save what you pipe in as UTF-8")
        if not question.strip():
            fail("the question on stdin is empty; fix: pass --prompt \"...\" or pipe some text")
    return prompts.nfc(question).strip()


def check_adapter(folder):
    """The base the adapter was trained on; one line and exit 1 if the folder is damaged."""
    fix = "train it again with phogpt_qlora.py"
    try:
        with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
            trained_on = json.load(f).get("base_model_name_or_path")
    except (ValueError, AttributeError):
        fail(f"{folder}/adapter_config.json is damaged (not a JSON object); fix: {fix}")
    weights = os.path.join(folder, "adapter_model.safetensors")
    if not os.path.exists(weights):
        fail(f"no adapter_model.safetensors in {folder}: the adapter is incomplete; fix: {fix}")
    from safetensors import safe_open
    try:
        with safe_open(weights, "pt") as f:
            f.keys()
    except Exception as err:
        fail(f"{weights} is damaged ({str(err)[:80]}); fix: {fix}")
    tokenizer_file = os.path.join(folder, "tokenizer.json")
    if os.path.exists(tokenizer_file):
        from tokenizers import Tokenizer
        try:
            Tokenizer.from_file(tokenizer_file)
        except Exception:
            fail(f"{tokenizer_file} is damaged (not a tokenizer); fix: {fix}")
    return trained_on


def settle(args):
    """Device, precision, model and adapter to load; every check that needs the machine."""
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        device = "mps" if device == "cpu" and torch.backends.mps.is_available() else device
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but PyTorch sees no CUDA GPU; fix: --device auto (or cpu)")
    if device == "mps" and not torch.backends.mps.is_available():
        fail("--device mps but this machine has no Apple GPU; fix: --device auto (or cpu)")
    load_in = args.load_in
    if load_in == "auto":
        load_in = "4bit" if device == "cuda" else "none"
    if load_in != "none" and device != "cuda":
        fail(f"--load-in {load_in} needs a CUDA GPU (bitsandbytes); fix: --load-in none")
    model, adapter, trained_on = args.model, args.adapter, None
    is_adapter = os.path.exists(os.path.join(adapter, "adapter_config.json"))
    if adapter != "none" and not is_adapter:
        if not os.path.exists(os.path.join(adapter, "config.json")):
            fail(f"no adapter_config.json in {adapter}; fix: pass the --output folder "
                 "of phogpt_qlora.py")
        print(f"{adapter} là một mô hình đầy đủ (đã gộp): tải nó như --model", file=sys.stderr)
        model, adapter = adapter, "none"
    if adapter != "none":
        trained_on = check_adapter(adapter)
    if model == "auto":
        model = trained_on or "vinai/PhoGPT-4B-Chat"
    if args.ui:
        with socket.socket() as probe:
            # As the server will: a port held by a listener fails, one in TIME_WAIT does not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", args.port))
            except PermissionError:
                fail(f"--port {args.port} needs root; fix: pick a port above 1023, e.g. 7860")
            except OSError:
                fail(f"--port {args.port} is already in use; fix: pass --port {args.port + 1} "
                     "or stop the other program")
    return dict(device=device, load_in=load_in, model=model, adapter=adapter,
                trained_on=trained_on)


# ---- the model ----
def load_chat(args, where):
    """Model, tokenizer and everything an answer needs, in one dict."""
    dtype = pick_dtype(where["device"])
    adapter = where["adapter"]
    name = where["model"] + (f" + {adapter}" if adapter != "none" else "")
    print(f"đang tải {name} ({where['load_in']}, {str(dtype)[6:]}, {where['device']})",
          file=sys.stderr)
    try:
        model, tokenizer = load_phogpt(where["model"], load_in=where["load_in"], dtype=dtype,
                                       device_map={"": where["device"]})
    except (ValueError, OSError) as err:
        fail(err)
    if adapter != "none":
        from peft import PeftModel
        trained_on = where["trained_on"] or "?"
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (RuntimeError, ValueError, KeyError):
            # peft says "size mismatch for ...lora_A...": another base shape.
            fail(f"the adapter in {adapter} was trained on another base model ({trained_on}); "
                 f"its shapes do not fit {where['model']}; fix: pass --model {trained_on}")
        same = os.path.basename(os.path.normpath(trained_on)) == os.path.basename(
            os.path.normpath(where["model"]))
        if not same:
            print(f"lưu ý: adapter được huấn luyện trên {trained_on}, nay dùng với "
                  f"{where['model']}", file=sys.stderr)
        if where["load_in"] == "none":
            # Plain weights again: no LoRA cost per token.
            model = model.merge_and_unload()
    model.eval()
    context = model.config.max_seq_len if args.max_length == "auto" else args.max_length
    max_new_tokens = args.max_new_tokens
    if max_new_tokens > context // 2:
        print(f"lưu ý: --max-new-tokens {max_new_tokens} hạ xuống {context // 2}, nửa ngữ cảnh "
              f"{context} token, để còn chỗ cho hội thoại", file=sys.stderr)
        max_new_tokens = context // 2
    template = args.template
    if template == "auto":
        template = "instruct" if "instruct" in where["model"].lower() else "chat"
    state = {"cache": None, "ids": []}
    if args.compile:
        step = torch.compile(model, mode="reduce-overhead", dynamic=False)
        state.update(static=context, step=step)
    sampling = dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                    repetition_penalty=args.repetition_penalty, max_new_tokens=max_new_tokens)
    return dict(model=model, tokenizer=tokenizer, name=name, template=template,
                stop=prompts.STOP_STRINGS[template], system=prompts.defuse(args.system).strip(),
                context=context, state=state, dropped=[], sampling=sampling)


# ---- run ----
if __name__ == "__main__":
    question = read_question(args)
    where = settle(args)
    chat = load_chat(args, where)
    torch.manual_seed(args.seed)
    if question:
        one_shot(chat, question, args.stats)
    elif args.ui:
        web_page(chat, args, auth)
    else:
        terminal_chat(chat, args.stats)
