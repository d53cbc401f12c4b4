"""The options several `ism` commands share, defined once: --profile, --storage, --tracking-uri."""
from __future__ import annotations

import argparse

from ism.commands import env
from ism.conf.profiles import DEFAULT_PROFILE, PROFILES

TRACKING_HELP = "MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite under mlruns/)"


def profile(ap: argparse.ArgumentParser) -> None:
    """--profile, defaulting to $PROFILE, else the embedded profile."""
    ap.add_argument("--profile", default=env.profile(),
                    help=f"one of {', '.join(PROFILES)} (default {DEFAULT_PROFILE}; env PROFILE)")


def storage(ap: argparse.ArgumentParser, folder: str, what: str) -> None:
    """--storage: `what` lives under it (default `folder`; $ISM_STORAGE)."""
    ap.add_argument("--storage", default=None, help=f"{what} (default {folder}; env ISM_STORAGE)")


def tracking_uri(ap: argparse.ArgumentParser, help: str = TRACKING_HELP) -> None:
    """--tracking-uri (default $MLFLOW_TRACKING_URI, else the sqlite store under ./mlruns)."""
    ap.add_argument("--tracking-uri", default=None, help=help)
