"""SFT traces: reading traces.jsonl (DESIGN.md, "File formats") and a small synthetic trace maker.

A trace is one real buyer session replayed against the mock store: the buyer's persona code and the
(observation, action) pair of every step. `read_traces` validates each line and names the file,
line, step and expected shape on bad input, so nothing is silently dropped.

`make_synthetic_traces` writes traces in the harness's observation format for tests and
benchmarks: a category page, a product page (the decision point), a cart page. A code's
`behaviour` says whether its buyers buy ("buy") or leave at the product page ("leave"); the pages
before the decision are drawn from the same distribution for every code, so only the persona code
tells the behaviours apart.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlparse

from agent.actions import ActionError, parse_action
from agent.page import parse as parse_page


@dataclass
class Step:
    observation: str
    action: str


@dataclass
class Trace:
    shop_id: str
    buyer_id: str
    code: int
    steps: list[Step]
    converted: bool
    variant: str = ""  # the store layout the trace was recorded on ("" when not recorded)
    goal: str = ""  # the task the buyer was given (agent.prompt.buy_goal); "" for a real buyer's own session

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class TraceError(ValueError):
    """A traces.jsonl line that does not have the documented shape."""


_FIELDS = {"shop_id": (str, int), "buyer_id": (str, int), "code": (int,), "steps": (list,), "converted": (bool,)}


def parse_trace(record: dict, where: str) -> Trace:
    """Validate one decoded traces.jsonl record; `where` (file:line) prefixes every error."""
    if not isinstance(record, dict):
        raise TraceError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, types in _FIELDS.items():
        if name not in record:
            raise TraceError(f"{where}: missing field {name!r}; expected fields {sorted(_FIELDS)}")
        value = record[name]
        if not isinstance(value, types) or (name == "code" and isinstance(value, bool)):
            expected = " or ".join(t.__name__ for t in types)
            raise TraceError(f"{where}: field {name!r} should be {expected}, got {value!r:.80}")
    if record["code"] < 0:
        raise TraceError(f"{where}: field 'code' should be >= 0, got {record['code']}")
    steps = []
    for index, step in enumerate(record["steps"]):
        step_where = f"{where}, step {index}"
        if not isinstance(step, dict) or not isinstance(step.get("observation"), str) or not isinstance(step.get("action"), str):
            raise TraceError(f"{step_where}: expected {{'observation': str, 'action': str}}, got {str(step)[:120]}")
        try:
            parse_action(step["action"])
        except ActionError as error:
            raise TraceError(f"{step_where}: invalid action: {error}") from None
        steps.append(Step(step["observation"], step["action"].strip()))
    optional = {name: record.get(name, "") for name in ("variant", "goal")}
    for name, value in optional.items():
        if not isinstance(value, str):
            raise TraceError(f"{where}: field {name!r} should be str, got {value!r:.80}")
    return Trace(str(record["shop_id"]), str(record["buyer_id"]), record["code"], steps, record["converted"], **optional)


def read_traces(path: str | Path) -> list[Trace]:
    """Read every line of a traces.jsonl file; raise TraceError naming file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such traces file")
    traces = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TraceError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
            traces.append(parse_trace(record, where))
    if not traces:
        raise TraceError(f"{path}: no traces in file")
    return traces


def trace_texts(traces: list[Trace]) -> list[str]:
    """Every observation, action and goal of the traces: the corpus a tiny model's tokenizer is trained on."""
    steps = [step for trace in traces for step in trace.steps]
    return [step.observation for step in steps] + [step.action for step in steps] + [t.goal for t in traces if t.goal]


def rename_shop(trace: Trace, rng: random.Random) -> Trace:
    """The same trace as if it had happened in a shop the agent never saw: the shop id, wherever
    the pages or the typed queries show it, becomes a random id of the same form (digits for
    digits, letters for letters, same length), and the store's port in URLs a random port."""
    fresh = trace.shop_id
    while fresh == trace.shop_id:  # checked after the leading-zero fix, which could give the old id back
        fresh = "".join(rng.choice("0123456789" if c.isdigit() else "abcdefghijklmnopqrstuvwxyz") for c in trace.shop_id)
        if fresh[:1] == "0":  # a number does not start with 0
            fresh = "1" + fresh[1:]
    edge = "0-9" if trace.shop_id.isdigit() else "0-9A-Za-z"  # "brand%3A10014": a letter may touch a numeric id
    own_id = re.compile(rf"(?<![{edge}]){re.escape(trace.shop_id)}(?![{edge}])")
    steps = [Step(own_id.sub(fresh, step.observation), own_id.sub(fresh, step.action)) for step in trace.steps]
    return replace(trace, shop_id=fresh, steps=steps, goal=own_id.sub(fresh, trace.goal))


def write_traces(traces: list[Trace], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(trace.to_json() + "\n" for trace in traces), encoding="utf-8")
    return path


# --- synthetic traces -------------------------------------------------------------------------

_COLOURS = ["Red", "Blue", "Green", "Black", "White", "Grey", "Yellow", "Navy"]
_ITEMS = ["shirt", "jeans", "sneakers", "jacket", "scarf", "hoodie", "dress", "cap", "boots", "socks"]
_CATEGORIES = ["Tops", "Trousers", "Shoes", "Outerwear", "Accessories"]


@dataclass
class _Page:
    lines: list[str] = field(default_factory=list)
    next_id: int = 1

    def element(self, role: str, name: str, extra: str = "") -> int:
        element_id = self.next_id
        self.next_id += 1
        self.lines.append(f'[{element_id}] {role} "{name}"' + (f" {extra}" if extra else ""))
        return element_id

    def text(self, line: str) -> None:
        self.lines.append(line)


def _header(url: str, title: str, cart_items: int, rng: random.Random, compact: bool) -> tuple[list[str], _Page]:
    head = [f"URL: {url}", f"Title: {title}", f"Cart: {cart_items} item{'s' if cart_items != 1 else ''}"]
    page = _Page(next_id=rng.randint(1, 40))  # ids vary so the model must read them off the page
    if not compact:
        page.element("link", "Home")
        page.element("searchbox", "Search products")
    return head, page


def _product(rng: random.Random) -> tuple[str, str]:
    return f"{rng.choice(_COLOURS)} {rng.choice(_ITEMS)}", f"€{rng.randint(5, 120)}.{rng.choice(['00', '49', '95', '99'])}"


def _category_page(shop: str, rng: random.Random, products: list[tuple[str, str]], compact: bool) -> tuple[str, dict[str, int]]:
    category = rng.choice(_CATEGORIES)
    head, page = _header(f"https://{shop}.test/c/{category.lower()}", f"{category} – {shop}", 0, rng, compact)
    if not compact:
        page.text(f"{category}: {len(products)} products")
    ids = {"sort": page.element("combobox", "Sort by", "options: Popular | Newest")}
    for index, (name, price) in enumerate(products):
        ids[f"product{index}"] = page.element("link", name, price)
    return "\n".join(head + page.lines), ids


def _product_page(shop: str, rng: random.Random, name: str, price: str, compact: bool) -> tuple[str, dict[str, int]]:
    slug = name.lower().replace(" ", "-")
    head, page = _header(f"https://{shop}.test/p/{slug}", f"{name} – {shop}", 0, rng, compact)
    page.text(f"{name} {price}")
    ids = {}
    if not compact:
        page.text(rng.choice(["Free delivery over €50.", "In stock.", "Only 3 left.", "Ships in 2 days."]))
        ids["size"] = page.element("combobox", "Size", "options: S | M | L")
    ids["add"] = page.element("button", "Add to cart")
    ids["back"] = page.element("link", "Back")
    return "\n".join(head + page.lines), ids


def _cart_page(shop: str, rng: random.Random, name: str, price: str, compact: bool) -> tuple[str, dict[str, int]]:
    head, page = _header(f"https://{shop}.test/cart", f"Cart – {shop}", 1, rng, compact)
    page.text(f"{name} x1 {price}")
    ids = {"checkout": page.element("button", "Checkout")}
    if not compact:
        page.element("link", "Continue shopping")
    return "\n".join(head + page.lines), ids


def make_synthetic_trace(code: int, buys: bool, rng: random.Random, shop: str = "demo-shop", buyer_id: str = "b0",
                         compact: bool = False) -> Trace:
    """One buyer: category page (sometimes a sort or a scroll first), product page, then buy or leave.

    `compact` pages carry only the elements the path needs (short prompts for tiny-model tests).
    """
    products = [_product(rng) for _ in range(rng.randint(2, 3 if compact else 4))]
    steps: list[Step] = []
    category, ids = _category_page(shop, rng, products, compact)
    opening = rng.random()
    if opening < 0.25:
        steps.append(Step(category, f'select [{ids["sort"]}] "{rng.choice(["Popular", "Newest"])}"'))
    elif opening < 0.5:
        steps.append(Step(category, "scroll down"))
    chosen = rng.randrange(len(products))
    steps.append(Step(category, f"click [{ids[f'product{chosen}']}]"))
    name, price = products[chosen]
    product, ids = _product_page(shop, rng, name, price, compact)
    if buys:
        steps.append(Step(product, f"click [{ids['add']}]"))
        cart, ids = _cart_page(shop, rng, name, price, compact)
        steps.append(Step(cart, f"click [{ids['checkout']}]"))
    else:
        steps.append(Step(product, "stop"))
    return Trace(shop, buyer_id, code, steps, converted=buys)


def make_synthetic_traces(n_traces: int, behaviour: dict[int, str] | None = None, seed: int = 0,
                          compact: bool = False) -> list[Trace]:
    """`n_traces` traces cycling over the codes of `behaviour` (code -> "buy" | "leave")."""
    behaviour = behaviour or {0: "buy", 1: "leave"}
    unknown = {b for b in behaviour.values()} - {"buy", "leave"}
    if unknown:
        raise ValueError(f"behaviour values must be 'buy' or 'leave', got {sorted(unknown)}")
    codes = sorted(behaviour)
    # One random stream per trace, so a buyer's pages do not depend on what earlier buyers did.
    return [
        make_synthetic_trace(code, behaviour[code] == "buy", random.Random(seed * 1_000_003 + index),
                             buyer_id=f"b{index}", compact=compact)
        for index, code in ((i, codes[i % len(codes)]) for i in range(n_traces))
    ]


def decision_index(trace: Trace) -> int:
    """Index of the product-page step where a synthetic buyer buys or leaves."""
    for index, step in enumerate(trace.steps):
        if "/p/" in step.observation.split("\n", 1)[0]:
            return index
    raise ValueError(f"trace {trace.buyer_id} has no product page")


def cart_decision_step(trace: Trace) -> int | None:
    """The trace's first step on the cart page (check out or browse on); None if it never gets there."""
    for index, step in enumerate(trace.steps):
        if urlparse(parse_page(step.observation).url).path.rstrip("/") == "/cart":
            return index
    return None
