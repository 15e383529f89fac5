"""Data & run: choose the images, preview them, set the model and TURN, start a run.

The page only renders. The settings widgets are generated from ``RunConfig``'s metadata
(``turn_core.config.SETTINGS``: label, help, choices, bounds; basic ones shown, advanced ones in
the expander); the source becomes the run's data string in ``turn_core.sources``; the run's
folder is named by ``turn_core.settings.name_new_run``; the devices are described by
``turn_core.devices``; and ``settings.check_names`` checks everything before Start.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from pages import _shared as sh
from turn_core import views
from turn_core.config import GROUPS, SETTINGS, RunConfig, Setting
from turn_core.devices import describe_devices, resolve_device
from turn_core.errors import InputError
from turn_core.jobs import BusyError
from turn_core.pipeline import estimate_seconds
from turn_core.rundir import new_run_name
from turn_core.safety import allowed_roots, resolve_under_roots
from turn_core.settings import check_names, name_new_run, registry_choices
from turn_core.sources import SOURCES, resolve_source

st.title("Data & run")

base = RunConfig()
try:
    base = RunConfig.from_dict({**base.to_dict(), **sh.defaults()}).validate()
except (TypeError, InputError) as e:
    st.warning(f"TURN_AUDIT_DEFAULTS is not a valid set of settings ({e}); using the paper's defaults.")
    base = RunConfig()

# Settings this page asks for in its own way: the source and the model (sections 1 and 2), the
# run folder (the run name). test_data is a server path and would need the allowed-roots check
# of a typed path, so it stays a CLI setting for now.
OWN = ("data", "test_data", "out", "model", "weights", "checkpoint")
DEMO = ("demo_noise", "demo_noise_rate", "demo_n")
REGISTRIES = registry_choices()
values: dict[str, Any] = {}        # setting name → the value its widget holds on this rerun
problems: list[str] = []           # why Start is disabled


# ------------------------------------------------------------------ widgets from metadata
def _choice_text(v: Any) -> str:
    return "none" if v is None else str(v)


def _number(s: Setting, where, value: Any, kw: dict) -> Any:
    cast = int if s.kind == "int" else float
    bounds = {k: cast(b) for k, b in (("min_value", s.min), ("max_value", s.max)) if b is not None}
    step = cast(s.step) if s.step is not None else (1 if s.kind == "int" else None)
    return where.number_input(value=None if value is None else cast(value), step=step,
                              format=None if s.kind == "int" else "%g",
                              placeholder="model / data default" if s.optional else None, **bounds, **kw)


def setting_widget(s: Setting, where, value: Any) -> Any:
    """The widget of setting ``s`` in container ``where``, starting at ``value``: a select box
    for fixed or registry choices, a checkbox for a bool, a number box for a number, else a text
    box (read by ``Setting.parse``). Returns the value it holds."""
    method = values.get("method", base.method)
    kw = {"label": s.label, "help": s.help, "key": f"set_{s.name}",
          "disabled": s.methods is not None and method not in s.methods}
    options = s.choices if s.choices is not None else REGISTRIES.get(s.registry)
    if options is not None:
        options = ([None] if s.optional else []) + list(options)
        if value not in options:   # e.g. device "cuda:1" from the defaults
            options.append(value)
        return where.selectbox(options=options, index=options.index(value), format_func=_choice_text, **kw)
    if s.kind == "bool":
        return where.checkbox(value=bool(value), **kw)
    if s.kind in ("int", "float"):
        return _number(s, where, value, kw)
    shown = "" if value is None else ",".join(map(str, value)) if s.kind == "triple" else str(value)
    text = where.text_input(value=shown, placeholder="unset" if s.optional else None, **kw)
    try:
        return s.parse(text)
    except InputError as e:
        problems.append(str(e))
        where.error(str(e))
        return value


def settings_grid(names: list[str], columns: int = 4) -> None:
    """Widgets for ``names`` in rows of ``columns``; their values go to ``values``."""
    for row in range(0, len(names), columns):
        cols = st.columns(columns)
        for col, name in zip(cols, names[row:row + columns]):
            values[name] = setting_widget(SETTINGS[name], col, getattr(base, name))


# ------------------------------------------------------------------ cached helpers
@st.cache_resource(show_spinner="Loading the dataset…", max_entries=3)
def load_preview(source: str, noise: str, rate: float, n: int, seed: int):
    from turn_core.demo import load_demo
    from turn_core.sources import load_source

    if source == "demo":
        return load_demo(n=n, noise=noise, rate=rate, seed=seed)
    return load_source(source)


@st.cache_data(show_spinner=False, max_entries=500)
def preview_png(path: str) -> bytes | None:
    try:
        from PIL import Image

        from turn_core.images import load_rgb

        im = Image.fromarray(np.asarray(load_rgb(path)))
        im.thumbnail((96, 96))
        return views.png_bytes(np.asarray(im), 64)
    except Exception:  # noqa: BLE001 - a broken file shows as missing, it is listed as skipped anyway
        return None


@st.cache_resource(show_spinner="Checking the device…")
def device_report():
    return describe_devices()


def uploaded_source(kind: str, given: Any, signature: tuple) -> str:
    """The data string of an upload, saved once per distinct upload (reruns reuse it)."""
    saved = st.session_state.setdefault("_uploads", {})
    if saved.get(kind, (None, ""))[0] != signature:
        try:
            with st.spinner("Saving the upload…"):
                saved[kind] = (signature, resolve_source(kind, given, sh.runs_root()))
        except InputError as e:
            st.error(str(e))
            return ""
    return saved[kind][1]


# ------------------------------------------------------------------ 1. source
st.subheader("1 · Images and labels")
kind = st.radio("Source", list(SOURCES), format_func=lambda k: SOURCES[k].label, key="src_kind",
                horizontal=True, index=0 if base.data == "demo" else 1)
source = ""
if kind == "demo":
    source = "demo"
    settings_grid(list(DEMO), columns=3)
elif kind == "server":
    roots = ", ".join(f"`{r}`" for r in allowed_roots())
    raw = st.text_input("Folder (one sub-folder per class) or CSV manifest (path,label[,split])",
                        key="server_path", help=f"Must lie under {roots} (TURN_AUDIT_DATA_ROOTS).")
    st.caption(f"Allowed folders: {roots}")
    try:
        source = resolve_source("server", raw, sh.runs_root())
    except InputError as e:
        st.error(str(e))
elif kind == "folder":
    ups = st.file_uploader("Folder of images, one sub-folder per class", accept_multiple_files="directory",
                           key="up_folder")
    if ups:
        source = uploaded_source("folder", ups, tuple(sorted((u.name, u.size) for u in ups)))
else:
    up = st.file_uploader("ZIP of a folder (one sub-folder per class) or of a CSV manifest with its images",
                          type=["zip"], key="up_zip")
    if up is not None:
        source = uploaded_source("zip", up, (up.name, up.size))
        if source:
            st.caption(f"Extracted to `{source}`")
demo_values = {name: values.get(name, getattr(base, name)) for name in DEMO}

# ------------------------------------------------------------------ preview
ds = None
if source:
    try:
        ds = load_preview(source, demo_values["demo_noise"], float(demo_values["demo_noise_rate"]),
                          int(demo_values["demo_n"]), int(base.seed))
    except InputError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - an unreadable dataset is a message, not a broken page
        st.error(f"Could not read the dataset: {type(e).__name__}: {e}")

n_images = None
if ds is not None:
    with st.expander("Preview", expanded=True):
        classes = list(ds.classes)
        n_images = len(ds)
        counts = views.class_count_table(ds.labels, classes)
        c1, c2, c3 = st.columns(3)
        c1.metric("Images", f"{n_images:,}")
        c2.metric("Classes", len(classes))
        c3.metric("Skipped files", len(ds.skipped))
        import plotly.express as px

        fig = px.bar(counts, x="class", y="images", height=260)
        fig.update_layout(margin={"l": 10, "r": 10, "t": 10, "b": 10})
        st.plotly_chart(fig, width="stretch", key="class_bar")
        if ds.true_labels is not None:
            wrong = float(np.mean(np.asarray(ds.true_labels) != np.asarray(ds.labels)))
            st.caption(f"True labels are known: {wrong:.1%} of the given labels are wrong; the run will "
                       "report detection precision/recall.")
        grid = views.sample_per_class(ds.labels, len(classes), per_class=6, seed=0)
        for c, idx in grid.items():
            if not idx:
                continue
            cols = st.columns([2] + [1] * 6)
            cols[0].markdown(f"**{classes[c]}**  \n{int(counts['images'][c])} images")
            for j, i in enumerate(idx[:6]):
                png = preview_png(str(ds.files[i]))
                if png:
                    cols[j + 1].image(png, width="stretch")
        if ds.skipped:
            st.markdown("**Skipped files**")
            st.dataframe([{"path": p, "reason": r} for p, r in ds.skipped], hide_index=True, width="stretch")

# ------------------------------------------------------------------ 2. model
st.subheader("2 · Model")
MODELS = {"offline": "Offline default (MobileNetV2, ImageNet weights installed with the app)",
          "hub": "Any timm model (weights from the Hugging Face hub)",
          "checkpoint": "A local checkpoint (.safetensors / state dict)"}
mkind = st.radio("Backbone", list(MODELS), format_func=MODELS.get, key="model_kind",
                 index=list(MODELS).index(base.weights) if base.weights in MODELS else 0)
model_name, weights, checkpoint = base.model, "offline", None
if mkind == "hub":
    model_name = st.text_input("timm model name", value=base.model if base.weights == "hub" else "resnet18",
                               help="e.g. resnet18, convnext_tiny, vit_small_patch16_224. Needs internet access "
                                    "to the hub; the run fails with a clear message when it is not reachable.")
    weights = "hub"
elif mkind == "checkpoint":
    model_name = st.text_input("timm architecture of the checkpoint", value=base.model)
    raw_ckpt = st.text_input("Checkpoint path on this server", key="ckpt_path", help=SETTINGS["checkpoint"].help)
    weights = "none"
    if raw_ckpt.strip():
        try:
            checkpoint = str(resolve_under_roots(raw_ckpt.strip()))
        except InputError as e:
            st.error(str(e))
    if not checkpoint:
        problems.append("Give the checkpoint's path.")

# ------------------------------------------------------------------ 3. settings
st.subheader("3 · Method and settings")
generated = [s for s in SETTINGS.values() if s.name not in OWN + DEMO]
settings_grid([s.name for s in generated if not s.advanced])
with st.expander("Advanced settings"):
    for group, title in GROUPS.items():
        names = [s.name for s in generated if s.advanced and s.group == group]
        if names:
            st.markdown(f"**{title}**")
            settings_grid(names)

# ------------------------------------------------------------------ 4. start
st.subheader("4 · Start")
method = values["method"]
run_name = st.text_input("Run name", value=new_run_name(method, source), key="run_name",
                         help="A folder of this name is created under the runs folder.")
out = sh.runs_root() / "latest"
try:
    out = name_new_run(sh.runs_root(), run_name, method, source)
except InputError as e:
    problems.append(str(e))
config = dataclasses.replace(base, **values, data=source, out=str(out), model=model_name.strip(),
                             weights=weights, checkpoint=checkpoint)

report = device_report()
dev_kind = None
try:
    check_names(config)
    dev_kind = resolve_device(config.device, report)
except InputError as e:
    problems.append(str(e))
if not source:
    problems.insert(0, "Choose the images first.")

c1, c2 = st.columns(2)
c1.markdown(f"**Device:** {report.text}")
est = estimate_seconds(config, n_images, device=dev_kind) if n_images and dev_kind else None
c2.markdown(f"**Estimated time:** {views.fmt_seconds(est) if est else '–'}"
            + (" (rough; first run also decodes and caches the images)" if est else ""))

job = sh.current_job_snapshot()
busy = bool(job and job.get("state") == "running")
if busy:
    st.warning(f"A run is already training on this server ({Path(str(job.get('run_dir'))).name}). "
               "One run at a time: wait for it or cancel it on **Training**.")
elif problems:
    st.caption(problems[0])
if st.button("Start run", type="primary", disabled=busy or bool(problems), key="start_run"):
    reg = sh.registry()
    try:
        if reg is None:
            raise InputError("the background job registry could not be created: see the server log")
        reg.start(check_names(config))
    except BusyError as e:
        st.warning(f"Busy: {e}")
    except InputError as e:
        st.error(str(e))
    else:
        st.session_state.pop("run_name", None)
        sh.select_run(out.name)
        st.switch_page("pages/training.py")
