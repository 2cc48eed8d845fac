"""Every atlas page in Streamlit's AppTest, on the three committed fixture adapters (tests/helpers/app_env.py).

The numbers on screen are checked against the library computed directly (a second route), and the
failure paths (bad upload, refused folder, adapters from a URL) must end in an error box, never an
exception.
"""
from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.app_env import APP, LAYERS, NAMES, OTHER_BASE, PAGE_SET, RANK, WIDTH, page_app
from streamlit.testing.v1 import AppTest

from analysis.adapters import load_adapter
from analysis.clustering import Linkage, adapter_distance
from analysis.overlap import aggregate, overlap_table


@pytest.fixture()
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return page_app(monkeypatch)


@pytest.fixture(scope="module")
def table():
    return overlap_table([load_adapter(PAGE_SET / n, name=n) for n in NAMES])


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def _arr(value: object) -> np.ndarray:
    if isinstance(value, dict):  # plotly's typed-array encoding
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape([int(x) for x in str(value["shape"]).split(",")]) if "shape" in value else flat
    return np.asarray([np.nan if v is None else v for v in value] if np.ndim(value) == 1 else
                      [[np.nan if v is None else v for v in row] for row in value], dtype=float)


def _z(trace: dict) -> np.ndarray:
    return _arr(trace["z"])


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_adapters_page_inventory(app: AppTest) -> None:
    at = app.run()
    _ok(at)
    inventory = at.dataframe[0].value
    assert list(inventory["adapter"]) == NAMES
    assert list(inventory["modules"]) == [4 * LAYERS] * 3 and set(inventory["ranks"]) == {str(RANK)}
    norms = [load_adapter(PAGE_SET / n).total_norm() for n in NAMES]
    np.testing.assert_allclose(inventory["total norm"], norms, rtol=1e-9)
    module = at.selectbox(key="atlas_module").value
    spectrum = _arr(_charts(at)[0]["data"][0]["y"])
    delta = load_adapter(PAGE_SET / "adapter").modules[module]
    dense_sv = np.linalg.svd(delta.dense(dtype=torch.float64).numpy(), compute_uv=False)[:RANK]
    np.testing.assert_allclose(spectrum, dense_sv, rtol=1e-8)  # factored SVD on screen == dense SVD


def test_overlap_heatmap_matches_library(app: AppTest, table) -> None:
    at = app.run().switch_page("app_pages/overlap.py").run()
    _ok(at)
    at.selectbox(key="atlas_metric").select("cosine").run()
    heat = _charts(at)[0]["data"][0]
    order = [NAMES.index(n) for n in heat["y"]]
    expected = aggregate(table, "cosine")[np.ix_(order, order)]
    off = ~np.eye(3, dtype=bool)
    # the colour range is the off-diagonal data's (signed: symmetric about 0), not the metric's -1..1
    assert sorted(order) == [0, 1, 2] and heat["zmax"] == pytest.approx(np.abs(expected[off]).max())
    assert heat["zmin"] == pytest.approx(-heat["zmax"]) and heat["zmax"] < 1.0
    z = _z(heat)
    assert np.isnan(np.diag(z)).all()  # the diagonal is blanked
    np.testing.assert_allclose(z[off], expected[off], atol=1e-9)
    assert any("Click a cell" in c.value for c in at.caption)
    # one module instead of the aggregate
    at.radio(key="overlap_scope").set_value("module").run()
    module = "model.layers.4.self_attn.v_proj"
    at.selectbox(key="atlas_module").select(module).run()
    _ok(at)
    heat = _charts(at)[0]["data"][0]
    order = [NAMES.index(n) for n in heat["y"]]
    np.testing.assert_allclose(_z(heat)[off], table[module].cosine[np.ix_(order, order)][off], atol=1e-9)
    assert at.query_params["metric"] == ["cosine"] or at.query_params["metric"] == "cosine"


def test_overlap_pair_layer_by_type(app: AppTest, table) -> None:
    at = app.run().switch_page("app_pages/overlap.py").run()
    at.selectbox(key="atlas_metric").select("mean_angle_deg").run()
    pair = at.selectbox(key="overlap_pair").value
    i, j = pair
    layered = _charts(at)[2]["data"][0]  # after the set's heatmap and the adapter map
    z = _z(layered)  # (layers, 4 types)
    assert (layered["zmin"], layered["zmax"]) == pytest.approx((z.min(), z.max()))  # the pair's own range
    assert z.shape == (LAYERS, 4)
    types = list(layered["x"])
    module = f"model.layers.3.{types[2]}"
    assert z[3, 2] == pytest.approx(table[module].mean_angle_deg[i, j])


def test_subspaces_page(app: AppTest, table) -> None:
    at = app.run().switch_page("app_pages/subspaces.py").run()
    _ok(at)
    angles, phi = _charts(at)
    assert len(angles["data"]) >= 1 and angles["layout"]["yaxis"]["range"] == [0, 90]
    a, b = at.selectbox(key="subspaces_a").value, at.selectbox(key="subspaces_b").value
    module = at.selectbox(key="subspaces_module").value
    i, j = NAMES.index(a), NAMES.index(b)
    # the page opens on the module where this pair collides most
    assert module == max(table, key=lambda m: table[m].subspace_similarity[i, j])
    grid = _z(phi["data"][0])  # (r, r)
    assert grid.shape == (RANK, RANK)
    # phi at full ranks is the table's subspace similarity
    assert grid[-1, -1] == pytest.approx(table[module].subspace_similarity[NAMES.index(a), NAMES.index(b)], abs=1e-9)


def test_clusters_page(app: AppTest, table) -> None:
    at = app.run().switch_page("app_pages/clusters.py").run()
    _ok(at)
    at.selectbox(key="clusters_distance").select("angle").run()
    at.radio(key="clusters_method").set_value("complete").run()
    at.slider(key="clusters_k").set_value(2).run()
    _ok(at)
    fitted = Linkage(method="complete").fit(adapter_distance(table, "angle"), NAMES)
    groups = fitted.cut(k=2)
    shown = at.dataframe[0].value
    assert list(shown["adapter"]) == [NAMES[x] for x in fitted.order_]  # dendrogram order
    same = lambda a, b: groups[NAMES.index(a)] == groups[NAMES.index(b)]  # noqa: E731
    on_screen = dict(zip(shown["adapter"], shown["group"]))
    assert all((on_screen[a] == on_screen[b]) == same(a, b) for a in NAMES for b in NAMES)
    assert len(set(on_screen.values())) == 2
    dendro = _charts(at)[0]
    assert len(dendro["data"]) == len(NAMES) - 1  # one U per merge


def test_capacity_page(app: AppTest) -> None:
    at = app.run().switch_page("app_pages/capacity.py").run()
    _ok(at)
    at.selectbox(key="capacity_type").select("self_attn.q_proj").run()
    rows = at.dataframe[0].value
    q = rows[rows["type"] == "self_attn.q_proj"]
    assert list(q["layer"]) == list(range(LAYERS))  # numbers in model order, so a sort goes 0, 1, 2, ..., 10
    assert (q["union rank"] == 3 * RANK).all() and (q["more fit"] == (WIDTH - 3 * RANK) // RANK).all()
    np.testing.assert_allclose(_arr(_charts(at)[0]["data"][0]["y"]), q["overlap"], atol=1e-12)


def test_server_folder_refused_shows_error(app: AppTest) -> None:
    at = app.run()
    at.text_input(key="adapters_folder").input("/etc").run()
    at.button(key="adapters_open_folder").click().run()
    assert not at.exception
    assert any("outside the allowed roots" in e.value for e in at.error)
    assert list(at.dataframe[0].value["adapter"]) == NAMES  # the set is untouched


def test_server_folder_inside_root_opens(app: AppTest) -> None:
    at = app.run()
    at.multiselect(key="atlas_adapters").set_value([str(PAGE_SET / "adapter")]).run()
    at.text_input(key="adapters_folder").input(str(PAGE_SET / "adapter_seed123")).run()
    at.button(key="adapters_open_folder").click().run()
    _ok(at)
    assert list(at.dataframe[0].value["adapter"]) == ["adapter", "adapter_seed123"]


def test_bad_upload_shows_error_and_app_keeps_working(app: AppTest) -> None:
    at = app.run()
    at.file_uploader(key="adapters_upload_files").set_value(("broken.safetensors", b"not a header", "")).run()
    assert not at.exception
    assert len(at.error) == 1 and "broken.safetensors" in at.error[0].value and "\n" not in at.error[0].value
    assert list(at.dataframe[0].value["adapter"]) == NAMES
    at.switch_page("app_pages/overlap.py").run()
    assert not at.exception and len(_charts(at)) == 3


def test_zip_upload_joins_the_set(app: AppTest, tmp_path: Path) -> None:
    at = app.run()
    at.multiselect(key="atlas_adapters").set_value([str(PAGE_SET / "adapter")]).run()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in (PAGE_SET / "adapter_seed123").iterdir():
            zf.write(p, f"seed/{p.name}")
    at.file_uploader(key="adapters_upload_files").set_value(("seed.zip", buf.getvalue(), "application/zip")).run()
    _ok(at)
    assert list(at.dataframe[0].value["adapter"]) == ["adapter", "seed"]


def test_url_restores_view_and_ignores_foreign_paths(app: AppTest) -> None:
    app.query_params = {"page": "overlap", "metric": "energy_overlap",
                        "adapter": [str(PAGE_SET / "adapter"), str(PAGE_SET / "adapter_seed123"), "/etc"]}
    at = app.run()
    _ok(at)
    assert at.title[0].value == "Overlap"
    assert at.selectbox(key="atlas_metric").value == "energy_overlap"
    heat = _charts(at)[0]["data"][0]
    assert sorted(heat["y"]) == ["adapter", "adapter_seed123"]  # /etc was dropped
    assert any("/etc" in w.value and "could not be used" in w.value for w in at.warning)  # ... and said so


def test_link_with_short_names_restores_every_control(app: AppTest) -> None:
    """The URL a session writes (adapters relative to the root, short module names) reopens the same view."""
    at = app.run().switch_page("app_pages/overlap.py").run()
    at.selectbox(key="atlas_metric").select("energy_overlap").run()
    at.radio(key="overlap_scope").set_value("module").run()
    at.selectbox(key="atlas_module").select("model.layers.4.self_attn.v_proj").run()
    _ok(at)
    link = {k: at.query_params[k] for k in at.query_params}
    assert link["module"] in (["4.self_attn.v_proj"], "4.self_attn.v_proj")
    assert "adapter" not in link  # the default set travels as nothing
    assert all("/" not in str(v) for v in link.values())
    fresh = AppTest.from_file(APP, default_timeout=300)  # a new session, same server settings
    fresh.query_params = {"page": "overlap", **link}
    fresh.run()
    _ok(fresh)
    assert fresh.title[0].value == "Overlap"
    assert fresh.radio(key="overlap_scope").value == "module"
    assert fresh.selectbox(key="atlas_module").value == "model.layers.4.self_attn.v_proj"
    assert fresh.selectbox(key="overlap_pair").value == at.selectbox(key="overlap_pair").value
    assert _charts(fresh)[0]["layout"]["title"]["text"] == _charts(at)[0]["layout"]["title"]["text"]


def test_adapters_travel_relative_to_the_root(app: AppTest) -> None:
    at = app.run()
    at.multiselect(key="atlas_adapters").set_value([str(PAGE_SET / "adapter_seed123"), str(PAGE_SET / "adapter")]).run()
    _ok(at)
    assert at.query_params["adapter"] == ["adapter_seed123", "adapter"]
    fresh = AppTest.from_file(APP, default_timeout=300)  # a new session, same server settings
    fresh.query_params = {"page": "clusters", "adapter": ["adapter_seed123", "adapter"], "k": "2", "linkage": "complete"}
    fresh.run()
    _ok(fresh)
    assert list(fresh.dataframe[0].value["adapter"]) != [] and fresh.slider(key="clusters_k").value == 2
    assert fresh.radio(key="clusters_method").value == "complete"
    assert sorted(fresh.dataframe[0].value["adapter"]) == ["adapter", "adapter_seed123"]


def test_pages_need_two_adapters(app: AppTest) -> None:
    at = app.run()
    at.multiselect(key="atlas_adapters").set_value([str(PAGE_SET / "adapter")]).run()
    at.switch_page("app_pages/overlap.py").run()
    assert not at.exception and any("at least 2" in i.value for i in at.info)


def test_adapters_of_different_bases_get_an_error_box(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_ATLAS_ADAPTERS", os.pathsep.join([str(PAGE_SET / "adapter"), str(OTHER_BASE)]))
    at = AppTest.from_file(APP, default_timeout=300).run()
    _ok(at)
    assert "distilbert-base-uncased" in at.warning[0].value.replace("\\", "")  # the inventory warns: two bases
    for page in ("overlap", "subspaces", "clusters", "capacity"):
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception
        assert len(at.error) == 1 and "cannot be compared" in at.error[0].value, page


def test_folder_upload_joins_the_set(app: AppTest) -> None:
    at = app.run()
    at.multiselect(key="atlas_adapters").set_value([str(PAGE_SET / "adapter")]).run()
    files = [(f"adapter_curriculum_stage1/{p.name}", p.read_bytes(), "application/octet-stream")
             for p in sorted((PAGE_SET / "adapter_curriculum_stage1").iterdir())]
    at.file_uploader(key="adapters_upload_dir").set_value(files).run()
    _ok(at)
    assert list(at.dataframe[0].value["adapter"]) == ["adapter", "adapter_curriculum_stage1"]
    assert at.dataframe[0].value["sha256"][1] == load_adapter(PAGE_SET / "adapter_curriculum_stage1").sha256[:12]
