"""Command line: ``turn-audit`` (or ``python -m turn_core``) ``run | demo | export | app``.

Every RunConfig field is a ``--flag``, generated from the field's metadata (help, group, choices),
so the CLI and the app can never drift apart. The settings are checked (``settings.check_names``)
before any data is loaded. Bad input: one line on stderr, exit code 2. Cancelled (Ctrl-C): exit
code 130, the run directory marked cancelled.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import GROUPS, SETTINGS, RunConfig, Setting
from .errors import Cancelled, InputError, TurnAuditError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as ``InputError`` (main prints it as one line, exit 2)
    instead of printing the usage block and exiting from inside the parser."""

    def error(self, message: str):
        raise InputError(message)


def _flag_type(s: Setting):
    def parse(text: str):
        try:
            return s.parse(text)
        except InputError as e:  # argparse prefixes "argument --flag:" itself
            raise argparse.ArgumentTypeError(str(e).removeprefix(s.flag + " ")) from None
    parse.__name__ = s.kind
    return parse


def add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per RunConfig field, in argument groups by the field's metadata group.

    Flags default to "not given" (``argparse.SUPPRESS``) so unset flags keep RunConfig's
    defaults. Fixed and registry choices are argparse choices, except where a value outside the
    list is valid too (``--device cuda:N``, ``none`` for an optional setting): there the choices
    are only shown, and ``settings.check_names`` checks the value."""
    from .settings import registry_choices

    registries = registry_choices()
    groups = {key: p.add_argument_group(f"{title} settings") for key, title in GROUPS.items()}
    for s in SETTINGS.values():
        if s.name in skip:
            continue
        choices = s.choices if s.choices is not None else registries.get(s.registry)
        kwargs = {"dest": s.name, "default": argparse.SUPPRESS, "type": _flag_type(s),
                  "help": f"{s.help} (default: {s.default})".replace("%", "%%")}
        if choices is not None and (s.optional or s.registry == "device"):
            more = ["cuda:N"] if s.registry == "device" else ["none"]
            kwargs["metavar"] = "{" + ",".join([*choices, *more]) + "}"
        elif choices is not None:
            kwargs["choices"] = choices
        elif s.kind == "bool":
            kwargs["metavar"] = "{true,false}"
        groups[s.group].add_argument(s.flag, **kwargs)


def config_from_args(ns: argparse.Namespace, **overrides) -> RunConfig:
    """The RunConfig of parsed flags: the flags given, then ``overrides``, else the defaults."""
    values = {k: v for k, v in vars(ns).items() if k in SETTINGS}
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
    from .settings import check_names

    check_names(config)  # every name and value, before any data is loaded

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
    from .distributed import world_from_env

    if world_from_env().main:   # under torchrun only rank 0 wrote the run directory
        print(_summary(out))
    return 0


def app_script() -> Path:
    """The workbench's main script: the installed package ``turn_audit_app``'s app.py, or the
    checkout's app.py when the package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("turn_audit_app")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "app.py").is_file():
            return Path(folder) / "app.py"
    return Path(__file__).resolve().parents[1] / "app.py"


def _start_app(extra: list[str]) -> int:
    """``streamlit run`` on the workbench with the checkout's server settings (upload limit,
    no telemetry); returns Streamlit's exit code."""
    import subprocess

    script = app_script()
    if not script.is_file():
        raise TurnAuditError(f"the workbench's app.py is not at {script}: reinstall turn-audit")
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.maxUploadSize", "1024",
           "--browser.gatherUsageStats", "false", *extra]
    return subprocess.call(cmd)


def _export_csv(args: argparse.Namespace) -> Path:
    from .export import write_corrected_csv

    return write_corrected_csv(args.run_dir, args.out, spreadsheet_safe=not args.no_spreadsheet_escape)


def _export_label_studio(args: argparse.Namespace) -> Path:
    from .export import write_label_studio_json

    return write_label_studio_json(args.run_dir, args.out)


def _export_interop(name: str):
    def write(args: argparse.Namespace) -> Path:
        from .interop import EXPORT_FORMATS as writers

        return writers[name](args.run_dir, args.out)
    return write


# --format of `export`: name → writer of that format from the parsed arguments.
EXPORT_FORMATS = {"csv": _export_csv, "label-studio": _export_label_studio,
                  "cleanlab": _export_interop("cleanlab"), "fiftyone": _export_interop("fiftyone")}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="turn-audit",
                                description="TURN Audit: find mislabeled images with TURN (Ahn et al., IJCAI 2024).")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run TURN (or a baseline) on a dataset",
                       description="Run TURN or a baseline; writes a run directory (see ARCHITECTURE.md).")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(r)
    d = sub.add_parser("demo", help="run TURN on the built-in offline demo (MNIST digits with injected noise)")
    d.add_argument("--quiet", action="store_true")
    add_config_flags(d, skip=("data",))
    sub.add_parser("app", help="start the Streamlit workbench (http://localhost:8501); "
                          "other arguments go to `streamlit run` (e.g. --server.port 8600)")
    e = sub.add_parser("export", help="export corrected labels (suggestions + review decisions), or the run's "
                                      "results for cleanlab, FiftyOne or Label Studio")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--format", choices=EXPORT_FORMATS, default="csv",
                   help="csv: corrected-labels CSV; label-studio: tasks JSON of the suspects (the saved cut-off); cleanlab: "
                        "pred_probs/labels/label_issues arrays (a folder); fiftyone: a "
                        "FiftyOneImageClassificationDataset folder (default: csv)")
    e.add_argument("--out", type=Path, required=True, help="file (csv, label-studio) or folder (cleanlab, fiftyone) "
                                                          "to write")
    e.add_argument("--manifest", type=Path, default=None,
                   help="also write the cleaned manifest (path,label) here, ready to train on")
    e.add_argument("--no-spreadsheet-escape", action="store_true",
                   help="do not prefix cells starting with = + - @ (formula-injection guard)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command == "app":
            return _start_app(extra)    # the rest is for `streamlit run`
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
            from .export import write_clean_manifest

            path = EXPORT_FORMATS[args.format](args)
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
