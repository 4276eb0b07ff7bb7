"""The chat's web page in a real browser, used as a student uses it.

Headless Chromium (Debian's `chromium` package) driven by Playwright from pip: the page is opened
on a phone-sized screen, questions are typed on the keyboard and sent with Enter, with the page's
default settings (temperature 1: the browser sends it as the integer 1). The tiny model carries
an adapter trained by phogpt_qlora.py, so the answers are known. Screenshots of a failing run land
in the test's tmp folder (pytest prints its path).
"""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from test_phogpt_chat import ENV, GREETING, ROOT, adapter_dir, free_port, model_dir  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None
pytestmark = pytest.mark.skipif(
    sync_playwright is None or not os.path.exists(CHROMIUM),
    reason="needs Debian's chromium (/usr/bin/chromium) and pip's playwright (CI installs both)")

NAME = "Tôi là trợ lý ảo của BICweb."
# Every text the last answer shows on screen, in order: the page records it itself, because a
# tiny model answers in milliseconds, faster than the test could poll from outside.
RECORD_ANSWERS = """() => {
  window.shownAnswers = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('[data-testid=bot]');
    if (!answers.length) return;
    const text = answers[answers.length - 1].innerText.trim();
    const seen = window.shownAnswers;
    if (text && seen[seen.length - 1] !== text) seen.push(text);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def start_page(flags, log):
    """python phogpt_chat.py --ui ... in the background; return (process, url) once it listens."""
    port = free_port()
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "phogpt_chat.py"), "--ui",
                               "--port", str(port), *flags], stdout=log, stderr=subprocess.STDOUT,
                              env=ENV, cwd=ROOT)
    end = time.time() + 240
    while True:
        assert server.poll() is None, open(log.name, encoding="utf-8").read()[-2000:]
        assert time.time() < end, "the page did not start in 240 s"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, f"http://127.0.0.1:{port}/"
        time.sleep(0.5)


def ask(page, question):
    """Type a question on the keyboard and press Enter, as a student does; return the answer."""
    box = page.locator("textarea").first
    expect(box).to_be_editable(timeout=60_000)
    before = page.locator("[data-testid=bot]").count()
    box.click()
    page.keyboard.type(question)
    page.keyboard.press("Enter")
    return answer_number(page, before + 1)


def answer_number(page, count):
    """The last answer, once there are count of them and the page takes a new question again."""
    answers = page.locator("[data-testid=bot]")
    expect(answers).to_have_count(count, timeout=120_000)
    expect(page.locator("textarea").first).to_be_editable(timeout=120_000)
    return answers.last.inner_text().strip()


def test_two_turns_stream_then_retry_undo_clear(adapter_dir, tmp_path):  # noqa: F811
    log = open(tmp_path / "server.log", "w", encoding="utf-8")
    # --adapter alone: the base model and every setting are the defaults a student gets.
    server, url = start_page(["--adapter", adapter_dir], log)
    browser = None
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
                viewport={"width": 390, "height": 844}, accept_downloads=True,
                args=["--headless", "--no-sandbox", "--disable-gpu",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync", "--no-first-run"])
            page = browser.new_page()
            try:
                use_the_page(page, url, tmp_path)
            except BaseException:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    server_log = (tmp_path / "server.log").read_text(encoding="utf-8")
    assert "Traceback" not in server_log and "web page:" not in server_log, server_log[-2000:]


def use_the_page(page, url, tmp_path):
    page.goto(url)
    box = page.locator("textarea").first
    box.wait_for()
    placeholder = box.get_attribute("placeholder")
    page.screenshot(path=str(tmp_path / "phone-empty.png"), full_page=True)
    page.evaluate(RECORD_ANSWERS)

    # Two turns; the first answer grows on screen in several steps.
    assert ask(page, "Xin chào") == GREETING
    # In Vietnamese: what to type, and the settings.
    assert placeholder == "Nhập câu hỏi rồi nhấn Enter…"
    expect(page.get_by_text("⚙️ Cài đặt")).to_be_visible()
    shown = page.evaluate("window.shownAnswers")
    assert len(shown) >= 3 and shown[-1] == GREETING, shown
    assert all(later.startswith(earlier) for earlier, later in zip(shown, shown[1:])), shown
    assert ask(page, "Bạn tên là gì?") == NAME
    expect(page.locator("#status")).to_contain_text("tok/s")
    expect(page.locator("#status")).to_contain_text("token đầu sau")
    # A phone shows it all without scrolling sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(tmp_path / "phone-chat.png"), full_page=True)

    # The download is one JSONL line, the format of /save and of phogpt_qlora.py --data.
    with page.expect_download() as download:
        page.get_by_role("button", name="Tải hội thoại").click()
    row = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert row == {"messages": [
        {"role": "user", "content": "Xin chào"}, {"role": "assistant", "content": GREETING},
        {"role": "user", "content": "Bạn tên là gì?"}, {"role": "assistant", "content": NAME}]}

    # Retry answers the last question again; Undo takes the turn back; Clear starts over.
    answers = page.locator("[data-testid=bot]")
    page.evaluate("window.shownAnswers = []")
    page.get_by_role("button", name="Hỏi lại").click()
    page.wait_for_function("name => window.shownAnswers.length > 1 && "
                           "window.shownAnswers[window.shownAnswers.length - 1] === name", arg=NAME)
    assert answer_number(page, 2) == NAME
    page.get_by_role("button", name="Hoàn tác").click()
    expect(answers).to_have_count(1)
    expect(page.locator("textarea").first).to_have_value("Bạn tên là gì?")
    page.locator("textarea").first.fill("")
    page.get_by_role("button", name="Xoá hội thoại").click()
    expect(answers).to_have_count(0)

    # A question too long for the context: a readable message in the chat, then the page goes on.
    box.fill("Xin chào " * 400)
    box.press("Enter")
    assert "⚠️ Lỗi: câu hỏi dài" in answer_number(page, 1)
    assert ask(page, "Xin chào") == GREETING

    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(tmp_path / "desktop-chat.png"), full_page=True)
