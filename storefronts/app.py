"""The mock storefront: a Starlette app rendering Jinja2 templates, built from one shop's catalog.

Routes (no JavaScript anywhere: links and HTML forms only, GET to read, POST to change):
    GET  /                      home: featured products and categories
    GET  /c/<category>          category listing (?page=, ?sort=popularity|price_asc|price_desc|newest)
    GET  /search?q=             search results (same paging and sorting)
    GET  /p/<product_id>        product page with the add-to-cart form
    GET  /cart                  cart;  POST /cart/add, /cart/update, /cart/remove change it
    GET  /checkout              goes to the first checkout step not yet done
    GET  /checkout/<step>       one checkout step form; POST submits it (review's POST places the order)
    GET  /order/<order_id>      confirmation, with <meta name="sp-order-id" content="...">
    GET  /info/<page>           a header or footer page (help, returns, …) of the variant's theme
    POST /overlay/<name>        answers the cookie or newsletter dialog (a cookie keeps it closed)
    GET  /robots.txt            allows everything

A theme (storefronts/variants.py) may put a dialog over a page: a cookie banner until it is
answered, a newsletter sign-up over product pages until it is closed, a mini-cart drawer after an
add (?added=), a quick view over a listing (?quick_view=). Each is an aria-modal element closed by
a link or a form, and a page shows at most one.

Visitors are told apart by the X-SimPersona-Buyer header that synthetic buyers send, or else by a
buyer cookie the store hands out to humans. Carts and checkout answers live in a server-side
session named by a cookie. Every page view, cart change, checkout step and order is written to
the OrderLog, which is the ground truth for conversion.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

import jinja2
import pandas as pd
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from storefronts import BUYER_HEADER, presentation
from storefronts.catalog import Product, StoreCatalog, category_label, sort_products
from storefronts.checkout import STEPS, option_label, saved_answers, validate_step
from storefronts.faults import FaultInjection, Faults
from storefronts.orderlog import OrderLog
from storefronts.variants import INFO_PAGES, OPTION_VALUES, SORT_LABELS, SORTS, Variant, load_variant

TEMPLATES_DIR = Path(__file__).with_name("templates")
SESSION_COOKIE = "sp_session"
BUYER_COOKIE = "sp_buyer"
MAX_QUANTITY = 99
MAX_FORM_BYTES = 64 * 1024
MAX_QUERY_LENGTH = 200

_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_HUMAN_TAG = re.compile(r"visitor-[0-9a-f]{12}")
_TAG_CHARS = re.compile(r"[^\w.:@/+-]")
CART_NOTICES = {
    "added": "Added {title} to your {cart}.",
    "updated": "Updated the quantity of {title}.",
    "removed": "Removed {title} from your {cart}.",
}
OVERLAY_COOKIES = {"cookies": "sp_cookies", "newsletter": "sp_newsletter"}  # dialog -> cookie that closes it
ERROR_TITLES = {400: "Bad request", 404: "Page not found", 405: "Method not allowed",
                413: "Form too large", 415: "Unsupported form encoding"}


@dataclass
class Session:
    cart: dict[str, int] = field(default_factory=dict)  # product id -> quantity, in the order added
    checkout: dict[str, dict[str, str]] = field(default_factory=dict)  # step name -> accepted answers


@dataclass(frozen=True)
class Visitor:
    session_id: str
    buyer_tag: str
    session: Session
    new_cookies: tuple[tuple[str, str], ...]


def clean_buyer_tag(raw: str | None) -> str:
    """The header value made safe to store: printable tag characters only, at most 128 of them."""
    return _TAG_CHARS.sub("_", (raw or "").strip())[:128]


class Store:
    """Request handlers of one running store: catalog, variant, sessions and the order log."""

    def __init__(self, catalog: StoreCatalog, variant: Variant, log: OrderLog):
        self.catalog = catalog
        self.variant = variant
        self.log = log
        # All handlers run on the server's single event loop, so this dict needs no lock.
        self.sessions: dict[str, Session] = {}
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # templates do not change while a store runs; checking costs a stat per page
        )
        self.templates.globals.update(
            variant=variant,
            price=variant.format_price,
            image=presentation.product_image,
            product_url=presentation.product_url,
            category_url=presentation.category_url,
            nav_categories=[(c, category_label(c)) for c in catalog.largest_categories(variant.nav_categories)],
            sort_labels=SORT_LABELS,
            info_pages=INFO_PAGES,
            option_values=OPTION_VALUES.get(variant.required_option, ()),
            search_url=lambda query: presentation.page_url("/search", q=query),
        )

    def routes(self) -> list[Route]:
        return [
            Route("/", self.home),
            Route("/c/{category:path}", self.category),
            Route("/search", self.search),
            Route("/p/{product_id:path}", self.product),
            Route("/cart", self.cart),
            Route("/cart/add", self.cart_add, methods=["POST"]),
            Route("/cart/update", self.cart_update, methods=["POST"]),
            Route("/cart/remove", self.cart_remove, methods=["POST"]),
            Route("/checkout", self.checkout_start),
            Route("/checkout/{step}", self.checkout_step, methods=["GET", "POST"]),
            Route("/order/{order_id}", self.order),
            Route("/info/{page}", self.info),
            Route("/overlay/{name}", self.close_overlay, methods=["POST"]),
            Route("/robots.txt", self.robots),
        ]

    # ---- visitors, rendering, logging ---------------------------------------------------------

    def visitor(self, request: Request) -> Visitor:
        known = getattr(request.state, "visitor", None)
        if known is not None:
            return known
        cookies = []
        session_id = request.cookies.get(SESSION_COOKIE, "")
        if not _SESSION_ID.fullmatch(session_id):
            session_id = secrets.token_hex(16)
            cookies.append((SESSION_COOKIE, session_id))
        buyer_tag = clean_buyer_tag(request.headers.get(BUYER_HEADER))
        if not buyer_tag:
            buyer_tag = request.cookies.get(BUYER_COOKIE, "")
            if not _HUMAN_TAG.fullmatch(buyer_tag):
                buyer_tag = "visitor-" + secrets.token_hex(6)
                cookies.append((BUYER_COOKIE, buyer_tag))
        # A session is only kept once it holds a cart (see cart_add), so clients that drop
        # cookies, such as crawlers, cannot fill the server's memory with empty sessions.
        session = self.sessions.get(session_id) or Session()
        request.state.visitor = Visitor(session_id, buyer_tag, session, tuple(cookies))
        return request.state.visitor

    def render(self, request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        visitor = self.visitor(request)
        for key, default in (("search_query", ""), ("notice", ""), ("option_error", ""), ("quick_view_url", None),
                             ("overlay", None), ("overlay_product", None), ("overlay_close_url", "")):
            context.setdefault(key, default)
        # The cookie banner comes before anything else; the newsletter only over a product page.
        if self.variant.cookie_banner and OVERLAY_COOKIES["cookies"] not in request.cookies:
            context["overlay"] = "cookies"
        elif (context["overlay"] is None and template == "product.html" and self.variant.newsletter_popup
              and OVERLAY_COOKIES["newsletter"] not in request.cookies):
            context["overlay"] = "newsletter"
        lines = self.cart_lines(visitor.session)
        html = self.templates.get_template(template).render(
            cart_count=sum(visitor.session.cart.values()),
            cart_subtotal=round(sum(line["line_total"] for line in lines), 2),
            here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            **context)
        return self._with_cookies(visitor, HTMLResponse(html, status_code=status,
                                                        headers={"cache-control": "no-store"}))

    def redirect(self, request: Request, url: str) -> RedirectResponse:
        return self._with_cookies(self.visitor(request), RedirectResponse(url, status_code=303))

    @staticmethod
    def _with_cookies(visitor: Visitor, response: Response) -> Response:
        for name, value in visitor.new_cookies:
            response.set_cookie(name, value, httponly=True, samesite="lax", max_age=30 * 24 * 3600)
        return response

    def record(self, request: Request, event_type: str, status: int = 200, **fields) -> None:
        visitor = self.visitor(request)
        url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        self.log.record(buyer_tag=visitor.buyer_tag, session_id=visitor.session_id, event_type=event_type,
                        url=url, method=request.method, status=status, **fields)

    async def error_page(self, request: Request, error: Exception) -> Response:
        status = getattr(error, "status_code", 500)
        message = getattr(error, "detail", "") or "Something went wrong."
        if request.method == "GET":
            self.record(request, "page_view", status=status)
        title = ERROR_TITLES.get(status, "Error")
        return self.render(request, "error.html", status=status, title=title, message=message)

    # ---- browsing -----------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        self.record(request, "page_view")
        shown = self.catalog.largest_categories(self.variant.home_categories)
        return self.render(request, "home.html", title="Home",
                           featured=self.catalog.featured(self.variant.featured_count),
                           categories=[(c, category_label(c), len(self.catalog.in_category(c))) for c in shown],
                           hidden_categories=len(self.catalog.categories) - len(shown))

    async def category(self, request: Request) -> Response:
        category = request.path_params["category"]
        if category not in self.catalog.by_category:
            raise HTTPException(404, f"There is no category {category!r} in this store.")
        label = category_label(category)
        products = self.catalog.in_category(category)
        context = self.listing(request, products, presentation.category_url(category), query="")
        self.record(request, "page_view", category=category)
        return self.render(request, "listing.html", title=label, heading=label, **context)

    async def search(self, request: Request) -> Response:
        query = " ".join(request.query_params.get("q", "").split())[:MAX_QUERY_LENGTH]
        products = self.catalog.search(query)
        context = self.listing(request, products, "/search", query=query)
        if query:
            self.record(request, "search", query=query)
        else:
            self.record(request, "page_view")
        heading = f"Results for “{query}”" if query else "Search"
        return self.render(request, "listing.html", title=heading, heading=heading, **context)

    def listing(self, request: Request, products: list[Product], path: str, query: str) -> dict:
        """Sort and paginate products for listing.html; bad ?sort= or ?page= values are 400/404."""
        sort = request.query_params.get("sort") or self.variant.default_sort
        if sort not in SORTS:
            raise HTTPException(400, f"Unknown sort order {sort!r}; choose one of {', '.join(SORTS)}.")
        page_text = request.query_params.get("page", "1")
        if not page_text.isdigit() or int(page_text) < 1:
            raise HTTPException(400, f"Page must be a whole number from 1, got {page_text!r}.")
        pagination = presentation.Pagination.of(len(products), self.variant.items_per_page, int(page_text))
        if pagination.page > pagination.pages:
            raise HTTPException(404, f"Page {pagination.page} does not exist; there are {pagination.pages}.")
        link_sort = None if sort == self.variant.default_sort else sort

        def page_link(page: int) -> str:
            return presentation.page_url(path, q=query or None, sort=link_sort, page=page)

        def quick_view_url(product: Product) -> str:
            return presentation.page_url(path, q=query or None, sort=link_sort, page=pagination.page,
                                         quick_view=product.product_id)

        ordered = sort_products(products, sort)
        # "Load more" shows one growing list: page N is the first N pages at once.
        shown = ordered[:pagination.first_index + pagination.per_page] if self.variant.listing_paging == "load_more" \
            else pagination.window(ordered)
        context = {
            "products": shown,
            "pagination": pagination,
            "page_link": page_link,
            "sort": sort,
            "path": path,
            "search_query": query,
            "quick_view_url": quick_view_url if self.variant.quick_view else None,
        }
        viewed = self.catalog.by_id.get(request.query_params.get("quick_view", ""))
        if self.variant.quick_view and viewed is not None:
            self.record(request, "product_view", product_id=viewed.product_id, category=viewed.category,
                        price=viewed.price)
            context.update(overlay="quick_view", overlay_product=viewed, overlay_close_url=page_link(pagination.page))
        return context

    async def product(self, request: Request) -> Response:
        product = self.catalog.by_id.get(request.path_params["product_id"])
        if product is None:
            raise HTTPException(404, f"There is no product {request.path_params['product_id']!r} in this store.")
        after = {}
        if "added" in request.query_params and self.variant.after_add == "mini_cart":
            after = {"overlay": "mini_cart", "overlay_product": product, "overlay_close_url": presentation.product_url(product)}
        elif "added" in request.query_params:
            after = {"notice": CART_NOTICES["added"].format(title=product.title, cart=self.cart_noun)}
        elif "missing" in request.query_params and self.variant.required_option:
            after = {"option_error": f"Please choose a {self.variant.required_option} first."}
        if after:  # the page an add form comes back to is not another view of the product
            self.record(request, "page_view", product_id=product.product_id)
        else:
            self.record(request, "product_view", product_id=product.product_id, category=product.category,
                        price=product.price)
        recommended = (self.catalog.also_viewed(product, self.variant.recommendations_count)
                       if self.variant.show_recommendations else [])
        return self.render(
            request, "product.html", title=product.title, product=product,
            summary=presentation.short_description(product),
            details=presentation.long_description(product) if self.variant.long_description else [],
            recommended=recommended, **after,
        )

    @property
    def cart_noun(self) -> str:
        return self.variant.cart_word.lower()

    async def info(self, request: Request) -> Response:
        slug = request.path_params["page"]
        if slug not in INFO_PAGES:
            raise HTTPException(404, f"There is no page {slug!r} in this store.")
        self.record(request, "page_view")
        return self.render(request, "info.html", title=INFO_PAGES[slug])

    async def close_overlay(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in OVERLAY_COOKIES:
            raise HTTPException(404, f"There is no dialog {name!r} in this store.")
        form = await read_form(request)
        target = form.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # only a page of this store
        response = self.redirect(request, target)
        response.set_cookie(OVERLAY_COOKIES[name], form.get("choice", "closed")[:20] or "closed",
                            httponly=True, samesite="lax", max_age=30 * 24 * 3600)
        return response

    async def robots(self, request: Request) -> Response:
        return PlainTextResponse("User-agent: *\nAllow: /\n")

    # ---- cart ---------------------------------------------------------------------------------

    def cart_lines(self, session: Session) -> list[dict]:
        return [
            {"product": self.catalog.by_id[pid], "quantity": qty,
             "line_total": round(self.catalog.by_id[pid].price * qty, 2)}
            for pid, qty in session.cart.items()
        ]

    async def cart(self, request: Request) -> Response:
        session = self.visitor(request).session
        self.record(request, "page_view")
        notice = ""
        for key, message in CART_NOTICES.items():
            product = self.catalog.by_id.get(request.query_params.get(key, ""))
            if product:
                notice = message.format(title=product.title, cart=self.cart_noun)
        lines = self.cart_lines(session)
        return self.render(request, "cart.html", title=f"Your {self.cart_noun}", lines=lines, notice=notice,
                           subtotal=round(sum(line["line_total"] for line in lines), 2))

    async def cart_add(self, request: Request) -> Response:
        form = await read_form(request)
        product = self.form_product(form)
        quantity = form_quantity(form, minimum=1)
        if self.variant.required_option and form.get("option", "") not in OPTION_VALUES[self.variant.required_option]:
            return self.redirect(request, presentation.page_url(presentation.product_url(product), missing=1))
        visitor = self.visitor(request)
        session = self.sessions.setdefault(visitor.session_id, visitor.session)
        before = session.cart.get(product.product_id, 0)
        session.cart[product.product_id] = min(MAX_QUANTITY, before + quantity)
        self.record(request, "add_to_cart", status=303, product_id=product.product_id, category=product.category,
                    quantity=session.cart[product.product_id] - before, price=product.price)
        if self.variant.after_add == "cart_page":
            return self.redirect(request, presentation.page_url("/cart", added=product.product_id))
        return self.redirect(request, presentation.page_url(presentation.product_url(product), added=1))

    async def cart_update(self, request: Request) -> Response:
        form = await read_form(request)
        product, before = self.cart_item(request, form)
        quantity = form_quantity(form, minimum=0)
        cart = self.visitor(request).session.cart
        if quantity == 0:
            del cart[product.product_id]
        else:
            cart[product.product_id] = quantity
        if quantity != before:
            event = "add_to_cart" if quantity > before else "remove_from_cart"
            self.record(request, event, status=303, product_id=product.product_id, category=product.category,
                        quantity=abs(quantity - before), price=product.price)
        key = "removed" if quantity == 0 else "updated"
        return self.redirect(request, presentation.page_url("/cart", **{key: product.product_id}))

    async def cart_remove(self, request: Request) -> Response:
        form = await read_form(request)
        product, before = self.cart_item(request, form)
        del self.visitor(request).session.cart[product.product_id]
        self.record(request, "remove_from_cart", status=303, product_id=product.product_id,
                    category=product.category, quantity=before, price=product.price)
        return self.redirect(request, presentation.page_url("/cart", removed=product.product_id))

    def form_product(self, form: dict[str, str]) -> Product:
        product = self.catalog.by_id.get(form.get("product_id", ""))
        if product is None:
            raise HTTPException(404, f"There is no product {form.get('product_id', '')!r} in this store.")
        return product

    def cart_item(self, request: Request, form: dict[str, str]) -> tuple[Product, int]:
        product = self.form_product(form)
        quantity = self.visitor(request).session.cart.get(product.product_id)
        if quantity is None:
            raise HTTPException(404, f"{product.title} is not in your cart.")
        return product, quantity

    # ---- checkout -----------------------------------------------------------------------------

    async def checkout_start(self, request: Request) -> Response:
        session = self.visitor(request).session
        if not session.cart:
            return self.redirect(request, "/cart")
        return self.redirect(request, f"/checkout/{self.first_open_step(session)}")

    def first_open_step(self, session: Session, up_to: str | None = None) -> str | None:
        """The first step not yet answered (before `up_to` when given)."""
        for step in self.variant.checkout_steps:
            if step == up_to:
                return None
            if step not in session.checkout:
                return step
        return None if up_to else self.variant.checkout_steps[-1]

    async def checkout_step(self, request: Request) -> Response:
        step = request.path_params["step"]
        if step not in self.variant.checkout_steps:
            raise HTTPException(404, f"There is no checkout step {step!r} in this store.")
        session = self.visitor(request).session
        if not session.cart:
            return self.redirect(request, "/cart")
        missing = self.first_open_step(session, up_to=step)
        if missing:
            return self.redirect(request, f"/checkout/{missing}")
        if request.method == "GET":
            self.record(request, "checkout", step=step)
            saved = session.checkout.get(step, {})
            shown = {f.name: saved[f.name] for f in STEPS[step].fields if f.name in saved and not f.secret}
            if self.variant.saved_details and not saved:
                shown = saved_answers(STEPS[step])
            return self.render_step(request, step, values=shown, errors={})
        if step == "review":
            return await self.place_order(request)
        form = await read_form(request)
        values, errors = validate_step(STEPS[step], form)
        if errors:
            self.record(request, "checkout", status=400, step=step)
            # Sticky form: every answer that passed comes back filled in, card fields included,
            # so a buyer who types one field at a time (each Enter submits) is not sent round
            # in circles. Nothing secret is stored; it only travels back in this response.
            sticky = {f.name: form.get(f.name, "").strip() for f in STEPS[step].fields if f.name not in errors}
            return self.render_step(request, step, values=sticky, errors=errors, status=400)
        session.checkout[step] = values
        self.record(request, "checkout", status=303, step=step)
        steps = self.variant.checkout_steps
        return self.redirect(request, f"/checkout/{steps[steps.index(step) + 1]}")

    def render_step(self, request: Request, step: str, values: dict, errors: dict, status: int = 200) -> Response:
        session = self.visitor(request).session
        steps = self.variant.checkout_steps
        position = steps.index(step)
        lines = self.cart_lines(session)
        subtotal = round(sum(line["line_total"] for line in lines), 2)
        delivery = self.delivery_cost(session)
        return self.render(
            request, "checkout.html", status=status, title=STEPS[step].title, step=STEPS[step],
            progress=[(name, STEPS[name].title, i < position, i == position) for i, name in enumerate(steps)],
            next_title=STEPS[steps[position + 1]].title if position + 1 < len(steps) else "",
            back_url=f"/checkout/{steps[position - 1]}" if position else "/cart",
            values=values, errors=errors, lines=lines, subtotal=subtotal, delivery_cost=delivery,
            total=round(subtotal + delivery, 2), answers=self.answers(session),
            option_notes={("delivery", "standard"): "free",
                          ("delivery", "express"): self.variant.format_price(self.variant.express_delivery_price)},
        )

    def delivery_cost(self, session: Session) -> float:
        method = next((answers["delivery"] for answers in session.checkout.values() if "delivery" in answers), "standard")
        return self.variant.express_delivery_price if method == "express" else 0.0

    def answers(self, session: Session) -> list[tuple[str, str, list[tuple[str, str]]]]:
        """(step name, step title, [(field label, shown value)]) of every answered step, for review."""
        summary = []
        for name in self.variant.checkout_steps:
            if name not in session.checkout:
                continue
            shown = []
            for form_field in STEPS[name].fields:
                value = session.checkout[name].get(form_field.name, "")
                if value and not (form_field.kind == "checkbox" and value == "no"):
                    shown.append((form_field.label, option_label(name, form_field.name, value)))
            summary.append((name, STEPS[name].title, shown))
        return summary

    async def place_order(self, request: Request) -> Response:
        visitor = self.visitor(request)
        session = visitor.session
        items = [
            {"product_id": line["product"].product_id, "title": line["product"].title,
             "category": line["product"].category, "quantity": line["quantity"],
             "unit_price": line["product"].price}
            for line in self.cart_lines(session)
        ]
        details = {key: value for answers in session.checkout.values() for key, value in answers.items()}
        order_id = self.log.place_order(
            buyer_tag=visitor.buyer_tag, session_id=visitor.session_id, url=request.url.path, items=items,
            subtotal=sum(item["unit_price"] * item["quantity"] for item in items),
            delivery_cost=self.delivery_cost(session), currency=self.variant.currency, details=details,
        )
        session.cart.clear()
        session.checkout.clear()
        return self.redirect(request, f"/order/{order_id}")

    async def order(self, request: Request) -> Response:
        order = self.log.get_order(request.path_params["order_id"])
        if order is None:
            raise HTTPException(404, f"There is no order {request.path_params['order_id']!r}.")
        self.record(request, "page_view", order_id=order["order_id"])
        return self.render(request, "order.html", title="Thank you for your order", order=order)


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a urlencoded HTML form (the only encoding our forms use); last value wins."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise HTTPException(415, f"Forms must be sent as application/x-www-form-urlencoded, got {content_type!r}.")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"The form is larger than {MAX_FORM_BYTES} bytes.")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


def form_quantity(form: dict[str, str], minimum: int) -> int:
    text = form.get("quantity", "1").strip()
    if not text.isdigit() or not minimum <= int(text) <= MAX_QUANTITY:
        raise HTTPException(400, f"Quantity must be a whole number from {minimum} to {MAX_QUANTITY}, got {text!r}.")
    return int(text)


def create_app(
    catalog: StoreCatalog | str | Path | pd.DataFrame,
    shop_id: str,
    log: OrderLog,
    variant: str | Path | Variant = "default",
    faults: Faults | None = None,
) -> Starlette:
    """The store as an ASGI app. The caller owns `log` and closes it after the server stops.

    app.state carries store, catalog, variant, shop_id, log and prices_synthetic (the ids of
    products whose price the store made up because the catalog had none).
    """
    if not isinstance(catalog, StoreCatalog):
        catalog = StoreCatalog.load(catalog, shop_id)
    store = Store(catalog, load_variant(variant), log)
    middleware = [Middleware(FaultInjection, faults=faults)] if faults and faults.active else []
    app = Starlette(
        routes=store.routes(),
        middleware=middleware,
        exception_handlers={HTTPException: store.error_page},
    )
    app.state.store = store
    app.state.catalog = catalog
    app.state.variant = store.variant
    app.state.shop_id = catalog.shop_id
    app.state.log = log
    app.state.prices_synthetic = catalog.prices_synthetic
    return app
