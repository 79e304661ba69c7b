"""``GET /docs``: a self-contained page that reads ``/openapi.json`` and lists every route.

No CDN and no build step: the page is plain HTML with a few lines of script
(serve may run where there is no internet).
"""

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dagnats HTTP API</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
h2{border-bottom:1px solid #ddd;margin-top:2rem}
details{margin:.3rem 0;border:1px solid #e3e3e3;border-radius:4px;padding:.3rem .6rem}
summary{cursor:pointer}
code,pre{font:12px ui-monospace,monospace}
pre{background:#f6f6f6;padding:.5rem;overflow:auto}
.m{display:inline-block;width:4.5rem;font-weight:600}
.GET{color:#0a6}.POST{color:#06c}.DELETE{color:#c30}.PUT,.PATCH{color:#a60}
</style></head>
<body><h1>dagnats HTTP API</h1>
<p>The OpenAPI 3.1 document: <a href="/openapi.json">/openapi.json</a>. Errors are
<code>{"error": code, "message": text}</code>. With <code>DAGNATS_API_TOKEN</code> set, send
<code>Authorization: Bearer &lt;token&gt;</code>.</p>
<div id="api">Loading…</div>
<script>
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
fetch("/openapi.json", {credentials: "same-origin"}).then(r => r.json()).then(doc => {
  const tags = {};
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item))
      (tags[op.tags[0]] = tags[op.tags[0]] || []).push([method.toUpperCase(), path, op]);
  let html = "";
  for (const [tag, ops] of Object.entries(tags)) {
    html += `<h2>${esc(tag)}</h2>`;
    for (const [m, path, op] of ops) {
      const params = (op.parameters || []).map(p => `${esc(p.name)} (${p.in})`).join(", ");
      const body = op.requestBody ? JSON.stringify(op.requestBody.content["application/json"].schema, null, 1) : "";
      html += `<details><summary><span class="m ${m}">${m}</span>`
        + `<code>${esc(path)}</code> — ${esc(op.summary)}</summary>`
        + (params ? `<p>Parameters: ${params}</p>` : "")
        + (body ? `<p>Body:</p><pre>${esc(body)}</pre>` : "")
        + `<p>Answers: ${Object.keys(op.responses).join(", ")}</p></details>`;
    }
  }
  html += `<h2>Schemas</h2><pre>${esc(JSON.stringify(doc.components.schemas, null, 1))}</pre>`;
  document.getElementById("api").innerHTML = html;
});
</script></body></html>
"""
