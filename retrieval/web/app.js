// The mmsearch search page: plain JS, no dependencies, nothing loaded from elsewhere.
// Talks only to the JSON API of the same server (/api/...). Untrusted text (paths,
// captions, metadata, error messages) is always set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const els = {
  form: $("search-form"), q: $("q"), not: $("not"), weight: $("text-weight"), weightOut: $("text-weight-out"),
  target: $("target"), k: $("k"), drop: $("drop"), file: $("file"), preview: $("drop-preview"),
  dropHint: $("drop-hint"), clearImage: $("clear-image"), context: $("context"), contextThumb: $("context-thumb"),
  contextLabel: $("context-label"), clearSimilar: $("clear-similar"), status: $("status"), results: $("results"),
  info: $("index-info"), tokenForm: $("token-form"), token: $("token"), more: $("more"), sentinel: $("sentinel"),
  options: $("options"), filterCount: $("filter-count"), resetFilters: $("reset-filters"),
  under: $("under"), glob: $("glob"), types: $("types"), after: $("after"), before: $("before"),
  minScore: $("min-score"), dedup: $("dedup"), sort: $("sort"),
  takenAfter: $("taken-after"), takenBefore: $("taken-before"), place: $("place"), near: $("near"),
  within: $("within"), camera: $("camera"), hasGps: $("has-gps"), showDuplicates: $("show-duplicates"),
  detail: $("detail"), detailImg: $("detail-img"), detailVideo: $("detail-video"), detailText: $("detail-text"),
  detailTitle: $("detail-title"), detailMoments: $("detail-moments"), detailMomentList: $("detail-moment-list"),
  detailSimilarVideo: $("detail-similar-video"),
  detailPath: $("detail-path"), detailFacts: $("detail-facts"), detailMeta: $("detail-meta"),
  detailSimilar: $("detail-similar"), detailOpen: $("detail-open"), detailPrev: $("detail-prev"),
  detailNext: $("detail-next"), detailClose: $("detail-close"),
};
// The filter inputs and the API's names for them.
const FILTERS = {
  under: "under", glob: "glob", types: "types", after: "after", before: "before", minScore: "min_score",
  takenAfter: "taken_after", takenBefore: "taken_before", place: "place", near: "near", within: "within",
  camera: "camera", hasGps: "has_gps",
};
const FILTER_INPUTS = Object.keys(FILTERS);
const DEDUP_THRESHOLD = 0.95;  // cosine at which a picture counts as a near-duplicate of a better one
const state = {
  image: null, imageUrl: null, similar: null, similarId: null, detailMoment: null, limits: null, seq: 0,
  triedToken: false,
  query: null,   // what the results answer: {label, request(k)}
  hits: [], k: 0, exhausted: true, loading: false, detailIndex: -1,
};

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

// -- small helpers ----------------------------------------------------------------------

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

function bytes(n) {
  if (n == null) return "";
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

function when(ns) {
  if (ns == null) return "";
  const date = new Date(Number(ns) / 1e6);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

// A time in a video as people read it: 01:23.2, 1:02:03.
function clock(seconds) {
  const tenths = Math.round(seconds * 10);
  const whole = Math.floor(tenths / 10), tenth = tenths % 10;
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  const two = (n) => String(n).padStart(2, "0");
  const text = h ? `${h}:${two(m)}:${two(s)}` : `${two(m)}:${two(s)}`;
  return tenth ? `${text}.${tenth}` : text;
}

function isPicture(hit) {
  return hit.kind === "image" || hit.kind === "video";
}

// What "more like this" starts from: a video hit's moment (its frame), else the item itself.
function similarItem(hit) {
  return hit.kind === "video" && hit.frame != null ? hit.frame : hit.id;
}

function aspect(hit) {
  if (!isPicture(hit)) return 2.2;
  const ar = hit.width && hit.height ? hit.width / hit.height : 4 / 3;
  return Math.min(4, Math.max(0.4, ar));  // a panorama or a strip still gets a usable tile
}

function nameOf(hit) {
  return hit.name || (hit.text ? `“${hit.text.slice(0, 60)}”` : `item ${hit.id}`);
}

// -- results ------------------------------------------------------------------------------

function scoreBar(hit) {
  // Relative to the best result: cosines of different queries are not on one scale, ranks are.
  const best = state.hits.length ? state.hits[0].score : hit.score;
  const worst = Math.min(0, ...state.hits.map((h) => h.score));
  const share = best > worst ? Math.max(0.04, (hit.score - worst) / (best - worst)) : 1;
  const bar = el("span", { class: "score", role: "img", title: `cosine similarity ${hit.score.toFixed(3)}`,
                           "aria-label": `match ${Math.round(share * 100)}% of the best (cosine ${hit.score.toFixed(3)})` },
                 el("span"));
  bar.firstChild.style.width = `${(share * 100).toFixed(1)}%`;
  return bar;
}

// When and where, as a result's caption says it: "14 Jul 2023 · Sevilla, Spain".
function takenDate(photo) {
  if (!photo || !photo.taken_at) return "";
  // The photo's own wall clock, as recorded: the date part is what the camera showed.
  const [y, m, d] = photo.taken_at.slice(0, 10).split("-").map(Number);
  if (!y || !m || !d) return "";
  const date = new Date(Date.UTC(y, m - 1, d)).toLocaleDateString(undefined,
    { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" });
  return photo.time_source === "file-mtime" ? `${date} (file date)` : date;
}

function shortPlace(photo) {
  if (!photo) return "";
  return [photo.place_city, photo.place_country].filter(Boolean).join(", ") || photo.place || "";
}

function photoLine(photo) {
  return [takenDate(photo), shortPlace(photo)].filter(Boolean).join(" · ");
}

function photoTitle(photo) {
  return [photo.taken_at, photo.place, photo.camera].filter(Boolean).join(" · ");
}

function card(hit, index) {
  const ar = aspect(hit);
  let inner;
  if (isPicture(hit)) {
    const label = hit.kind === "video" ? `${hit.name || `video ${hit.id}`} at ${clock(hit.time || 0)}` : hit.name;
    const img = el("img", { alt: label || `item ${hit.id}`, loading: "lazy", decoding: "async",
                            src: `${hit.thumbnail}?size=256`,
                            srcset: `${hit.thumbnail}?size=256 ${Math.round(256 * Math.min(1, ar))}w, ` +
                                    `${hit.thumbnail}?size=512 ${Math.round(512 * Math.min(1, ar))}w`,
                            sizes: `${Math.round(ar * 190)}px` });
    img.addEventListener("error", () => img.replaceWith(el("span", { class: "muted", text: "no preview" })));
    inner = img;
    if (hit.kind === "video") {
      inner = document.createDocumentFragment();
      inner.append(img, el("span", { class: "clock", "aria-hidden": "true", text: `▶ ${clock(hit.time || 0)}` }));
    }
  } else {
    inner = el("blockquote", { text: hit.text || "" });
  }
  const where = hit.kind === "video" ? ` at ${clock(hit.time || 0)}` : "";
  const thumb = el("button", { type: "button", class: "thumb", title: (hit.path || hit.text || "") + where,
                               "aria-label": `${nameOf(hit)}: show details (result ${index + 1})` }, inner);
  thumb.addEventListener("click", () => openDetail(index));
  const meta = el("div", { class: "meta" },
                  el("span", { class: "name", text: isPicture(hit) ? (hit.name || "") : "text", title: hit.path || "" }),
                  scoreBar(hit));
  const terms = state.query && state.query.explainTerms;
  if (hit.kind === "image" && terms) meta.append(whyButton(hit, terms, inner));
  const article = el("article", { class: `card ${isPicture(hit) ? "image" : "text"}${hit.kind === "video" ? " video" : ""}`,
                                  "data-id": String(hit.id) },
                     thumb, meta);
  const taken = photoLine(hit.photo);
  if (taken) article.lastChild.after(el("div", { class: "taken muted", text: taken, title: photoTitle(hit.photo) }));
  article.style.setProperty("--ar", ar.toFixed(4));
  return article;
}

// "why?": the heatmap of this hit for the query the hits answered (issue 21), drawn in place of the
// thumbnail; pressed again, the thumbnail comes back. Red pulled the picture towards the query, blue
// pushed it away (a negative term's share shows as what held it back).
function whyButton(hit, terms, img) {
  const button = el("button", { type: "button", class: "why", "aria-pressed": "false", text: "why?",
                                title: "Why did this match? Show where in the photo the query was answered" });
  let plain = null;
  button.addEventListener("click", async () => {
    if (plain) {
      img.src = plain.src;
      if (plain.srcset) img.setAttribute("srcset", plain.srcset);
      plain = null;
      button.setAttribute("aria-pressed", "false");
      return;
    }
    button.disabled = true;
    try {
      const body = await api(`/api/items/${hit.id}/explain`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ terms, max_side: 512 }),
      });
      plain = { src: img.getAttribute("src"), srcset: img.getAttribute("srcset") };
      img.removeAttribute("srcset");
      img.src = body.overlay;
      button.setAttribute("aria-pressed", "true");
      const why = body.explanation;
      const parts = why.terms.map((t) => `${t.label || "term"}: +${t.pull.toFixed(3)} / ${t.push.toFixed(3)}`);
      button.title = [`score ${why.score.toFixed(3)} (red pulled it in, blue pushed it away)`, ...parts,
                      why.outside_note || ""].filter(Boolean).join("\n");
    } catch (err) {
      setStatus(`why? ${err.message}`, "error");
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function showHits(hits, append) {
  if (!append) els.results.replaceChildren();
  const start = append ? state.hits.length : 0;
  // A larger k answers the same query again; equal scores may come in another order, so what is
  // new is what is not shown yet, not what lies past the old count.
  const known = new Set(append ? state.hits.map((h) => h.id) : []);
  const fresh = hits.filter((h) => !known.has(h.id));
  state.hits = append ? state.hits.concat(fresh) : hits.slice();
  const frag = document.createDocumentFragment();
  fresh.forEach((hit, i) => frag.append(card(hit, start + i)));
  els.results.append(frag);
  if (!state.hits.length) {
    els.results.append(el("div", { class: "empty" }, el("strong", { text: "No results" }),
      document.createTextNode("Try other words, another image, fewer filters, or show texts and images (Options).")));
  }
}

function clearResults() {
  state.hits = [];
  state.exhausted = true;
  els.results.replaceChildren();
  els.more.hidden = true;
}

function summarize() {
  const n = state.hits.length;
  if (!n) return `No results for ${state.query.label}.`;
  const more = state.exhausted ? "" : " — scroll for more";
  return `${n} result${n === 1 ? "" : "s"} for ${state.query.label}${more}.`;
}

// -- the duplicates view ------------------------------------------------------------------

function duplicateGroup(group, number) {
  const exact = group.members.filter((m) => m.exact_copy_of != null).length;
  const heading = `Group ${number}: ${group.members.length} near-identical photos` +
                  (exact ? ` (${exact} exact cop${exact === 1 ? "y" : "ies"})` : "");
  const list = el("ul", { class: "dup-members" });
  for (const m of group.members) {
    const keep = m.id === group.keep;
    const size = m.width && m.height ? `${m.width} × ${m.height}` : "";
    const badge = keep ? el("span", { class: "badge", text: "keep" })
      : el("span", { class: `badge${m.exact_copy_of != null ? " exact" : ""}`,
                     text: m.exact_copy_of != null ? "exact copy" : `similarity ${m.similarity.toFixed(3)}` });
    list.append(el("li", {},
      el("a", { href: m.original, target: "_blank", rel: "noopener", title: m.path || "" },
         el("img", { src: `${m.thumbnail}?size=256`, alt: `${m.name || `item ${m.id}`}${keep ? " (the copy to keep)" : ""}`,
                     loading: "lazy" })),
      el("span", { class: "name", text: m.name || `item ${m.id}`, title: m.path || "" }),
      el("span", { class: "muted", text: [size, m.size ? bytes(m.size) : "", takenDate(m)].filter(Boolean).join(" · ") }),
      badge));
  }
  return el("section", { class: "dup-group", "aria-label": heading }, el("h2", { text: heading }), list);
}

// Near-identical photos among those the filters let through; nothing is ever deleted from here.
async function showDuplicates() {
  const seq = ++state.seq;
  state.query = null;
  clearResults();
  setStatus("Looking for near-duplicates…", "loading");
  const fields = filterFields();
  delete fields.min_score;
  delete fields.dedup;
  try {
    const body = await api("/api/duplicates?" + new URLSearchParams({ threshold: DEDUP_THRESHOLD, limit: maxK(), ...fields }));
    if (seq !== state.seq) return;
    els.results.replaceChildren(...body.groups.map((g, i) => duplicateGroup(g, i + 1)));
    const shown = body.groups.length < body.total ? ` (the first ${body.groups.length} shown)` : "";
    setStatus(body.total ? `${body.total} group${body.total === 1 ? "" : "s"} of near-duplicates${shown}, the copy ` +
                           "to keep first (most pixels, then earliest capture). Nothing is deleted."
                         : "No near-duplicates among these photos.");
  } catch (err) {
    if (seq === state.seq) setStatus(err.message, "error");
  }
}

// -- building a query from the page ------------------------------------------------------

function filterFields() {
  const out = {};
  for (const [input, key] of Object.entries(FILTERS)) {
    const value = els[input].value.trim();
    if (value) out[key] = value;
  }
  if (els.dedup.checked) out.dedup = String(DEDUP_THRESHOLD);
  return out;
}

// What every request carries besides the filters: the order (not a filter: it does not narrow).
function orderFields() {
  return els.sort.value === "score" ? {} : { sort: els.sort.value };
}

function countFilters() {
  const n = Object.keys(filterFields()).length;
  els.filterCount.hidden = !n;
  els.filterCount.textContent = n ? `${n} on` : "";
}

// The "Show" choice as the API's target and types: videos only and photos only are kinds of files.
function showChoice(fields) {
  const show = els.target.value;
  if (show !== "video" && show !== "photo") return { target: show, fields };
  const kind = show === "video" ? "video" : "image";
  const types = fields.types ? `${fields.types},${kind}` : kind;
  return { target: "image", fields: { ...fields, types } };
}

function jsonBody(terms, k, target, fields) {
  const body = { terms, k, target };
  for (const [key, value] of Object.entries(fields)) {
    if (key === "min_score" || key === "dedup" || key === "within") body[key] = Number(value);
    else if (key === "has_gps") body.has_gps = value === "true";
    else if (key === "types") body.types = value.split(",").map((t) => t.trim()).filter(Boolean);
    else body[key] = value;
  }
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

function describe(parts) {
  return parts.filter(Boolean).join(" + ");
}

// The current query as a label and a request for its first k results (paging asks again with a larger k).
function buildQuery() {
  const text = els.q.value.trim();
  const neg = els.not.value.trim();
  const weight = Number(els.weight.value) || 1;
  const chosen = showChoice(filterFields());
  const target = chosen.target;
  const fields = { ...chosen.fields, ...orderFields() };
  const minScore = fields.min_score !== undefined ? Number(fields.min_score) : null;
  if (minScore !== null && !(minScore >= -1 && minScore <= 1)) {
    throw new ApiError(0, "The lowest score must be a number from -1 to 1.");
  }
  if (state.image) {
    const image = state.image;
    return {
      label: describe(["your image", text && `“${text}”`, neg && `not “${neg}”`]),
      request: (k) => {
        const form = new FormData();
        form.append("image", image, image.name || "pasted-image");
        if (text) form.append("text", `${weight}:${text}`);
        if (neg) form.append("not_text", neg);
        form.append("k", String(k));
        form.append("target", target);
        for (const [key, value] of Object.entries(fields)) form.append(key, value);
        return ["/api/search/image", { method: "POST", body: form }];
      },
    };
  }
  if (state.similar) {
    const item = state.similar;
    const label = describe([`more like ${els.contextLabel.textContent || nameOf(item)}`, text && `“${text}”`,
                            neg && `not “${neg}”`]);
    const itemId = state.similarId;
    if (text || neg) {
      const terms = [{ item: itemId, weight: 1 }];
      if (text) terms.push({ text, weight });
      if (neg) terms.push({ text: neg, weight: -1 });
      return { label, explainTerms: terms, request: (k) => ["/api/search", jsonBody(terms, k, target, fields)] };
    }
    return { label, explainTerms: [{ item: itemId, weight: 1 }],
             request: (k) => [`/api/items/${itemId}/similar?` + new URLSearchParams({ k, target, ...fields })] };
  }
  if (text) {
    const label = describe([`“${text}”`, neg && `not “${neg}”`]);
    const terms = [{ text, weight }];
    if (neg) terms.push({ text: neg, weight: -1 });
    if (neg || weight !== 1) {
      return { label, explainTerms: terms, request: (k) => ["/api/search", jsonBody(terms, k, target, fields)] };
    }
    return { label, explainTerms: terms,
             request: (k) => ["/api/search?" + new URLSearchParams({ q: text, k, target, ...fields })] };
  }
  return null;
}

function pageSize() {
  return Number(els.k.value) || 48;
}

function maxK() {
  return (state.limits && state.limits.max_k) || 500;
}

async function runSearch() {
  let query;
  try {
    query = buildQuery();
  } catch (err) {
    clearResults();
    setStatus(err.message, "error");
    return;
  }
  if (!query) {
    clearResults();
    setStatus("Type some words, or add an image (drop, paste or choose one).");
    els.q.focus();
    return;
  }
  const seq = ++state.seq;  // a slower, older answer must not overwrite a newer one
  state.query = query;
  state.k = Math.min(pageSize(), maxK());
  state.loading = true;
  setStatus("Searching…", "loading");
  els.results.setAttribute("aria-busy", "true");
  try {
    const body = await api(...query.request(state.k));
    if (seq !== state.seq) return;
    state.exhausted = body.hits.length < state.k || state.k >= maxK();
    showHits(body.hits, false);
    setStatus(summarize());
    const text = els.q.value.trim();
    if (text && !state.image && !state.similar) history.replaceState(null, "", "?" + new URLSearchParams({ q: text }));
  } catch (err) {
    if (seq !== state.seq) return;
    // The results on the page answered the previous query, not this one: they go.
    clearResults();
    setStatus(err.message, "error");
  } finally {
    if (seq === state.seq) {
      state.loading = false;
      els.results.setAttribute("aria-busy", "false");
      updateMore();
    }
  }
}

async function loadMore() {
  if (state.loading || state.exhausted || !state.query) return;
  const seq = state.seq;
  const k = Math.min(state.k + pageSize(), maxK());
  state.loading = true;
  setStatus("Loading more…", "loading");
  try {
    const body = await api(...state.query.request(k));
    if (seq !== state.seq) return;
    const before = state.hits.length;
    state.k = k;
    showHits(body.hits, true);
    state.exhausted = body.hits.length < k || k >= maxK() || state.hits.length === before;
    setStatus(summarize());
  } catch (err) {
    if (seq !== state.seq) return;
    state.exhausted = true;  // keep what is shown; say why no more came
    setStatus(`${summarize()} Could not load more: ${err.message}`, "error");
  } finally {
    if (seq === state.seq) {
      state.loading = false;
      updateMore();
    }
  }
}

function updateMore() {
  els.more.hidden = state.exhausted || !state.hits.length;
}

// Infinite scroll: when the end of the results comes into view, ask for the next page.
const observer = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); },
                             { rootMargin: "600px 0px" })
  : null;
if (observer) observer.observe(els.sentinel);

// -- query image: drop, paste, choose ----------------------------------------------------

function setImage(file) {
  if (!file) return;
  if (!file.type.startsWith("image/") && file.type !== "") {
    clearResults();
    setStatus(`${file.name} is not an image.`, "error");
    return;
  }
  const max = state.limits && state.limits.max_upload_bytes;
  if (max && file.size > max) {
    clearResults();
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

// More like a hit: a video's best moment (or the given moment's frame, or the whole video with wholeVideo).
function moreLike(hit, frame = null, wholeVideo = false) {
  clearImage(false);
  closeDetail();
  state.similar = hit;
  state.similarId = wholeVideo ? hit.id : frame != null ? frame : similarItem(hit);
  els.context.hidden = false;
  els.contextThumb.hidden = !hit.thumbnail;
  if (hit.thumbnail) els.contextThumb.src = `${hit.thumbnail}?size=128`;
  const moment = hit.kind === "video" && !wholeVideo
    ? (hit.moments || []).find((m) => m.frame === state.similarId) : null;
  els.contextLabel.textContent = moment ? `${nameOf(hit)} at ${clock(moment.time)}` : nameOf(hit);
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

// -- the detail view ------------------------------------------------------------------------

function fact(list, term, value) {
  if (value === "" || value == null) return;
  list.append(el("dt", { text: term }), el("dd", { text: String(value) }));
}

// What a video's meta says that is about the index, not the video: not shown.
const VIDEO_INTERNALS = new Set(["sampling", "strategy", "decoded_frames", "poster", "all_flat", "duration"]);

function showMeta(meta, video = false) {
  els.detailMeta.replaceChildren();
  if (!meta || typeof meta !== "object") return;
  for (const [key, value] of Object.entries(meta)) {
    if (value === null || value === "" || (video && VIDEO_INTERNALS.has(key))) continue;
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    fact(els.detailMeta, key.replace(/_/g, " "), text.length > 300 ? text.slice(0, 297) + "…" : text);
  }
}

function stopVideo() {
  if (!els.detailVideo.hasAttribute("src")) return;
  els.detailVideo.pause();
  els.detailVideo.removeAttribute("src");
  els.detailVideo.load();  // lets go of the connection
}

// The video plays from the moment: a #t= media fragment on the original (the server serves ranges).
function showVideo(hit) {
  els.detailVideo.poster = `${hit.thumbnail}?size=1024`;
  els.detailVideo.src = hit.play || hit.original;
  els.detailVideo.setAttribute("aria-label", `${hit.name || "video"}, from ${clock(hit.time || 0)}`);
  els.detailMomentList.replaceChildren();
  const moments = hit.moments || [];
  els.detailMoments.hidden = moments.length < 2;
  for (const m of moments) {
    const button = el("button", { type: "button", title: `play from ${clock(m.time)} (cosine ${m.score.toFixed(3)})`,
                                  "aria-label": `play from ${clock(m.time)}` },
                      el("img", { src: `${m.thumbnail}?size=128`, alt: "", loading: "lazy" }),
                      el("span", { text: clock(m.time) }));
    button.addEventListener("click", () => {
      els.detailVideo.currentTime = m.time;
      els.detailVideo.play().catch(() => {});
      state.detailMoment = m.frame;
    });
    els.detailMomentList.append(el("li", {}, button));
  }
}

function photoFacts(photo) {
  if (!photo) return;
  const taken = photo.taken_at ? photo.taken_at.replace("T", " ") : "";
  fact(els.detailFacts, "Taken", taken && (photo.time_source === "file-mtime" ? `${taken} (the file's date: no date inside)` : taken));
  fact(els.detailFacts, "Place", photo.place);
  if (photo.gps_lat != null && photo.gps_lon != null) {
    fact(els.detailFacts, "Position", `${photo.gps_lat.toFixed(5)}, ${photo.gps_lon.toFixed(5)}` +
                                      (photo.gps_alt != null ? `, ${Math.round(photo.gps_alt)} m` : ""));
  }
  fact(els.detailFacts, "Camera", photo.camera);
  fact(els.detailFacts, "Lens", photo.lens);
}

async function openDetail(index) {
  const hit = state.hits[index];
  if (!hit) return;
  state.detailIndex = index;
  state.detailMoment = null;
  const image = hit.kind === "image";
  const video = hit.kind === "video";
  els.detailImg.hidden = !image;
  els.detailVideo.hidden = !video;
  els.detailVideo.inert = !video;  // a hidden player must not take the dialog's first focus
  els.detailText.hidden = image || video;
  if (!video) stopVideo();
  if (image) {
    els.detailImg.alt = hit.name || `item ${hit.id}`;
    els.detailImg.src = `${hit.thumbnail}?size=1024`;
  } else if (video) {
    els.detailImg.removeAttribute("src");
    showVideo(hit);
  } else {
    els.detailImg.removeAttribute("src");
    els.detailText.textContent = hit.text || "";
  }
  if (!video) els.detailMoments.hidden = true;
  els.detailSimilarVideo.hidden = !video;
  els.detailTitle.textContent = isPicture(hit) ? (hit.name || `item ${hit.id}`) : "Text";
  els.detailPath.textContent = hit.path || "";
  els.detailOpen.hidden = !isPicture(hit);
  if (isPicture(hit)) els.detailOpen.href = video ? (hit.play || hit.original) : hit.original;
  els.detailFacts.replaceChildren();
  fact(els.detailFacts, "Match", `${hit.score.toFixed(3)} (cosine), result ${index + 1}`);
  if (video) {
    fact(els.detailFacts, "Best moment", clock(hit.time || 0));
    if (hit.meta && hit.meta.duration) fact(els.detailFacts, "Duration", clock(hit.meta.duration));
  }
  if (hit.width && hit.height) fact(els.detailFacts, "Dimensions", `${hit.width} × ${hit.height} pixels`);
  photoFacts(hit.photo);
  showMeta(hit.meta, video);
  els.detailPrev.disabled = index === 0;
  els.detailNext.disabled = index >= state.hits.length - 1 && state.exhausted;
  if (!els.detail.open) els.detail.showModal();
  const seq = state.seq;
  try {
    const item = await api(`/api/items/${hit.id}`);
    if (state.detailIndex !== index || seq !== state.seq) return;
    fact(els.detailFacts, "File size", bytes(item.size));
    fact(els.detailFacts, "Modified", when(item.mtime_ns));
    if (item.status !== "ok") fact(els.detailFacts, "Status", `${item.status}: ${item.error || ""}`);
    showMeta(item.meta || hit.meta, video);
  } catch (err) {
    if (state.detailIndex === index) fact(els.detailFacts, "Details", err.message);
  }
}

async function detailMove(step) {
  const next = state.detailIndex + step;
  if (next < 0) return;
  if (next >= state.hits.length) {
    await loadMore();
    if (next >= state.hits.length) return;
  }
  await openDetail(next);
  const cardEl = els.results.children[next];
  if (cardEl) cardEl.scrollIntoView({ block: "nearest" });
}

function closeDetail() {
  if (els.detail.open) els.detail.close();
  stopVideo();
}

els.detail.addEventListener("close", () => {
  stopVideo();
  const cardEl = els.results.children[state.detailIndex];
  state.detailIndex = -1;
  if (cardEl) cardEl.querySelector(".thumb")?.focus();  // back where the reader was
});
els.detail.addEventListener("click", (event) => { if (event.target === els.detail) closeDetail(); });
els.detail.addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft") { event.preventDefault(); detailMove(-1); }
  else if (event.key === "ArrowRight") { event.preventDefault(); detailMove(1); }
  else if (event.key === "m" && state.hits[state.detailIndex]) moreLike(state.hits[state.detailIndex]);
});
els.detailPrev.addEventListener("click", () => detailMove(-1));
els.detailNext.addEventListener("click", () => detailMove(1));
els.detailClose.addEventListener("click", closeDetail);
els.detailSimilar.addEventListener("click", () => moreLike(state.hits[state.detailIndex], state.detailMoment));
els.detailSimilarVideo.addEventListener("click", () => moreLike(state.hits[state.detailIndex], null, true));

// -- keyboard ---------------------------------------------------------------------------

function moveFocus(key) {
  const cards = [...els.results.querySelectorAll(".card")];
  const current = cards.findIndex((c) => c.contains(document.activeElement));
  if (current < 0) return false;
  let next;
  if (key === "ArrowLeft" || key === "ArrowRight") {
    next = current + (key === "ArrowRight" ? 1 : -1);
  } else {
    // Rows have different lengths: go to the card of the next/previous row nearest horizontally.
    const here = cards[current].getBoundingClientRect();
    const down = key === "ArrowDown";
    const candidates = cards.map((c, i) => [i, c.getBoundingClientRect()])
      .filter(([, r]) => (down ? r.top > here.bottom - 2 : r.bottom < here.top + 2));
    if (!candidates.length) return true;
    const rowTop = down ? Math.min(...candidates.map(([, r]) => r.top)) : Math.max(...candidates.map(([, r]) => r.top));
    const centre = here.left + here.width / 2;
    next = candidates.filter(([, r]) => Math.abs(r.top - rowTop) < 2)
      .sort((a, b) => Math.abs(a[1].left + a[1].width / 2 - centre) - Math.abs(b[1].left + b[1].width / 2 - centre))[0][0];
  }
  next = Math.min(cards.length - 1, Math.max(0, next));
  cards[next].querySelector(".thumb").focus();
  if (next >= cards.length - 2) loadMore();
  return true;
}

function focusedHit() {
  const cardEl = document.activeElement.closest && document.activeElement.closest(".card");
  if (!cardEl) return null;
  return state.hits[[...els.results.children].indexOf(cardEl)] || null;
}

document.addEventListener("keydown", (event) => {
  if (els.detail.open) return;  // the dialog has its own keys
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
  if (event.key === "/" && !typing) {
    event.preventDefault();
    els.q.focus();
    els.q.select();
  } else if (event.key === "Escape") {
    if (!clearImage() && !clearSimilar() && typing && document.activeElement === els.q) els.q.value = "";
  } else if (event.key.startsWith("Arrow") && !typing && moveFocus(event.key)) {
    event.preventDefault();
  } else if (event.key === "m" && !typing && focusedHit()) {
    moreLike(focusedHit());
  } else if (event.key === "w" && !typing && focusedHit()) {
    document.activeElement.closest(".card").querySelector(".why")?.click();  // why did it match? (pictures)
  } else if (event.key === "o" && !typing && focusedHit()?.original) {
    window.open(focusedHit().play || focusedHit().original, "_blank", "noopener");
  }
});

// -- wiring -----------------------------------------------------------------------------

els.form.addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
els.weight.addEventListener("input", () => { els.weightOut.textContent = Number(els.weight.value).toFixed(1); });
for (const select of [els.target, els.k, els.sort]) {
  select.addEventListener("change", () => { if (state.query) runSearch(); });
}
for (const name of FILTER_INPUTS) {
  els[name].addEventListener("change", () => { countFilters(); if (state.query) runSearch(); });
  els[name].addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); countFilters(); runSearch(); }
  });
}
els.dedup.addEventListener("change", () => { countFilters(); if (state.query) runSearch(); });
els.resetFilters.addEventListener("click", () => {
  for (const name of FILTER_INPUTS) els[name].value = "";
  els.dedup.checked = false;
  countFilters();
  if (state.query) runSearch();
});
els.more.addEventListener("click", loadMore);
els.showDuplicates.addEventListener("click", showDuplicates);
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
      (info.videos ? ` · ${info.videos.toLocaleString()} video${info.videos === 1 ? "" : "s"}` : "") +
      (info.texts ? ` · ${info.texts.toLocaleString()} texts` : "");
    els.info.title = `model ${info.model}`;
    if (!info.images && !info.videos && info.texts) els.target.value = "text";
    countFilters();
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
