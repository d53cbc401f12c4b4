"""Database URLs of the Optuna storage and the MLflow store (SQLAlchemy URLs): the pinned driver, a check that the
database answers before any work starts, passwords kept out of messages."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

from ism.errors import ConfigError

DB_SCHEMES = ("postgresql", "mysql", "mssql")  # SQLAlchemy server databases, with or without "+driver"
# A typo'd host or a firewalled port must fail fast, not after the OS's ~2 min TCP timeout; a live server on a
# cluster network answers in milliseconds (14 ms median to connect to the tests' PostgreSQL on 127.0.0.1).
CONNECT_TIMEOUT_S = 5


def scheme(url: str) -> str:
    """The database kind of a URL: 'postgresql' for postgresql+psycopg://..., 'sqlite', 'http', ..."""
    return urlparse(url).scheme.split("+")[0]


def normalize(url: str) -> str:
    """postgresql:// (and postgres://) use psycopg 3, the driver in the pinned stack: SQLAlchemy's default for a
    bare postgresql:// is psycopg2, which is not installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "token", "secret", "api_key", "apikey", "access_token")
# user:password@ as SQLAlchemy parses it (a password runs to the first @, '/', '?' and '#' included)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):[^@\s'\"]*@")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:" + "|".join(SECRET_QUERY_KEYS) + r")=)[^&#]*")


def masked(url: str | Path | None) -> str:
    """The one masking of storage and tracking URIs: the password of user:password@ and secret query values
    (password=, token=, ...) replaced by ***, everything else kept; every URI that is printed, logged, tagged,
    stored or rendered goes through here. Works on text that merely contains a URI (an error message) too."""
    if url is None:
        return ""
    s = str(url)
    s = _USERINFO.sub(r"\1:***@", s)
    return _QUERY_SECRET.sub(r"\1***", s)


def shown(url: str | Path | None, base: str | Path | None = None) -> str:
    """A URI or path as reports show it: masked, and without the machine's folders: relative to `base` (the working
    directory) when it lies under it, else only its last two parts after '.../' (a report must read the same on
    every machine)."""
    s = masked(url)
    pre = ""
    for p in ("sqlite:///", "file://"):
        if s.startswith(p):
            pre, s = p, s[len(p):]
            break
    else:
        if "://" in s:
            return s
    if not s.startswith("/"):
        return pre + s
    here = Path(base or Path.cwd()).resolve()
    path = Path(s)
    try:
        return pre + path.resolve().relative_to(here).as_posix()
    except (ValueError, OSError):
        return pre + ".../" + "/".join(path.parts[-2:])


def check(url: str, what: str) -> None:
    """Connect once to a server database (at most CONNECT_TIMEOUT_S) so that a wrong host, port, password or database
    name is a ConfigError naming `what` (e.g. 'OPTUNA_STORAGE') before any work starts."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool
    shown = masked(url)
    try:
        u = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError as e:
        raise ConfigError(f"{what} {shown}: not a database URL ({e})") from None
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if u.get_backend_name() in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(u, connect_args=args, poolclass=NullPool)
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as e:
        raise ConfigError(f"{what} {shown}: its database driver is not installed ({e}); PostgreSQL URLs use the pinned "
                          "psycopg 3: postgresql+psycopg://user:password@host:5432/database") from None
    try:
        with engine.connect():
            pass
    except Exception as e:  # refused, timed out, bad password, no such database: all mean "fix the URL or server"
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ConfigError(f"{what} {shown}: could not connect within {CONNECT_TIMEOUT_S} s ({reason}); start the "
                          "database server, create the database (createdb NAME) or fix the URL") from None
    finally:
        engine.dispose()
