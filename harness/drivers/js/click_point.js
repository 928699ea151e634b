(id) => {
  const selector = `[data-sp-id="${id}"]`;
  const find = (root) => {
    const direct = root.querySelector(selector);
    if (direct) return direct;
    for (const host of root.querySelectorAll("*")) if (host.shadowRoot) { const inner = find(host.shadowRoot); if (inner) return inner; }
    return null;
  };
  const el = find(document);
  if (!el) return {error: "gone"};
  el.scrollIntoView({block: "center", inline: "center"});
  const topmost = (x, y) => {
    let hit = document.elementFromPoint(x, y);
    while (hit && hit.shadowRoot) { const inner = hit.shadowRoot.elementFromPoint(x, y); if (!inner || inner === hit) break; hit = inner; }
    return hit;
  };
  const labels = el.labels ? [...el.labels] : [];
  const reaches = (hit) => {
    for (let node = hit; node; node = node.parentNode || node.host) if (node === el || labels.includes(node)) return true;
    return false;
  };
  let cover = null;
  for (const box of el.getClientRects()) {
    if (box.width < 1 || box.height < 1) continue;
    const x = box.left + box.width / 2, y = box.top + box.height / 2;
    const hit = topmost(x, y);
    if (hit && reaches(hit)) return {x, y};
    cover = cover || hit;
  }
  if (!cover) return {error: "has no box to click"};
  const text = (cover.innerText || cover.getAttribute("aria-label") || "").replace(/\s+/g, " ").trim().slice(0, 40);
  return {error: `is covered by <${cover.localName}>` + (text ? ` "${text}"` : "")};
}