"""The Review page in Streamlit's AppTest: list, open by ?proposal=ID, comment and decide through the forms."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from analysis.review import ReviewStore, propose

PAGE = str(Path(__file__).resolve().parents[2] / "app" / "app_pages" / "review.py")
EVIL = "<script>alert(1)</script>"


def _recipe() -> dict:
    return {"atlas_recipe": 1, "tool_version": "0.1.0", "method": "ties", "parameters": {"density": 0.2},
            "weights": None, "export": {"format": "peft", "rank": 8},
            "inputs": [{"name": n, "path": f"/nonexistent/{n}", "sha256": "0" * 64, "format": "peft"}
                       for n in ("sst2", EVIL)]}


@pytest.fixture()
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "review.db"
    monkeypatch.setenv("ADAPTER_ATLAS_DB", str(path))
    return path


def _texts(at: AppTest) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.header, *at.caption])


def test_list_then_open(db: Path) -> None:
    with ReviewStore(db) as store:
        first = propose(store, _recipe(), "Merge sst2 + imdb", "ann")
        second = propose(store, _recipe(), EVIL, "bob", preview={"tasks": {"sst2": {"core_intact": 0.9}}})
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    listed = at.dataframe[0].value
    assert list(listed["id"]) == [second, first] and list(listed["status"]) == ["open", "open"]
    at.selectbox(key="review_pick").set_value(first)
    at.button(key="review_open").click().run()
    assert at.query_params["proposal"] in (str(first), [str(first)])
    assert "Merge sst2 \\+ imdb" in at.header[0].value


def test_query_param_opens_proposal_and_forms_append_history(db: Path) -> None:
    with ReviewStore(db) as store:
        pid = propose(store, _recipe(), EVIL, "ann", preview={"tasks": {"sst2": {"core_intact": 0.9}}})
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["proposal"] = str(pid)
    at.run()
    assert not at.exception
    assert at.metric[0].value == "open"
    assert EVIL not in _texts(at) and "&lt;script&gt;" in at.header[0].value  # shown as text, never as HTML

    at.text_input(key="review_author").input("cy")
    at.text_area(key="review_comment_text").input("Rank 8 loses the *sst2* core")
    at.button(key="FormSubmitter:review_comment_form-Add comment").click().run()
    assert not at.exception
    assert "Comment added." in [s.value for s in at.success]
    assert any("Rank 8 loses the \\*sst2\\* core" in m.value for m in at.markdown)

    at.radio(key="review_decision").set_value("changes")
    at.text_area(key="review_rationale").input("try rank 16")
    at.button(key="FormSubmitter:review_decision_form-Record decision").click().run()
    assert not at.exception
    assert at.metric[0].value == "changes requested"
    assert any("decided **changes requested**" in m.value for m in at.markdown)

    with ReviewStore(db) as store:  # the page wrote through the library, append-only
        p = store.get(pid)
    assert [(e.kind, e.author, e.decision) for e in p.events] == [
        ("created", "ann", None), ("comment", "cy", None), ("decision", "cy", "changes")]
    assert p.comments[0].text == "Rank 8 loses the *sst2* core" and p.status == "changes requested"


def test_unknown_and_bad_ids_are_one_message(db: Path) -> None:
    ReviewStore(db).close()
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["proposal"] = "41"
    at.run()
    assert not at.exception and "no proposal with id 41" in at.error[0].value
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["proposal"] = "abc"
    at.run()
    assert not at.exception and "not a proposal id" in at.error[0].value


def test_overlap_toggle_reports_missing_inputs(db: Path) -> None:
    with ReviewStore(db) as store:
        pid = propose(store, _recipe(), "t", "ann")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["proposal"] = str(pid)
    at.run()
    at.toggle(key=f"review_overlap_{pid}").set_value(True).run()
    assert not at.exception
    assert any("not available" in w.value for w in at.warning)


def test_forms_keep_text_on_a_refusal_and_take_the_merge_author(db: Path) -> None:
    with ReviewStore(db) as store:
        pid = propose(store, _recipe(), "Merge sst2", "ann")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["proposal"] = str(pid)
    at.run()
    assert at.text_input(key="review_author").value == ""
    at.text_area(key="review_comment_text").input("keep me")
    at.button(key="FormSubmitter:review_comment_form-Add comment").click().run()
    assert at.error and at.text_area(key="review_comment_text").value == "keep me"  # refused: no name, text kept
    at.text_area(key="review_rationale").input("and me")
    at.button(key="FormSubmitter:review_decision_form-Record decision").click().run()
    assert at.text_area(key="review_rationale").value == "and me"
    at.text_input(key="review_author").input("dana").run()
    at.button(key="FormSubmitter:review_comment_form-Add comment").click().run()
    assert not at.error and at.text_area(key="review_comment_text").value == ""  # accepted: emptied
    assert at.text_area(key="review_rationale").value == "and me"
    assert any("dana" in m.value for m in at.markdown) and any(" UTC" in m.value for m in at.markdown)

    other = AppTest.from_file(PAGE, default_timeout=60)
    other.session_state["merge_prop_author"] = "erin"  # the name typed on the Merge page of this session
    other.query_params["proposal"] = str(pid)
    other.run()
    assert other.text_input(key="review_author").value == "erin"


def test_the_decision_table_comes_first_and_no_verdict_is_chosen(db: Path) -> None:
    """A proposal with measured rows shows retention, interval, bar and verdict above the forms; the decision
    radio starts empty, and recording without a verdict is refused with the rationale kept."""
    from helpers.evidence import evidence

    from analysis.workflow.decision import decision_table, retention_rows

    frozen = {**evidence(), "decision": decision_table({"isolation": evidence()}, bar=0.85).to_dict()}
    with ReviewStore(db) as store:
        pid = propose(store, _recipe(), "measured", "ann", preview=frozen)
        bare = propose(store, _recipe(), "not measured", "ann", preview={"tasks": {"sst2": {"core_intact": 0.9}}})
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["proposal"] = str(pid)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value  # the first table of the proposal is the decision table
    expected = retention_rows(decision_table({"isolation": evidence()}, bar=0.85))
    assert table.values.tolist() == expected
    assert list(table["bar"].unique()) == [">= 0.85"] and "PASS (unsure)" in list(table["verdict"])
    assert any("Wilson" in c.value for c in at.caption)
    assert at.radio(key="review_decision").value is None
    at.text_input(key="review_author").input("cy")
    at.text_area(key="review_rationale").input("looks fine")
    at.button(key="FormSubmitter:review_decision_form-Record decision").click().run()
    assert any("choose a verdict" in e.value for e in at.error)
    assert at.text_area(key="review_rationale").value == "looks fine"
    with ReviewStore(db) as store:
        assert not store.get(pid).decisions
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params["proposal"] = str(bare)
    at.run()
    assert any("Nothing was measured" in w.value for w in at.warning)
