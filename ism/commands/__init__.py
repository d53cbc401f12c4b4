"""The `ism` command line: one module per subcommand (argument parsing and printing only), each `main(argv) -> int`,
imported only when used. The library never imports this package."""
from __future__ import annotations

import importlib
import sys

from ism.errors import ConfigError

COMMANDS = {
    "train": ("ism.commands.train", "train one run (rerun to resume); --dry-run prints the resolved config"),
    "sample": ("ism.commands.sample", "sample PNG grids from a run with the Euler shortcut sampler"),
    "eval": ("ism.commands.eval", "FID/KID versus sampling steps and diagnostics for a run"),
    "ablate": ("ism.commands.ablate", "run an ablation spec as Ray Tune trials tracked in MLflow"),
    "study": ("ism.commands.study", "run an Optuna study through Ray Tune, tracked in MLflow"),
    "report": ("ism.commands.report", "Markdown/PDF report of a spec or experiment from MLflow"),
    "ui": ("ism.commands.ui", "the MLflow UI on 127.0.0.1 over the project's store"),
    "ls": ("ism.commands.ls", "the sweeps and studies in the store, their state and trial counts"),
}

RESUMABLE = ("train", "ablate", "study")  # rerunning these continues where an interrupted run stopped


def version() -> str:
    """The installed package's version (pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("ism")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def usage() -> str:
    """The top-level help text."""
    lines = ["usage: ism COMMAND [ARGS]   (ism --version)", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "ism COMMAND --help for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `ism COMMAND ARGS`; a ConfigError anywhere is one message and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"ism {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ism: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except ConfigError as e:
        print(f"ism {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; 130 = 128 + SIGINT, as shells report it
        again = "; rerun the same command to resume" if name in RESUMABLE else ""
        print(f"\nism {name}: interrupted{again}", file=sys.stderr)
        return 130
