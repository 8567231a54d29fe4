// Renders /openapi.json as a table, so the API reference works with no internet.
"use strict";

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) {
    const code = document.createElement("code");
    code.className = cls;
    code.textContent = text;
    td.append(code);
  } else {
    td.textContent = text;
  }
  return td;
}

function resolve(spec, schema) {
  const ref = schema && schema.$ref;
  return ref ? spec.components.schemas[ref.split("/").pop()] : schema;
}

function params(spec, op) {
  const names = (op.parameters || []).map((p) => `${p.name} (${p.in}${p.required ? ", required" : ""})`);
  const content = op.requestBody && op.requestBody.content;
  for (const [type, media] of Object.entries(content || {})) {
    const schema = resolve(spec, media.schema) || {};
    const fields = Object.keys(schema.properties || {});
    names.push(`${type === "application/json" ? "JSON" : "form"}: ${fields.join(", ")}`);
  }
  return names.join("; ");
}

async function main() {
  const status = document.getElementById("status");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    const body = document.querySelector("#endpoints tbody");
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const row = document.createElement("tr");
        row.append(cell(method.toUpperCase(), "method"), cell(path, "path"), cell(op.summary || ""),
                   cell(params(spec, op)));
        body.append(row);
      }
    }
  } catch (err) {
    status.textContent = `cannot load /openapi.json: ${err.message}`;
    status.className = "status error";
  }
}

main();
