"use strict";
// Keeps the deployments list current while anything on it is queued or running, then stops.
(() => {
  const EVERY_MS = 3000;
  const active = () => document.body.dataset.active === "true";

  async function refresh() {
    try {
      const response = await fetch(location.href, { cache: "no-store" });
      if (response.ok) {
        // Our own escaped HTML, parsed inertly (scripts in a parsed document never run).
        const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
        for (const id of ["deployments", "pager"]) {
          const replacement = fresh.getElementById(id);
          if (replacement) document.getElementById(id).replaceWith(document.adoptNode(replacement));
        }
        document.body.dataset.active = fresh.body.dataset.active;
      }
    } finally {
      if (active()) setTimeout(refresh, EVERY_MS);
    }
  }

  if (active()) setTimeout(refresh, EVERY_MS);
})();
