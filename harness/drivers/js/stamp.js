// One pass over the live page, called as page.evaluate(source, json.dumps(stamp_rules())) with
// the rules from harness/drivers/observation.py; returns a JSON string. It stamps `data-sp-id` on every
// visible interactive element (keeping ids already stamped, so re-observing the same page gives
// the same ids, while a new document starts again at 1) and returns one raw record per element
// for observation.py. harness/drivers/http_driver.py walks BeautifulSoup with the same rules: keep the
// two in step.
(rulesJson) => {
  // The rules arrive as one JSON string: Playwright passes a string much faster than an object.
  const rules = JSON.parse(rulesJson);
  const SKIP = new Set(rules.skipTags);
  const BLOCK = new Set(rules.blockTags);
  const INTERACTIVE_TAGS = new Set(rules.interactiveTags);
  const INTERACTIVE_ROLES = new Set(rules.interactiveRoles);
  const CONTROL_TEXT = new Set(rules.controlTextTags);
  const ICON_RE = new RegExp(rules.iconClassPattern, "i");
  const ICON_STOP = new Set(rules.iconStopWords);
  const CARD_RE = new RegExp(rules.cardFieldPattern, "i");

  const collapse = (text) => text.replace(/[\s\ufeff]+/g, " ").trim();
  const attr = (el, name) => (el.getAttribute(name) || "");
  const roleOf = (el) => attr(el, "role").trim().split(/\s+/)[0].toLowerCase();
  const inputType = (el) => (el.localName === "input" ? (attr(el, "type").toLowerCase() || "text") : "");

  // Asked many times per node (walk, names, context scans) while the DOM does not change during
  // the pass: each answer is computed once per node and pass.
  function cachedPerPass(compute) {
    const cache = new Map();
    return (node) => {
      let value = cache.get(node);
      if (value === undefined) {
        value = compute(node);
        cache.set(node, value);
      }
      return value;
    };
  }
  const selfHidden = cachedPerPass(computeHidden);
  const isInteractive = cachedPerPass(computeInteractive);
  // Building child lists was a fifth of the pass on a theme-sized page before it was cached.
  const childrenOf = cachedPerPass(computeChildren);

  // Hidden for everyone: the hidden attribute, aria-hidden, type=hidden, display:none, visibility.
  function computeHidden(el) {
    if (el.hasAttribute("hidden") || attr(el, "aria-hidden") === "true") return true;
    if (el.localName === "input" && inputType(el) === "hidden") return true;
    if (el.localName === "dialog" && !el.hasAttribute("open")) return true;
    const cs = getComputedStyle(el);
    return cs.display === "none" || cs.visibility === "hidden" || cs.visibility === "collapse";
  }

  // Rendered children: an open shadow root's content, then the light children (only those slotted
  // when there is a shadow root); a closed <details> shows only its summary.
  const shadowRoots = new Set();
  function computeChildren(node) {
    const out = [];
    if (node.shadowRoot) {
      shadowRoots.add(node.shadowRoot);
      out.push(...node.shadowRoot.childNodes);
      for (const child of node.childNodes) if (child.assignedSlot) out.push(child);
      return out;
    }
    if (node.localName === "details" && !node.hasAttribute("open")) {
      const summary = [...node.children].find((c) => c.localName === "summary");
      return summary ? [summary] : [];
    }
    return [...node.childNodes];
  }

  function parentOf(node) {
    if (node.assignedSlot) return node.assignedSlot;
    if (node.parentElement) return node.parentElement;
    const root = node.parentNode;
    return root && root.host ? root.host : null;
  }

  function computeInteractive(el) {
    const tag = el.localName;
    if (INTERACTIVE_TAGS.has(tag)) {
      if (tag === "a") return el.hasAttribute("href");
      if (tag === "input") return inputType(el) !== "hidden";
      return true;
    }
    if (INTERACTIVE_ROLES.has(roleOf(el))) return true;
    if (el.hasAttribute("onclick")) return true;
    const editable = attr(el, "contenteditable");
    return el.hasAttribute("contenteditable") && (editable === "" || editable === "true");
  }

  // Zero-size controls are not shown, unless something inside them has a box (floats, icons).
  function hasBox(el) {
    const rect = el.getBoundingClientRect();
    if (rect.width > 0 && rect.height > 0) return rect.right + scrollX > 0 && rect.bottom + scrollY > 0;
    let checked = 0;
    for (const inner of el.querySelectorAll("*")) {
      const r = inner.getBoundingClientRect();
      if (r.width > 0 && r.height > 0) return true;
      if (++checked > 20) break;
    }
    return false;
  }

  // Visible text of a subtree, as a name: image alt and svg titles count, hidden parts do not.
  function nameText(root) {
    const parts = [];
    (function rec(node) {
      for (const child of childrenOf(node)) {
        if (child.nodeType === 3) { parts.push(child.data); continue; }
        if (child.nodeType !== 1) continue;
        const tag = child.localName;
        if (SKIP.has(tag) || selfHidden(child)) continue;
        if (tag === "img") { parts.push(" " + attr(child, "alt") + " "); continue; }
        if (tag === "svg") { parts.push(" " + (attr(child, "aria-label") || svgTitle(child)) + " "); continue; }
        if (tag === "select" || tag === "textarea" || tag === "input") continue;
        const block = BLOCK.has(tag);
        if (block) parts.push(" ");
        rec(child);
        if (block) parts.push(" ");
      }
    })(root);
    return collapse(parts.join(""));
  }

  function svgTitle(svg) {
    const title = [...svg.children].find((c) => c.localName === "title");
    return title ? title.textContent : "";
  }

  // The raw icon name: an icon class on the element or inside it, an svg <use> symbol, an image file.
  function iconOf(el) {
    const nodes = [el, ...el.querySelectorAll("*")].slice(0, 30);
    for (const node of nodes) {
      for (const cls of node.classList) {
        const match = ICON_RE.exec(cls);
        if (match && !ICON_STOP.has(match[1].toLowerCase())) return match[1];
      }
      if (node.localName === "use") {
        const ref = attr(node, "href") || attr(node, "xlink:href");
        if (ref.includes("#")) return ref.split("#").pop().replace(/^(icon|ico|i)[-_]/i, "");
      }
      if (node.localName === "img" && attr(node, "src")) {
        const file = attr(node, "src").split(/[?#]/)[0].split("/").pop();
        const stem = file.replace(/\.[a-z0-9]+$/i, "").replace(/^(icon|ico)[-_]/i, "");
        if (/^[a-z][a-z_-]{1,30}$/i.test(stem)) return stem;
      }
    }
    return "";
  }

  function byId(el, id) {
    const root = el.getRootNode();
    return root.getElementById ? root.getElementById(id) : document.getElementById(id);
  }

  function labelText(el) {
    const parts = [];
    const wrapping = el.closest("label");
    if (wrapping) parts.push(nameText(wrapping));
    const id = attr(el, "id");
    if (!wrapping && id) {
      const root = el.getRootNode();
      const forLabel = root.querySelector ? root.querySelector(`label[for="${CSS.escape(id)}"]`) : null;
      if (forLabel) parts.push(nameText(forLabel));
    }
    return collapse(parts.join(" "));
  }

  // Text near a control that tells what it is about: the first ancestor holding text outside any
  // control (a product card, a table row, a list item). Button, field and option text is skipped,
  // link text (product titles) is kept.
  function contextOf(el) {
    let node = parentOf(el);
    for (let depth = 0; node && depth < rules.contextMaxDepth; depth++, node = parentOf(node)) {
      if (node.nodeType !== 1 || node.localName === "body" || node.localName === "html") return "";
      const scan = scanContext(node, el);
      if (scan === null) return "";
      if (scan.free) return scan.text;
      // One of several alike siblings (a product tile in a grid, a menu entry): its text is all
      // the context there is; going further up would mix in the neighbours.
      if (isRepeatedItem(node)) return scan.text;
    }
    return "";
  }

  // Children of a parent counted by tag and first class (cached: menus have hundreds of items).
  const childKinds = new Map();
  const kindOf = (el) => el.localName + "." + (el.classList[0] || "");
  function isRepeatedItem(node) {
    const parent = parentOf(node);
    if (!parent) return false;
    let counts = childKinds.get(parent);
    if (!counts) {
      counts = new Map();
      for (const sibling of childrenOf(parent)) {
        if (sibling.nodeType === 1) counts.set(kindOf(sibling), (counts.get(kindOf(sibling)) || 0) + 1);
      }
      childKinds.set(parent, counts);
    }
    return (counts.get(kindOf(node)) || 0) >= 2;
  }

  // Hints and error messages that describe a field (aria-describedby) belong to that field.
  const describing = new Set();
  for (const el of document.querySelectorAll("[aria-describedby]")) {
    for (const ref of attr(el, "aria-describedby").split(/\s+/)) if (ref) describing.add(ref);
  }

  function scanContext(container, own) {
    const parts = [];
    let free = false, controls = 0, length = 0, overflow = false;
    (function rec(node, insideControl) {
      for (const child of childrenOf(node)) {
        if (overflow) return;
        if (child.nodeType === 3) {
          parts.push(child.data);
          length += child.data.length;
          if (!insideControl && child.data.trim()) free = true;
          if (length > rules.contextScanChars) overflow = true;
          continue;
        }
        if (child.nodeType !== 1 || child === own) continue;
        const tag = child.localName;
        if (SKIP.has(tag) || selfHidden(child) || (child.id && describing.has(child.id))) continue;
        const interactive = isInteractive(child);
        if (interactive && ++controls > rules.contextMaxControls) { overflow = true; return; }
        if (CONTROL_TEXT.has(tag) || roleOf(child) === "button") continue;
        const block = BLOCK.has(tag);
        if (block) parts.push(" ");
        rec(child, insideControl || interactive);
        if (block) parts.push(" ");
      }
    })(container, false);
    return overflow ? null : { text: collapse(parts.join("")), free };
  }

  function formHasCardFields(el) {
    const form = el.form || el.closest("form");
    if (!form) return false;
    for (const field of form.querySelectorAll("input, select")) {
      const probe = [attr(field, "name"), attr(field, "id"), attr(field, "autocomplete"), attr(field, "placeholder")].join(" ");
      if (CARD_RE.test(probe)) return true;
    }
    return false;
  }

  // Walk the document in order and collect visible interactive elements.
  const found = [];
  let h1 = null;
  const alertNodes = [];
  (function walk(node) {
    for (const child of childrenOf(node)) {
      if (child.nodeType !== 1) continue;
      const tag = child.localName;
      if (SKIP.has(tag) || selfHidden(child)) continue;
      if (isInteractive(child) && hasBox(child)) found.push(child);
      if (tag === "h1" && !h1) h1 = child;
      if (roleOf(child) === "alert" || roleOf(child) === "status") alertNodes.push(child);
      if (tag === "select" || tag === "textarea") continue;
      walk(child);
    }
  })(document.documentElement);

  // The topmost open modal dialog, if any.
  let modal = null;
  for (const candidate of document.querySelectorAll("dialog[open], [aria-modal='true']")) {
    let isModal = attr(candidate, "aria-modal") === "true";
    try { isModal = isModal || candidate.matches(":modal"); } catch (e) { /* old engines */ }
    if (isModal && !selfHidden(candidate) && candidate.getClientRects().length) modal = candidate;
  }

  // Ids: keep the ones already stamped; number new elements after the highest ever given on
  // this document. The attributes are written after all reading is done, so that no style
  // recalculation is forced in between.
  let next = window.__spNextId || 1;
  const used = new Set();
  const ids = found.map((el) => {
    const id = parseInt(el.getAttribute("data-sp-id"), 10);
    if (!id || used.has(id)) return 0;
    used.add(id);
    return id;
  });
  const elements = found.map((el, index) => {
    const id = ids[index] || next++;
    const tag = el.localName;
    const type = inputType(el);
    const referenced = (name) => attr(el, name).split(/\s+/).filter(Boolean)
      .map((ref) => { const target = byId(el, ref); return target ? nameText(target) : ""; }).join(" ");
    const isField = tag === "select" || tag === "textarea" || (tag === "input" && !["button", "submit", "reset", "image"].includes(type));
    const options = tag === "select" ? [...el.options].map((o) => collapse(o.label || o.textContent)) : [];
    const selected = tag === "select" ? [...el.selectedOptions].map((o) => collapse(o.label || o.textContent)) : [];
    return {
      id, tag, role_attr: roleOf(el), input_type: type,
      labelledby_text: referenced("aria-labelledby"),
      description: referenced("aria-describedby"),
      aria_label: attr(el, "aria-label"),
      label_text: isField ? labelText(el) : "",
      value_attr: attr(el, "value"),
      value: tag === "textarea" || tag === "input" ? String(el.value || "") : "",
      text: isField ? "" : nameText(el),
      title: attr(el, "title"),
      placeholder: attr(el, "placeholder"),
      alt: attr(el, "alt"),
      icon: iconOf(el),
      name_attr: attr(el, "name"),
      href: tag === "a" ? attr(el, "href") : "",
      checked: !!el.checked,
      disabled: el.hasAttribute("disabled") || attr(el, "aria-disabled") === "true",
      multiple: el.hasAttribute("multiple"),
      options, selected,
      context: isField ? "" : contextOf(el),
      in_modal: modal ? modal.contains(el) || (el.getRootNode().host && modal.contains(el.getRootNode().host)) : false,
      in_card_form: formHasCardFields(el),
    };
  });
  window.__spNextId = next;
  found.forEach((el, index) => { if (!ids[index]) el.setAttribute("data-sp-id", String(elements[index].id)); });
  // A link that opens a new tab would leave the buyer behind: every link the agent can click opens
  // in the same tab (done here, in the same pass, to save the driver a round trip per click).
  for (const el of found) {
    const link = el.closest("a[target]");
    if (link) link.removeAttribute("target");
  }

  // From here on, any change to the document (or to a shadow tree the walk went through) marks
  // this snapshot out of date: the driver acts on it without a second pass while the page stays
  // as it was (window.__spChanged === false). Our own writes above are taken back out.
  if (!window.__spWatch) window.__spWatch = new MutationObserver(() => { window.__spChanged = true; });
  const watchOptions = {subtree: true, childList: true, attributes: true, characterData: true};
  window.__spWatch.observe(document, watchOptions);
  for (const root of shadowRoots) window.__spWatch.observe(root, watchOptions);
  window.__spWatch.takeRecords();
  window.__spChanged = false;

  const meta = document.querySelector('meta[name="sp-order-id"]');
  const alerts = alertNodes.map((a) => nameText(a)).filter(Boolean).slice(0, rules.maxAlerts);
  // One JSON string: Playwright moves a string far faster than a tree of small objects.
  // Empty fields are left out (the Python side has defaults for them).
  const dropEmpty = (key, value) =>
    (value === "" || value === false || (Array.isArray(value) && value.length === 0)) ? undefined : value;
  return JSON.stringify({
    url: location.href,
    title: document.title,
    heading: h1 ? nameText(h1) : "",
    orderId: meta ? attr(meta, "content") : "",
    modalOpen: !!modal,
    modalName: modal ? (attr(modal, "aria-label") || (modal.querySelector("h1,h2,h3") ? nameText(modal.querySelector("h1,h2,h3")) : "")) : "",
    alerts,
    elements,
  }, dropEmpty);
}
