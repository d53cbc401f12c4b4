"""Secrets never leave the process in clear text: every command run with a tracking URI and an Optuna storage whose
password is a marker, then every output searched for the marker (stdout, stderr, files under the working directory
and the store, report PDFs' streams, and every row of both databases: MLflow params, tags, artifacts' locations,
Optuna's user attributes)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from ism.system import dburl
from test_study import TOY, with_

MARKER = "Mk7secretPw"


@pytest.mark.parametrize("url, shown", [
    (f"postgresql+psycopg://ism:{MARKER}@db:5432/ism", "postgresql+psycopg://ism:***@db:5432/ism"),
    (f"postgresql://ism:{MARKER}/x?y@db/ism?sslmode=require&password={MARKER}",
     "postgresql://ism:***@db/ism?sslmode=require&password=***"),
    (f"http://me:{MARKER}@127.0.0.1:5000", "http://me:***@127.0.0.1:5000"),
    (f"could not reach mysql://root:{MARKER}@h/db: refused", "could not reach mysql://root:***@h/db: refused"),
    ("sqlite:////tmp/x/optuna.db", "sqlite:////tmp/x/optuna.db"),
    ("http://127.0.0.1:5000/a", "http://127.0.0.1:5000/a"),
])
def test_masked_hides_passwords_and_keeps_the_rest(url, shown):
    assert dburl.masked(url) == shown


def test_shown_names_no_folder_of_the_machine(tmp_path):
    assert dburl.shown(f"sqlite:///{tmp_path}/mlruns/mlflow.db", base=tmp_path) == "sqlite:///mlruns/mlflow.db"
    assert dburl.shown(f"sqlite:///{tmp_path}/mlruns/mlflow.db", base=tmp_path / "elsewhere") == \
        "sqlite:///.../mlruns/mlflow.db"
    assert dburl.shown(tmp_path / "a" / "b") == ".../a/b" or not str(tmp_path).startswith(os.getcwd())


def _pdf_text(data: bytes) -> bytes:
    """A PDF's bytes with its streams decoded (ReportLab writes page content ASCII85-encoded and deflated)."""
    import base64
    out = [data]
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S):
        raw = m.group(1).strip()
        if raw.endswith(b"~>"):
            try:
                raw = base64.a85decode(raw[:-2].removeprefix(b"<~"))
            except ValueError:
                continue
        try:
            out.append(zlib.decompress(raw))
        except zlib.error:
            out.append(raw)
    return b"\n".join(out)


def _database_text(url: str) -> str:
    """Every row of every table of a database, as text."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        names = sqlalchemy.inspect(engine).get_table_names()
        with engine.connect() as c:
            return "\n".join(str(row) for t in names for row in c.execute(sqlalchemy.text(f'SELECT * FROM "{t}"')))
    finally:
        engine.dispose()


@pytest.mark.db
@pytest.mark.e2e
def test_no_command_shows_or_stores_the_database_password(pg, tmp_path):
    ml = pg.url("secret_mlflow").replace("postgres@", f"postgres:{MARKER}@")  # trust auth: any password connects
    opt = pg.url("secret_optuna").replace("postgres@", f"postgres:{MARKER}@")
    env = {**os.environ, "MLFLOW_TRACKING_URI": ml, "OPTUNA_STORAGE": opt, "ISM_STORAGE": str(tmp_path / "st")}
    env.pop("RAY_ADDRESS", None)
    ab = tmp_path / "sec.yaml"
    ab.write_text(yaml.safe_dump({"name": "sec", "seeds": [0], "base": {"overrides": {
        "run.steps": 8, "eval.steps": [1, 2], "eval.guidance_sweep": [], "eval.num_samples": 256}},
        "variants": {"sm": {"reason": "baseline"}}}))
    st = tmp_path / "secstudy.yaml"
    st.write_text(yaml.safe_dump(with_(TOY, name="secstudy", n_trials=1, pruner={"type": "none"}), sort_keys=False))
    outputs = []
    for args in (["ablate", str(ab), "--profile", "smoke", "--dry-run"], ["ablate", str(ab), "--profile", "smoke"],
                 ["study", str(st), "--profile", "smoke", "--dry-run"], ["study", str(st), "--profile", "smoke"],
                 ["ls"], ["ui"], ["report", str(ab), "--profile", "smoke", "--out", str(tmp_path / "rep")],
                 ["report", str(st), "--profile", "smoke", "--out", str(tmp_path / "srep")]):
        r = subprocess.run([sys.executable, "-m", "ism.cli", *args], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, (args, r.stderr[-3000:])
        outputs.append((args[0], r.stdout + r.stderr))
    for cmd, text in outputs:
        assert MARKER not in text, f"ism {cmd} printed the password"
    assert "postgres:***@" in "".join(t for _, t in outputs), "the URIs are still shown, masked"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.json" for p in files) and any(p.suffix == ".pdf" for p in files)
    for p in files:
        data = p.read_bytes()
        assert MARKER.encode() not in (_pdf_text(data) if p.suffix == ".pdf" else data), p
    for md in (tmp_path / "rep" / "report.md", tmp_path / "srep" / "report.md"):
        assert str(tmp_path) not in md.read_text(), f"{md} names a folder of this machine"
    for url in (ml, opt):
        text = _database_text(url)
        assert "ism.optuna_storage" in text or url == opt
        assert MARKER not in text, f"{dburl.masked(url)} stores the password"
