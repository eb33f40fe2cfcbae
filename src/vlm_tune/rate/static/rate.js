// The rating page: log in with a name (and the team password), then one item at a time, keyboard first.
"use strict";

const state = {
  config: null,
  rater: null,
  item: null,      // the item shown (as /api/next returns it)
  scores: {},      // response_id -> 1..5 chosen on this screen
  focus: 0,        // index of the highlighted candidate
  reviewing: false, // true when the item came from Back (already rated or skipped)
  busy: false,
};
const RATER_KEY = "vlm-tune-rater";

// --- screens ---

function screen(name) {
  for (const id of ["login", "rate", "done"]) show(id, id === name);
  show("who-box", name !== "login");
  show("switch", name !== "login");
  show("bar-box", name !== "login");
}

function showLogin(message) {
  screen("login");
  setText("progress", "");
  show("password-row", state.config.password_required);
  document.getElementById("name").value = state.rater || localStorage.getItem(RATER_KEY) || "";
  setText("login-error", message || "");
  document.getElementById("name").focus();
}

function message(text) { setText("message", text || ""); }

// --- progress ---

async function refreshProgress() {
  const p = await api("GET", `/api/rater?rater=${encodeURIComponent(state.rater)}`);
  const skipped = p.skipped ? ` · ${p.skipped} skipped` : "";
  setText("progress", `${p.done} / ${p.items} done${skipped}`);
  document.getElementById("bar").style.width = p.items ? `${(100 * p.done) / p.items}%` : "0";
}

// --- one item ---

function candidateLabel(response, index) {
  if (state.config.mode === "image") return "Your score for this image";
  return `Candidate ${index + 1}`;
}

function renderItem(item, scores, reviewing) {
  state.item = item;
  state.scores = Object.assign({}, scores || {});
  state.reviewing = reviewing;
  const firstOpen = item.responses.findIndex((r) => !(r.response_id in state.scores));
  state.focus = firstOpen >= 0 ? firstOpen : 0;
  const image = document.getElementById("image");
  image.src = item.image_url;
  setText("prompt", item.prompt);
  setText("candidates-label", state.config.mode === "image" ? "Score" : "Candidates");
  const list = document.getElementById("candidates");
  list.replaceChildren();
  item.responses.forEach((response, index) => {
    const buttons = el("div", { className: "scores" });
    for (let score = 1; score <= 5; score++) {
      const button = el("button", { type: "button", className: "score", title: `score ${score}` }, score);
      button.dataset.score = String(score);
      button.addEventListener("click", (event) => {
        event.stopPropagation();
        setFocus(index);
        setScore(score, false);
      });
      buttons.append(button);
    }
    const li = el("li", { className: "candidate", tabIndex: -1 },
      el("div", { className: "candidate-head" }, candidateLabel(response, index)),
      el("div", { className: "text" }, response.text),
      buttons);
    li.dataset.responseId = response.response_id;
    li.addEventListener("click", () => setFocus(index));
    list.append(li);
  });
  message(reviewing ? "You rated this item before: change the scores and submit, or skip to go on." : "");
  screen("rate");
  paint();
}

function paint() {
  const items = document.querySelectorAll("#candidates .candidate");
  items.forEach((li, index) => {
    li.classList.toggle("focused", index === state.focus);
    const chosen = state.scores[li.dataset.responseId];
    li.classList.toggle("scored", chosen !== undefined);
    for (const button of li.querySelectorAll("button.score")) {
      const on = Number(button.dataset.score) === chosen;
      button.classList.toggle("chosen", on);
      button.setAttribute("aria-pressed", on ? "true" : "false");
    }
  });
  if (items[state.focus]) items[state.focus].focus({ preventScroll: false });
}

function setFocus(index) {
  const n = state.item.responses.length;
  state.focus = Math.max(0, Math.min(n - 1, index));
  paint();
}

function setScore(score, advance) {
  const response = state.item.responses[state.focus];
  state.scores[response.response_id] = score;
  if (advance) {  // on to the next candidate still without a score, if any
    const n = state.item.responses.length;
    for (let step = 1; step < n; step++) {
      const next = (state.focus + step) % n;
      if (!(state.item.responses[next].response_id in state.scores)) { state.focus = next; break; }
    }
  }
  message("");
  paint();
}

function adjust(delta) {
  const response = state.item.responses[state.focus];
  const current = state.scores[response.response_id];
  setScore(current === undefined ? 3 : Math.max(1, Math.min(5, current + delta)), false);
}

// --- actions ---

async function guarded(action) {
  if (state.busy) return;
  state.busy = true;
  try {
    await action();
  } catch (err) {
    if (err.status === 401) showLogin(err.message);
    else message(err.message);
  } finally {
    state.busy = false;
  }
}

async function loadNext() {
  const item = await api("GET", `/api/next?rater=${encodeURIComponent(state.rater)}`);
  await refreshProgress();
  if (item.done) {
    state.item = null;
    screen("done");
  } else {
    renderItem(item, {}, false);
  }
}

async function submit() {
  const open = state.item.responses.filter((r) => !(r.response_id in state.scores)).length;
  if (open) {
    message(`Score every candidate first (${open} left).`);
    return;
  }
  await api("POST", "/api/ratings", { rater: state.rater, item_id: state.item.item_id, scores: state.scores });
  await loadNext();
}

async function skip() {
  if (!state.reviewing) await api("POST", "/api/skip", { rater: state.rater, item_id: state.item.item_id });
  await loadNext();
}

async function back() {
  const current = state.item ? `&item_id=${encodeURIComponent(state.item.item_id)}` : "";
  const previous = await api("GET", `/api/previous?rater=${encodeURIComponent(state.rater)}${current}`);
  if (previous.first) {
    message("This is the first item you rated.");
    return;
  }
  const { scores, ...item } = previous;
  renderItem(item, scores, true);
}

// --- keyboard ---

function onKey(event) {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  const onRate = !document.getElementById("rate").hidden;
  const onDone = !document.getElementById("done").hidden;
  if (onDone && (event.key === "b" || event.key === "B")) { event.preventDefault(); guarded(back); return; }
  if (!onRate || !state.item) return;
  const key = event.key;
  if (key >= "1" && key <= "5") setScore(Number(key), true);
  else if (key === "ArrowDown" || (key === "Tab" && !event.shiftKey)) setFocus(state.focus + 1);
  else if (key === "ArrowUp" || (key === "Tab" && event.shiftKey)) setFocus(state.focus - 1);
  else if (key === "ArrowRight") adjust(1);
  else if (key === "ArrowLeft") adjust(-1);
  else if (key === "Enter") guarded(submit);
  else if (key === "s" || key === "S") guarded(skip);
  else if (key === "b" || key === "B" || key === "Backspace") guarded(back);
  else return;
  event.preventDefault();
}

// --- start ---

async function start(name) {
  state.rater = name;
  localStorage.setItem(RATER_KEY, name);
  setText("who", name);
  await loadNext();
}

async function onLogin(event) {
  event.preventDefault();
  const name = document.getElementById("name").value.trim();
  if (!name) { setText("login-error", "Type your name."); return; }
  await guarded(async () => {
    if (state.config.password_required) {
      try {
        await api("POST", "/api/login", { password: document.getElementById("password").value });
      } catch (err) {
        setText("login-error", err.message);
        return;
      }
      document.getElementById("password").value = "";
    }
    await start(name);
  });
}

async function main() {
  state.config = await api("GET", "/api/config");
  document.getElementById("login-form").addEventListener("submit", onLogin);
  document.getElementById("submit").addEventListener("click", () => guarded(submit));
  document.getElementById("skip").addEventListener("click", () => guarded(skip));
  document.getElementById("back").addEventListener("click", () => guarded(back));
  document.getElementById("done-back").addEventListener("click", () => guarded(back));
  document.getElementById("switch").addEventListener("click", () => {
    localStorage.removeItem(RATER_KEY);
    state.rater = null;
    state.item = null;
    showLogin("");
  });
  document.addEventListener("keydown", onKey);
  const saved = localStorage.getItem(RATER_KEY);
  if (saved) {
    state.rater = saved;
    await guarded(() => start(saved));
  } else {
    showLogin("");
  }
}

main().catch((err) => { document.body.prepend(el("p", { className: "error" }, err.message)); });
