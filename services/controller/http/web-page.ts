/** A small read-only page over the HTTP API: fleet, rollouts, audit verification. */
export const WEB_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Flotilla</title>
<style>
body{font:14px system-ui,sans-serif;margin:2rem;color:#222;background:#fafafa}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;background:#fff} td,th{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
.ok{color:#176f2c}.bad{color:#b00020}.warn{color:#8a5a00} code{font-size:12px}
</style></head><body>
<h1>Flotilla</h1>
<p id="audit">audit chain: checking…</p>
<h2>Targets</h2><table id="targets"><tr><th>target</th><th>agent</th><th>kind</th><th>revision</th><th>pending</th><th>apps</th><th>last verified backup</th></tr></table>
<h2>Rollouts</h2><table id="rollouts"><tr><th>id</th><th>status</th><th>strategy</th><th>to</th><th>targets</th><th>message</th></tr></table>
<script>
const token = new URLSearchParams(location.hash.slice(1)).get("token");
async function call(m, body) {
  const r = await fetch("/v1/" + m, { method: "POST", headers: Object.assign({ "content-type": "application/json" }, token ? { authorization: "Bearer " + token } : {}), body: JSON.stringify(body || {}) });
  if (!r.ok) throw new Error((await r.json()).message);
  return r.json();
}
function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); }
async function refresh() {
  try {
    const t = await call("ListTargets");
    const tb = document.getElementById("targets");
    while (tb.rows.length > 1) tb.deleteRow(1);
    for (const x of t.targets) {
      const tr = tb.insertRow();
      cell(tr, x.targetId); cell(tr, x.agentId); cell(tr, x.kind); cell(tr, (x.current || []).join(", ") || "-", x.error ? "bad" : "");
      cell(tr, String((x.pending || []).length), (x.pending || []).length ? "warn" : "ok");
      cell(tr, (x.apps || []).map(a => a.id + " " + a.state).join(", "));
      cell(tr, x.lastVerifiedBackup ? x.lastVerifiedBackup.id : "none", x.lastVerifiedBackup ? "" : "warn");
    }
    const r = await call("ListRollouts", { limit: 20 });
    const rb = document.getElementById("rollouts");
    while (rb.rows.length > 1) rb.deleteRow(1);
    for (const x of r.rollouts) {
      const tr = rb.insertRow();
      cell(tr, x.id); cell(tr, x.status, x.status === "succeeded" ? "ok" : x.status === "running" ? "warn" : "bad");
      cell(tr, x.spec.strategy); cell(tr, x.spec.toRevision);
      cell(tr, x.targets.map(t => t.targetId + ":" + t.status).join(", ")); cell(tr, x.message);
    }
    const v = await call("VerifyAudit");
    const a = document.getElementById("audit");
    a.textContent = v.ok ? "audit chain: verified (" + v.checked + " entries)" : "audit chain: BROKEN at entry " + v.firstBadSeq + ": " + v.reason;
    a.className = v.ok ? "ok" : "bad";
  } catch (e) { document.getElementById("audit").textContent = "error: " + e.message; }
}
refresh(); setInterval(refresh, 5000);
</script></body></html>`;
