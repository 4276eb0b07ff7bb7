"""Prompt templates: the only place a template string lives.
Training and inference share these pure functions: a prompt is,
byte for byte, a prefix of the text the model was trained on."""
import re
import unicodedata

# onechat_tiny.py's rows: "Question: Q Answer: A".
ONECHAT_QUESTION = "Question:"
ONECHAT_ANSWER = "Answer:"
# PhoGPT-4B-Chat, as in its tokenizer_config.json.
PHOGPT_USER_FIRST = "### Câu hỏi: "
PHOGPT_USER_NEXT = "\n### Câu hỏi: "
# The generation prompt: the answer follows a space.
PHOGPT_ASSISTANT = "\n### Trả lời:"
# PhoGPT-7B5-Instruct (the turn separator is ours).
INSTRUCT_USER = "### Câu hỏi:\n"
INSTRUCT_ASSISTANT = "\n\n### Trả lời:"
INSTRUCT_TURN_SEPARATOR = "\n\n"
# The chat template in Jinja, for tokenizer files:
# test_prompts.py checks it against the published one.
PHOGPT_CHAT_TEMPLATE_JINJA = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}{% for message in messages %}"
    "{% if message['role'] == 'user' and loop.first %}"
    "{{ '### Câu hỏi: ' + message['content'].strip() }}"
    "{% elif message['role'] == 'user' %}{{ '\n### Câu hỏi: ' + message['content'].strip() }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '\n### Trả lời: ' + message['content'] + eos_token }}{% endif %}"
    "{% if loop.last %}{% if message['role'] == 'user' and add_generation_prompt %}"
    "{{ '\n### Trả lời:' }}{% endif %}{% endif %}{% endfor %}"
)
# A new question: stop there, even without EOS.
STOP_STRINGS = {"chat": PHOGPT_USER_NEXT.rstrip(), "instruct": "\n### Câu hỏi:"}
TEMPLATES = ("chat", "instruct")
# What a user must not type: '###' before 'Câu hỏi'
# or 'Trả lời', and tokens ('</s>' ends an answer).
TURN_MARKER = re.compile(r"#{3,}\s*(?:câu hỏi|trả lời)", re.IGNORECASE)
SPECIAL_TOKEN_TEXTS = ("</s>", "<s>", "<pad>", "<unk>")
# Looks like '#', but is not the template's.
LOOKALIKE_HASH = "\uff03"
# Unseen, besides format characters (Cf, e.g. U+200B):
# a joiner, Hangul fillers, variation selectors.
INVISIBLE = {"\u034f", "\u115f", "\u1160", "\u3164", "\uffa0", *map(chr, range(0xFE00, 0xFE10))}

def is_invisible(char):
    """True for a character that shows nothing."""
    return char in INVISIBLE or unicodedata.category(char) == "Cf"

def marker_spans(text):
    """Where each marker's visible characters are."""
    # In '###\u200b Câu hỏi:' the unseen one hides it.
    kept = [i for i, char in enumerate(text) if not is_invisible(char)]
    visible = "".join(text[i] for i in kept)
    return [kept[m.start():m.end()] for m in TURN_MARKER.finditer(visible)]

def nfc(text):
    """Text in NFC, as PhoGPT was trained on."""
    # A Mac pastes NFD: 'ế' as 'e' and two accents.
    return unicodedata.normalize("NFC", text)

def turn_markers(text):
    """Each piece of text that could forge a turn."""
    text = nfc(text)
    found = ["".join(text[i] for i in span) for span in marker_spans(text)]
    return found + [t for t in SPECIAL_TOKEN_TEXTS for _ in range(text.count(t))]

def defuse(text):
    """User text (NFC) that cannot forge a turn."""
    text = nfc(text)
    # A typed '### Trả lời:' would fake a turn: '#' to '＃'.
    hashes = {i for span in marker_spans(text) for i in span}
    text = "".join(LOOKALIKE_HASH if c == "#" and i in hashes else c for i, c in enumerate(text))
    # Dropping one token can join another ('<</s>/s>').
    while any(token in text for token in SPECIAL_TOKEN_TEXTS):
        for token in SPECIAL_TOKEN_TEXTS:
            text = text.replace(token, "")
    return text

def onechat_split(sentence):
    """'Question: Q Answer: A' -> (Q, A)."""
    sentence = nfc(sentence).strip()
    rest = sentence.removeprefix(ONECHAT_QUESTION)
    question, _, answer = rest.partition(ONECHAT_ANSWER)
    if rest == sentence or not question.strip() or not answer.strip():
        raise ValueError(f"a missing or empty question or answer in {sentence[:60]!r}")
    return question.strip(), answer.strip()

def onechat_prompt(question):
    """'Question: Q Answer:', for the tiny model."""
    return f"{ONECHAT_QUESTION} {nfc(question).strip()} {ONECHAT_ANSWER}"

def onechat_answer(answer):
    """' A', what it learns to write after that."""
    return " " + nfc(answer).strip()

def conversation_segments(messages, eos_token, template="chat", system=None):
    """(text, is_answer) pieces of the training text."""
    chat = template == "chat"
    first = PHOGPT_USER_FIRST if chat else INSTRUCT_USER
    later = PHOGPT_USER_NEXT if chat else INSTRUCT_TURN_SEPARATOR + INSTRUCT_USER
    prompt = PHOGPT_ASSISTANT if chat else INSTRUCT_ASSISTANT
    # PhoGPT has no system turn: its text opens the first question.
    texts = [system or ""] + [m["content"] for m in messages if m["role"] == "system"]
    system_text = "\n\n".join(nfc(t).strip() for t in texts if t.strip())
    segments = []
    for i, message in enumerate(m for m in messages if m["role"] != "system"):
        text = nfc(message["content"]).strip()
        role = message["role"]
        # Only answers are trained, EOS included.
        if role == "assistant":
            segments.append((" " + text + eos_token, True))
        elif role != "user":
            raise ValueError(f"unknown role {role!r}: use user, assistant or system")
        elif i == 0:
            text = (system_text + "\n\n" + text).strip()
            segments.append((first + text + prompt, False))
        else:
            segments.append((later + text + prompt, False))
    return segments

def conversation_text(messages, eos_token, template="chat", system=None):
    """The training text, as the chat_template writes it."""
    segments = conversation_segments(messages, eos_token, template, system)
    return "".join(text for text, _ in segments)

def generation_prompt(messages, eos_token, template="chat", system=None):
    """All turns, then the generation prompt."""
    # A prefix of conversation_text once it is answered.
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the last message must be the user's question")
    return conversation_text(messages, eos_token, template, system)

def pick_template(name, model):
    """'auto': 'instruct' if the model's name says so (PhoGPT-7B5-Instruct), else 'chat'."""
    if name != "auto":
        return name
    return "instruct" if "instruct" in model.lower() else "chat"

def instruct_prompt(instruction):
    """PhoGPT-7B5-Instruct's one-turn prompt."""
    return INSTRUCT_USER + nfc(instruction).strip() + INSTRUCT_ASSISTANT
