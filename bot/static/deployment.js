"use strict";
// One deployment's page: colours its log, follows it live over Server-Sent Events while the
// deployment runs, and offers Cancel and Redeploy. Data only ever reaches the page as text.
(() => {
  const ACTIVE = new Set(["Pending", "Running"]);
  const TOKEN_KEY = "speed.apiToken";
  const page = document.getElementById("deployment");
  const id = page.dataset.id;
  const log = document.getElementById("log");
  const field = (name) => page.querySelector(`[data-field="${name}"]`);
  const token = document.getElementById("token");
  const cancel = document.getElementById("cancel");
  const redeploy = document.getElementById("redeploy");
  const message = document.getElementById("message");
  let started = page.dataset.started || null;
  let finished = !ACTIVE.has(page.dataset.status);

  // The same formats as the server's (bot/pages.py: when, duration).
  const when = (iso) => (iso ? iso.slice(0, 19).replace("T", " ") : "—");
  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    const whole = Math.floor(seconds);
    if (whole < 60) return `${whole} s`;
    const pad = (n) => String(n).padStart(2, "0");
    if (whole < 3600) return `${Math.floor(whole / 60)} min ${pad(whole % 60)} s`;
    return `${Math.floor(whole / 3600)} h ${pad(Math.floor(whole / 60) % 60)} min`;
  }
  const between = (from, to) => (from && to ? (Date.parse(to) - Date.parse(from)) / 1000 : null);

  // The server sent the results as plain text; render them again with their colours.
  const ansi = SpeedAnsi.renderer(log);
  const atBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < 4;
  function append(text) {
    const follow = atBottom();
    ansi.write(text);
    if (follow) log.scrollTop = log.scrollHeight;
  }
  const initial = log.textContent;
  log.replaceChildren();
  append(initial);
  if (!finished) log.scrollTop = log.scrollHeight;

  function row(name, value) {
    page.querySelector(`[data-row="${name}"]`).hidden = value === null;
    field(name).textContent = value === null ? "" : String(value);
  }

  function show(d) {
    const status = document.getElementById("status");
    status.textContent = d.status;
    status.className = `status status-${d.status.toLowerCase()}`;
    page.dataset.status = d.status;
    document.title = `Deployment ${d.id} · ${d.status} · SPEED`;
    finished = !ACTIVE.has(d.status);
    cancel.hidden = finished;
    if (d.commit && !field("commit").querySelector("a")) field("commit").textContent = d.commit;
    for (const name of ["progress", "reason", "exit_code"]) row(name, d[name]);
    // Status events carry no waiting reason: keep the page's own while the deployment waits.
    if (d.waiting_reason || d.status !== "Pending") row("waiting_reason", d.waiting_reason);
    for (const name of ["created_at", "started_at", "finished_at"]) {
      field(name).textContent = when(d[name]);
    }
    for (const [phase, seconds] of Object.entries(d.phases)) {
      page.querySelector(`[data-phase="${phase}"]`).textContent = duration(seconds);
    }
    started = d.started_at;
    tick(d.finished_at);
  }

  function tick(end) {
    const stop = end || (finished ? null : new Date().toISOString());
    field("duration").textContent = duration(between(started, stop));
  }

  function follow(last = false) {
    const live = document.getElementById("live");
    live.hidden = last;
    const clock = last ? null : setInterval(() => { if (!finished) tick(null); }, 1000);
    // EventSource reconnects by itself, resuming with Last-Event-ID; `after` is for the first time.
    const source = new EventSource(`/deployments/${id}/events?after=${page.dataset.after}`);
    source.addEventListener("log", (event) => {
      append(JSON.parse(event.data));
      page.dataset.after = event.lastEventId;
    });
    source.addEventListener("status", (event) => show(JSON.parse(event.data)));
    // A refused stream (too many open: 429 or 503) is closed for good rather than retried:
    // say so, instead of looking live with nothing coming.
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) return; // reconnecting by itself
      clearInterval(clock);
      live.hidden = true;
      say("The live log was refused (too many open streams?); reload the page to follow it.", true);
    });
    source.addEventListener("end", () => {
      source.close();
      clearInterval(clock);
      live.hidden = true;
      // The stream reads results before the status, so what was written as the deployment
      // finished (the final note) can come after `end`: one more pass picks it up.
      if (!last) follow(true);
    });
  }

  function say(text, error = false) {
    message.textContent = text;
    message.classList.toggle("error", error);
  }

  async function post(path) {
    const headers = {};
    const value = token ? token.value.trim() : "";
    if (value) headers.Authorization = `Bearer ${value}`;
    const response = await fetch(path, { method: "POST", headers });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  async function act(button, path, done) {
    button.disabled = true;
    say("");
    try {
      done(await post(path));
    } catch (error) {
      say(error.message, true);
    } finally {
      button.disabled = false;
    }
  }

  if (token) {
    token.value = localStorage.getItem(TOKEN_KEY) || "";
    token.addEventListener("input", () => localStorage.setItem(TOKEN_KEY, token.value.trim()));
  }
  cancel.addEventListener("click", () => act(cancel, `/cancel/${id}`, (d) => {
    show(d);
    say("Cancelled.");
  }));
  redeploy.addEventListener("click", () => act(redeploy, `/redeploy/${id}`, (created) => {
    say(`Queued deployment ${created.id}.`);
    location.assign(`/deployments/${created.id}`);
  }));
  document.getElementById("actions").hidden = false;
  if (!finished) follow();
})();
