// The model picker: which served model reads the input, and optionally a second one whose reading
// is shown beside it. Shown only when the service hosts more than one model.

function option(model) {
  const name = String(model.name);
  const ready = model.default_version !== null && model.default_version !== undefined;
  const item = document.createElement("option");
  item.value = name;
  item.textContent = ready ? name : `${name} (no version ready)`;
  return item;
}

export class ModelPicker {
  /** @param {() => void} onChange called when the choice of models changes */
  constructor(onChange) {
    const byId = (id) => document.getElementById(id);
    this.bar = byId("models");
    this.first = byId("model");
    this.compare = byId("compare");
    this.secondField = byId("compare-field");
    this.second = byId("model-b");
    this.only = null;
    this.first.addEventListener("change", onChange);
    this.second.addEventListener("change", onChange);
    this.compare.addEventListener("change", () => {
      this.secondField.hidden = !this.compare.checked;
      onChange();
    });
  }

  /** Offer the models of the `GET /v1` index with `chosen` selected, and the first other model to
   * compare with; a single model needs no picker. */
  offer(models, chosen) {
    this.only = chosen;
    this.first.replaceChildren(...models.map(option));
    this.second.replaceChildren(...models.map(option));
    this.bar.hidden = models.length < 2;
    if (models.length < 2) {
      this.compare.checked = false;
    } else {
      this.first.value = chosen;
      const other = models.find((model) => model.name !== chosen);
      this.second.value = other ? other.name : chosen;
    }
    this.secondField.hidden = !this.compare.checked;
  }

  /** The models to ask, by name: the one picked, then the one to compare with, if comparing. */
  chosen() {
    if (this.bar.hidden) return [this.only];
    return this.compare.checked ? [this.first.value, this.second.value] : [this.first.value];
  }
}
