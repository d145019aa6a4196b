"""The chat page in headless Chromium against real processes, in main and in queue mode."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import ChatSite
from tests.conftest import offline_flow
from tests.unit.engine.openai_stub import unused_base_url
from tests.unit.helpers import openai_conversation_flow

ANSWER = ".msg-answer .bubble"


def tokens(n: int) -> str:
    return "".join(f"tok{i} " for i in range(n))


def open_chat(page: Page, site: ChatSite, chatflow_id: str) -> None:
    page.goto(f"{site.url}/chat/{chatflow_id}/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")


def ask(page: Page, question: str) -> None:
    page.locator("#question").fill(question)
    page.locator("#question").press("Enter")


def answer_text(page: Page) -> str:
    return page.locator(ANSWER).last.evaluate("node => node.textContent")


def wait_for_answer_containing(page: Page, text: str) -> None:
    page.wait_for_function(
        "text => { const all = document.querySelectorAll('.msg-answer .bubble');"
        " return all.length && all[all.length - 1].textContent.includes(text); }",
        arg=text,
    )


def record_answer_growth(page: Page) -> None:
    """Record every text the last answer bubble shows (a MutationObserver, in the page)."""
    page.evaluate(
        """() => {
          window.__seen = [];
          new MutationObserver(() => {
            const all = document.querySelectorAll('.msg-answer .bubble');
            if (all.length) window.__seen.push(all[all.length - 1].textContent);
          }).observe(document.getElementById('messages'),
                     {childList: true, subtree: true, characterData: true});
        }"""
    )


def prediction_status(site: ChatSite, prediction_id: str) -> str:
    response = httpx.get(f"{site.url}/api/v1/predictions/{prediction_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["status"]


def test_browser_answer_grows_token_by_token_with_a_stop_button(page: Page, site: ChatSite):
    chatflow_id = site.create_chatflow(
        offline_flow(tokens=40, delay_ms=100),
        chatbot_config={"title": "Support bot", "welcomeMessage": "Hi! Ask me anything."},
    )
    open_chat(page, site, chatflow_id)
    expect(page.locator("#chat-title")).to_have_text("Support bot")
    expect(page.locator(".msg-welcome .bubble")).to_have_text("Hi! Ask me anything.")
    record_answer_growth(page)

    ask(page, "hello there")

    expect(page.locator(".msg-user .bubble").last).to_have_text("hello there")
    expect(page.locator("#stop")).to_be_visible()
    expect(page.locator("#send")).to_be_hidden()
    wait_for_answer_containing(page, "tok3 ")
    page.screenshot(path=str(site.screenshots / f"chat-mid-answer-{site.mode}.png"))
    expect(page.locator(".msg-answer").last).to_have_attribute("data-status", "succeeded")
    assert answer_text(page) == tokens(40)
    expect(page.locator("#send")).to_be_visible()
    expect(page.locator("#stop")).to_be_hidden()
    seen = [text for text in page.evaluate("window.__seen") if text]
    assert len(set(seen)) >= 10, "the answer should appear piece by piece"
    assert all(tokens(40).startswith(text) for text in seen)


def test_browser_stop_ends_the_answer_mid_way(page: Page, site: ChatSite):
    chatflow_id = site.create_chatflow(offline_flow(tokens=200, delay_ms=50))
    open_chat(page, site, chatflow_id)

    ask(page, "tell me a long story")
    wait_for_answer_containing(page, "tok2 ")
    page.locator("#stop").click()

    row = page.locator(".msg-answer").last
    expect(row).to_have_attribute("data-status", "cancelled")
    expect(row.locator(".tag")).to_have_text("Stopped")
    text = answer_text(page)
    assert text.startswith("tok0 tok1 tok2 ")
    assert "tok199" not in text
    assert prediction_status(site, row.get_attribute("data-prediction-id")) == "cancelled"
    expect(page.locator("#send")).to_be_visible()


def test_browser_reload_shows_the_conversation_from_the_database(page: Page, site: ChatSite):
    chatflow_id = site.create_chatflow(offline_flow(tokens=5))
    open_chat(page, site, chatflow_id)
    ask(page, "first question")
    expect(page.locator(".msg-answer").last).to_have_attribute("data-status", "succeeded")

    page.reload()

    expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    expect(page.locator(".msg-user .bubble")).to_have_text(["first question"])
    expect(page.locator(".msg-bot .bubble")).to_have_text([tokens(5).strip()])
    assert page.locator(".msg-bot .bubble").evaluate("n => n.textContent") == tokens(5)

    page.locator("#new-chat").click()

    expect(page.locator(".msg")).to_have_count(0)
    page.reload()
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    expect(page.locator(".msg")).to_have_count(0)


def test_browser_reload_mid_answer_resumes_it_once(page: Page, site: ChatSite):
    chatflow_id = site.create_chatflow(offline_flow(tokens=60, delay_ms=100))
    open_chat(page, site, chatflow_id)
    ask(page, "keep going")
    wait_for_answer_containing(page, "tok3 ")

    page.reload()

    expect(page.locator(".msg-user .bubble")).to_have_text(["keep going"])
    expect(page.locator(".msg-answer").last).to_have_attribute("data-status", "succeeded")
    assert answer_text(page) == tokens(60)
    expect(page.locator(".msg-answer")).to_have_count(1)


def test_browser_network_cut_mid_answer_resumes_without_duplicates(page: Page, site: ChatSite):
    chatflow_id = site.create_chatflow(offline_flow(tokens=60, delay_ms=100))
    open_chat(page, site, chatflow_id)
    ask(page, "hi")
    wait_for_answer_containing(page, "tok3 ")

    site.relay.cut()
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    assert answer_text(page) != tokens(60), "the cut should come mid-answer"
    site.relay.restore()

    expect(page.locator("#connection")).to_have_attribute("data-state", "online")
    expect(page.locator(".msg-answer").last).to_have_attribute("data-status", "succeeded")
    assert answer_text(page) == tokens(60)


def test_browser_web_restart_mid_answer_completes_without_duplicates(
    page: Page, queue_site: ChatSite
):
    site = queue_site
    chatflow_id = site.create_chatflow(offline_flow(tokens=60, delay_ms=100))
    open_chat(page, site, chatflow_id)
    ask(page, "hi")
    wait_for_answer_containing(page, "tok3 ")

    site.kill_web()
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    assert answer_text(page) != tokens(60), "the restart should come mid-answer"
    site.start_web()

    expect(page.locator(".msg-answer").last).to_have_attribute("data-status", "succeeded")
    assert answer_text(page) == tokens(60)
    expect(page.locator("#connection")).to_have_attribute("data-state", "online")


def test_browser_main_mode_restart_mid_answer_says_the_answer_was_lost(
    page: Page, main_site: ChatSite
):
    site = main_site
    chatflow_id = site.create_chatflow(offline_flow(tokens=60, delay_ms=100))
    open_chat(page, site, chatflow_id)
    ask(page, "hi")
    wait_for_answer_containing(page, "tok3 ")

    site.kill_web()  # main mode runs the answer in the web process: it dies with it
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    site.start_web()

    expect(page.locator(".msg-answer .error-card")).to_be_visible()
    expect(page.locator("#send")).to_be_visible()
    assert answer_text(page).startswith("tok0 tok1 tok2 tok3 ")


def test_browser_model_output_is_shown_as_text_never_as_html(page: Page, site: ChatSite):
    reply = "<script>window.pwned=1</script><b>bold</b> <img src=x onerror=window.pwned=2>"
    chatflow_id = site.create_chatflow(offline_flow(reply=reply, delay_ms=5))
    open_chat(page, site, chatflow_id)

    ask(page, "<i>question</i>")

    expect(page.locator(".msg-answer").last).to_have_attribute("data-status", "succeeded")
    assert answer_text(page) == reply
    assert page.locator(".msg-user .bubble").last.evaluate("n => n.textContent") == (
        "<i>question</i>"
    )
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.locator("#messages script, #messages b, #messages img, #messages i").count() == 0
    page.reload()
    expect(page.locator(".msg-answer, .msg-bot")).to_have_count(1)
    assert page.locator(".msg-bot .bubble").evaluate("n => n.textContent") == reply
    assert page.evaluate("typeof window.pwned") == "undefined"


def test_browser_failed_answer_shows_the_error_and_what_to_do(page: Page, main_site: ChatSite):
    site = main_site
    chatflow_id = site.create_chatflow(openai_conversation_flow(unused_base_url()))
    open_chat(page, site, chatflow_id)

    ask(page, "hi")

    card = page.locator(".msg-answer .error-card")
    expect(card.locator(".error-title")).to_have_text(
        "The model server is unreachable: check the chatflow's base URL and that the server runs."
    )
    expect(card.locator(".error-detail")).to_contain_text("is unreachable")
    expect(page.locator("#send")).to_be_visible()


def test_browser_start_page_lists_only_public_chatflows_to_anonymous_visitors(
    page: Page, main_site: ChatSite
):
    site = main_site
    flow = offline_flow(tokens=1)
    public = site.create_chatflow(flow, chatbot_config={"title": "Public helper"})
    deployed = site.create_chatflow(flow, is_public=False, deployed=True)
    private = site.create_chatflow(flow, is_public=False)

    page.goto(site.url + "/")

    links = page.locator("#chatflows a")
    expect(links).to_have_count(2)
    ids = set(links.evaluate_all("nodes => nodes.map(n => n.dataset.chatflowId)"))
    assert ids == {public, deployed}
    expect(page.locator(f'[data-chatflow-id="{public}"] .flow-title')).to_have_text("Public helper")

    response = page.goto(f"{site.url}/chat/{private}/")
    assert response is not None
    assert response.status == 401
    expect(page.locator(".refused h1")).to_have_text("Please log in")
