"""Database URLs of the Optuna storage and the MLflow store (SQLAlchemy URLs): the pinned driver, a check that the
database answers before any work starts, passwords kept out of messages."""
from __future__ import annotations

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


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for messages and logs."""
    import sqlalchemy
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: say nothing of it beyond its scheme
        return f"{scheme(url)}://..."


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
