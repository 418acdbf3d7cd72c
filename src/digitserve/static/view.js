// Rendering: the verdict, a bar per class, warnings, errors, the 8x8 grid and the model cards.
// Text goes in with textContent only: nothing the service or a file name says is parsed as HTML.

const LEVELS = 16;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(value) {
  return `${(value * 100).toFixed(value >= 0.9995 || value < 0.0005 ? 0 : 1)}%`;
}

/** Every element a reading writes to, found inside its section (the page has one per model
 * shown). */
export function readingElements(section) {
  const part = (selector) => section.querySelector(selector);
  return {
    result: section,
    title: part("h2"),
    digit: part(".digit"),
    summary: part(".summary"),
    answered: part(".answered"),
    grid: part(".seen canvas"),
    gridTable: part(".values table").tBodies[0],
    details: part(".details"),
    scores: part(".scores"),
    warnings: part(".warnings"),
    error: part(".problem"),
    errorTitle: part(".problem-title"),
    errorDetail: part(".problem-detail"),
    errorMeta: part(".problem-meta"),
  };
}

/** The parts of one model's block in the model card panel. */
export function cardElements(block) {
  return {
    block,
    name: block.querySelector(".card-name"),
    description: block.querySelector(".card-description"),
    facts: block.querySelector(".facts"),
  };
}

/** A hidden copy of a section for a second model, placed after it; its ids, and the references
 * to them, get `suffix` so they stay unique. */
export function duplicate(node, suffix) {
  const copy = node.cloneNode(true);
  const nodes = [copy, ...copy.querySelectorAll("*")];
  const ids = new Set(nodes.map((el) => el.id).filter(Boolean));
  for (const el of nodes) {
    if (el.id) el.id += suffix;
    for (const name of ["for", "aria-labelledby", "aria-describedby"]) {
      const value = el.getAttribute(name);
      if (value) el.setAttribute(name, value.split(" ").map((id) => (ids.has(id) ? id + suffix : id)).join(" "));
    }
  }
  copy.hidden = true;
  node.after(copy);
  return copy;
}

/** Head a reading with the name of its model, or generically when only one model is served. */
export function nameReading(view, name) {
  view.title.textContent = name ? `What ${name} reads` : "What the model reads";
}

function setState(view, state) {
  view.result.dataset.state = state;
  view.result.setAttribute("aria-busy", String(state === "busy"));
}

function hideError(view) {
  view.error.hidden = true;
}

/** Nothing to read yet (blank pad): an empty verdict and a prompt. */
export function showIdle(view, message) {
  setState(view, "idle");
  hideError(view);
  view.digit.textContent = "?";
  view.summary.textContent = message;
  delete view.result.dataset.label;
  showAnswered(view, null);
  showWarnings(view, []);
  showScores(view, null, []);
  showGrid(view, null);
}

/** A request is on its way; the last answer stays visible, dimmed. */
export function showBusy(view) {
  setState(view, "busy");
}

/** One prediction: the digit, how sure, a bar per class, warnings and the grid the model saw. */
export function showPrediction(view, { model, prediction }, classes) {
  hideError(view);
  const label = String(prediction.label);
  const scores = prediction.probabilities || prediction.decision_scores || {};
  const isProbability = Boolean(prediction.probabilities) && model.scores !== "decision_scores";
  view.digit.textContent = label;
  view.result.dataset.label = label;
  view.summary.textContent =
    typeof prediction.confidence === "number"
      ? `Reads ${label}, ${percent(prediction.confidence)} sure.`
      : `Reads ${label}. This model gives raw decision scores, not probabilities.`;
  showAnswered(view, model);
  showWarnings(view, Array.isArray(prediction.warnings) ? prediction.warnings : []);
  showScores(view, scores, classes.length > 0 ? classes : Object.keys(scores), label, isProbability);
  showGrid(view, Array.isArray(prediction.pixels) ? prediction.pixels : null);
  setState(view, "ready");
}

/** A failed request: what went wrong in words, with the code and request id for a bug report. */
export function showError(view, error) {
  view.errorTitle.textContent = error.headline || "Something went wrong";
  // A one-file upload is item 0 of a multipart request: name the file, not the item.
  view.errorDetail.textContent = (error.detail || error.message || "").replace(/^item 0 \((.+?)\): /, "$1: ");
  const meta = [];
  if (error.status) meta.push(`HTTP ${error.status}`);
  if (error.code) meta.push(`code ${error.code}`);
  if (error.requestId) meta.push(`request id ${error.requestId}`);
  view.errorMeta.textContent = meta.join(" · ");
  view.errorMeta.hidden = meta.length === 0;
  view.error.hidden = false;
  view.digit.textContent = "!";
  view.summary.textContent = "No reading: see the message below.";
  delete view.result.dataset.label;
  showAnswered(view, null);
  showWarnings(view, []);
  showScores(view, null, []);
  showGrid(view, null);
  setState(view, "error");
}

/** Which model and version answered: the service says, so a reading is never misattributed. */
function showAnswered(view, model) {
  const known = Boolean(model && model.name);
  view.answered.textContent = known ? `Answered by ${model.name}, version ${model.version ?? "?"}` : "";
  view.answered.hidden = !known;
}

function showWarnings(view, warnings) {
  view.warnings.replaceChildren(
    ...warnings.map((warning) => {
      const text = typeof warning === "string" ? warning : warning.message || warning.code || "";
      const item = element("li", "", text);
      if (warning && warning.code) item.dataset.code = warning.code;
      return item;
    }),
  );
  view.warnings.hidden = warnings.length === 0;
}

function showScores(view, scores, classes, label = null, isProbability = true) {
  view.details.hidden = scores === null;
  if (scores === null) {
    view.scores.replaceChildren();
    return;
  }
  const values = classes.map((key) => Number(scores[String(key)] ?? 0));
  const low = isProbability ? 0 : Math.min(...values);
  const high = isProbability ? 1 : Math.max(...values);
  const span = high - low || 1;
  view.scores.replaceChildren(
    ...classes.map((key, index) => {
      const value = values[index];
      const item = element("li", String(key) === label ? "predicted" : "");
      item.dataset.class = String(key);
      const track = element("span", "track");
      track.setAttribute("aria-hidden", "true");
      const fill = element("span", "fill");
      fill.style.width = `${Math.max(0, Math.min(1, (value - low) / span)) * 100}%`;
      track.append(fill);
      const shown = isProbability ? percent(value) : value.toFixed(2);
      item.append(element("span", "class", String(key)), track, element("span", "value", shown));
      item.setAttribute("aria-label", `${key}: ${shown}`);
      return item;
    }),
  );
}

function showGrid(view, pixels) {
  const canvas = view.grid;
  const context = canvas.getContext("2d");
  const size = canvas.width;
  const image = context.createImageData(size, size);
  const rows = [];
  for (let y = 0; y < size; y += 1) {
    const cells = [];
    for (let x = 0; x < size; x += 1) {
      const level = pixels ? Math.max(0, Math.min(LEVELS, Number(pixels[y][x]) || 0)) : 0;
      const grey = Math.round(255 - (level * 255) / LEVELS);
      image.data.set([grey, grey, grey, 255], (y * size + x) * 4);
      cells.push(element("td", "", pixels ? String(level) : ""));
    }
    const row = element("tr");
    row.append(...cells);
    rows.push(row);
  }
  context.putImageData(image, 0, 0);
  view.gridTable.replaceChildren(...rows);
  canvas.setAttribute(
    "aria-label",
    pixels
      ? "The 8x8 grid the model saw; its values are in the table below."
      : "The 8x8 grid the model saw: nothing yet",
  );
}

function fact(card, term, value) {
  card.facts.append(element("dt", "", term), element("dd", "", value));
}

/** One model's card: what it is, its classes, version, accuracy; returns its classes. The heading
 * names the model when several are served (`name`), and is hidden otherwise. */
export function showCard(card, model, name = null) {
  showCardName(card, name);
  card.description.textContent = model.description || "A scikit-learn classifier of 8x8 digit images.";
  card.facts.replaceChildren();
  fact(card, "Model", `${model.name} ${model.version}`);
  const classes = Array.isArray(model.classes) ? model.classes : [];
  fact(card, "Classes", classes.join(" "));
  fact(card, "Scores", model.scores === "decision_scores" ? "raw decision scores" : "calibrated probabilities");
  const accuracy = model.training && model.training.test_accuracy;
  if (typeof accuracy === "number") {
    const samples = model.training.test_samples ? ` on ${model.training.test_samples} held-out digits` : " held out";
    fact(card, "Accuracy", `${percent(accuracy)}${samples}`);
  }
  if (model.estimator) fact(card, "Estimator", model.estimator);
  if (model.sha256) fact(card, "sha256", `${model.sha256.slice(0, 12)}…`);
  return classes;
}

/** A model's card could not be read: say so in its block. */
export function showCardError(card, error, name = null) {
  showCardName(card, name);
  card.description.textContent = `${error.headline}: ${error.detail}`;
  card.facts.replaceChildren();
}

function showCardName(card, name) {
  card.name.textContent = name || "";
  card.name.hidden = !name;
}

function link(list, href, text) {
  const item = element("li");
  const anchor = element("a", "", text);
  anchor.href = href;
  item.append(anchor);
  list.append(item);
}

/** The panel's links: each shown model's JSON card, the API docs and index, and the metrics when
 * the index lists them. */
export function showCardLinks(list, models, index) {
  list.replaceChildren();
  for (const { name, cardUrl } of models) {
    link(list, cardUrl, models.length > 1 ? `Model card of ${name} (JSON)` : "Model card (JSON)");
  }
  link(list, "docs", "Interactive API docs");
  link(list, "v1", "API index (JSON)");
  const links = (index && index.links) || {};
  if (typeof links.metrics === "string") link(list, links.metrics.replace(/^\//, ""), "Metrics");
}
