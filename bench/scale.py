"""Scale: time and peak RSS of the scoring step, the table, the Review page and the export at N samples.

    nice -n 10 .venv/bin/python bench/scale.py --n 10000,100000[,1000000] [--keep] [--out DIR]
        [--probe-recipe auto|epochs|steps] [--skip review,neighbours]

For each N a synthetic *finished* run directory in the real format is streamed to OUT/scale-N
(no pipeline, nothing of N × 1280 float32 in memory): config.json, status.json, events.jsonl,
two 1280-d float16 feature views with class structure (14 class means, a 32-d latent that gives
neighbours meaning, isotropic noise; a linear probe on the noisy labels reaches 70-80 % of the
true labels), 20 % symmetric label noise with the true labels kept, probs.npy, cv_probs.npy,
32-px thumbnails, then (as the steps below) samples.csv (+ samples.parquet when the writer has
it), a few thousand review decisions and an export. Each step runs in its own child process, so
its peak RSS (``os.wait4``, the figure ``/usr/bin/time -v`` prints) is its own:

    generate     the generator above
    score        ``scores.score_step`` as the pipeline calls it (out-of-fold probes of both views,
                 neighbour votes, score, flags); the probes' share and the detection quality too
    table        ``RunWriter.write_samples`` of the scored table; status finished
    decisions    a few thousand decisions through ``ReviewStore.record_many``
    review       Streamlit AppTest: open the Review page, then record one decision (Accept)
    export       ``export.write_corrected_csv``, every row
    neighbours   recall@k against exact neighbours of QUERIES sampled rows: of the neighbours
                 the score step saved, and (up to EXACT_FULL_MAX rows) of ``knn.search`` with
                 each method, timed

Prints one Markdown table and a final JSON line. Removes each run directory afterwards unless
``--keep``; refuses to start when the disk cannot hold the largest N.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K, D, LATENT = 14, 1280, 32   # classes, feature width, latent dimensions of the class model
NOISE_RATE = 0.2
THUMB = 32
FFT_EPOCHS = 5
DECISIONS = 3000
CHUNK = 16_384                # rows generated (and read back) at a time
# Per view: spread of the class means, the class's own share of the latent basis, isotropic noise.
# Tuned on 20k rows: the step-recipe probe on the noisy labels reaches 61 / 80 % of the true labels
# at sep 0.045 / 0.052, and 54 % of the 10 nearest neighbours share the true class (7 % by chance).
VIEWS = {"pre": {"sep": 0.048, "own": 0.3, "noise": 0.5}, "post": {"sep": 0.051, "own": 0.3, "noise": 0.5}}
EXACT_FULL_MAX = 200_000      # full exact neighbour search timed up to this many rows
QUERIES = 1000                # rows whose exact neighbours measure the recall of approximate search
KNN_K = 10
# Bytes on disk per sample: two float16 views, a thumbnail, probs + cv_probs, the tables (CSV,
# Parquet, export), saved neighbours and the bench's own scratch arrays.
BYTES_PER_ROW = 2 * D * 2 + THUMB * THUMB * 3 + 3 * K * 4 + 900
STEPS: dict[str, object] = {}


def step(name: str):
    """Register a bench step ``fn(run_dir, scratch, args) -> dict of figures``."""
    def deco(fn):
        STEPS[name] = fn
        return fn
    return deco


# ----------------------------------------------------------------------------------- generator
def write_npy_rows(path: Path, shape: tuple[int, ...], dtype, chunks) -> None:
    """An .npy file written chunk by chunk through a plain file handle (no dirty mapping)."""
    dtype = np.dtype(dtype)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        rows = 0
        for c in chunks:
            f.write(np.ascontiguousarray(c, dtype=dtype).data)
            rows += len(c)
    if rows != shape[0]:
        raise RuntimeError(f"{path.name}: {rows} rows written, {shape[0]} expected")
    os.replace(tmp, path)


def class_model(seed: int, view: str) -> dict:
    """The fixed parts of one feature view: class means (K, D), latent bases (K, LATENT, D) (a
    shared basis mixed with each class's own), a positive offset (D,), isotropic noise."""
    rng = np.random.default_rng([seed, list(VIEWS).index(view)])
    v = VIEWS[view]
    shared, own = (rng.normal(size=(s, LATENT, D)) / np.sqrt(LATENT) for s in (1, K))
    return {"means": rng.normal(scale=v["sep"], size=(K, D)).astype(np.float32),
            "basis": (np.sqrt(1 - v["own"]) * shared + np.sqrt(v["own"]) * own).astype(np.float32),
            "offset": np.abs(rng.normal(size=D)).astype(np.float32), "noise": v["noise"]}


def feature_rows(model: dict, true: np.ndarray, latent: np.ndarray, rng) -> np.ndarray:
    """(M, D) float16 features of M samples: class mean + latent · the class's own basis (so
    neighbours share a class more often than chance) + isotropic noise."""
    x = model["means"][true] + model["offset"]
    for c in np.unique(true):
        rows = true == c
        x[rows] += latent[rows] @ model["basis"][c]
    x += rng.normal(scale=model["noise"], size=x.shape).astype(np.float32)
    return x.astype(np.float16)


def view_chunks(view: str, true: np.ndarray, seed: int):
    """The (CHUNK, D) float16 blocks of one view; both views share each sample's latent."""
    model = class_model(seed, view)
    for lo in range(0, len(true), CHUNK):
        t = true[lo:lo + CHUNK]
        latent = np.random.default_rng([seed, 3, lo]).normal(size=(len(t), LATENT)).astype(np.float32)
        yield feature_rows(model, t, latent, np.random.default_rng([seed, 5, lo, list(VIEWS).index(view)]))


def labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(true, given) int (N,): uniform classes, NOISE_RATE of them moved to another class."""
    rng = np.random.default_rng([seed, 7])
    true = rng.integers(0, K, n)
    noisy = rng.random(n) < NOISE_RATE
    given = true.copy()
    given[noisy] = (true[noisy] + rng.integers(1, K, noisy.sum())) % K
    return true, given


def model_probs(true: np.ndarray, seed: int, lo: int) -> np.ndarray:
    """(M, K) float32 softmax of a synthetic fine-tuned model: right on ~85 % of rows."""
    rng = np.random.default_rng([seed, 11, lo])
    pred = np.where(rng.random(len(true)) < 0.85, true, rng.integers(0, K, len(true)))
    z = rng.normal(size=(len(true), K)).astype(np.float32)
    z[np.arange(len(true)), pred] += 4.0
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def thumb_rows(true: np.ndarray, lo: int) -> np.ndarray:
    """(M, 32, 32, 3) uint8: a colour per class with a gradient, the row number in the first
    pixels (so no two thumbnails are exact duplicates)."""
    m = len(true)
    hue = (np.arange(K)[:, None] * np.array([37, 91, 151]) % 256).astype(np.uint8)
    t = np.empty((m, THUMB, THUMB, 3), dtype=np.uint8)
    t[:] = hue[true][:, None, None, :]
    t += np.arange(THUMB, dtype=np.uint8)[None, :, None, None] * 3
    idx = np.arange(lo, lo + m, dtype=np.uint32).view(np.uint8).reshape(m, 4)
    t[:, 0, :4, 0] = idx
    return t


@step("generate")
def generate(run_dir: Path, scratch: Path, a) -> dict:
    """The finished run's inputs, streamed in CHUNK rows."""
    from turn_core.config import RunConfig
    from turn_core.rundir import RunWriter

    n, seed = a.n, a.seed
    t0 = time.perf_counter()
    true, given = labels(n, seed)
    w = RunWriter(run_dir)
    cfg = RunConfig(data="synthetic", out=str(run_dir), fft_epochs=FFT_EPOCHS, seed=seed, image_size=THUMB,
                    thumb_size=THUMB)
    w.set_status("running", method=cfg.method)
    classes = [f"class_{c:02d}" for c in range(K)]
    w.write_json("config.json", {
        "format": 1, "settings": cfg.to_dict(), "classes": classes, "versions": {},
        "dataset": {"source": "bench/scale.py", "root": "", "kind": "csv", "fingerprint": f"scale-{n}-{seed}",
                    "n_train": n, "n_test": 0}})
    for e in range(1, 4):
        w.event("lp", "epoch", epoch=e, epochs=3, loss=1.0 / e)
    starts = range(0, n, CHUNK)
    for view in VIEWS:
        write_npy_rows(run_dir / f"features_{view}.npy", (n, D), np.float16, view_chunks(view, true, seed))
    write_npy_rows(run_dir / "probs.npy", (n, K), np.float32, (model_probs(true[lo:lo + CHUNK], seed, lo) for lo in starts))
    write_npy_rows(run_dir / "thumbs.npy", (n, THUMB, THUMB, 3), np.uint8, (thumb_rows(true[lo:lo + CHUNK], lo) for lo in starts))
    # the model's per-epoch losses and the GMM's clean posterior follow from its probabilities
    probs = np.load(run_dir / "probs.npy", mmap_mode="r")
    p_given = np.concatenate([probs[lo:lo + CHUNK][np.arange(min(CHUNK, n - lo)), given[lo:lo + CHUNK]] for lo in starts])
    rng = np.random.default_rng([seed, 13])
    losses = (-np.log(np.clip(p_given, 1e-7, 1))[None] * rng.uniform(0.8, 1.2, (1 + FFT_EPOCHS, 1))).astype(np.float32)
    clean_prob = (1 / (1 + np.exp(4 * (losses[-1] - 1.5)))).astype(np.float32)
    np.savez(scratch / "inputs.npz", true=true, given=given, losses=losses, clean_prob=clean_prob)
    w.event("done", "timing", seconds=time.perf_counter() - t0)
    w.close()
    return {"seconds": time.perf_counter() - t0, "disk_gb": sum(p.stat().st_size for p in run_dir.iterdir()) / 1e9}


# --------------------------------------------------------------------------------------- steps
def _inputs(scratch: Path) -> dict:
    with np.load(scratch / "inputs.npz") as z:
        return {k: z[k] for k in z.files}


@step("score")
def score(run_dir: Path, scratch: Path, a) -> dict:
    """``score_step`` on both views, as the pipeline's final table calls it."""
    from turn_core import knn, train
    from turn_core.config import RunConfig
    from turn_core.metrics import auroc, detection_metrics
    from turn_core.rundir import Run, RunWriter
    from turn_core.scores import score_step

    run = Run(run_dir)
    cfg = RunConfig.from_dict(run.settings)
    x = _inputs(scratch)
    feats = [run.features("pre"), run.features("post")]
    probe_s, real = [0.0], train.cross_val_linear_probs

    def timed_probe(*args, **kw):   # the probes' share of the step, and the recipe forced by --probe-recipe
        t = time.perf_counter()
        out = real(*args, **kw, recipe=None if a.probe_recipe == "auto" else a.probe_recipe)
        probe_s[0] += time.perf_counter() - t
        return out

    search_s, real_search = [0.0], knn.search

    def timed_search(*args, **kw):   # the neighbour search's share (scores.view_neighbours imports it per call)
        t = time.perf_counter()
        out = real_search(*args, **kw)
        search_s[0] += time.perf_counter() - t
        return out

    train.cross_val_linear_probs = timed_probe
    knn.search = timed_search
    t0 = time.perf_counter()
    sig, result, cv = score_step(x["given"], run._npy("probs.npy"), x["clean_prob"], x["losses"], feats, cfg)
    seconds = time.perf_counter() - t0
    noisy = x["given"] != x["true"]
    m = detection_metrics(noisy, result["flagged"], result["suspicion"])
    rows = np.arange(a.n)
    np.savez(scratch / "scored.npz", **{k: np.asarray(v) for k, v in result.items()},
             knn_agreement=sig.knn_probs[rows, x["given"]].astype(np.float32))
    w = RunWriter(run_dir)
    w.write_npy("cv_probs.npy", np.stack(cv).astype(np.float32))
    for which, (idx, sims) in zip(("pre", "post"), sig.extra["neighbours"]):   # as the pipeline saves them
        idx_name, sims_name = Run.neighbour_files(which)
        w.write_npy(idx_name, np.asarray(idx, dtype=np.int32))
        w.write_npy(sims_name, np.asarray(sims, dtype=np.float16))
    w.close()
    import torch

    return {"seconds": seconds, "probes_s": probe_s[0], "neighbours_s": search_s[0],
            "knn_method": knn.choose_method(a.n, "cpu"), "torch_threads": torch.get_num_threads(), "recipe": train.probe_recipe(a.n) if a.probe_recipe == "auto"
            else a.probe_recipe, "f1": m["f1"], "auroc": m["auroc"],
            "probe_auroc_pre": auroc(noisy, 1 - cv[0][rows, x["given"]]),
            "probe_acc_pre": float(np.mean(cv[0].argmax(1) == x["true"])),
            "probe_acc_post": float(np.mean(cv[1].argmax(1) == x["true"]))}


@step("table")
def table(run_dir: Path, scratch: Path, a) -> dict:
    """samples.csv (+ samples.parquet) of the scored run, written as the pipeline writes it."""
    from turn_core.rundir import Run, RunWriter

    run = Run(run_dir)
    x, s = _inputs(scratch), dict(np.load(scratch / "scored.npz"))
    probs = run._npy("probs.npy")
    t0 = time.perf_counter()
    predicted = np.concatenate([probs[lo:lo + CHUNK].argmax(1) for lo in range(0, a.n, CHUNK)])
    p_given = np.concatenate([probs[lo:lo + CHUNK][np.arange(len(probs[lo:lo + CHUNK])), x["given"][lo:lo + CHUNK]]
                              for lo in range(0, a.n, CHUNK)])
    p_other = np.concatenate([np.partition(probs[lo:lo + CHUNK], -2, axis=1)[:, -2:] for lo in range(0, a.n, CHUNK)])
    margin = p_given - np.where(p_given >= p_other[:, 1], p_other[:, 0], p_other[:, 1])
    w = RunWriter(run_dir)
    w.write_samples(paths=[f"images/{i:07d}.png" for i in range(a.n)], classes=run.classes, given=x["given"],
                    predicted=predicted, suggested=s["suggested"], suspicion=s["suspicion"],
                    clean_prob=x["clean_prob"], flagged=s["flagged"], confidence=s["confidence"], margin=margin,
                    knn_agreement=s["knn_agreement"], losses=x["losses"], true=x["true"])
    seconds = time.perf_counter() - t0
    w.set_status("finished")
    w.close()
    return {"seconds": seconds}


@step("decisions")
def decisions(run_dir: Path, scratch: Path, a) -> dict:
    """A few thousand decisions on random rows (suspects stay to review), one ``record_many`` call."""
    from turn_core.review import ReviewStore

    x, s = _inputs(scratch), dict(np.load(scratch / "scored.npz"))
    classes = [f"class_{c:02d}" for c in range(K)]
    top = np.random.default_rng(a.seed).choice(a.n, min(DECISIONS, a.n // 10), replace=False)
    kinds = ("accept", "keep", "exclude", "relabel")
    items = []
    for j, i in enumerate(top.tolist()):
        kind = kinds[j % 4]
        label = {"accept": classes[s["suggested"][i]], "keep": classes[x["given"][i]], "exclude": None,
                 "relabel": classes[(x["given"][i] + 1) % K]}[kind]
        items.append((i, kind, label))
    t0 = time.perf_counter()
    ReviewStore(run_dir).record_many(items, reviewer="bench")
    return {"seconds": time.perf_counter() - t0, "decisions": len(items)}


@step("review")
def review(run_dir: Path, scratch: Path, a) -> dict:
    """Open the Review page in Streamlit's AppTest, then record one decision (Accept)."""
    os.environ["TURN_AUDIT_RUNS"] = str(run_dir.parent)
    os.environ["TURN_AUDIT_DATA_ROOTS"] = str(run_dir.parent)
    from streamlit.testing.v1 import AppTest

    from turn_core.review import ReviewStore

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
    at.session_state["run"] = run_dir.name
    t0 = time.perf_counter()
    at.run()
    frame_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    at.switch_page("pages/review.py").run()
    open_s = time.perf_counter() - t0
    if at.exception:
        raise RuntimeError(f"Review page: {[e.value for e in at.exception]}")
    before = ReviewStore(run_dir).count_reviewed()
    at.session_state["reviewer"] = "bench"
    t0 = time.perf_counter()
    at.button(key="rv_accept").click().run()
    decide_s = time.perf_counter() - t0
    if at.exception or ReviewStore(run_dir).count_reviewed() != before + 1:
        raise RuntimeError(f"the decision was not recorded: {[e.value for e in at.exception]}")
    return {"seconds": open_s + decide_s, "frame_s": frame_s, "open_s": open_s, "decision_s": decide_s}


@step("export")
def export_all(run_dir: Path, scratch: Path, a) -> dict:
    """Corrected labels of every row as CSV."""
    from turn_core.export import write_corrected_csv

    t0 = time.perf_counter()
    out = write_corrected_csv(run_dir, run_dir / "exports" / "corrected_labels.csv")
    return {"seconds": time.perf_counter() - t0, "mb": out.stat().st_size / 1e6}


def exact_neighbours(f, q: np.ndarray, k: int) -> np.ndarray:
    """(len(q), k) exact cosine neighbours of rows ``q`` of ``f`` (self excluded), merged block by
    block: never a (len(q), N) similarity array (4 GB at 1M, which set this step's peak RSS)."""
    import torch

    from turn_core import knn
    from turn_core.images import release_pages

    unit = torch.from_numpy(knn.normalise(f[q]))
    qt = torch.from_numpy(q)
    best_s = torch.full((len(q), k), -torch.inf)
    best_i = torch.zeros((len(q), k), dtype=torch.int64)
    for lo in range(0, len(f), CHUNK):
        sims = unit @ torch.from_numpy(knn.normalise(f[lo:lo + CHUNK])).T
        own = (qt >= lo) & (qt < lo + sims.shape[1])
        sims[own.nonzero().squeeze(1), qt[own] - lo] = -torch.inf     # not your own neighbour
        both_s = torch.cat([best_s, sims], 1)
        both_i = torch.cat([best_i, torch.arange(lo, lo + sims.shape[1]).expand(len(q), -1)], 1)
        best_s, pick = torch.topk(both_s, k, dim=1)
        best_i = torch.gather(both_i, 1, pick)
        release_pages(f)
    return best_i.numpy()


@step("neighbours")
def neighbours(run_dir: Path, scratch: Path, a) -> dict:
    """Recall@k against exact neighbours of QUERIES sampled rows (pretrained view): of the
    neighbours the score step saved (the method "auto" chose there), and of ``knn.search`` with
    each method, timed, up to EXACT_FULL_MAX rows (above it the quadratic methods take hours and
    the approximate one would repeat the score step's search)."""
    from turn_core import knn
    from turn_core.rundir import Run

    run = Run(run_dir)
    f = run.features("pre")
    q = np.sort(np.random.default_rng(a.seed).choice(a.n, min(QUERIES, a.n), replace=False))
    truth = exact_neighbours(f, q, KNN_K)
    out = {"auto": knn.choose_method(a.n, "cpu")}
    saved = run.neighbours("pre")
    if saved is not None:
        out["saved_recall"] = knn.recall_at_k(np.asarray(saved[0][q, :KNN_K]), truth)
    t_all = time.perf_counter()
    for name in knn.METHODS if a.n <= EXACT_FULL_MAX else ():
        t0 = time.perf_counter()
        idx, _ = knn.search(f, KNN_K, method=name, device="cpu")
        out[f"{name}_s"] = time.perf_counter() - t0
        out[f"{name}_recall"] = knn.recall_at_k(idx[q], truth)
        del idx
    out["seconds"] = out.get(f"{out['auto']}_s", time.perf_counter() - t_all)
    return out


# ------------------------------------------------------------------------------- orchestration
def run_child(name: str, run_dir: Path, scratch: Path, a) -> dict:
    """One step in its own process; its figures plus peak RSS (bytes) and wall (s, imports included)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--run", str(run_dir),
           "--scratch", str(scratch), "--n", str(a.n), "--seed", str(a.seed), "--probe-recipe", a.probe_recipe]
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)   # of all finished children so far
    if p.returncode:
        raise SystemExit(f"step {name} at N={a.n} failed ({p.returncode}):\n{err[-4000:]}")
    figures = json.loads(out.strip().splitlines()[-1])
    peak = figures.pop("_maxrss")
    return {**figures, "wall_s": wall, "peak_rss_gb": peak / 1e9,
            "children_peak_gb": usage.ru_maxrss * 1024 / 1e9}


def check_disk(out: Path, sizes: list[int]) -> None:
    """Refuse when the largest run would not fit (one run exists at a time)."""
    need = max(sizes) * BYTES_PER_ROW * 1.2 + 1e9
    free = shutil.disk_usage(out).free
    if free < need:
        raise SystemExit(f"not enough disk in {out}: N={max(sizes):,} needs about {need / 1e9:.1f} GB, "
                         f"{free / 1e9:.1f} GB free; pass --out to a larger disk")


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def print_table(results: list[dict]) -> None:
    print("| N | step | seconds | peak RSS GB | details |")
    print("|---|---|---|---|---|")
    for r in results:
        details = ", ".join(f"{k} {fmt(v)}" for k, v in r.items()
                            if k not in ("n", "step", "seconds", "peak_rss_gb", "children_peak_gb"))
        print(f"| {r['n']:,} | {r['step']} | {fmt(r['seconds'])} | {r['peak_rss_gb']:.2f} | {details} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", required=True, help="one size or a comma list, e.g. 10000,100000")
    ap.add_argument("--out", type=Path, default=Path("/tmp/turn-scale"))
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-recipe", default="auto", choices=["auto", "epochs", "steps"],
                    help="force the out-of-fold probe's recipe (turn_core.train.PROBE_RECIPES)")
    ap.add_argument("--skip", default="", help="comma list of steps to leave out (generate, score and table "
                    "are needed by the others)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.step:                       # a child: one step, its figures as the last stdout line
        a.n = int(a.n)
        figures = STEPS[a.step](a.run, a.scratch, a)
        figures["_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(figures), flush=True)
        os._exit(0)                  # a page's background thread must not keep the step alive
    sizes = [int(s.replace("_", "")) for s in a.n.split(",") if s]
    skip = {s for s in a.skip.split(",") if s}
    a.out.mkdir(parents=True, exist_ok=True)
    check_disk(a.out, sizes)
    # no torch here: a child's peak RSS starts at its parent's (Linux keeps the high-water mark
    # across exec), so the parent stays small
    print(f"machine: {os.cpu_count()} cores; out {a.out}", file=sys.stderr)
    results, t_all = [], time.perf_counter()
    for n in sizes:
        a.n = n
        run_dir, scratch = a.out / f"scale-{n}", a.out / f"scale-{n}.bench"
        for d in (run_dir, scratch):
            shutil.rmtree(d, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            for name in STEPS:
                if name in skip:
                    continue
                r = {"n": n, "step": name, **run_child(name, run_dir, scratch, a)}
                print(f"N={n:,} {name}: {fmt(r['seconds'])} s, peak {r['peak_rss_gb']:.2f} GB", file=sys.stderr,
                      flush=True)
                results.append(r)
        finally:
            if not a.keep:
                shutil.rmtree(run_dir, ignore_errors=True)
                shutil.rmtree(scratch, ignore_errors=True)
    whole = max([r["children_peak_gb"] for r in results]
                + [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9])
    print_table(results)
    print(f"whole bench: {time.perf_counter() - t_all:.0f} s, peak RSS of any of its processes {whole:.2f} GB")
    print(json.dumps({"results": results, "whole_peak_rss_gb": whole, "seconds": time.perf_counter() - t_all}))


if __name__ == "__main__":
    main()
