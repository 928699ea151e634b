async ([quietMs, capMs]) => {
  const start = performance.now();
  let lastChange = start;
  const observer = new MutationObserver(() => { lastChange = performance.now(); });
  observer.observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
  const pending = window.__spPending || {timers: new Set(), requests: 0, leaving: false};
  const later = window.__spSetTimeout || setTimeout;
  await new Promise((resolve) => {
    (function check() {
      const now = performance.now(), quietFor = now - lastChange;
      const busy = pending.timers.size > 0 || pending.requests > 0 || pending.leaving;
      if ((!busy && quietFor >= quietMs) || now - start >= capMs) return resolve();
      later(check, busy ? 20 : Math.max(5, quietMs - quietFor));
    })();
  });
  observer.disconnect();
  const m = document.querySelector('meta[name="sp-order-id"]');
  // leaving: the cap came while a form or link was still on its way (a slow store)
  return {orderId: m ? (m.getAttribute('content') || '') : '', leaving: pending.leaving};
}
