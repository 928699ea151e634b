(() => {
  if (window.__spPending) return;
  const pending = window.__spPending = {timers: new Set(), requests: 0, leaving: false};
  // A form is sent in a task of its own after the click: its submit event (not cancelled by the
  // page's handlers, which ran before this one on window) says it is on the way.
  window.addEventListener("submit", (event) => { if (!event.defaultPrevented) pending.leaving = true; });
  if (window.navigation) {
    navigation.addEventListener("navigate", (event) => { if (!event.downloadRequest) pending.leaving = true; });
    // A same-document navigation (a hash, history.pushState) ends without a new document.
    navigation.addEventListener("navigatesuccess", () => { pending.leaving = false; });
    navigation.addEventListener("navigateerror", () => { pending.leaving = false; });
  }
  const setTimeoutOriginal = window.setTimeout, clearTimeoutOriginal = window.clearTimeout;
  window.__spSetTimeout = setTimeoutOriginal.bind(window);
  window.setTimeout = function (callback, delay, ...rest) {
    if (typeof callback !== "function" || Number(delay) > 1000) return setTimeoutOriginal.call(this, callback, delay, ...rest);
    const id = setTimeoutOriginal.call(this, function () { pending.timers.delete(id); return callback.apply(this, arguments); }, delay, ...rest);
    pending.timers.add(id);
    return id;
  };
  window.clearTimeout = function (id) { pending.timers.delete(id); return clearTimeoutOriginal.call(this, id); };
  if (window.fetch) {
    const fetchOriginal = window.fetch;
    window.fetch = function () {
      pending.requests++;
      return fetchOriginal.apply(this, arguments).finally(() => { pending.requests--; });
    };
  }
  const sendOriginal = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.send = function () {
    pending.requests++;
    this.addEventListener("loadend", () => { pending.requests--; }, {once: true});
    try { return sendOriginal.apply(this, arguments); } catch (error) { pending.requests--; throw error; }
  };
})();
