"""pathodet review: look at the detector's SRCs, accept or reject them, add the missed ones.

Started by ``pathodet review --data ROOT --predictions DIR`` (which runs ``streamlit run``
on this file, inside the installed package, with its settings in the environment; from a
checkout ``streamlit run apps/review.py`` runs it too). Everything it computes comes from
``pathodet.review``; this file only lays out the page.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

import numpy as np
import streamlit as st

from pathodet.review.cases import Case, PathRefused, inside, load_cases, run_id
from pathodet.review.logic import (
    case_layers,
    case_rows,
    evaluation_runs,
    filter_rows,
    read_json,
    worst_images,
)
from pathodet.review.store import ReviewStore
from pathodet.review.view import Layer, box_at, draw, fit_width

DISPLAY_WIDTH = 900
ADD_SIDE = 60  # pixels: side of a cell added by one click

st.set_page_config(page_title="pathodet review", layout="wide")


def settings() -> dict:
    env = os.environ
    data = env.get("PATHODET_REVIEW_DATA")
    return {
        "data": Path(data) if data else None,
        "predictions": Path(env.get("PATHODET_REVIEW_PREDICTIONS", "predictions")),
        "db": Path(env.get("PATHODET_REVIEW_DB", "reviews.sqlite")),
        "password": env.get("PATHODET_REVIEW_PASSWORD") or _secret_password(),
    }


def _secret_password() -> str | None:
    """``password`` from Streamlit secrets, if there is a secrets file with one."""
    try:
        return st.secrets.get("password")
    except Exception:  # noqa: BLE001 - no secrets file
        return None


@st.cache_resource
def cases_of(data: Path | None, predictions: Path) -> tuple[list[Case], str]:
    return load_cases(data, predictions), run_id(predictions)


@st.cache_resource
def store_of(db: Path) -> ReviewStore:
    return ReviewStore(db)


@st.cache_resource(max_entries=8)
def pixels(path: Path, mtime: float) -> np.ndarray:
    from pathodet.data.images import read_image

    return np.asarray(read_image(path))


@st.cache_resource(max_entries=4)
def viewer_of(path: Path):  # noqa: ANN201
    from pathodet.review.slideview import SlideViewer

    return SlideViewer(path)


def gate(cfg: dict) -> None:
    """A password prompt when the server was started with one (any non-local binding)."""
    if not cfg["password"] or st.session_state.get("authenticated"):
        return
    given = st.text_input("Access password", type="password")
    if given and hmac.compare_digest(given, cfg["password"]):
        st.session_state.authenticated = True
        st.rerun()
    if given:
        st.error("Wrong password.")
    st.stop()


def sidebar(cases: list[Case]) -> dict:
    st.sidebar.title("pathodet review")
    if "goto_page" in st.session_state:  # set by a click-through, before the radio exists
        st.session_state.page = st.session_state.pop("goto_page")
    ui = {
        "page": st.sidebar.radio("Page", ["Cases", "Viewer", "Metrics"], key="page"),
        "reviewer": st.sidebar.text_input("Reviewer", key="reviewer").strip(),
        "threshold": st.sidebar.slider("Score threshold", 0.0, 1.0, 0.5, 0.01, key="threshold"),
    }
    st.sidebar.caption("red: to review · green: SRC · grey: not SRC · cyan: added · "
                       "yellow: annotated · blue: full truth (synthetic)")  # fmt: skip
    return ui


def page_cases(cases: list[Case], run: str, store: ReviewStore, ui: dict) -> None:
    st.header("Cases")
    which = st.radio("Show", ["All", "AP", "NP", "slides", "unreviewed"], horizontal=True,
                     key="filter")  # fmt: skip
    rows = filter_rows(case_rows(cases, ui["threshold"], store.decisions(run),
                                 store.statuses(run)), which)  # fmt: skip
    st.caption(f"{len(rows)} cases · model run {run} · threshold {ui['threshold']:.2f}")
    event = st.dataframe(rows, key="case_table", on_select="rerun", selection_mode="single-row",
                         hide_index=True, width="stretch")  # fmt: skip
    picked = event.selection.rows if event is not None else []
    if picked:
        open_case(rows[picked[0]]["case"])


def open_case(name: str) -> None:
    """Show ``name`` in the viewer (a click-through from the case list or the metrics)."""
    st.session_state.case = name
    st.session_state.goto_page = "Viewer"
    st.rerun()


def _decide(store: ReviewStore, run: str, case: Case, ui: dict, action: str, box, score) -> bool:
    """Record a decision signed by the reviewer; False (and a warning) without a name."""
    if not ui["reviewer"]:
        st.warning("Enter your name in the sidebar first: every decision is signed.")
        return False
    return bool(store.decide(run, case.name, action, tuple(float(v) for v in box),
                             ui["reviewer"], score))  # fmt: skip


def page_viewer(cases: list[Case], run: str, store: ReviewStore, ui: dict) -> None:
    from streamlit_image_coordinates import streamlit_image_coordinates

    names = [c.name for c in cases]
    if not names:
        st.warning("No cases.")
        return
    wanted = st.query_params.get("case") or st.session_state.get("case")
    if wanted and wanted not in names:  # a name, never a path: unknown names are refused
        st.error("Unknown case requested; showing the first case.")
        wanted = None
    name = st.selectbox("Case", names, index=names.index(wanted) if wanted else 0, key="case_box")
    st.session_state.case = name
    case = cases[names.index(name)]
    decisions = store.decisions(run, case.name)
    state = case_layers(case, decisions, ui["threshold"])
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("SRC detected", len(state.scores))
    c2.metric("Accepted", state.accepted)
    c3.metric("Rejected", state.rejected)
    c4.metric("Added", len(state.added))
    t1, t2, t3 = st.columns(3)
    show_ann = t1.toggle("Annotated boxes", value=True, key="show_ann")
    show_full = t2.toggle("Full truth (synthetic)", value=False, key="show_full",
                          disabled=case.full is None)  # fmt: skip
    add_mode = t3.toggle("Click adds a missed cell", value=False, key="add_mode")

    if case.kind == "slide":
        rgb, offset, scale = slide_region(case)
    else:
        full = pixels(case.path, case.path.stat().st_mtime)
        rgb, scale = fit_width(full, DISPLAY_WIDTH)
        offset = (0.0, 0.0)
    # the selected detection: the selectbox's state, moved by clicks and after decisions
    det_key, n = f"det-{case.name}", len(state.boxes)
    nxt = st.session_state.pop("next_det", None)
    if nxt is not None and n:
        st.session_state[det_key] = int(nxt) % n
    selected = st.session_state.get(det_key, 0) if n else None
    if selected is not None and selected >= n:
        selected = st.session_state[det_key] = 0
    sel_box = state.boxes[selected] if selected is not None else None
    layers = [Layer(state.boxes, state.kinds, 2), Layer(state.added, ["add"] * len(state.added), 2)]
    if show_ann:
        layers.append(Layer(case.annotated, ["annotated"] * len(case.annotated), 1))
    if show_full and case.full is not None:
        layers.append(Layer(case.full, ["full"] * len(case.full), 1))
    picture = draw(rgb, layers, scale, offset, sel_box)
    click = streamlit_image_coordinates(picture, key=f"img-{case.name}")
    if click and click != st.session_state.get("last_click"):
        st.session_state.last_click = click
        x = offset[0] + click["x"] / scale
        y = offset[1] + click["y"] / scale
        if add_mode:
            h = ADD_SIDE / 2
            if _decide(store, run, case, ui, "add", (x - h, y - h, x + h, y + h), None):
                st.rerun()
        st.session_state.next_det = box_at(state.boxes, x, y)
        st.rerun()

    st.subheader("Detections")
    order = list(range(len(state.boxes)))
    labels = [f"#{i + 1}  score {state.scores[i]:.2f}  {state.kinds[i]}" for i in order]
    if order:
        idx = st.selectbox("Detection (or click it on the image)", order,
                           format_func=lambda i: labels[i], key=det_key)  # fmt: skip
        b1, b2, b3, b4 = st.columns(4)
        if b1.button("SRC ✓", key="accept", width="stretch") and _decide(
            store, run, case, ui, "accept", state.boxes[idx], float(state.scores[idx])
        ):
            st.session_state.next_det = idx + 1
            st.rerun()
        if b2.button("Not SRC ✗", key="reject", width="stretch") and _decide(
            store, run, case, ui, "reject", state.boxes[idx], float(state.scores[idx])
        ):
            st.session_state.next_det = idx + 1
            st.rerun()
    else:
        st.caption("No detection above the threshold.")
        b3, b4 = st.columns(2)
    if b3.button("Undo my last decision", key="undo", width="stretch"):
        if not ui["reviewer"]:
            st.warning("Enter your name in the sidebar first: undo takes back your decisions.")
        elif store.undo(run, case.name, ui["reviewer"]) is None:
            st.info("Nothing of yours to undo on this case.")
        else:
            st.rerun()
    if b4.button("Mark case reviewed", key="reviewed", width="stretch"):
        if ui["reviewer"]:
            store.set_status(run, case.name, "reviewed", ui["reviewer"])
            st.success("Marked reviewed.")
        else:
            st.warning("Enter your name in the sidebar first.")


def slide_region(case: Case) -> tuple[np.ndarray, tuple[float, float], float]:
    """Thumbnail to click for the region, and the region at the chosen zoom."""
    from streamlit_image_coordinates import streamlit_image_coordinates

    viewer = viewer_of(case.path)
    thumb, per_px = viewer.thumbnail(300)
    key = f"centre-{case.name}"
    if key not in st.session_state:
        st.session_state[key] = (viewer.width / 2, viewer.height / 2)
    with st.sidebar:
        st.caption("Slide overview: click to move the view")
        click = streamlit_image_coordinates(thumb, key=f"thumb-{case.name}")
        if click and click != st.session_state.get(f"{key}-last"):
            st.session_state[f"{key}-last"] = click
            st.session_state[key] = (click["x"] * per_px, click["y"] * per_px)
        zoom = st.select_slider("Zoom (level-0 px per screen px)",
                                [2**k for k in range(viewer.max_zoom_exponent + 1)],
                                value=1, key=f"zoom-{case.name}")  # fmt: skip
    cx, cy = st.session_state[key]
    rgb, offset, scale = viewer.region(cx, cy, int(np.log2(zoom)), DISPLAY_WIDTH, 640)
    return rgb, offset, scale


def page_metrics(cfg: dict) -> None:
    st.header("Metrics")
    roots = [cfg["predictions"]] + ([cfg["data"]] if cfg["data"] else [])
    runs = [r for root in roots for r in evaluation_runs(root)]
    if not runs:
        st.info("No evaluation here: run `pathodet evaluate ... --out DIR` with DIR inside the "
                "predictions folder.")  # fmt: skip
        return
    run = st.selectbox("Evaluation", runs, format_func=str, key="eval_run")
    try:
        run = inside(run, roots)
    except PathRefused as exc:
        st.error(str(exc))
        return
    metrics = read_json(run / "metrics.json")
    cols = st.columns(4)
    for col, (label, key) in zip(cols, [("FROC", "froc"), ("Recall", "recall"),
                                        ("NFP per normal image", "nfp"),
                                        ("True recall", "true_recall")], strict=True):  # fmt: skip
        v = metrics.get(key)
        col.metric(label, "—" if v is None else f"{v:.3f}")
    if (run / "froc.png").is_file():
        st.image(
            str(run / "froc.png"), caption="FROC: recall against false positives per normal image"
        )
    points = metrics.get("froc_points", {})
    st.table([{"FPs per normal image": k, "recall": f"{v:.3f}"} for k, v in points.items()])
    if (run / "per_image.json").is_file():
        rows = worst_images(read_json(run / "per_image.json"))
        st.subheader("Worst images first (missed SRCs, then false positives)")
        event = st.dataframe(rows, on_select="rerun", selection_mode="single-row",
                             hide_index=True, key="worst")  # fmt: skip
        if event is not None and event.selection.rows:
            open_case(rows[event.selection.rows[0]]["image"])


def main() -> None:
    cfg = settings()
    gate(cfg)
    try:
        cases, run = cases_of(cfg["data"], cfg["predictions"])
    except (FileNotFoundError, PathRefused, ValueError) as exc:
        st.error(f"Cannot load the cases: {exc}")
        st.stop()
    store = store_of(cfg["db"])
    ui = sidebar(cases)
    if ui["page"] == "Cases":
        page_cases(cases, run, store, ui)
    elif ui["page"] == "Viewer":
        page_viewer(cases, run, store, ui)
    else:
        page_metrics(cfg)


main()
