// Rendering: the verdict, a bar per class, warnings, errors, the 8x8 grid and the model card.
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

/** Every element the views write to, looked up once. */
export function elements(root = document) {
  const byId = (id) => root.getElementById(id);
  return {
    result: byId("result"),
    digit: byId("digit"),
    summary: byId("summary"),
    grid: byId("grid"),
    gridTable: byId("grid-table").tBodies[0],
    details: byId("details"),
    scores: byId("scores"),
    warnings: byId("warnings"),
    error: byId("error"),
    errorTitle: byId("error-title"),
    errorDetail: byId("error-detail"),
    errorMeta: byId("error-meta"),
    cardDescription: byId("card-description"),
    cardFacts: byId("card-facts"),
    cardLinks: byId("card-links"),
  };
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
  showWarnings(view, []);
  showScores(view, null, []);
  showGrid(view, null);
  setState(view, "error");
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

function fact(view, term, value) {
  view.cardFacts.append(element("dt", "", term), element("dd", "", value));
}

function link(view, href, text) {
  const item = element("li");
  const anchor = element("a", "", text);
  anchor.href = href;
  item.append(anchor);
  view.cardLinks.append(item);
}

/** The model card: what the model is, its classes, version, accuracy and where to learn more. */
export function showCard(view, card, index, cardUrl) {
  view.cardDescription.textContent = card.description || "A scikit-learn classifier of 8x8 digit images.";
  view.cardFacts.replaceChildren();
  fact(view, "Model", `${card.name} ${card.version}`);
  const classes = Array.isArray(card.classes) ? card.classes : [];
  fact(view, "Classes", classes.join(" "));
  fact(view, "Scores", card.scores === "decision_scores" ? "raw decision scores" : "calibrated probabilities");
  const accuracy = card.training && card.training.test_accuracy;
  if (typeof accuracy === "number") {
    const samples = card.training.test_samples ? ` on ${card.training.test_samples} held-out digits` : " held out";
    fact(view, "Accuracy", `${percent(accuracy)}${samples}`);
  }
  if (card.estimator) fact(view, "Estimator", card.estimator);
  if (card.sha256) fact(view, "sha256", `${card.sha256.slice(0, 12)}…`);
  view.cardLinks.replaceChildren();
  link(view, cardUrl, "Model card (JSON)");
  link(view, "docs", "Interactive API docs");
  link(view, "v1", "API index (JSON)");
  const links = (index && index.links) || {};
  if (typeof links.metrics === "string") link(view, links.metrics.replace(/^\//, ""), "Metrics");
  return classes;
}

/** The model card could not be read: say so in the panel. */
export function showCardError(view, error) {
  view.cardDescription.textContent = `${error.headline}: ${error.detail}`;
}
