// The jobsys console's only script (served from /static; the pages' Content-Security-Policy
// allows no other, no inline script and no eval).
//
// - Live counters: one EventSource on /live per page. The server reads the
//   active jobs ONCE per refresh for every open page and sends each page what
//   changed (jobsys/server/console/live.py); this script updates the rows and
//   bars in place. Nothing it receives is ever parsed as HTML: every text goes
//   in through textContent.
// - Follow mode of a job's event log: asks for newer events every few seconds.
// - The submit form: streams the chosen items file as the request body.
"use strict";

(function () {
  const BAR_WIDTH = 1000;
  const SEGMENTS = ["done", "failed", "lost", "cancelled"];
  const FINAL = new Set(["success", "failure", "revoked"]);
  // Control and invisible characters, shown as escapes (as the server's templates do).
  const HIDDEN = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g;

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function visible(text) {
    return String(text).replace(HIDDEN, (c) => {
      const code = c.charCodeAt(0);
      return code < 0x100 ? "\\x" + code.toString(16).padStart(2, "0")
        : "\\u" + code.toString(16).padStart(4, "0");
    });
  }

  function number(n) {
    return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
  }

  function rate(perS) {
    if (!perS) return "—";
    return perS >= 10 ? Math.round(perS).toLocaleString("en-US") + "/s"
      : Number(perS.toPrecision(2)) + "/s";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    const s = Math.max(Math.round(seconds), 0);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function pct(job) {
    const settled = job.done + job.failed + job.lost + job.cancelled;
    return (job.total ? (100 * settled) / job.total : 100).toFixed(1) + " %";
  }

  function setText(root, field, text) {
    root.querySelectorAll('[data-field="' + field + '"]').forEach((el) => {
      if (el.textContent !== text) el.textContent = text;
    });
  }

  function drawBar(root, job) {
    root.querySelectorAll("svg.bar").forEach((svg) => {
      let x = 0;
      for (const kind of SEGMENTS) {
        const rect = svg.querySelector('[data-seg="' + kind + '"]');
        const width = job.total ? (BAR_WIDTH * job[kind]) / job.total : (kind === "done" ? BAR_WIDTH : 0);
        if (rect) {
          rect.setAttribute("x", x.toFixed(2));
          rect.setAttribute("width", width.toFixed(2));
        }
        x += width;
      }
      svg.setAttribute("aria-label", "done " + job.done + ", failed " + job.failed + ", lost " +
        job.lost + ", cancelled " + job.cancelled + ", pending " + job.pending + " of " + job.total);
    });
  }

  function showJob(root, job) {
    for (const field of ["done", "failed", "lost", "cancelled", "pending", "total"]) {
      setText(root, field, number(job[field]));
    }
    setText(root, "rate", rate(job.rate));
    setText(root, "eta", duration(job.eta_s));
    setText(root, "pct", pct(job));
    for (const field of ["priority", "weight"]) {
      if (field in job) setText(root, field, String(job[field]));
    }
    // Why the job cannot move on (null: nothing known blocks it).
    const blocked = job.blocked ? visible(job.blocked) : "";
    setText(root, "blocked", blocked);
    root.querySelectorAll('[data-field="blocked"]').forEach((el) => {
      const box = el.closest("#blocked") || el;
      box.hidden = !blocked;
    });
    root.querySelectorAll('[data-field="status"]').forEach((el) => {
      if (el.textContent !== job.status) {
        el.textContent = job.status;
        el.className = "status status-" + job.status;
      }
    });
    if (root.dataset) root.dataset.status = job.status;
    drawBar(root, job);
  }

  // ------------------------------------------------------------ live updates

  function onJobsPage(message) {
    const body = document.body;
    let newest = 0;
    document.querySelectorAll("tr[data-job]").forEach((row) => {
      newest = Math.max(newest, Number(row.dataset.job));
      const job = message.jobs[row.dataset.job];
      if (job) showJob(row, job);
    });
    // Jobs newer than the first page shows: offer them (reloading keeps the
    // filter) rather than guess where they belong in a filtered list.
    if (body.dataset.firstPage && !body.dataset.filterQ) {
      const wanted = body.dataset.filterStatus;
      const fresh = Object.entries(message.jobs).some(([id, job]) =>
        Number(id) > newest && (!wanted || wanted === job.status ||
          (wanted === "active" && !FINAL.has(job.status))));
      const banner = document.getElementById("new-jobs");
      if (fresh && banner) banner.hidden = false;
    }
  }

  function onJobPage(message) {
    const id = document.body.dataset.jobId;
    const job = message.jobs[id];
    if (!job) return;
    const root = document.querySelector('[data-job="' + id + '"]');
    if (root) showJob(root, job);
    document.querySelectorAll(".job-head [data-field=status]").forEach((el) => {
      el.textContent = job.status;
      el.className = "status status-" + job.status;
    });
    // A new status changes what the page shows (actions, timings, the chart): redraw it.
    if (job.status !== document.body.dataset.jobStatus) {
      document.body.dataset.jobStatus = job.status;
      window.setTimeout(() => window.location.reload(), 500);
    }
  }

  function startLive() {
    const state = document.getElementById("live-state");
    const source = new EventSource("/live");
    source.addEventListener("open", () => {
      if (state) { state.textContent = "live"; state.className = "live-state on"; }
    });
    source.addEventListener("error", () => {
      if (state) { state.textContent = "reconnecting…"; state.className = "live-state off"; }
    });
    source.addEventListener("jobs", (event) => {
      const message = JSON.parse(event.data);
      if (state) {
        state.textContent = "live, every " + message.refresh_s + " s (" + message.at + ")";
        state.className = "live-state on";
      }
      const page = document.body.dataset.page;
      if (page === "jobs") onJobsPage(message);
      else if (page === "job") onJobPage(message);
    });
  }

  // ------------------------------------------------------------ follow mode

  function eventRow(e) {
    const row = document.createElement("tr");
    row.className = "level-" + e.level + " fresh";
    row.dataset.event = e.id;
    const cells = [
      [String(e.id), "num"],
      [e.at.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC"), "when"],
      [e.level, ""],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = visible(text);
      if (cls) td.className = cls;
      row.appendChild(td);
    }
    const kind = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = visible(e.event);
    kind.appendChild(code);
    row.appendChild(kind);
    const detail = document.createElement("td");
    const pre = document.createElement("pre");
    pre.className = "text detail";
    const keys = e.detail ? Object.keys(e.detail) : [];
    pre.textContent = keys.length ? visible(JSON.stringify(e.detail, null, 2)) : "";
    detail.appendChild(pre);
    row.appendChild(detail);
    return row;
  }

  function startFollow() {
    const box = document.getElementById("follow");
    const tbody = document.querySelector("#events tbody");
    if (!box || !tbody) return;
    const id = document.body.dataset.jobId;
    const every = 1000 * Number(document.body.dataset.pollS || 3);
    let newest = Number(document.body.dataset.newest || 0);
    let busy = false;
    async function poll() {
      if (!box.checked || busy || document.hidden) return;
      busy = true;
      try {
        const answer = await fetch("/jobs/" + id + "/events.json?after=" + newest,
          { headers: { Accept: "application/json" }, credentials: "same-origin" });
        if (!answer.ok) return;
        const data = await answer.json();
        const events = data.events || [];
        if (events.length) {
          const empty = tbody.querySelector(".empty-row");
          if (empty) empty.remove();
          // Newest first: insert the oldest of the new ones first, each at the top.
          for (const e of events.slice().reverse()) tbody.insertBefore(eventRow(e), tbody.firstChild);
          newest = Math.max(newest, ...events.map((e) => e.id));
        }
      } finally {
        busy = false;
      }
    }
    window.setInterval(poll, every);
  }

  // ------------------------------------------------------------ submit

  function startSubmit() {
    const form = document.getElementById("submit-form");
    if (!form) return;
    const error = document.getElementById("submit-error");
    const state = document.getElementById("submit-state");
    const button = document.getElementById("submit-button");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const file = form.elements.items.files[0];
      if (!file) return;
      const query = new URLSearchParams();
      for (const name of ["pipeline", "name", "failure_threshold", "max_deliver", "task_timeout_s", "max_in_flight"]) {
        const value = form.elements[name].value.trim();
        if (value !== "") query.set(name, value);
      }
      button.disabled = true;
      state.textContent = "uploading " + number(file.size) + " bytes…";
      try {
        const answer = await fetch("/submit?" + query.toString(), {
          method: "POST",
          body: file,
          credentials: "same-origin",
          headers: { "Content-Type": "application/x-ndjson", "X-CSRF-Token": csrf(), Accept: "application/json" },
        });
        const data = await answer.json().catch(() => ({}));
        if (answer.status === 201 && data.url) {
          window.location.assign(data.url);
          return;
        }
        error.textContent = visible(data.detail || ("HTTP " + answer.status));
        error.hidden = false;
      } catch (e) {
        error.textContent = visible(String(e));
        error.hidden = false;
      } finally {
        button.disabled = false;
        state.textContent = "";
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (document.body.dataset.live) startLive();
    if (document.body.dataset.page === "events") startFollow();
    if (document.body.dataset.page === "submit") startSubmit();
  });
})();
