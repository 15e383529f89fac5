"""Data & run: choose the images, preview them, set the model and TURN, start a run."""
from __future__ import annotations

import dataclasses
import re
import time
import uuid
from pathlib import Path, PurePosixPath

import streamlit as st

from pages import _shared as sh
from turn_core import views
from turn_core.config import METHODS, RunConfig, setting_help
from turn_core.errors import InputError
from turn_core.scores import FLAG_RULES, SCORES

st.title("Data & run")

HELP = setting_help()
base = RunConfig()
overrides = sh.defaults()
try:
    base = RunConfig.from_dict({**base.to_dict(), **overrides})
except (TypeError, ValueError):
    st.warning("TURN_AUDIT_DEFAULTS is not a valid set of settings; using the paper's defaults.")


def h(name: str) -> str | None:
    return HELP.get(name)


# ------------------------------------------------------------------ cached helpers
@st.cache_resource(show_spinner="Loading the dataset…", max_entries=3)
def load_preview(kind: str, source: str, noise: str, rate: float, n: int, seed: int):
    from turn_core import data
    from turn_core.demo import load_demo

    if kind == "demo":
        return load_demo(n=n, noise=noise, rate=rate, seed=seed)
    return data.load_dataset(source)


@st.cache_data(show_spinner=False, max_entries=500)
def preview_png(path: str) -> bytes | None:
    try:
        from turn_core.images import load_rgb

        img = load_rgb(path)
        import numpy as np
        from PIL import Image

        im = Image.fromarray(np.asarray(img))
        im.thumbnail((96, 96))
        return views.png_bytes(np.asarray(im), 64)
    except Exception:  # noqa: BLE001 - a broken file shows as missing, it is listed as skipped anyway
        return None


@st.cache_resource(show_spinner="Checking the device…")
def device_info() -> tuple[str, str]:
    """(device kind for the estimate, human description)."""
    try:
        import torch

        if torch.cuda.is_available():
            return "cuda", f"GPU: {torch.cuda.get_device_name(0)}"
        import os

        return "cpu", f"CPU ({os.cpu_count()} cores) — no CUDA GPU found"
    except Exception as e:  # noqa: BLE001
        return "cpu", f"CPU (torch unavailable: {e})"


def _safe_rel(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or not p.parts:
        return None
    return p


def save_uploaded_folder(files) -> Path:
    dest = sh.runs_root() / "_uploads" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    dest.mkdir(parents=True, exist_ok=True)
    written = 0
    for f in files:
        rel = _safe_rel(f.name)
        if rel is None:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.getbuffer())
        written += 1
    if not written:
        raise InputError("the uploaded folder contained no usable files")
    subs = [p for p in dest.iterdir()]
    return subs[0] if len(subs) == 1 and subs[0].is_dir() else dest


# ------------------------------------------------------------------ 1. source
st.subheader("1 · Images and labels")
KINDS = {"demo": "Built-in demo (labels flipped on purpose, truth known)",
         "server": "A folder or CSV on this server",
         "folder": "Upload a folder", "zip": "Upload a ZIP"}
kind = st.radio("Source", list(KINDS), format_func=KINDS.get, key="src_kind", horizontal=True,
                index=0 if base.data == "demo" else 1)
source = "demo"
noise_kind, noise_rate, demo_n = base.demo_noise, base.demo_noise_rate, base.demo_n
if kind == "demo":
    c1, c2, c3 = st.columns(3)
    noise_kind = c1.selectbox("Noise kind", ["symmetric", "asymmetric", "instance"],
                              index=["symmetric", "asymmetric", "instance"].index(base.demo_noise)
                              if base.demo_noise in ("symmetric", "asymmetric", "instance") else 0,
                              help="symmetric: a wrong label drawn uniformly; asymmetric: a fixed "
                                   "class → class confusion; instance: harder images are mislabeled more.")
    noise_rate = c2.slider("Noise rate", 0.0, 0.6, float(base.demo_noise_rate), 0.05,
                           help=h("demo_noise_rate"))
    demo_n = int(c3.number_input("Training images", 20, 4500, min(int(base.demo_n), 4500), 100, help=h("demo_n")))
elif kind == "server":
    from turn_core.safety import allowed_roots

    roots = ", ".join(f"`{r}`" for r in allowed_roots())
    raw = st.text_input("Folder (one sub-folder per class) or CSV manifest (path,label[,split])",
                        key="server_path", help=f"Must lie under {roots} (TURN_AUDIT_DATA_ROOTS).")
    st.caption(f"Allowed folders: {roots}")
    source = ""
    if raw.strip():
        from turn_core.safety import resolve_under_roots

        try:
            source = str(resolve_under_roots(raw.strip()))
        except InputError as e:
            st.error(str(e))
elif kind == "folder":
    ups = st.file_uploader("Folder of images, one sub-folder per class", accept_multiple_files="directory",
                           key="up_folder")
    source = ""
    if ups:
        sig = tuple(sorted((u.name, u.size) for u in ups))
        if st.session_state.get("_up_folder_sig") != sig:
            try:
                st.session_state["_up_folder_path"] = str(save_uploaded_folder(ups))
                st.session_state["_up_folder_sig"] = sig
            except InputError as e:
                st.error(str(e))
        source = st.session_state.get("_up_folder_path", "")
else:
    up = st.file_uploader("ZIP of a folder (one sub-folder per class) or of a CSV manifest with its images",
                          type=["zip"], key="up_zip")
    source = ""
    if up is not None:
        sig = (up.name, up.size)
        if st.session_state.get("_up_zip_sig") != sig:
            from turn_core.safety import extract_zip_safely

            dest = sh.runs_root() / "_uploads" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            try:
                with st.spinner("Extracting…"):
                    st.session_state["_up_zip_path"] = str(extract_zip_safely(up, dest))
                st.session_state["_up_zip_sig"] = sig
            except InputError as e:
                st.error(str(e))
        source = st.session_state.get("_up_zip_path", "")
        if source:
            p = Path(source)
            csvs = sorted(p.glob("*.csv"))
            if csvs and not any(c.is_dir() for c in p.iterdir() if c.name != "__MACOSX"):
                source = str(csvs[0])
            st.caption(f"Extracted to `{source}`")

# ------------------------------------------------------------------ preview
ds = None
if source:
    try:
        ds = load_preview(kind if kind == "demo" else "path", source, noise_kind, float(noise_rate),
                          int(demo_n), int(base.seed))
    except InputError as e:
        st.error(str(e))
    except ImportError:
        st.warning("Dataset loading is not available in this build (turn_core.data missing).")
    except Exception as e:  # noqa: BLE001
        st.error(f"Could not read the dataset: {type(e).__name__}: {e}")

n_images = None
if ds is not None:
    with st.expander("Preview", expanded=True):
        try:
            labels = ds.labels
            classes = list(ds.classes)
            n_images = int(len(labels))
            counts = views.class_count_table(labels, classes)
            c1, c2, c3 = st.columns(3)
            c1.metric("Images", f"{n_images:,}")
            c2.metric("Classes", len(classes))
            skipped = list(getattr(ds, "skipped", []) or [])
            c3.metric("Skipped files", len(skipped))
            import plotly.express as px

            fig = px.bar(counts, x="class", y="images", height=260)
            fig.update_layout(margin=dict(l=10, r=10, t=10, b=10))
            st.plotly_chart(fig, width="stretch", key="class_bar")
            if getattr(ds, "clean_labels", None) is not None:
                import numpy as np

                st.caption(f"True labels are known: {float(np.mean(np.asarray(ds.clean_labels) != np.asarray(labels))):.1%} "
                           "of the given labels are wrong; the run will report detection precision/recall.")
            grid = views.sample_per_class(labels, len(classes), per_class=6, seed=0)
            files = list(getattr(ds, "files", None) or getattr(ds, "paths", []))
            for c, idx in grid.items():
                if not idx:
                    continue
                cols = st.columns([2] + [1] * 6)
                cols[0].markdown(f"**{classes[c]}**  \n{int(counts['images'][c])} images")
                for j, i in enumerate(idx[:6]):
                    png = preview_png(str(files[i])) if i < len(files) else None
                    if png:
                        cols[j + 1].image(png, width="stretch")
            if skipped:
                st.markdown("**Skipped files**")
                import pandas as pd

                rows = [s if isinstance(s, dict) else {"path": str(s[0]), "reason": str(s[1])}
                        if isinstance(s, (tuple, list)) and len(s) >= 2 else {"path": str(s), "reason": ""}
                        for s in skipped]
                st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        except Exception as e:  # noqa: BLE001
            st.warning(f"Preview incomplete: {type(e).__name__}: {e}")

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
    raw_ckpt = st.text_input("Checkpoint path on this server", key="ckpt_path")
    weights = "none"
    if raw_ckpt.strip():
        from turn_core.safety import resolve_under_roots

        try:
            checkpoint = str(resolve_under_roots(raw_ckpt.strip()))
        except InputError as e:
            st.error(str(e))

# ------------------------------------------------------------------ 3. TURN
st.subheader("3 · Method and settings")
METHOD_HELP = {"turn": "TURN: linear probing with GCE, then full fine-tuning on a GMM-selected clean set",
               "ce-lp": "Baseline: linear probing with cross-entropy",
               "gce-lp": "Baseline: linear probing with GCE",
               "ce-fft": "Baseline: full fine-tuning on all labels with cross-entropy"}
c1, c2, c3, c4 = st.columns(4)
method = c1.selectbox("Method", METHODS, index=METHODS.index(base.method) if base.method in METHODS else 0,
                      format_func=lambda m: m.upper(), help="\n\n".join(METHOD_HELP.values()))
lp_epochs = c2.number_input("LP epochs (E_LP)", 0, 500, int(base.lp_epochs), help=h("lp_epochs"))
fft_epochs = c3.number_input("FFT epochs (E_FFT)", 0, 200, int(base.fft_epochs), help=h("fft_epochs"),
                             disabled=method in ("ce-lp", "gce-lp"))
tau = c4.number_input("τ (clean threshold)", 0.0, 1.0, float(base.tau), 0.05, help=h("tau"))
with st.expander("Advanced settings"):
    a1, a2, a3, a4 = st.columns(4)
    gce_q = a1.number_input("GCE q", 0.05, 1.0, float(base.gce_q), 0.05, help=h("gce_q"))
    lp_lr = a2.number_input("LP learning rate", 1e-5, 1.0, float(base.lp_lr), format="%.5f", help=h("lp_lr"))
    fft_lr = a3.number_input("FFT learning rate", 1e-6, 1.0, float(base.fft_lr), format="%.6f", help=h("fft_lr"))
    batch_size = a4.number_input("Batch size", 1, 4096, int(base.batch_size), help=h("batch_size"))
    b1, b2, b3, b4 = st.columns(4)
    image_size = b1.number_input("Image size (0 = model default)", 0, 1024, int(base.image_size or 0),
                                 help=h("image_size"))
    seed = b2.number_input("Seed", 0, 2**31 - 1, int(base.seed), help=h("seed"))
    min_per_class = b3.number_input("Min clean per class", 0, 100000, int(base.min_per_class),
                                    help=h("min_per_class"))
    knn_k = b4.number_input("k of the neighbour vote", 1, 200, int(base.knn_k), help=h("knn_k"))
    d1, d2, d3, d4 = st.columns(4)
    scores, rules = list(SCORES), list(FLAG_RULES)
    score = d1.selectbox("Suspicion score", scores, index=scores.index(base.score), help=h("score"))
    flag_rule = d2.selectbox("Flag rule", rules, index=rules.index(base.flag_rule), help=h("flag_rule"))
    gmm_per_class = d3.checkbox("One GMM per class", value=bool(base.gmm_per_class), help=h("gmm_per_class"))
    fft_augment = d4.checkbox("Augment during FFT", value=bool(base.fft_augment), help=h("fft_augment"))
    device = st.selectbox("Device", ["auto", "cpu", "cuda"],
                          index=["auto", "cpu", "cuda"].index(base.device) if base.device in ("auto", "cpu", "cuda") else 0)

dev_kind, dev_text = device_info()
if device == "cpu":
    dev_kind = "cpu"

# ------------------------------------------------------------------ 4. start
st.subheader("4 · Start")
default_name = f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-{'demo' if kind == 'demo' else Path(source or 'data').stem}"
run_name = st.text_input("Run name", value=st.session_state.get("_run_name_default") or default_name,
                         key="run_name", help="A folder of this name is created under the runs folder.")
cfg_fields = dict(
    data=source or "", out=str(sh.runs_root() / re.sub(r"[^A-Za-z0-9._-]+", "-", run_name.strip() or default_name)),
    demo_noise=noise_kind, demo_noise_rate=float(noise_rate), demo_n=int(demo_n),
    model=model_name.strip(), weights=weights, checkpoint=checkpoint,
    image_size=int(image_size) or None, device=device, batch_size=int(batch_size),
    method=method, lp_epochs=int(lp_epochs), gce_q=float(gce_q), lp_lr=float(lp_lr),
    fft_epochs=int(fft_epochs), fft_lr=float(fft_lr), tau=float(tau), gmm_per_class=bool(gmm_per_class),
    min_per_class=int(min_per_class), score=score, flag_rule=flag_rule, knn_k=int(knn_k),
    seed=int(seed), fft_augment=bool(fft_augment),
)
config = dataclasses.replace(base, **cfg_fields)

c1, c2 = st.columns(2)
c1.markdown(f"**Device:** {dev_text}")
est = None
if n_images:
    try:
        from turn_core.pipeline import estimate_seconds

        try:
            est = estimate_seconds(config, n_images, device=dev_kind)
        except TypeError:
            est = estimate_seconds(config, n_images)
    except Exception:  # noqa: BLE001 - no estimate rather than no page
        est = None
c2.markdown(f"**Estimated time:** {views.fmt_seconds(est) if est else '–'}"
            + (" (rough; first run also decodes and caches the images)" if est else ""))

job = sh.current_job_snapshot()
busy = bool(job and job.get("state") == "running")
if busy:
    st.warning(f"A run is already training on this server ({Path(str(job.get('run_dir'))).name}). "
               "One run at a time: wait for it or cancel it on **Training**.")
problem = None
if not source:
    problem = "Choose the images first."
elif mkind == "checkpoint" and not checkpoint:
    problem = "Give the checkpoint's path."
elif (sh.runs_root() / Path(config.out).name).exists():
    problem = f"A run named {Path(config.out).name} exists already: choose another name."
if problem and not busy:
    st.caption(problem)
if st.button("Start run", type="primary", disabled=busy or bool(problem), key="start_run"):
    reg = sh.registry()
    try:
        config.validate()
        if reg is None:
            raise InputError("the background job registry is not available in this build (turn_core.jobs missing)")
        reg.start(config)
    except InputError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - BusyError and friends: one line for the user
        if type(e).__name__ == "BusyError":
            st.warning(f"Busy: {e}")
        else:
            st.error(f"Could not start: {type(e).__name__}: {e}")
    else:
        st.session_state.pop("_run_name_default", None)
        st.session_state.pop("run_name", None)
        sh.select_run(Path(config.out).name)
        st.switch_page("pages/training.py")
