// The dashboard: reads the gateway's JSON API with the read token and draws it.
// The token comes from ?token= on first load or from the form, and is kept in
// sessionStorage (this tab only); it is then removed from the address bar.
"use strict";
(function () {
  const KEY = "fedge-read-token";
  const REFRESH_MS = 5000;
  const MAX_VERSION_ROWS = 50;
  // Per-device tables show a page of the fleet (the API's ?limit=) and say "N of M".
  const DEVICE_ROWS = 200;
  const TOP_SHARES = 5;  // per version, the largest contributions shown (api/fairness ?top=)
  const $ = (id) => document.getElementById(id);
  let timer = null;

  class AuthError extends Error {}

  // ------------------------------------------------------------ formatting
  const dash = "–";
  const fixed = (digits) => (v) => (v === null || v === undefined ? dash : Number(v).toFixed(digits));
  const int = (v) => (v === null || v === undefined ? dash : Math.round(v).toLocaleString("en"));

  function bytes(n) {
    if (n === null || n === undefined) return dash;
    const units = ["B", "kB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return String(i ? Number(n.toPrecision(3)) : n) + " " + units[i];
  }

  function ago(unix) {
    if (!unix) return dash;
    const s = Math.max(0, Date.now() / 1000 - unix);
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " days ago";
  }

  const when = (unix) => (unix ? new Date(unix * 1000).toLocaleString() : dash);

  // ------------------------------------------------------------ the API
  function takeTokenFromUrl() {
    const url = new URL(location.href);
    const token = url.searchParams.get("token");
    if (token === null) return;
    sessionStorage.setItem(KEY, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }

  async function api(path) {
    const token = sessionStorage.getItem(KEY);
    const res = await fetch(path, {
      headers: token ? { Authorization: "Bearer " + token } : {}, cache: "no-store",
    });
    const body = await res.json().catch(() => ({}));
    if (res.status === 401 || res.status === 403) throw new AuthError(body.error || res.statusText);
    if (!res.ok) throw new Error(`${path}: ${res.status} ${body.error || res.statusText}`);
    return body;
  }

  // ------------------------------------------------------------ drawing
  function text(id, value) { $(id).textContent = value; }

  function renderOverview(o) {
    text("ov-version", o.model_version === null ? dash : "v" + o.model_version);
    text("ov-mode", o.mode ? `${o.mode} · round ${o.rounds}` : "");
    text("ov-accuracy", fixed(3)(o.accuracy));
    text("ov-loss", o.loss === null ? "" : `loss ${fixed(3)(o.loss)} (v${o.evaluated_version})`);
    text("ov-devices", `${int(o.devices.online)} / ${int(o.devices.known)}`);
    text("ov-eligible", `${int(o.devices.eligible)} eligible · ${int(o.enrolled)} enrolled`);
    const secure = o.secure_contributions || 0;  // secure rounds store no update
    text("ov-updates", int(o.updates.aggregated + secure));
    text("ov-pending", (secure ? `${secure} in secure sums · ` : "") +
      `${o.updates.pending} pending · ${o.updates.late} late · ${o.rejections} rejected`);
    text("ov-uplink", bytes(o.update_bytes));
    const ratio = o.compression_ratio;
    text("ov-ratio", ratio ? `${ratio >= 10 ? Math.round(ratio) : ratio}× smaller than float32` : "");
    renderPrivacy(o.privacy, o.stopped);
  }

  // Differential privacy: epsilon spent at delta, against the budget (docs/privacy.md).
  function renderPrivacy(p, stopped) {
    $("ov-privacy-card").hidden = !p;
    if (!p) return;
    const budget = p.target_epsilon ? ` of ${p.target_epsilon}` : "";
    text("ov-epsilon", `ε ${fixed(2)(p.epsilon)}${budget}`);
    // After privacy is turned off only the mode ("off") and delta of the spent epsilon remain.
    const z = p.noise_multiplier === undefined ? "" : ` · z ${p.noise_multiplier}`;
    text("ov-privacy", `${p.mode} DP · δ ${p.delta}${z}` + (stopped ? " · training stopped" : ""));
    $("ov-privacy").title = stopped || "";
  }

  function series(versions, key) {
    return versions.filter((v) => typeof v[key] === "number" && (key !== "updates" || v.version > 0))
      .map((v) => ({ x: v.version, y: v[key] }));
  }

  // A version's device_accuracy (device_loss) is how the model its updates started from
  // did on the devices' own data: version - 1 in sync rounds. It is drawn at that version,
  // so that both lines at one x describe the same model (docs/gateway.md).
  function onDevices(versions, key) {
    return series(versions, key).map((p) => ({ x: p.x - 1, y: p.y }));
  }

  function deviceTip(p, value) {
    return `v${p.x} on devices' data: ${value} (reported with v${p.x + 1}'s updates)`;
  }

  function evaluation(versions, key, cls) {
    return [
      { name: "test set", cls, points: series(versions, key) },
      { name: "on devices' data", cls: "device", points: onDevices(versions, "device_" + key),
        tip: deviceTip },
    ];
  }

  function renderCharts(versions) {
    const C = window.FedgeChart;
    C.line($("chart-accuracy"), evaluation(versions, "accuracy", "accuracy"),
      { label: "Accuracy", format: fixed(2) });
    C.line($("chart-loss"), evaluation(versions, "loss", "loss"),
      { label: "Loss", format: fixed(2) });
    C.bars($("chart-bytes"), series(versions, "update_bytes"),
      { label: "Uplink bytes", format: bytes, cls: "bytes" });
    C.bars($("chart-updates"), series(versions, "updates"),
      { label: "Updates", format: int, cls: "updates" });
  }

  const row = window.FedgeTable.row;  // cells: [text, className?, title?]

  function emptyRow(columns, message) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = columns;
    td.className = "empty";
    td.textContent = message;
    tr.appendChild(td);
    return tr;
  }

  // The device's latest report of the model it started from, on its own data.
  function localAccuracy(d) {
    const tip = d.last_local_accuracy === null ? "" :
      `v${d.last_local_version} on this device's own data, before it trained`;
    return [fixed(3)(d.last_local_accuracy), "num", tip];
  }

  // A device whose recent updates were repeatedly rejected or clipped (api/anomalies).
  function flagCell(a) {
    if (!a) return ["", "flag"];
    const tip = `${a.rejected} rejected, ${a.clipped} clipped of its last ${a.recent}` +
      (a.last_rejection ? `; last rejection: ${a.last_rejection}` : "");
    return [a.flagged ? "⚑ flagged" : "", a.flagged ? "flag warn" : "flag", tip];
  }

  // "200 of 10,000 devices" when the API answered a page of them (api/... ?limit=).
  function shown(id, rows, body, what) {
    const total = body.total === undefined ? rows.length : body.total;
    text(id, total > rows.length ? `Showing ${int(rows.length)} of ${int(total)} ${what}` +
      ` (sorted by id; the API pages with ?limit= and ?offset=)` : "");
  }

  function renderDevices(body, anomalies) {
    const devices = body.devices;
    shown("devices-shown", devices, body, "devices");
    const byDevice = new Map(anomalies.devices.map((a) => [a.device_id, a]));
    const rows = devices.map((d) => {
      const status = d.online === null ? "unknown" : d.online ? "online" : "offline";
      const eligible = d.eligible === null ? dash : d.eligible ? "yes" : "no";
      const battery = d.battery_pct === null ? dash : Math.round(d.battery_pct) + " %";
      return row([[d.device_id, "id"], [status, "state " + status],
        [eligible + (d.reason ? ` (${d.reason})` : ""), d.eligible === false ? "warn" : ""],
        [d.model_version === null ? dash : "v" + d.model_version, "num"], [battery, "num"],
        [ago(d.last_seen), "", when(d.last_seen)], localAccuracy(d), [int(d.contributions), "num"],
        [int(d.rejections), d.rejections ? "num warn" : "num"], flagCell(byDevice.get(d.device_id))]);
    });
    $("devices").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(10, "No devices yet")]));
  }

  // Per device: the delta when one was published (devices holding the previous version
  // take it), else the whole model.
  function downlink(v) {
    if (v.delta_bytes) return [bytes(v.delta_bytes), "num", `delta; full model ${bytes(v.model_bytes)}`];
    return [v.model_bytes === undefined ? dash : bytes(v.model_bytes), "num", "full model"];
  }

  // Downloads need the bearer token, so fetch the blob and hand it to the browser.
  async function download(version) {
    const token = sessionStorage.getItem(KEY);
    const res = await fetch(`api/models/${version}`, {
      headers: token ? { Authorization: "Bearer " + token } : {}, cache: "no-store",
    });
    if (!res.ok) return;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await res.blob());
    link.download = `fedge-model-v${version}.msgpack`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  function downloadCell(version) {
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = "⬇";
    button.title = `download model v${version}`;
    button.setAttribute("aria-label", button.title);
    button.addEventListener("click", () => download(version));
    td.appendChild(button);
    return td;
  }

  // A version's stage (api/versions "stage"): served (production), under evaluation
  // (canary), refused (rolled_back); a copy made by a rollback says of which version.
  function stageCell(v) {
    const stage = v.stage || "";
    const label = stage.replace("_", " ") + (v.copy_of === undefined ? "" : ` (copy of v${v.copy_of})`);
    return [label || dash, "stage stage-" + (stage || "none")];
  }

  // What an operator may do with a version (docs/lifecycle.md); needs the admin token.
  function stageActions(v, production) {
    const td = document.createElement("td");
    const offer = (command, version, label, title) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link stage-action";
      button.dataset.command = command;
      button.textContent = label;
      button.title = title;
      button.addEventListener("click", () => askStage(command, version, title));
      td.appendChild(button);
    };
    if (v.stage === "candidate" || v.stage === "canary") {
      offer("promote", v.version, "promote", `serve v${v.version} now`);
      if (production !== undefined) offer("rollback", production, "reject", `roll back v${v.version}; keep serving v${production}`);
    } else if (v.stage === "retired" || v.stage === "rolled_back") {
      offer("rollback", v.version, "roll back to", `serve v${v.version} again (as a new copy)`);
    }
    return td;
  }

  async function askStage(command, version, what) {
    if (!window.confirm(`${what}? This needs the admin token.`)) return;
    const token = sessionStorage.getItem(KEY);
    const res = await fetch("api/admin/stage", {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json", ...(token ? { Authorization: "Bearer " + token } : {}) },
      body: JSON.stringify({ command, version }),
    });
    const body = await res.json().catch(() => ({}));
    text("status", res.ok ? `Requested ${command} ${version}: the service applies it within a second`
      : (res.status === 403 || res.status === 401 ? "Changing stages needs the admin token" : `Not done: ${body.error || res.statusText}`));
    if (res.ok) setTimeout(refresh, 1000);
  }

  function renderVersions(versions) {
    const production = (versions.filter((v) => v.stage === "production").pop() || {}).version;
    const rows = versions.slice(-MAX_VERSION_ROWS).reverse().map((v) => {
      const tr = row([
        ["v" + v.version, "num"], stageCell(v), [when(v.created_at)], [int(v.round), "num"],
        [int(v.updates), "num"], [bytes(v.update_bytes), "num"], downlink(v),
        [fixed(4)(v.accuracy), "num"], [fixed(4)(v.loss), "num"],
        [v.round_wall_s === undefined ? dash : fixed(2)(v.round_wall_s) + " s", "num"],
        [fixed(2)(v.epsilon), "num", v.epsilon === undefined ? "" : `at δ ${v.dp_delta}, q ${fixed(3)(v.dp_sampling_rate)}, z ${fixed(2)(v.dp_noise_multiplier)}, clip ${fixed(3)(v.dp_clip)}`],
        v.devices ? [v.devices.join(", ")]
          : [v.device_count === undefined ? "" : `${int(v.device_count)} devices`],
      ]);
      tr.appendChild(downloadCell(v.version));
      tr.appendChild(stageActions(v, production));
      return tr;
    });
    $("versions").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(14, "No model yet")]));
  }

  // Per version: the spread of accuracy on the devices' own data, and who gave how much
  // of the samples (api/fairness). Secure versions carry a note instead of figures.
  function renderFairness(rows) {
    const pct = (share) => Math.round(share * 100) + " %";
    const body = rows.map((f) => {
      if (f.note) return row([["v" + f.version, "num"], [f.note, "empty"]]);
      const shares = Object.entries(f.contributions).map(([d, s]) => `${d} ${pct(s)}`);
      const more = (f.contributors || 0) - shares.length;
      if (more > 0) shares.push(`and ${int(more)} more`);
      return row([["v" + f.version, "num"], [int(f.devices), "num"],
        [fixed(3)(f.median), "num"], [fixed(3)(f.p10), "num"], [fixed(3)(f.worst_decile), "num"],
        [int(f.under_floor), f.under_floor ? "num warn" : "num", `below ${f.floor}`],
        [shares.join(", ")]]);
    });
    $("fairness").tBodies[0].replaceChildren(...(body.length ? body : [emptyRow(7, "No version yet")]));
  }

  // Personalised and clustered federations: each device's global vs personal accuracy
  // on its held-out data and the cluster it chose (api/personal).
  function renderPersonal(p) {
    shown("personal-shown", p.devices, p, "devices");
    const body = p.devices.map((d) => row([[d.device_id], [fixed(3)(d.global_accuracy), "num"],
      [fixed(3)(d.personal_accuracy), "num"],
      [d.cluster === null ? dash : String(d.cluster), "num",
        d.cluster === null ? "" : `cluster ${d.cluster}: ${p.cluster_sizes[String(d.cluster)] || 0} devices`]]));
    $("personal").tBodies[0].replaceChildren(...(body.length ? body
      : [emptyRow(4, "Not personalised or clustered ([personalize], [clusters])")]));
  }

  // Drift per device (api/drift): its latest scores, a sparkline of its PSI over time,
  // and the retraining campaigns the [drift] rule opened.
  function sparkline(points) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", "120");
    svg.setAttribute("height", "24");
    svg.setAttribute("class", "spark");
    const values = points.map((p) => p.psi_max).filter((v) => v !== null);
    if (values.length > 1) {
      const top = Math.max(...values, 0.25);
      const line = document.createElementNS(ns, "polyline");
      line.setAttribute("points", values.map((v, i) =>
        `${(i * 118 / (values.length - 1) + 1).toFixed(1)},${(23 - v / top * 22).toFixed(1)}`).join(" "));
      line.setAttribute("fill", "none");
      line.setAttribute("stroke", "currentColor");
      svg.appendChild(line);
    }
    return svg;
  }

  function renderDrift(d) {
    const rule = d.rule.enabled ? `rule: PSI ${d.rule.statistic} > ${d.rule.psi_threshold ?? dash}` +
      (d.rule.accuracy_floor ? ` or accuracy < ${d.rule.accuracy_floor}` : "") +
      ` on ≥ ${d.rule.min_devices} device(s)` : "no [drift] rule configured";
    const campaigns = d.campaigns.map((c) => `campaign ${c.number} at v${c.at_version}` +
      (c.until_version === null ? "" : ` → v${c.until_version}`) + (c.open ? " (open)" : "") +
      `: ${c.devices.join(", ")}`);
    text("drift-summary", [rule, ...campaigns].join(" · "));
    shown("drift-shown", d.devices, d, "devices with drift reports");
    const body = d.devices.map((r) => {
      const tr = row([[r.device_id], [r.online ? "online" : "offline"],
        [fixed(3)(r.psi_max), r.drifting ? "num warn" : "num", r.why || (r.feature === null ? "" : `feature ${r.feature}`)],
        [fixed(3)(r.psi_mean), "num"], [int(r.seen), "num"],
        [r.accuracy === null ? dash : `${fixed(3)(r.accuracy)} (${r.labelled})`, "num"],
        [r.drifting ? "drifting" : "", r.drifting ? "warn" : ""], [""]]);
      tr.lastChild.appendChild(sparkline(d.history[r.device_id] || []));
      return tr;
    });
    $("drift").tBodies[0].replaceChildren(...(body.length ? body : [emptyRow(8, "No device reports drift")]));
  }

  // Model lines (api/lines): each architecture's versions and the devices on it; the
  // devices that refused a model say why.
  function renderLines(l) {
    const body = l.lines.map((line) => {
      const count = line.device_count === undefined ? line.devices.length : line.device_count;
      const more = count > line.devices.length ? `, and ${int(count - line.devices.length)} more` : "";
      return row([[line.line], [`v${line.first_version}–v${line.last_version}`, "num"],
        [int(count), "num"], [line.devices.join(", ") + more]]);
    });
    for (const d of l.devices.filter((d) => d.refused)) {
      body.push(row([[d.line || dash], ["", "num"], ["", "num"], [`${d.device_id}: ${d.refused}`, "warn"]]));
    }
    $("lines").tBodies[0].replaceChildren(...(body.length ? body : [emptyRow(4, "No model yet")]));
  }

  // ------------------------------------------------------------ the loop
  function askForToken(reason) {
    clearTimeout(timer);
    $("login").hidden = false;
    text("login-error", sessionStorage.getItem(KEY) ? reason : "");
    text("status", "Waiting for the read token");
    $("token").focus();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const [overview, versions, devices, anomalies, fairness, personal] = await Promise.all(
        [api("api/overview"), api("api/versions?brief=true"),
          api(`api/devices?limit=${DEVICE_ROWS}`), api("api/anomalies?flagged=true&limit=10000"),
          api(`api/fairness?top=${TOP_SHARES}`), api(`api/personal?limit=${DEVICE_ROWS}`)]);
      renderOverview(overview);
      renderCharts(versions.versions);
      renderDevices(devices, anomalies);
      renderVersions(versions.versions);
      renderFairness(fairness.fairness);
      renderPersonal(personal);
      api(`api/drift?limit=${DEVICE_ROWS}`).then(renderDrift).catch(() => {});  // its own: an older gateway has none
      api(`api/lines?limit=${DEVICE_ROWS}`).then(renderLines).catch(() => {});
      api("api/sites").then(window.FedgeTiers.sites).catch(() => {});  // docs/tiers.md
      api("api/upper").then(window.FedgeTiers.upper).catch(() => {});
      $("login").hidden = true;
      $("forget").hidden = !sessionStorage.getItem(KEY);
      text("status", "Updated " + new Date().toLocaleTimeString());
      document.body.dataset.loaded = "true";
      timer = setTimeout(refresh, REFRESH_MS);
    } catch (err) {
      if (err instanceof AuthError) return askForToken(err.message);
      text("status", "Cannot reach the gateway: " + err.message + "; retrying");
      timer = setTimeout(refresh, REFRESH_MS);
    }
  }

  function start() {
    takeTokenFromUrl();
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("token").value.trim());
      $("token").value = "";
      refresh();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      location.reload();
    });
    refresh();
  }

  start();
})();
