// The mmsearch search page: plain JS, no dependencies, nothing loaded from elsewhere.
// Talks only to the JSON API of the same server (/api/...). Untrusted text (paths,
// captions, error messages) is always set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("search-form"), q: $("q"), not: $("not"), weight: $("text-weight"), weightOut: $("text-weight-out"),
  target: $("target"), k: $("k"), drop: $("drop"), file: $("file"), preview: $("drop-preview"),
  dropHint: $("drop-hint"), clearImage: $("clear-image"), context: $("context"), contextThumb: $("context-thumb"),
  contextLabel: $("context-label"), clearSimilar: $("clear-similar"), status: $("status"), results: $("results"),
  info: $("index-info"), tokenForm: $("token-form"), token: $("token"),
};
const state = { image: null, imageUrl: null, similar: null, limits: null, seq: 0, triedToken: false };

// -- talking to the API ----------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (err) {
    throw new ApiError(0, "the server cannot be reached; is 'mmsearch serve' still running?");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { /* not JSON: use the status line */ }
  if (!response.ok) {
    if (response.status === 401) showTokenForm();
    throw new ApiError(response.status, (body && body.message) || `${response.status} ${response.statusText}`);
  }
  return body;
}

function setToken(token) {
  document.cookie = `mmsearch_token=${encodeURIComponent(token)}; path=/; SameSite=Strict`;
}

function showTokenForm() {
  els.tokenForm.hidden = false;
  els.token.focus();
}

// -- status line and results -------------------------------------------------------------

function setStatus(text, kind = "") {
  els.status.textContent = text;
  els.status.className = "status" + (kind ? " " + kind : "");
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function imageCard(hit) {
  const img = el("img", { src: hit.thumbnail, alt: hit.name || `item ${hit.id}`, loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => img.replaceWith(el("span", { class: "muted", text: "no preview" })));
  const thumb = el("button", { type: "button", class: "thumb", title: `More like this: ${hit.name}`,
                               "aria-label": `More like this: ${hit.name}, score ${hit.score.toFixed(3)}` },
                   img, el("span", { class: "hint", text: "more like this" }));
  thumb.addEventListener("click", () => moreLike(hit));
  const open = el("a", { href: hit.original, target: "_blank", rel: "noopener", text: "open", class: "open",
                         title: hit.path || "" });
  return el("article", { class: "card image", "data-id": String(hit.id) }, thumb,
            el("div", { class: "meta" }, el("span", { class: "score", text: hit.score.toFixed(3) }),
               el("span", { class: "name", text: hit.name || "", title: hit.path || "" }), open));
}

function textCard(hit) {
  const more = el("button", { type: "button", class: "more thumb-like", text: "more like this",
                              "aria-label": `More like this text, score ${hit.score.toFixed(3)}` });
  more.addEventListener("click", () => moreLike(hit));
  return el("article", { class: "card text", "data-id": String(hit.id) }, el("blockquote", { text: hit.text || "" }),
            el("div", { class: "meta" }, el("span", { class: "score", text: hit.score.toFixed(3) }),
               el("span", { class: "name", text: "text" }), more));
}

function render(hits, label) {
  els.results.replaceChildren();
  if (!hits.length) {
    els.results.append(el("div", { class: "empty" }, el("strong", { text: "No results" }),
      document.createTextNode("Try other words, another image, or show texts and images (Options).")));
    setStatus(`No results for ${label}.`);
    return;
  }
  for (const hit of hits) els.results.append(hit.kind === "image" ? imageCard(hit) : textCard(hit));
  setStatus(`${hits.length} result${hits.length === 1 ? "" : "s"} for ${label}.`);
}

// -- building a query from the page ------------------------------------------------------

function weightedText() {
  const text = els.q.value.trim();
  const weight = Number(els.weight.value);
  return text ? [{ text, weight: weight || 1 }] : [];
}

function describe(parts) {
  return parts.filter(Boolean).join(" + ");
}

async function runSearch() {
  const text = els.q.value.trim();
  const neg = els.not.value.trim();
  const k = els.k.value;
  const target = els.target.value;
  let request, label;
  if (state.image) {
    const form = new FormData();
    form.append("image", state.image, state.image.name || "pasted-image");
    if (text) form.append("text", `${Number(els.weight.value) || 1}:${text}`);
    if (neg) form.append("not_text", neg);
    form.append("k", k);
    form.append("target", target);
    request = ["/api/search/image", { method: "POST", body: form }];
    label = describe(["your image", text && `“${text}”`, neg && `not “${neg}”`]);
  } else if (state.similar) {
    const item = state.similar;
    const name = item.name || (item.text ? `“${item.text.slice(0, 40)}”` : `item ${item.id}`);
    if (text || neg) {
      const terms = [{ item: item.id, weight: 1 }, ...weightedText()];
      if (neg) terms.push({ text: neg, weight: -1 });
      request = ["/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify({ terms, k: Number(k), target }) }];
    } else {
      request = [`/api/items/${item.id}/similar?` + new URLSearchParams({ k, target })];
    }
    label = describe([`more like ${name}`, text && `“${text}”`, neg && `not “${neg}”`]);
  } else if (text) {
    if (neg || Number(els.weight.value) !== 1) {
      const terms = [{ text, weight: 1 }];
      if (neg) terms.push({ text: neg, weight: -1 });
      request = ["/api/search", { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify({ terms, k: Number(k), target }) }];
    } else {
      request = ["/api/search?" + new URLSearchParams({ q: text, k, target })];
    }
    label = describe([`“${text}”`, neg && `not “${neg}”`]);
  } else {
    setStatus("Type some words, or add an image (drop, paste or choose one).");
    els.q.focus();
    return;
  }
  const seq = ++state.seq;  // a slower, older answer must not overwrite a newer one
  setStatus("Searching…", "loading");
  els.results.setAttribute("aria-busy", "true");
  try {
    const body = await api(...request);
    if (seq !== state.seq) return;
    render(body.hits, label);
    if (text) history.replaceState(null, "", "?" + new URLSearchParams({ q: text }));
  } catch (err) {
    if (seq !== state.seq) return;
    setStatus(err.message, "error");
  } finally {
    if (seq === state.seq) els.results.setAttribute("aria-busy", "false");
  }
}

// -- query image: drop, paste, choose ----------------------------------------------------

function setImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && file.type !== "") {
    setStatus(`${file.name} is not an image.`, "error");
    return;
  }
  const max = state.limits && state.limits.max_upload_bytes;
  if (max && file.size > max) {
    setStatus(`That image is too large (${(file.size / 1048576).toFixed(1)} MB; the limit is ${(max / 1048576).toFixed(0)} MB).`, "error");
    return;
  }
  clearSimilar(false);
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.image = file;
  state.imageUrl = URL.createObjectURL(file);
  els.preview.src = state.imageUrl;
  els.preview.hidden = false;
  els.clearImage.hidden = false;
  els.dropHint.textContent = file.name && file.name !== "image.png" ? file.name : "pasted image";
  els.drop.classList.add("has-image");
  runSearch();
}

function clearImage(search = true) {
  if (!state.image) return false;
  if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
  state.image = state.imageUrl = null;
  els.preview.hidden = true;
  els.preview.removeAttribute("src");
  els.clearImage.hidden = true;
  els.dropHint.replaceChildren(document.createTextNode("Drop, paste or "), el("u", { text: "choose" }),
                               document.createTextNode(" an image"));
  els.drop.classList.remove("has-image");
  els.file.value = "";
  if (search && els.q.value.trim()) runSearch();
  return true;
}

// -- more like this ---------------------------------------------------------------------

function moreLike(hit) {
  clearImage(false);
  state.similar = hit;
  els.context.hidden = false;
  els.contextThumb.hidden = !hit.thumbnail;
  if (hit.thumbnail) els.contextThumb.src = hit.thumbnail;
  els.contextLabel.textContent = hit.name || (hit.text ? `“${hit.text.slice(0, 60)}”` : `item ${hit.id}`);
  els.q.value = "";
  els.not.value = "";
  runSearch();
  window.scrollTo({ top: 0 });
}

function clearSimilar(search = true) {
  if (!state.similar) return false;
  state.similar = null;
  els.context.hidden = true;
  if (search && els.q.value.trim()) runSearch();
  return true;
}

// -- keyboard ---------------------------------------------------------------------------

function moveFocus(key) {
  const cards = [...els.results.querySelectorAll(".card")];
  const current = cards.findIndex((c) => c.contains(document.activeElement));
  if (current < 0) return false;
  const top = cards[0].offsetTop;
  const perRow = Math.max(1, cards.filter((c) => c.offsetTop === top).length);
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow }[key];
  const next = cards[Math.min(cards.length - 1, Math.max(0, current + step))];
  (next.querySelector(".thumb, .more") || next).focus();
  return true;
}

document.addEventListener("keydown", (event) => {
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
  if (event.key === "/" && !typing) {
    event.preventDefault();
    els.q.focus();
    els.q.select();
  } else if (event.key === "Escape") {
    if (!clearImage() && !clearSimilar() && typing) els.q.value = "";
  } else if (event.key.startsWith("Arrow") && !typing && moveFocus(event.key)) {
    event.preventDefault();
  } else if (event.key === "o" && !typing) {
    const link = document.activeElement.closest && document.activeElement.closest(".card")?.querySelector("a.open");
    if (link) window.open(link.href, "_blank", "noopener");
  }
});

// -- wiring -----------------------------------------------------------------------------

els.form.addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
els.weight.addEventListener("input", () => { els.weightOut.textContent = Number(els.weight.value).toFixed(1); });
els.target.addEventListener("change", () => { if (els.results.children.length) runSearch(); });
els.k.addEventListener("change", () => { if (els.results.children.length) runSearch(); });
els.drop.addEventListener("click", (event) => { if (event.target !== els.clearImage) els.file.click(); });
els.drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); els.file.click(); }
});
els.file.addEventListener("change", () => setImage(els.file.files[0]));
els.clearImage.addEventListener("click", (event) => { event.stopPropagation(); clearImage(); });
els.clearSimilar.addEventListener("click", () => clearSimilar());

let dragDepth = 0;
window.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; document.body.classList.add("dragging"); });
window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; document.body.classList.remove("dragging"); } });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  document.body.classList.remove("dragging");
  const file = [...(event.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) setImage(file); else setStatus("Drop an image file to search with it.", "error");
});
document.addEventListener("paste", (event) => {
  const item = [...(event.clipboardData?.items || [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (item) { event.preventDefault(); setImage(item.getAsFile()); }
});

els.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(els.token.value.trim());
  els.tokenForm.hidden = true;
  state.triedToken = true;
  start();
});

async function start() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {  // a link with ?token=...: keep it in a cookie, take it out of the address bar
    setToken(params.get("token"));
    params.delete("token");
    history.replaceState(null, "", params.toString() ? "?" + params : location.pathname);
  }
  try {
    const info = await api("/api/info");
    state.limits = info.limits;
    els.info.textContent = `index “${info.name}” · ${info.images.toLocaleString()} images` +
      (info.texts ? ` · ${info.texts.toLocaleString()} texts` : "");
    els.info.title = `model ${info.model}`;
    if (!info.images && info.texts) els.target.value = "text";
    if (params.get("q")) { els.q.value = params.get("q"); runSearch(); }
  } catch (err) {
    if (err.status === 401) {
      setStatus(state.triedToken ? "That token was not accepted; try again."
                                 : "Enter the access token given to 'mmsearch serve' (--token).", state.triedToken ? "error" : "");
    } else {
      setStatus(err.message, "error");
    }
  }
}

start();
