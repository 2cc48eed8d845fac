"""Population page in AppTest: opens an index under the roots, maps and groups it, lists neighbours that
match the library's, refuses a folder outside the roots, and hands a selection to the Overlap page."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.app_env import APP
from streamlit.testing.v1 import AppTest

from analysis.population.query import neighbors, open_population
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.synthetic import PlantedSpec, write_population
from app.components import view

SPEC = PlantedSpec(families=3, layers=1, d_out=16, d_in=12, core_rank=2, arm_rank=1)


@pytest.fixture(scope="module")
def population_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("population")
    paths = write_population(SPEC, root / "ads", 15)
    scan([root / "ads"], root / "index", config=SketchConfig(k=8), scheduler=SYNCHRONOUS)
    assert len(paths) == 15
    return root


def _page(monkeypatch: pytest.MonkeyPatch, root: Path) -> AppTest:
    ads = sorted((root / "ads").glob("*/*"))
    monkeypatch.setenv("ADAPTER_ATLAS_ROOTS", str(root))
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join(str(p) for p in ads[:2]))
    at = AppTest.from_file(APP, default_timeout=120)
    return at.run().switch_page("app_pages/population.py").run()


def test_page_opens_index_and_matches_library_neighbours(monkeypatch: pytest.MonkeyPatch,
                                                         population_root: Path) -> None:
    at = _page(monkeypatch, population_root)
    assert not at.exception, [e.value for e in at.exception]
    at.text_input(key="population_index").set_value(str(population_root / "index")).run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    assert at.metric[0].value == "15"
    assert len(at.get("plotly_chart")) == 1
    query = at.selectbox(key="population_query").value
    pop = open_population(population_root / "index")
    path = str(Path(os.path.commonpath(pop.paths)) / query)
    expected = [r["adapter"] for r in neighbors(pop, path, 10)]
    shown = at.dataframe[-1].value  # the neighbour table
    assert list(shown["adapter"]) == expected
    # hand the default selection (query + 4 neighbours) to the Overlap page
    at.button(key="population_to_overlap").click().run()
    assert at.session_state[view.ADAPTERS] == [path] + expected[:4]


def test_folder_outside_roots_is_refused(monkeypatch: pytest.MonkeyPatch, population_root: Path,
                                         tmp_path: Path) -> None:
    at = _page(monkeypatch, population_root)
    at.text_input(key="population_index").set_value(str(tmp_path)).run()
    assert not at.exception
    assert at.error and "outside the allowed roots" in at.error[0].value


def test_family_table_sends_every_member_to_overlap(monkeypatch: pytest.MonkeyPatch, population_root: Path) -> None:
    """A family of 5 (all of it, not the first few): sizes and cohesion shown, every member handed over."""
    at = _page(monkeypatch, population_root)
    at.text_input(key="population_index").set_value(str(population_root / "index")).run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "cohesion" in d.value.columns)
    assert list(table["adapters"]) == [5, 5, 5]  # 15 adapters, 3 planted families of 5
    assert all(0.3 < c <= 1.0 for c in table["cohesion"])
    at.session_state["population_families"] = {"selection": {"rows": [1], "columns": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="population_family_to_overlap").click().run()
    sent = at.session_state[view.ADAPTERS]
    assert len(sent) == 5 and len({Path(p).parent.name for p in sent}) == 1  # one planted family, whole
    assert not at.exception and not at.error, [e.value for e in at.error]
