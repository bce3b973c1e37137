"""Study stores named by --storage (a journal file or a database URL): checked and located without opening
anything or importing Optuna (`nas.search.runner.make_storage` opens them)."""

from __future__ import annotations

from pathlib import Path

from nas.checks import output_file

JOURNAL_SUFFIXES = (".journal", ".log")
# the database families SQLAlchemy (and so Optuna's RDBStorage) can open, each optionally with a driver: mysql+pymysql
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")
STORAGE_EXPECTED = ("expected a .journal file path or a database URL (sqlite:///study.db, postgresql://..., "
                    "mysql://...)")


class StorageError(ValueError):
    """A --storage value that cannot hold a study, or a store that cannot be opened or read."""


def _is_journal(url: str) -> bool:
    return "://" not in url


def shown_url(url: str) -> str:
    """`url` as it may appear in a message: a database password is replaced by ***."""
    if _is_journal(url):
        return url
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is reported by check_storage; show only its scheme here
        return url.split("://", 1)[0] + "://..."


def _database_family(url: str) -> str:
    """The database of a URL without its driver: `mysql+pymysql://...` -> `mysql`."""
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def _sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL; None for an in-memory database."""
    rest = url.split("://", 1)[1]
    path = rest[1:].split("?", 1)[0] if rest.startswith("/") else ""
    return Path(path) if path and path != ":memory:" else None


def check_storage(url: str) -> None:
    """Refuse a --storage value that cannot be a study store, without creating or connecting to anything.

    Accepted: a `.journal` (or `.log`) file path, whose folder is or can be made writable; or a database URL of one
    of `DATABASE_SCHEMES` (a driver may follow, `mysql+pymysql://`), a SQLite file not being a folder. Whether a
    database answers is found when it is opened (`make_storage`).
    """
    text = str(url)
    if not text.strip():
        raise StorageError(f"--storage: {STORAGE_EXPECTED}, got {url!r}")
    if _is_journal(text):
        path = Path(text).expanduser()
        if path.is_dir():
            raise StorageError(f"--storage: {text!r} is a folder; {STORAGE_EXPECTED}")
        if not text.endswith(JOURNAL_SUFFIXES):
            raise StorageError(f"--storage: {STORAGE_EXPECTED}, got {text!r}")
        output_file("--storage", path)
        return
    scheme = text.split("://", 1)[0]
    if _database_family(text) not in DATABASE_SCHEMES:
        raise StorageError(f"--storage: unknown scheme {scheme + '://'!r}; expected a .journal file path or a "
                           f"database URL starting {', '.join(s + '://' for s in DATABASE_SCHEMES)}")
    import sqlalchemy

    try:
        sqlalchemy.engine.make_url(text)
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"--storage: cannot parse the database URL {shown_url(text)!r}: {exc}") from None
    path = _sqlite_path(text) if _database_family(text) == "sqlite" else None
    if path is not None:
        if path.is_dir():
            raise StorageError(f"--storage: {str(path)!r} is a folder; expected a SQLite database file")
        output_file("--storage", path)


def store_file(url: str) -> Path | None:
    """The file that holds the store at `url`: a journal or a SQLite database; None for a database server (or an
    in-memory SQLite database)."""
    if _is_journal(url):
        return Path(url).expanduser()
    return _sqlite_path(url) if _database_family(url) == "sqlite" else None


def store_exists(url: str) -> bool:
    """Whether the store at `url` may hold studies: a journal or SQLite file that exists, or a database server
    (which only opening it tells). Checking this first keeps a look-up from creating an empty store."""
    file = store_file(url)
    return file is None or file.exists()
