"""The store's own record of what every visitor did: the ground truth for conversion.

One SQLite file per run, in WAL mode so readers (a report, a test) can query it while the server
writes. Every page view, cart change, checkout step and order is a row in `events`, tagged with
the buyer tag the visitor sent (header X-SimPersona-Buyer) or the cookie the store gave a human
visitor. Orders also get a row in `orders` with their items and total. Event types follow
codebook.schema.EVENT_TYPES so a store log reads like an ingested clickstream.

Writes go through one connection guarded by a lock and are committed one by one, so the log is
safe to share between threads and a crash loses at most the request in flight.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from codebook.schema import EVENT_TYPES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    event_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    ts         TEXT NOT NULL,
    buyer_tag  TEXT NOT NULL,
    session_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    method     TEXT NOT NULL,
    url        TEXT NOT NULL,
    status     INTEGER NOT NULL,
    product_id TEXT,
    category   TEXT,
    quantity   INTEGER,
    price      REAL,
    query      TEXT,
    step       TEXT,
    order_id   TEXT
);
CREATE TABLE IF NOT EXISTS orders (
    order_number  INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id      TEXT UNIQUE,
    ts            TEXT NOT NULL,
    buyer_tag     TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    items         TEXT NOT NULL,
    subtotal      REAL NOT NULL,
    delivery_cost REAL NOT NULL,
    total         REAL NOT NULL,
    currency      TEXT NOT NULL,
    details       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_buyer ON events (buyer_tag);
CREATE INDEX IF NOT EXISTS orders_by_buyer ON orders (buyer_tag);
"""


def stable_order_id(buyer_tag: str, nth: int) -> str:
    """"SP" and ten digits, a function of the buyer tag and its n-th order only."""
    digest = hashlib.sha256(f"{buyer_tag}#{nth}".encode()).digest()
    return f"SP{int.from_bytes(digest[:8], 'big') % 10**10:010d}"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class OrderLog:
    """Append-only writer of one run's events and orders."""

    def __init__(self, db_path: str | Path, meta: dict[str, str] | None = None):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # autocommit mode (isolation_level=None): single writes commit at once, place_order
        # opens its own transaction.
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        for key, value in (meta or {}).items():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def record(
        self,
        *,
        buyer_tag: str,
        session_id: str,
        event_type: str,
        url: str,
        method: str = "GET",
        status: int = 200,
        product_id: str | None = None,
        category: str | None = None,
        quantity: int | None = None,
        price: float | None = None,
        query: str | None = None,
        step: str | None = None,
        order_id: str | None = None,
    ) -> None:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}; expected one of {EVENT_TYPES}")
        row = (_now(), buyer_tag, session_id, event_type, method, url, status, product_id, category,
               quantity, price, query, step, order_id)
        with self._lock:
            self._db.execute(
                "INSERT INTO events (ts, buyer_tag, session_id, event_type, method, url, status, product_id,"
                " category, quantity, price, query, step, order_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )

    def place_order(
        self,
        *,
        buyer_tag: str,
        session_id: str,
        url: str,
        items: list[dict],
        subtotal: float,
        delivery_cost: float,
        currency: str,
        details: dict,
    ) -> str:
        """Store an order and one purchase event per line item, atomically; return the order id.

        items: dicts with product_id, title, category, quantity, unit_price.
        The order id is the buyer's: derived from its tag and how many orders it placed before
        (`stable_order_id`), so a replay of the same buyers shows each the same confirmation page
        whichever finishes first.
        """
        total = round(subtotal + delivery_cost, 2)
        ts = _now()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                order_id = self._free_order_id(buyer_tag)
                self._db.execute(
                    "INSERT INTO orders (order_id, ts, buyer_tag, session_id, items, subtotal, delivery_cost, total,"
                    " currency, details) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (order_id, ts, buyer_tag, session_id, json.dumps(items), round(subtotal, 2),
                     round(delivery_cost, 2), total, currency, json.dumps(details, sort_keys=True)),
                )
                for item in items:
                    self._db.execute(
                        "INSERT INTO events (ts, buyer_tag, session_id, event_type, method, url, status,"
                        " product_id, category, quantity, price, order_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (ts, buyer_tag, session_id, "purchase", "POST", url, 303, item["product_id"],
                         item["category"], item["quantity"], item["unit_price"], order_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return order_id

    def _free_order_id(self, buyer_tag: str) -> str:
        placed = self._db.execute("SELECT COUNT(*) FROM orders WHERE buyer_tag = ?", (buyer_tag,)).fetchone()[0]
        stable = order_id = stable_order_id(buyer_tag, placed + 1)
        clash = 1
        while self._db.execute("SELECT 1 FROM orders WHERE order_id = ?", (order_id,)).fetchone():
            clash += 1  # two tags hashed alike (about 1 in 10^10 per pair): still unique
            order_id = f"{stable}-{clash}"
        return order_id

    def get_order(self, order_id: str) -> dict | None:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                row = self._db.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
            finally:
                self._db.row_factory = None
        return _order_dict(row) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _order_dict(row: sqlite3.Row) -> dict:
    order = dict(row)
    order["items"] = json.loads(order["items"])
    order["details"] = json.loads(order["details"])
    return order


def _read(db_path: str | Path, sql: str) -> list[sqlite3.Row]:
    path = Path(db_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no store log (SQLite) file here")
    db = sqlite3.connect(path)
    try:
        db.row_factory = sqlite3.Row
        return db.execute(sql).fetchall()
    finally:
        db.close()


def read_orders(db_path: str | Path) -> list[dict]:
    """All orders in placement order: order_id, buyer_tag, session_id, ts, items (list of dicts
    with product_id, title, category, quantity, unit_price), subtotal, delivery_cost, total,
    currency, details (the non-secret checkout answers).

    An Oscar database (storefronts/oscar) is read from Oscar's own order tables instead: order_id,
    buyer_tag, total, placed_at, status, lines."""
    from storefronts.oscar.orders import is_oscar_database, read_oscar_orders

    if is_oscar_database(db_path):
        return read_oscar_orders(db_path)
    return [_order_dict(row) for row in _read(db_path, "SELECT * FROM orders ORDER BY order_number")]


def orders_by_buyer(db_path: str | Path, run_id: str) -> Counter:
    """buyer_index → orders the store holds for that buyer of the run (tags `<run_id>:<buyer_index>`)."""
    return Counter({buyer: len(orders) for buyer, orders in _run_orders(db_path, run_id).items()})


def products_by_buyer(db_path: str | Path, run_id: str) -> dict[int, Counter]:
    """buyer_index → units of each product_id the buyer's orders in this run hold (mock store or Oscar)."""
    bought: dict[int, Counter] = {}
    for buyer, orders in _run_orders(db_path, run_id).items():
        units = bought.setdefault(buyer, Counter())
        for order in orders:
            for item in order["items"]:
                units[str(item["product_id"])] += int(item["quantity"])
    return bought


def _run_orders(db_path: str | Path, run_id: str) -> dict[int, list[dict]]:
    prefix = f"{run_id}:"
    orders: dict[int, list[dict]] = {}
    for order in read_orders(db_path):
        tag = order.get("buyer_tag") or ""
        if tag.startswith(prefix) and tag[len(prefix):].isdigit():
            orders.setdefault(int(tag[len(prefix):]), []).append(order)
    return orders


def read_events(db_path: str | Path) -> list[dict]:
    """All events in the order they happened: event_id, ts, buyer_tag, session_id, event_type,
    method, url, status, product_id, category, quantity, price, query, step, order_id."""
    return [dict(row) for row in _read(db_path, "SELECT * FROM events ORDER BY event_id")]


def read_meta(db_path: str | Path) -> dict[str, str]:
    """What the run served: shop_id, variant (JSON), catalog source."""
    return {row["key"]: row["value"] for row in _read(db_path, "SELECT key, value FROM meta")}
