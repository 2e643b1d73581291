// /debug pages: the recent decisions table (with filters and a per-policy summary) and one trace's
// votes. Everything shown comes from spans (names, services): it reaches the DOM as text only.
"use strict";

(function () {
  const statusLine = document.getElementById("status");
  const JSON_ONLY = { headers: { Accept: "application/json" } };

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function decisionOf(d) {
    if (d.decision) return d.decision;
    return d.state === "kept" ? "keep" : d.state === "dropped" ? "drop" : d.state;
  }

  function when(seconds) {
    if (!seconds) return "–";
    return new Date(seconds * 1000).toISOString().replace("T", " ").replace("Z", "");
  }

  async function getJSON(url) {
    const response = await fetch(url, JSON_ONLY);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  function fail(err) {
    statusLine.textContent = String(err.message || err);
    statusLine.classList.add("error");
  }

  function decisionsPage() {
    const body = document.querySelector("#decisions tbody");
    const summaryBody = document.querySelector("#summary tbody");
    const f = {
      decision: document.getElementById("f-decision"),
      policy: document.getElementById("f-policy"),
      service: document.getElementById("f-service"),
      limit: document.getElementById("f-limit"),
    };
    const initial = new URLSearchParams(window.location.search);
    for (const key of ["decision", "service", "limit"]) {
      if (initial.get(key)) f[key].value = initial.get(key);
    }
    let wantedPolicy = initial.get("policy") || "";

    function params() {
      const q = new URLSearchParams();
      for (const key of ["decision", "policy", "service", "limit"]) {
        const v = f[key].value.trim();
        if (v) q.set(key, v);
      }
      return q;
    }

    async function loadSummary() {
      const doc = await getJSON("/debug/summary");
      const names = new Set(doc.policies_in_force);
      for (const p of doc.policies) names.add(p.policy);
      const current = f.policy.value || wantedPolicy;
      while (f.policy.options.length > 1) f.policy.remove(1);
      for (const name of Array.from(names).sort()) {
        const option = document.createElement("option");
        option.value = name;
        option.textContent = name;
        f.policy.appendChild(option);
      }
      f.policy.value = names.has(current) ? current : "";
      wantedPolicy = "";
      summaryBody.replaceChildren();
      for (const p of doc.policies) {
        const row = document.createElement("tr");
        cell(row, p.policy);
        cell(row, p.decided, "num");
        cell(row, p.kept, "num");
        cell(row, p.kept_alone, "num");
        summaryBody.appendChild(row);
      }
      return doc;
    }

    async function loadDecisions() {
      const q = params();
      history.replaceState(null, "", q.toString() ? `?${q}` : window.location.pathname);
      const rows = await getJSON(`/debug/decisions?${q}`);
      body.replaceChildren();
      for (const d of rows) {
        const row = document.createElement("tr");
        row.dataset.traceId = d.trace_id;
        cell(row, when(d.time));
        const idCell = cell(row, "", "id");
        const link = document.createElement("a");
        link.href = `/debug/traces/${encodeURIComponent(d.trace_id)}`;
        link.textContent = d.trace_id;
        idCell.appendChild(link);
        const decision = decisionOf(d);
        cell(row, decision, decision);
        cell(row, d.policy);
        cell(row, d.reason);
        cell(row, d.spans, "num");
        cell(row, d.root ? d.root.service : null);
        cell(row, d.root ? d.root.name : null);
        body.appendChild(row);
      }
      statusLine.classList.remove("error");
      statusLine.textContent = `${rows.length} decision${rows.length === 1 ? "" : "s"} shown`;
    }

    async function refresh() {
      try {
        await loadSummary();
        await loadDecisions();
      } catch (err) {
        fail(err);
      }
    }

    for (const key of ["decision", "policy", "limit"]) f[key].addEventListener("change", () => loadDecisions().catch(fail));
    let typing = null;
    f.service.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(() => loadDecisions().catch(fail), 250);
    });
    refresh();
  }

  async function tracePage() {
    const facts = document.querySelector("#facts tbody");
    const votes = document.querySelector("#votes tbody");
    const id = window.location.pathname.split("/").pop();
    document.getElementById("trace-id").textContent = id;
    try {
      const d = await getJSON(`/debug/traces/${encodeURIComponent(id)}`);
      const shown = [
        ["state", d.state],
        ["decision", d.state === "unknown" ? null : decisionOf(d)],
        ["deciding policy", d.policy],
        ["reason", d.reason],
        ["spans", d.spans],
        ["root service", d.root ? d.root.service : null],
        ["root span", d.root ? d.root.name : null],
        ["decided at", d.time ? when(d.time) : null],
      ];
      for (const [label, value] of shown) {
        const row = document.createElement("tr");
        const th = document.createElement("th");
        th.textContent = label;
        row.appendChild(th);
        cell(row, value);
        facts.appendChild(row);
      }
      for (const [policy, vote] of Object.entries(d.votes || {})) {
        const row = document.createElement("tr");
        row.dataset.policy = policy;
        cell(row, policy);
        cell(row, vote, vote === "sampled" ? "keep" : vote === "not_sampled" ? "" : "drop");
        votes.appendChild(row);
      }
      statusLine.textContent = d.state === "unknown"
        ? "not buffered here and not among the recent decisions"
        : `${d.state}${d.policy ? " by " + d.policy : ""}`;
    } catch (err) {
      fail(err);
    }
  }

  if (document.getElementById("decisions-page")) decisionsPage();
  if (document.getElementById("trace-page")) tracePage();
})();
