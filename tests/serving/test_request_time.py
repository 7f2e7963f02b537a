"""The time of the request: a TiM4Rec trained with ``request_time`` answers differently an hour and a month
after the last event, from the streaming state as from the history; a time before the last event is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

import tim4rec
from tests.conftest import SMALL
from tests.serving.conftest import Server
from tim4rec.serving import Recommender, UserStore
from tim4rec.serving.recommender import HistoryError

HOUR, MONTH = 3600, 30 * 86_400


@pytest.fixture(scope="module")
def reading(slice_with_titles: Path, tmp_path_factory) -> Path:
    """best.pt of a TiM4Rec that reads the request time (one short epoch, L = 20)."""
    root = tmp_path_factory.mktemp("request-time")
    tim4rec.train(model="tim4rec", dataset=slice_with_titles, output_dir=root, epochs=1, threads=1,
                  show_progress=False, MAX_ITEM_LIST_LENGTH=20, request_time=True, **SMALL["tim4rec"])  # fmt: skip
    return root / "best.pt"


def a_history(recommender: Recommender) -> list[tuple[str, float]]:
    user = next(u for u in recommender.user_index if len(recommender.user_history(u)) >= 30)
    return recommender.user_history(user)[:30]


def scores(answer) -> list[float]:
    return [item.score for item in answer.items]


def test_the_request_time_changes_a_reading_models_answer_and_not_another(reading: Path, trained):
    for path, reads in ((reading, True), (trained["tim4rec"], False)):
        recommender = Recommender.load(path)
        history = a_history(recommender)
        last = history[-1][1]
        soon, later = (recommender.recommend(history, k=20, request_time=last + gap) for gap in (HOUR, MONTH))
        assert (scores(soon) != scores(later)) is reads
        with pytest.raises(HistoryError, match="request_time: .* is before the history's last event"):
            recommender.recommend(history, request_time=last - 1)


def test_the_state_at_a_request_time_equals_the_history_at_that_time(reading: Path):
    recommender = Recommender.load(reading)
    store = UserStore(recommender)
    history = a_history(recommender)
    store.observe("new", history)
    for gap in (0, HOUR, MONTH):
        when = history[-1][1] + gap
        from_state = store.recommend("new", k=10, request_time=when)
        from_history = recommender.recommend(history, k=10, request_time=when)
        assert from_state.metadata["source"] == "streaming state"
        assert [i.item for i in from_state.items] == [i.item for i in from_history.items]
        assert scores(from_state) == pytest.approx(scores(from_history), rel=1e-4, abs=1e-5)
    with pytest.raises(HistoryError, match="before the history's last event"):
        store.recommend("new", request_time=history[-1][1] - 60)
    store.close()


def test_http_takes_the_request_time(reading: Path, tmp_path: Path):
    server = Server(reading, tmp_path / "users.sqlite").start()
    try:
        with server.client() as client:
            events = [{"item": "50", "time": 1_000_000_000}, {"item": "100", "time": 1_000_000_600}]
            soon = client.post("/recommend", json={"history": events, "request_time": 1_000_004_200})
            later = client.post("/recommend", json={"history": events, "request_time": 1_000_000_600 + MONTH})
            assert soon.status_code == later.status_code == 200
            assert [i["score"] for i in soon.json()["items"]] != [i["score"] for i in later.json()["items"]]
            early = client.post("/recommend", json={"history": events, "request_time": 999_999_999})
            assert early.status_code == 400 and "request_time" in early.text
            client.post("/users/back/events", json={"events": events})
            assert client.get("/users/back/recommendations?request_time=1000003600").status_code == 200
            assert client.get("/users/back/recommendations?request_time=999").status_code == 400
            assert client.get("/users/back/recommendations?request_time=nan").status_code == 422
    finally:
        server.stop()


def test_the_demo_page_shows_the_list_for_a_user_coming_back_later(reading: Path, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.serving.test_demo_page import browser_or_skip

    server = Server(reading, tmp_path / "users.sqlite").start()
    browser = browser_or_skip()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#recommendations li")) == 10)

        def shown() -> tuple[list[str], str]:  # read in one script: the list is rebuilt while the page answers
            return tuple(browser.execute_script(
                "return [[...document.querySelectorAll('#recommendations li')].map((li) => li.textContent),"
                " document.getElementById('recommendation-note').textContent];"))  # fmt: skip

        lists = {}
        for label in ("right after", "a month later"):
            note_before = shown()[1]
            browser.find_element(By.XPATH, f"//div[@id='come-back']/button[text()='{label}']").click()
            wait.until(lambda b, old=note_before: shown()[1] != old and len(shown()[0]) == 10)
            lists[label] = shown()
        (after, after_note), (month, month_note) = lists["right after"], lists["a month later"]
        assert "new" not in " ".join(after)  # nothing is new against itself
        assert month != after  # a month later the scores (and here the list) differ
        assert '"new"' in month_note and "UTC" in month_note
        assert after_note.split(" for ")[1][:16] != month_note.split(" for ")[1][:16]  # the time the list is for
    finally:
        browser.quit()
        server.stop()
