// The public API, as any client calls it. URLs are relative to the page, so the service also works
// behind a proxy that mounts it under a path prefix.

const HEADLINES = {
  400: "That image could not be read",
  404: "Not found",
  405: "That request is not allowed",
  413: "That image is too large",
  415: "That kind of file is not accepted",
  422: "No digit could be found in that image",
  503: "The model is not ready yet; try again in a moment",
};

/** An answer other than success, in words a person can act on. */
export class ApiError extends Error {
  constructor(headline, detail, { status = null, code = null, requestId = null } = {}) {
    super(detail);
    this.headline = headline;
    this.detail = detail;
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

function headline(status, code) {
  if (code === "invalid_input") return "The request was not understood";
  if (code === "too_many_images") return "Too many images at once";
  if (status in HEADLINES) return HEADLINES[status];
  if (status >= 500) return "The service ran into a problem";
  return `The service refused the request (HTTP ${status})`;
}

/** Turn a failed response into an ApiError, reading the problem+json `detail` when there is one. */
async function failure(response) {
  let problem = null;
  if ((response.headers.get("content-type") || "").includes("json")) {
    try {
      problem = await response.json();
    } catch {
      problem = null;
    }
  }
  const code = problem && typeof problem.code === "string" ? problem.code : null;
  const detail =
    (problem && (problem.detail || problem.error)) || `The service answered HTTP ${response.status} ${response.statusText}`.trim();
  return new ApiError(headline(response.status, code), String(detail), {
    status: response.status,
    code,
    requestId: (problem && problem.request_id) || response.headers.get("x-request-id"),
  });
}

async function call(url, init) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", ...init });
  } catch (error) {
    throw new ApiError("Could not reach the service", `Check that it is running. (${error.message})`);
  }
  if (!response.ok) throw await failure(response);
  try {
    return await response.json();
  } catch {
    throw new ApiError("The service sent an answer that is not JSON", `HTTP ${response.status} from ${url}`);
  }
}

/** GET a JSON document. */
export function getJSON(url) {
  return call(url, { headers: { Accept: "application/json" } });
}

/** POST one image (a Blob with its media type, or a FormData holding a file) and return the first
 * prediction with the model that made it. */
export async function predict(url, body) {
  const init = { method: "POST", body, headers: { Accept: "application/json" } };
  if (body instanceof Blob) init.headers["Content-Type"] = body.type;
  const answer = await call(url, init);
  const prediction = answer && Array.isArray(answer.predictions) ? answer.predictions[0] : null;
  if (!prediction) throw new ApiError("The service sent an unexpected answer", "It holds no prediction.");
  return { model: answer.model || {}, prediction };
}
