// Shared by the rating page and the status page: JSON calls and safe element building.
// Every piece of text from the server goes in through text nodes / textContent (never parsed as HTML), so a response
// that says <script>…</script> shows as those characters.
"use strict";

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, url, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new ApiError(0, "the server cannot be reached; is `vlm-tune rate serve` still running?");
  }
  let data = null;
  try { data = await response.json(); } catch (err) { data = null; }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

// el("td", {className: "num"}, "text") -> element; children may be strings (as text) or elements.
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(id, visible) { document.getElementById(id).hidden = !visible; }
function setText(id, text) { document.getElementById(id).textContent = text; }

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}
