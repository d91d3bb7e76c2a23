"use strict";
// The secrets page: a Delete button per secret, calling DELETE /secrets/{name} with the browser's
// login session (or nothing, on an open SPEED). Names reach the page only as text; values never
// reach it at all.
(() => {
  const table = document.getElementById("secrets");
  const message = document.getElementById("message");
  const empty = document.getElementById("no-secrets");

  function say(text, error = false) {
    message.textContent = text;
    message.classList.toggle("error", error);
  }

  function gone(row) {
    row.remove();
    empty.hidden = table.querySelector("tr[data-name]") !== null;
  }

  async function remove(button) {
    const name = button.dataset.name;
    if (!confirm(`Delete the secret ${name}? Deployments that ask for it will fail.`)) return;
    button.disabled = true;
    say("");
    try {
      const response = await fetch(`/secrets/${encodeURIComponent(name)}`, {
        method: "DELETE", headers: { Accept: "application/json" },
      });
      const body = await response.json().catch(() => ({}));
      if (response.ok || response.status === 404) {
        gone(button.closest("tr"));
        say(response.ok ? `Deleted ${name}.` : `${name} was already deleted.`);
        return;
      }
      const why = body.error || `${response.status} ${response.statusText}`;
      say(response.status === 401 ? `${why}: sign in again (reload the page).` : why, true);
    } catch (error) {
      say(error.message, true);
    }
    button.disabled = false;
  }

  for (const button of table.querySelectorAll("button.delete")) {
    button.addEventListener("click", () => remove(button));
    button.hidden = false;
  }
})();
