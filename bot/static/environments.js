"use strict";
// The environments page: a Roll back button per kept release, calling
// POST /environments/{id}/rollback with the browser's login session (or nothing, on an open
// SPEED), then opening the rollback's deployment page.
(() => {
  const message = document.getElementById("message");

  function say(text, error = false) {
    message.textContent = text;
    message.classList.toggle("error", error);
  }

  async function rollback(button) {
    const { environment, release } = button.dataset;
    if (!confirm(`Make release ${release} live again?`)) return;
    button.disabled = true;
    say("");
    try {
      const response = await fetch(`/environments/${environment}/rollback`, {
        method: "POST", headers: { Accept: "application/json", "Content-Type": "application/json" },
        body: JSON.stringify({ release: Number(release) }),
      });
      const body = await response.json().catch(() => ({}));
      if (response.ok) {
        window.location.assign(`/deployments/${body.id}`);
        return;
      }
      const why = body.error || `${response.status} ${response.statusText}`;
      say(response.status === 401 ? `${why}: sign in again (reload the page).` : why, true);
    } catch (error) {
      say(error.message, true);
    }
    button.disabled = false;
  }

  for (const button of document.querySelectorAll("button.rollback")) {
    button.addEventListener("click", () => rollback(button));
    button.hidden = false;
  }
})();
