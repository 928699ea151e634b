"""Oscar's orders, read from its own database with sqlite3 (no Django needed in the reader).

An order placed by a synthetic buyer carries an OrderNote of type "simpersona-buyer" whose message
is the buyer tag `<run_id>:<buyer_index>` (storefronts/oscar/apps.py).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

BUYER_NOTE_TYPE = "simpersona-buyer"  # the one value apps.py writes

ORDERS_QUERY = """
SELECT o.number AS order_id, o.total_incl_tax AS total, o.date_placed AS placed_at, o.status AS status,
       (SELECT n.message FROM order_ordernote n WHERE n.order_id = o.id AND n.note_type = ?
        ORDER BY n.id LIMIT 1) AS buyer_tag,
       (SELECT COUNT(*) FROM order_line l WHERE l.order_id = o.id) AS lines,
       (SELECT json_group_array(json_object('product_id', l.partner_sku, 'quantity', l.quantity))
        FROM order_line l WHERE l.order_id = o.id) AS items
FROM order_order o ORDER BY o.id
"""


def is_oscar_database(db_path: str | Path) -> bool:
    with sqlite3.connect(f"file:{Path(db_path)}?mode=ro", uri=True) as connection:
        return connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'order_order'").fetchone() is not None


def read_oscar_orders(db_path: str | Path) -> list[dict]:
    """Every order in Oscar's table: order_id (Oscar's number), total, placed_at, status, buyer_tag, lines,
    items (product_id — our catalog's id, Oscar's partner SKU — and quantity per line, as the mock
    store's orders list them)."""
    with sqlite3.connect(f"file:{Path(db_path)}?mode=ro", uri=True) as connection:
        connection.row_factory = sqlite3.Row
        rows = [dict(row) for row in connection.execute(ORDERS_QUERY, (BUYER_NOTE_TYPE,))]
    return [{**row, "items": json.loads(row["items"])} for row in rows]
