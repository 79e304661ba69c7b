"""``GET /docs``: a self-contained page that reads ``/openapi.json`` and lists every route.

It reads the document when it loads, so it lists the HTTP triggers as they are
then (the document synthesizes them per request: trigger_openapi.py).

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
<code>Authorization: Bearer &lt;token&gt;</code>. The HTTP triggers' routes (<code>/api/…</code>,
under “http triggers”) need no token: one with a secret needs its <code>X-Signature-256</code>.</p>
<div id="api">Loading…</div>
<script>
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
fetch("/openapi.json", {credentials: "same-origin"}).then(r => r.json()).then(doc => {
  // A local $ref is shown as what it points at (one level).
  const deref = s => (s && typeof s.$ref === "string" && s.$ref.startsWith("#/") && s.$ref.slice(2).split("/")
    .map(t => decodeURIComponent(t).replace(/~1/g, "/").replace(/~0/g, "~")).reduce((o, k) => o && o[k], doc)) || s;
  const shown = content => content ? JSON.stringify(deref(Object.values(content)[0].schema), null, 1) : "";
  const tags = {};
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item))
      (tags[op.tags[0]] = tags[op.tags[0]] || []).push([method.toUpperCase(), path, op]);
  let html = "";
  for (const [tag, ops] of Object.entries(tags)) {
    html += `<h2>${esc(tag)}</h2>`;
    for (const [m, path, op] of ops) {
      const params = (op.parameters || []).map(p => `${esc(p.name)} (${p.in})`).join(", ");
      const body = op.requestBody ? shown(op.requestBody.content) : "";
      const ok = Object.entries(op.responses).find(([code, r]) => code.startsWith("2") && r.content);
      const answer = ok ? shown(ok[1].content) : "";
      const schemes = doc.components.securitySchemes || {};
      const signed = (op.security || []).flatMap(r => Object.keys(r)).map(n => (schemes[n] || {}).name || n);
      html += `<details><summary><span class="m ${m}">${m}</span>`
        + `<code>${esc(path)}</code> — ${esc(op.summary)}</summary>`
        + (op.description ? `<p>${esc(op.description)}</p>` : "")
        + (signed.length ? `<p>Needs the header: ${signed.map(esc).join(", ")}</p>` : "")
        + (params ? `<p>Parameters: ${params}</p>` : "")
        + (body ? `<p>Body:</p><pre>${esc(body)}</pre>` : "")
        + (answer ? `<p>Answer (${esc(ok[0])}):</p><pre>${esc(answer)}</pre>` : "")
        + `<p>Answers: ${Object.keys(op.responses).join(", ")}</p></details>`;
    }
  }
  html += `<h2>Schemas</h2><pre>${esc(JSON.stringify(doc.components.schemas, null, 1))}</pre>`;
  document.getElementById("api").innerHTML = html;
});
</script></body></html>
"""
