"""Screenshot every page of the real app (for the README) with headless Chromium.

    python scripts/screenshots.py                 # trains the demo (~1–2 min on CPU), then shoots
    python scripts/screenshots.py --fake          # synthetic run (seconds; random thumbnails)
    python scripts/screenshots.py --runs runs     # use existing runs (picks --run or the newest)

Starts ``streamlit run app.py`` on a free loopback port with TURN_AUDIT_RUNS pointing at the runs,
opens each page with Playwright (Debian's /usr/bin/chromium: ``apt-get install -y chromium``) and
writes ``assets/screenshots/<page>.png``.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
# One server/browser helper for the browser tests and this script.
from browser_util import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server, wait_ready

# (url path, file name, text that shows the page is drawn)
PAGES = [("", "overview", "Runs"), ("data_run", "data_run", "Start run"), ("training", "training", "Training loss"),
         ("losses", "losses", "Suspicion cut-off"), ("clusters", "clusters", "After fine-tuning"),
         ("review", "review", "suspects reviewed"), ("export", "export", "Corrected labels")]


def make_runs(args) -> tuple[Path, str]:
    if args.runs:
        runs = Path(args.runs).resolve()
        from turn_core.rundir import list_runs

        rs = [r for r in list_runs(runs) if r.state == "finished"]
        if not rs:
            raise SystemExit(f"no finished run under {runs}")
        return runs, args.run or rs[0].name
    runs = Path(tempfile.mkdtemp(prefix="turn-shots-"))
    if args.fake:
        from fakerun import make_fake_run

        make_fake_run(runs / "fake-run", n=300, dataset_root=runs.parent / (runs.name + "-data"))
        return runs, "fake-run"
    out = runs / "demo"
    cmd = [sys.executable, "-m", "turn_core", "demo", "--out", str(out), "--demo-n", str(args.demo_n),
           "--quiet"]
    print("training the demo:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return runs, "demo"


def shoot(runs: Path, run: str, out_dir: Path, width: int = 1400) -> list[Path]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: apt-get install -y chromium")
    out_dir.mkdir(parents=True, exist_ok=True)
    proc, url = start_server(runs)
    written = []
    try:
        # A few review decisions so the Review/Export pages show something real.
        from turn_core import views
        from turn_core.review import ReviewStore
        from turn_core.rundir import Run

        df = Run(runs / run).samples()
        store = ReviewStore(runs / run)
        if store.count_reviewed() == 0:
            q = views.review_queue(df)
            store.record_many([(int(i), "accept", str(s)) for i, s in
                               zip(q["index"][:3], q["suggested_label"][:3])], "screenshot")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": width, "height": 1000})
            for path, name, text in PAGES:
                page.set_viewport_size({"width": width, "height": 1600 if name in ("review", "losses", "overview", "export", "data_run") else 1000})
                page.goto(f"{url}/{path}?run={run}")
                wait_ready(page, text)
                time.sleep(1.5)  # plotly draws after the script finishes
                f = out_dir / f"{name}.png"
                page.screenshot(path=str(f), full_page=True)
                written.append(f)
                print("wrote", f, flush=True)
            browser.close()
    finally:
        stop_server(proc)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fake", action="store_true", help="a synthetic run instead of training the demo")
    ap.add_argument("--runs", help="existing runs folder")
    ap.add_argument("--run", help="run name inside --runs (default: newest finished)")
    ap.add_argument("--demo-n", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "assets" / "screenshots"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    runs, run = make_runs(args)
    try:
        shoot(runs, run, Path(args.out))
    finally:
        if not args.runs:
            shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
