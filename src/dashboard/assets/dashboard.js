// Live pages (<main data-live>) refresh their content every 5 s while visible, unless the
// operator is in the middle of something: focus inside a form, or a job selected.
(() => {
  const main = document.querySelector("main[data-live]");
  if (!main) return;
  const busy = () =>
    main.querySelector("input:checked") !== null ||
    (document.activeElement && main.contains(document.activeElement) && document.activeElement.closest("form"));
  const refresh = async () => {
    if (document.visibilityState !== "visible" || busy()) return;
    try {
      const response = await fetch(location.href, { headers: { accept: "text/html" }, credentials: "same-origin" });
      if (!response.ok) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html").querySelector("main");
      if (fresh && !busy()) main.replaceChildren(...fresh.childNodes);
    } catch {
      // Offline for a moment: the next tick tries again.
    }
  };
  setInterval(refresh, 5000);
})();
