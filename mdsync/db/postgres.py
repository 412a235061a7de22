"""The PostgreSQL engine (psycopg 3): `database.url = "postgresql://…"`.

The write path is the SQLite one's: one writer thread, jobs grouped into one transaction with a
savepoint each, over one synchronous psycopg connection (reconnected if the server drops it).
Reads go through an async psycopg pool. SQL keeps its `?` placeholders: `translate` turns them
into psycopg's `%s` (and escapes a literal `%`), once per statement text; numbered ones (`?1`)
too, the values then passed in their order (`translate`). Rows answer to both `row[0]` and
`row["name"]`, like sqlite3.Row.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
from psycopg import pq
from psycopg.adapt import Loader
from psycopg_pool import AsyncConnectionPool

from mdsync.db.base import Database, Tx, run_job_alone
from mdsync.db.migrate import apply_pg_migrations
from mdsync.db.notifications import Listener

log = logging.getLogger("mdsync.db")


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> tuple[str, tuple[int, ...] | None]:
    """`sql` with `?` placeholders as psycopg's `%s`; `%` escaped; quotes and comments respected.
    Numbered placeholders (`?1`, `?2`, as SQLite reads them: one value used in several places)
    become `%s` too, with the order in which to pass the values (None: as given)."""
    out: list[str] = []
    order: list[int] = []
    plain = False
    quote = ""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        elif ch == "?":
            out.append("%s")
            end = i + 1
            while end < n and sql[end].isdigit():
                end += 1
            if end > i + 1:
                order.append(int(sql[i + 1:end]) - 1)
                i = end
                continue
            plain = True
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
        i += 1
    if plain and order:
        raise ValueError("a statement mixes numbered (?1) and plain (?) placeholders")
    return "".join(out), (tuple(order) if order else None)


def _query(sql: str, params: Iterable[Any]) -> tuple[str, tuple | None]:
    params = tuple(params)
    if not params:  # without parameters psycopg does not read placeholders: the text goes as written
        return sql, None
    text, order = translate(sql)
    return text, (params if order is None else tuple(params[i] for i in order))


class Row(tuple):
    """A result row: `row[0]`, `row["column"]`, `row.keys()`, `dict(row)` (as sqlite3.Row)."""

    __slots__ = ()
    _names: tuple[str, ...] = ()

    def keys(self) -> list[str]:
        return list(self._names)


@functools.lru_cache(maxsize=2048)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    index = {name: i for i, name in enumerate(names)}
    get = tuple.__getitem__

    def __getitem__(self, key):
        if key.__class__ is str:
            try:
                return get(self, index[key])
            except KeyError:
                raise IndexError(f"no column named {key!r}") from None
        return get(self, key)

    return type("Row", (Row,), {"__slots__": (), "__getitem__": __getitem__, "_names": names})


def row_factory(cursor: Any) -> Callable[[Any], Row]:
    description = cursor.description
    if description is None:
        return tuple
    return _row_class(tuple(column.name for column in description))


class _NumberLoader(Loader):
    """numeric results (sum() of integers is numeric in PostgreSQL) as int or float, like SQLite."""

    def load(self, data: Any) -> int | float:
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


def _configure(conn: Any) -> None:
    conn.adapters.register_loader("numeric", _NumberLoader)


def connection_options(statement_timeout: float) -> dict[str, Any]:
    return {"application_name": "mdsync", "options": f"-c statement_timeout={int(statement_timeout * 1000)}"}


def connect(url: str, *, statement_timeout: float = 30.0) -> psycopg.Connection:
    """A synchronous autocommit connection with mdsync's row type (the writer, CLI commands)."""
    conn = psycopg.connect(url, autocommit=True, row_factory=row_factory, **connection_options(statement_timeout))
    _configure(conn)
    return conn


def describe(url: str) -> str:
    """The URL without its password (for logs, doctor and error messages)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    host, port, db = info.get("host", "localhost"), info.get("port", "5432"), info.get("dbname", "")
    user = info.get("user")
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{db}"


class PgTx(Tx):
    __slots__ = ()
    engine = "postgresql"

    def execute(self, sql: str, params: Iterable[Any] = ()) -> psycopg.Cursor:
        return self.conn.execute(*_query(sql, params))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> psycopg.Cursor:
        text, order = translate(sql)
        rows = [tuple(row) for row in rows]
        if order is not None:
            rows = [tuple(row[i] for i in order) for row in rows]
        cursor = self.conn.cursor()
        cursor.executemany(text, rows)
        return cursor

    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        if self.conn.info.transaction_status == pq.TransactionStatus.IDLE:
            yield  # autocommit, outside a transaction (read_only views): each statement stands alone
            return
        with super().attempt():
            yield


class PostgresDatabase(Database):
    engine = "postgresql"
    tx_class = PgTx

    def __init__(self, url: str, *, readers: int = 8, statement_timeout: float = 30.0):
        super().__init__(readers=readers)
        self.url = url
        self.statement_timeout = statement_timeout
        self._pool: AsyncConnectionPool | None = None
        self._listener: Listener | None = None

    async def _open_readers(self) -> None:
        self._pool = AsyncConnectionPool(
            self.url, min_size=1, max_size=self._reader_count, open=False, configure=_configure_async,
            kwargs={"autocommit": True, "row_factory": row_factory, **connection_options(self.statement_timeout)},
            name="mdsync-readers")
        await self._pool.open(wait=True, timeout=30)

    async def _close_readers(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- reads -----------------------------------------------------------------------------
    async def one(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        if self._pool is None:
            raise RuntimeError("database is closed")
        async with self._pool.connection() as conn:
            cursor = await conn.execute(*_query(sql, params))
            return await cursor.fetchone()

    async def all(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        if self._pool is None:
            raise RuntimeError("database is closed")
        async with self._pool.connection() as conn:
            cursor = await conn.execute(*_query(sql, params))
            return await cursor.fetchall()

    lookup = one

    def listener(self) -> Listener:
        if self._listener is None:
            self._listener = Listener(self._listen_connection)
        return self._listener

    async def _listen_connection(self) -> psycopg.AsyncConnection:
        # TCP keepalives: a link that died silently is noticed even between pings
        return await psycopg.AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=10, keepalives=1, keepalives_idle=10,
            keepalives_interval=5, keepalives_count=3, **connection_options(self.statement_timeout))

    def pool_stats(self) -> dict[str, int]:
        """The read pool's counters (psycopg_pool's get_stats: pool_size, pool_available, …)."""
        return {} if self._pool is None else dict(self._pool.get_stats())

    # -- the writer thread -----------------------------------------------------------------
    def _open_writer(self) -> psycopg.Connection:
        conn = connect(self.url, statement_timeout=self.statement_timeout)
        try:
            apply_pg_migrations(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _healthy(self, conn: psycopg.Connection) -> psycopg.Connection:
        if not (conn.closed or conn.broken):
            return conn
        log.warning("the writer's connection to %s was lost: reconnecting", describe(self.url))
        try:
            return connect(self.url, statement_timeout=self.statement_timeout)
        except psycopg.Error as exc:  # this batch fails with it; the next one tries again
            log.error("reconnecting to %s failed: %s", describe(self.url), exc)
            return conn

    def _begin(self, conn: psycopg.Connection) -> None:
        conn.execute("BEGIN")

    def _in_transaction(self, conn: psycopg.Connection) -> bool:
        return conn.info.transaction_status != pq.TransactionStatus.IDLE


async def _configure_async(conn: Any) -> None:
    _configure(conn)


def run_offline(url: str, fn: Callable[..., Any], *args: Any, statement_timeout: float = 30.0) -> Any:
    """Run one write job in its own transaction on a fresh connection (CLI commands), after
    applying pending migrations."""
    conn = connect(url, statement_timeout=statement_timeout)
    try:
        apply_pg_migrations(conn)
        return run_job_alone(PgTx(conn), "BEGIN", fn, *args)
    finally:
        conn.close()
