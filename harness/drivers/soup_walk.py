"""Reading a page without a browser: the rules of harness/drivers/js/stamp.js over BeautifulSoup.

SoupWalker walks a parsed page the way stamp.js walks the live DOM (see harness/drivers/observation.py
for the rules both share), so the http driver produces the same observation text as the browser
driver. Visibility comes from the markup alone: the hidden attribute, aria-hidden, inline styles
and the page's own CSS rules that hide by a plain selector. `form_fields` gives what a browser
without JavaScript would send for a form.
"""

from __future__ import annotations

import re
from collections import Counter

from bs4 import BeautifulSoup, NavigableString, Tag
from bs4.element import PreformattedString

from harness.drivers.observation import (
    BLOCK_TAGS, CARD_FIELD_PATTERN, CONTEXT_MAX_CONTROLS, CONTEXT_MAX_DEPTH, CONTEXT_SCAN_CHARS, CONTROL_TEXT_TAGS,
    ICON_CLASS_PATTERN, ICON_STOP_WORDS, INTERACTIVE_ROLES, INTERACTIVE_TAGS, MAX_ALERTS, SKIP_TAGS, PageSnapshot,
    RawElement, collapse,
)

# Input types that, when the form has more than one of them and no submit button, stop Enter
# from submitting the form (HTML's implicit submission rule).
BLOCKS_IMPLICIT_SUBMISSION = (
    "text", "search", "url", "tel", "email", "password", "date", "month", "week", "time",
    "datetime-local", "number",
)
BUTTON_INPUT_TYPES = ("submit", "button", "reset", "image")

_SKIP = frozenset(SKIP_TAGS)
_BLOCK = frozenset(BLOCK_TAGS)
_INTERACTIVE_TAGS = frozenset(INTERACTIVE_TAGS)
_INTERACTIVE_ROLES = frozenset(INTERACTIVE_ROLES)
_CONTROL_TEXT = frozenset(CONTROL_TEXT_TAGS)
_ICON_RE = re.compile(ICON_CLASS_PATTERN, re.IGNORECASE)
_ICON_STOP = frozenset(ICON_STOP_WORDS)
_CARD_RE = re.compile(CARD_FIELD_PATTERN, re.IGNORECASE)
_STYLE_DISPLAY_NONE = re.compile(r"(?:^|;)\s*display\s*:\s*none\b", re.IGNORECASE)
_STYLE_INVISIBLE = re.compile(r"(?:^|;)\s*visibility\s*:\s*(?:hidden|collapse)\b", re.IGNORECASE)
# Moved far off the page ("left: -999px"), the usual way to hide skip links until focused.
_STYLE_OFF_PAGE = re.compile(r"(?:^|;)\s*(?:left|top)\s*:\s*-\d{3,}(?:\.\d+)?(?:px|em|rem)\b", re.IGNORECASE)
_CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


# -- reading a page ----------------------------------------------------------------------------

def hiding_selectors(css: str) -> list[str]:
    """Plain selectors of top-level CSS rules that hide (display:none, visibility:hidden).

    Rules inside @media/@supports and selectors with pseudo-classes depend on things the http
    driver cannot know (viewport, hover), so they are left out.
    """
    css = _CSS_COMMENT.sub("", css)
    selectors: list[str] = []
    depth, start, prelude = 0, 0, ""
    for index, char in enumerate(css):
        if char == "{":
            if depth == 0:
                prelude = css[start:index].strip()
                start = index + 1
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                body = css[start:index]
                if not prelude.startswith("@") and _hides(body):
                    selectors.extend(s.strip() for s in prelude.split(",") if s.strip() and ":" not in s)
                start = index + 1
            depth = max(depth, 0)
    return selectors


def _hides(declarations: str) -> bool:
    return bool(_STYLE_DISPLAY_NONE.search(declarations) or _STYLE_INVISIBLE.search(declarations)
                or _STYLE_OFF_PAGE.search(declarations))


def css_hidden_ids(soup: BeautifulSoup, stylesheets: list[str]) -> set[int]:
    """Python ids of the tags that the page's CSS hides."""
    hidden: set[int] = set()
    for css in stylesheets:
        for selector in hiding_selectors(css):
            try:
                hidden.update(id(tag) for tag in soup.select(selector))
            except Exception:   # soupsieve rejects selectors it does not support; skip those
                continue
    return hidden


class SoupWalker:
    """harness/drivers/js/stamp.js, over BeautifulSoup. Keep the two in step."""

    def __init__(self, soup: BeautifulSoup, css_hidden: set[int]):
        self.soup = soup
        self.css_hidden = css_hidden
        self._child_kinds: dict[int, Counter] = {}
        # Hints and error messages that describe a field (aria-describedby) belong to that field.
        self._describing = {ref for tag in soup.find_all(attrs={"aria-describedby": True})
                            for ref in tag["aria-describedby"].split()}

    # visibility and structure
    def self_hidden(self, tag: Tag) -> bool:
        if tag.has_attr("hidden") or tag.get("aria-hidden") == "true":
            return True
        if tag.name == "input" and input_type(tag) == "hidden":
            return True
        if tag.name == "dialog" and not tag.has_attr("open"):
            return True
        style = tag.get("style") or ""
        if style and _hides(style):
            return True
        return id(tag) in self.css_hidden

    def children_of(self, node: Tag) -> list:
        shadow = next((c for c in node.children if isinstance(c, Tag) and c.name == "template"
                       and (c.get("shadowrootmode") or c.get("shadowroot"))), None)
        if shadow is not None:
            return list(shadow.contents) + [c for c in node.contents if c is not shadow]
        if node.name == "details" and not node.has_attr("open"):
            summary = next((c for c in node.children if isinstance(c, Tag) and c.name == "summary"), None)
            return [summary] if summary is not None else []
        return list(node.contents)

    @staticmethod
    def parent_of(node: Tag) -> Tag | None:
        parent = node.parent
        if parent is not None and parent.name == "template" and (parent.get("shadowrootmode") or parent.get("shadowroot")):
            parent = parent.parent
        return parent if isinstance(parent, Tag) and parent.name != "[document]" else None

    @staticmethod
    def is_interactive(tag: Tag) -> bool:
        if tag.name in _INTERACTIVE_TAGS:
            if tag.name == "a":
                return tag.has_attr("href")
            if tag.name == "input":
                return input_type(tag) != "hidden"
            return True
        if role_of(tag) in _INTERACTIVE_ROLES:
            return True
        if tag.has_attr("onclick"):
            return True
        return tag.has_attr("contenteditable") and tag.get("contenteditable") in ("", "true")

    # text
    def name_text(self, root: Tag) -> str:
        parts: list[str] = []
        self._name_parts(root, parts)
        return collapse("".join(parts))

    def _name_parts(self, node: Tag, parts: list[str]) -> None:
        for child in self.children_of(node):
            if _is_text(child):
                parts.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name
            if name in _SKIP or self.self_hidden(child):
                continue
            if name == "img":
                parts.append(" " + (child.get("alt") or "") + " ")
                continue
            if name == "svg":
                title = next((c for c in child.children if isinstance(c, Tag) and c.name == "title"), None)
                parts.append(" " + (child.get("aria-label") or (title.get_text() if title else "")) + " ")
                continue
            if name in ("select", "textarea", "input"):
                continue
            block = name in _BLOCK
            if block:
                parts.append(" ")
            self._name_parts(child, parts)
            if block:
                parts.append(" ")

    def icon_of(self, tag: Tag) -> str:
        for node in ([tag] + tag.find_all(True, limit=29)):
            for cls in node.get("class") or []:
                match = _ICON_RE.match(cls)
                if match and match.group(1).lower() not in _ICON_STOP:
                    return match.group(1)
            if node.name == "use":
                ref = node.get("href") or node.get("xlink:href") or ""
                if "#" in ref:
                    return re.sub(r"^(icon|ico|i)[-_]", "", ref.split("#")[-1], flags=re.IGNORECASE)
            if node.name == "img" and node.get("src"):
                file = re.split(r"[?#]", node["src"])[0].split("/")[-1]
                stem = re.sub(r"^(icon|ico)[-_]", "", re.sub(r"\.[a-z0-9]+$", "", file, flags=re.IGNORECASE), flags=re.IGNORECASE)
                if re.fullmatch(r"[a-z][a-z_-]{1,30}", stem, re.IGNORECASE):
                    return stem
        return ""

    def label_text(self, tag: Tag) -> str:
        wrapping = tag.find_parent("label")
        if wrapping is not None:
            return self.name_text(wrapping)
        if tag.get("id"):
            for_label = self.soup.find("label", attrs={"for": tag["id"]})
            if for_label is not None:
                return self.name_text(for_label)
        return ""

    def context_of(self, tag: Tag) -> str:
        node = self.parent_of(tag)
        depth = 0
        while node is not None and depth < CONTEXT_MAX_DEPTH:
            if node.name in ("body", "html"):
                return ""
            scan = self._scan_context(node, tag)
            if scan is None:
                return ""
            text, free = scan
            if free or self._is_repeated_item(node):
                return text
            node = self.parent_of(node)
            depth += 1
        return ""

    def _is_repeated_item(self, node: Tag) -> bool:
        parent = self.parent_of(node)
        if parent is None:
            return False
        counts = self._child_kinds.get(id(parent))
        if counts is None:   # cached: menus have hundreds of items
            counts = Counter(_kind_of(c) for c in self.children_of(parent) if isinstance(c, Tag))
            self._child_kinds[id(parent)] = counts
        return counts[_kind_of(node)] >= 2

    def _scan_context(self, container: Tag, own: Tag) -> tuple[str, bool] | None:
        parts: list[str] = []
        state = {"free": False, "controls": 0, "length": 0, "overflow": False}

        def rec(node: Tag, inside_control: bool) -> None:
            for child in self.children_of(node):
                if state["overflow"]:
                    return
                if _is_text(child):
                    text = str(child)
                    parts.append(text)
                    state["length"] += len(text)
                    if not inside_control and text.strip():
                        state["free"] = True
                    if state["length"] > CONTEXT_SCAN_CHARS:
                        state["overflow"] = True
                    continue
                if not isinstance(child, Tag) or child is own:
                    continue
                if child.name in _SKIP or self.self_hidden(child) or child.get("id") in self._describing:
                    continue
                interactive = self.is_interactive(child)
                if interactive:
                    state["controls"] += 1
                    if state["controls"] > CONTEXT_MAX_CONTROLS:
                        state["overflow"] = True
                        return
                if child.name in _CONTROL_TEXT or role_of(child) == "button":
                    continue
                block = child.name in _BLOCK
                if block:
                    parts.append(" ")
                rec(child, inside_control or interactive)
                if block:
                    parts.append(" ")

        rec(container, False)
        return None if state["overflow"] else (collapse("".join(parts)), state["free"])

    def form_of(self, tag: Tag) -> Tag | None:
        if tag.get("form"):
            owner = self.soup.find("form", id=tag["form"])
            if owner is not None:
                return owner
        return tag.find_parent("form")

    def form_has_card_fields(self, tag: Tag) -> bool:
        form = self.form_of(tag)
        if form is None:
            return False
        for field_tag in form.find_all(["input", "select"]):
            probe = " ".join(field_tag.get(a) or "" for a in ("name", "id", "autocomplete", "placeholder"))
            if _CARD_RE.search(probe):
                return True
        return False

    def ancestors_visible(self, tag: Tag) -> bool:
        node: Tag | None = tag
        while node is not None:
            if self.self_hidden(node):
                return False
            node = self.parent_of(node)
        return True

    # the walk
    def snapshot(self, url: str, next_id: int) -> tuple[PageSnapshot, dict[int, Tag], int]:
        found: list[Tag] = []
        h1: list[Tag] = []
        alert_nodes: list[Tag] = []

        def walk(node: Tag) -> None:
            for child in self.children_of(node):
                if not isinstance(child, Tag):
                    continue
                if child.name in _SKIP or self.self_hidden(child):
                    continue
                if self.is_interactive(child):
                    found.append(child)
                if child.name == "h1" and not h1:
                    h1.append(child)
                if role_of(child) in ("alert", "status"):
                    alert_nodes.append(child)
                if child.name in ("select", "textarea"):
                    continue
                walk(child)

        root = self.soup.find("html") or self.soup
        walk(root)

        modal = None
        for candidate in self.soup.find_all(attrs={"aria-modal": "true"}):
            if self.ancestors_visible(candidate):
                modal = candidate

        used: set[int] = set()
        by_id: dict[int, Tag] = {}
        elements: list[RawElement] = []
        for tag in found:
            stamped = tag.get("data-sp-id", "")
            element_id = int(stamped) if stamped.isdigit() else 0
            if not element_id or element_id in used:
                element_id = next_id
                next_id += 1
                tag["data-sp-id"] = str(element_id)
            used.add(element_id)
            by_id[element_id] = tag
            elements.append(self.raw_element(tag, element_id, modal))

        heading = self.name_text(h1[0]) if h1 else ""
        meta = self.soup.find("meta", attrs={"name": "sp-order-id"})
        alerts = [text for text in (self.name_text(a) for a in alert_nodes) if text][:MAX_ALERTS]
        modal_name = ""
        if modal is not None:
            modal_heading = modal.select_one("h1, h2, h3")
            modal_name = modal.get("aria-label") or (self.name_text(modal_heading) if modal_heading else "")
        title = self.soup.title.get_text() if self.soup.title else ""
        snapshot = PageSnapshot(url=url, title=title, elements=elements, heading=heading,
                                order_id=(meta.get("content") or "") if meta else "",
                                modal_open=modal is not None, modal_name=modal_name, alerts=alerts)
        return snapshot, by_id, next_id

    def raw_element(self, tag: Tag, element_id: int, modal: Tag | None) -> RawElement:
        kind = input_type(tag)
        is_field = tag.name in ("select", "textarea") or (tag.name == "input" and kind not in BUTTON_INPUT_TYPES)
        def referenced(attribute: str) -> str:
            return " ".join(self.name_text(target) for ref in (tag.get(attribute) or "").split()
                            if (target := self.soup.find(id=ref)) is not None)

        options, selected = ([], [])
        if tag.name == "select":
            option_tags = tag.find_all("option")
            options = [collapse(o.get("label") or o.get_text()) for o in option_tags]
            selected = [collapse(o.get("label") or o.get_text()) for o in selected_options(tag)]
        value = ""
        if tag.name == "textarea":
            value = tag.get_text()
        elif tag.name == "input":
            value = tag.get("value") or ""
        return RawElement(
            id=element_id, tag=tag.name, role_attr=role_of(tag), input_type=kind,
            labelledby_text=referenced("aria-labelledby"), description=referenced("aria-describedby"),
            aria_label=tag.get("aria-label") or "",
            label_text=self.label_text(tag) if is_field else "",
            value_attr=tag.get("value") or "", value=value,
            text="" if is_field else self.name_text(tag),
            title=tag.get("title") or "", placeholder=tag.get("placeholder") or "",
            alt=tag.get("alt") or "", icon=self.icon_of(tag), name_attr=tag.get("name") or "",
            href=(tag.get("href") or "") if tag.name == "a" else "",
            checked=tag.has_attr("checked"),
            disabled=tag.has_attr("disabled") or tag.get("aria-disabled") == "true",
            multiple=tag.has_attr("multiple"), options=options, selected=selected,
            context="" if is_field else self.context_of(tag),
            in_modal=modal is not None and _is_inside(tag, modal),
            in_card_form=self.form_has_card_fields(tag),
        )


def _kind_of(tag: Tag) -> str:
    return tag.name + "." + (tag.get("class") or [""])[0]


def _is_text(node) -> bool:
    return isinstance(node, NavigableString) and not isinstance(node, PreformattedString)


def _is_inside(tag: Tag, container: Tag) -> bool:
    return any(parent is container for parent in tag.parents)


def input_type(tag: Tag) -> str:
    return ((tag.get("type") or "text").lower() or "text") if tag.name == "input" else ""


def role_of(tag: Tag) -> str:
    return ((tag.get("role") or "").strip().split() or [""])[0].lower()


def selected_options(select: Tag) -> list[Tag]:
    """The options a browser would have selected (the last `selected` wins in a single select)."""
    options = select.find_all("option")
    chosen = [o for o in options if o.has_attr("selected")]
    if select.has_attr("multiple"):
        return chosen
    if chosen:
        return chosen[-1:]
    enabled = [o for o in options if not o.has_attr("disabled")]
    return enabled[:1]


def form_fields(form: Tag, submitter: Tag | None) -> list[tuple[str, str]]:
    """The name/value pairs a browser sends for this form, in document order."""
    pairs: list[tuple[str, str]] = []
    for field_tag in form.find_all(["input", "select", "textarea", "button"]):
        name = field_tag.get("name")
        if not name or field_tag.has_attr("disabled"):
            continue
        if field_tag.name == "button" or (field_tag.name == "input" and input_type(field_tag) in BUTTON_INPUT_TYPES):
            if field_tag is submitter:
                if input_type(field_tag) == "image":
                    pairs += [(f"{name}.x", "0"), (f"{name}.y", "0")]
                else:
                    pairs.append((name, field_tag.get("value") or ""))
            continue
        if field_tag.name == "select":
            pairs += [(name, o.get("value") if o.has_attr("value") else collapse(o.get_text()))
                      for o in selected_options(field_tag)]
        elif field_tag.name == "textarea":
            pairs.append((name, field_tag.get_text()))
        elif input_type(field_tag) in ("checkbox", "radio"):
            if field_tag.has_attr("checked"):
                pairs.append((name, field_tag.get("value") or "on"))
        elif input_type(field_tag) != "file":
            pairs.append((name, field_tag.get("value") or ""))
    return pairs

