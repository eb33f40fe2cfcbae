// The team's status page: per-rater progress, Krippendorff's alpha, flagged raters; refreshes itself.
"use strict";

const REFRESH_MS = 5000;

function renderStatus(p) {
  setText("items", String(p.items));
  setText("removed", p.removed_items ? `${p.removed_items} removed from the task file (ratings kept)` : `${p.mode} mode`);
  setText("alpha-raw", fmt(p.alpha.raw));
  setText("alpha-z", fmt(p.alpha.z));
  setText("ratings", String(p.alpha.n_ratings));
  setText("raters-count", `${p.raters.length} rater(s) · ${p.alpha.n_items} unit(s) rated`);
  setText("alpha-note", p.alpha.note || "");
  const flagged = p.raters.filter((r) => r.flagged).map((r) => r.rater);
  show("flagged", flagged.length > 0);
  setText("flagged", flagged.length ? `Disagrees with everyone: ${flagged.join(", ")}` : "");
  const body = document.getElementById("raters");
  body.replaceChildren();
  for (const r of p.raters) {
    const bar = el("div", { className: "bar" }, el("div"));
    bar.firstChild.style.width = p.items ? `${(100 * r.done) / p.items}%` : "0";
    const row = el("tr", { className: r.flagged ? "flagged" : "" },
      el("td", {}, r.rater),
      el("td", { className: "num" }, `${r.done} / ${p.items}`),
      el("td", { className: "num" }, r.skipped),
      el("td", {}, bar),
      el("td", { className: "num" }, fmt(r.mean, 2)),
      el("td", { className: "num" }, fmt(r.sd, 2)),
      el("td", { className: "num" }, fmt(r.loo_r, 2)),
      el("td", {}, r.flagged ? "disagrees with everyone" : ""));
    body.append(row);
  }
  if (!p.raters.length) body.append(el("tr", {}, el("td", { colSpan: 8 }, "No ratings yet.")));
  setText("updated", `updated ${new Date().toLocaleTimeString()}`);
}

async function refresh() {
  try {
    renderStatus(await api("GET", "/api/progress"));
    show("login", false);
    show("status", true);
    setText("error", "");
  } catch (err) {
    if (err.status === 401) {
      show("status", false);
      show("login", true);
    } else {
      setText("error", err.message);
    }
  }
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("POST", "/api/login", { password: document.getElementById("password").value });
    setText("login-error", "");
    await refresh();
  } catch (err) {
    setText("login-error", err.message);
  }
});

refresh();
setInterval(refresh, REFRESH_MS);
