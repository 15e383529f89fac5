"""Command line: ``python -m turn_core run | demo | export``.

Every RunConfig field is a ``--flag`` (generated from the dataclass, help from its comment), so
the CLI and the app can never drift apart. Bad input: one line on stderr, exit code 2.
Cancelled (Ctrl-C): exit code 130, the run directory marked cancelled.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import BN_MODES, METHODS, RunConfig, setting_help
from .errors import Cancelled, TurnAuditError

_SHORT_HELP = {
    "data": "image folder (root/<class>/<image>), CSV manifest (path,label[,split][,clean_label]) or 'demo'",
    "out": "run directory to write",
    "method": f"one of {', '.join(METHODS)}",
}


def _type_of(f: dataclasses.Field):
    t = str(f.type)
    if "tuple" in t:
        return lambda s: tuple(float(x) for x in s.split(","))
    if "bool" in t:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    helps = setting_help()
    for f in dataclasses.fields(RunConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        text = _SHORT_HELP.get(f.name) or helps.get(f.name, "")
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{text} (default: {default})"}
        if f.name == "method":
            kwargs["choices"] = METHODS
        elif f.name == "bn_mode":
            kwargs["choices"] = BN_MODES
        p.add_argument(flag, type=_type_of(f), **kwargs)


def config_from_args(ns: argparse.Namespace, **overrides) -> RunConfig:
    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in vars(ns).items() if k in names}
    values.update(overrides)
    return RunConfig(**values)


class _Bars:
    """tqdm progress bars driven by the pipeline's progress events."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.bar = None
        self.key = None

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        if ev["kind"] == "step":
            key = (ev["phase"], ev.get("epoch"))
            if key != self.key:
                self.close()
                from tqdm import tqdm

                label = ev["phase"] + (f" {ev['epoch']}/{ev['epochs']}" if ev.get("epoch") else "")
                self.bar = tqdm(total=ev.get("steps"), desc=label, unit="batch", leave=False, file=sys.stderr)
                self.key = key
            self.bar.n = ev.get("step", 0)
            post = {}
            if ev.get("loss") is not None:
                post["loss"] = f"{ev['loss']:.3f}"
            if ev.get("images_per_s"):
                post["img/s"] = f"{ev['images_per_s']:.0f}"
            self.bar.set_postfix(post, refresh=True)
        elif ev["kind"] in ("epoch", "gmm", "warning", "timing"):
            self.close()
            print(_describe(ev), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.key = None, None


def _describe(ev: dict) -> str:
    if ev["kind"] == "timing":
        return f"[{ev['phase']}] done in {ev['seconds']:.1f} s"
    if ev["kind"] == "gmm":
        return f"[fft {ev['epoch']}/{ev['epochs']}] clean set: {ev['n_train']} images ({ev.get('clean_per_class')})"
    if ev["kind"] == "warning":
        return f"warning: {ev['message']}"
    loss = ev.get("loss")
    return f"[{ev['phase']} {ev.get('epoch')}/{ev.get('epochs')}] loss {loss:.4f}" if loss is not None else str(ev)


def _summary(run_dir: Path) -> str:
    from .rundir import Run

    m = Run(run_dir).metrics
    parts = [f"run written to {run_dir}", f"{m.get('n_flagged', 0)} of {m.get('n_train', 0)} images flagged"]
    if "detection" in m:
        d = m["detection"]
        parts.append(f"precision {d['precision']:.3f} recall {d['recall']:.3f} F1 {d['f1']:.3f} AUROC {d.get('auroc', float('nan')):.3f}")
    if "test_accuracy" in m:
        parts.append(f"test accuracy {m['test_accuracy']:.3f}")
    return "\n".join(parts)


def _do_run(config: RunConfig, quiet: bool) -> int:
    from .pipeline import run
    from .progress import CancelToken

    bars = _Bars(quiet)
    token = CancelToken()
    try:
        out = run(config, progress=bars, cancel=token)
    except KeyboardInterrupt:
        bars.close()
        print("cancelled", file=sys.stderr)
        return 130
    finally:
        bars.close()
    print(_summary(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m turn_core",
                                description="TURN Audit: find mislabeled images with TURN (Ahn et al., IJCAI 2024).")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run TURN (or a baseline) on a dataset",
                       description="Run TURN or a baseline; writes a run directory (see ARCHITECTURE.md).")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(r)
    d = sub.add_parser("demo", help="run TURN on the built-in offline demo (MNIST digits with injected noise)")
    d.add_argument("--quiet", action="store_true")
    add_config_flags(d, skip=("data",))
    e = sub.add_parser("export", help="export corrected labels (suggestions + review decisions) as CSV")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--out", type=Path, required=True, help="CSV file to write")
    e.add_argument("--manifest", type=Path, default=None,
                   help="also write the cleaned manifest (path,label) here, ready to train on")
    e.add_argument("--no-spreadsheet-escape", action="store_true",
                   help="do not prefix cells starting with = + - @ (formula-injection guard)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            if not getattr(args, "data", None):
                raise TurnAuditError("--data is required (a folder, a CSV manifest, or 'demo')")
            return _do_run(config_from_args(args), args.quiet)
        if args.command == "demo":
            cfg = config_from_args(args, data="demo")
            if "out" not in vars(args):
                cfg.out = "runs/demo"
            return _do_run(cfg, args.quiet)
        if args.command == "export":
            from .export import write_clean_manifest, write_corrected_csv

            path = write_corrected_csv(args.run_dir, args.out, spreadsheet_safe=not args.no_spreadsheet_escape)
            print(f"wrote {path}")
            if args.manifest:
                print(f"wrote {write_clean_manifest(args.run_dir, args.manifest)}")
            return 0
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return 130
    except TurnAuditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
