// Tiers of aggregators on the dashboard (docs/tiers.md): on an upper tier, its sites
// (api/sites); on a site, its upper tier (api/upper). Each section stays hidden on a
// gateway where it does not apply.
"use strict";
(function () {
  const dash = "–";
  const $ = (id) => document.getElementById(id);
  const int = (v) => (v === null || v === undefined ? dash : Math.round(v).toLocaleString("en"));
  const pct = (v) => (v === null || v === undefined ? dash : Math.round(v * 100) + " %");
  const version = (v) => (v === null || v === undefined ? dash : "v" + v);
  const when = (unix) => (unix ? new Date(unix * 1000).toLocaleString() : dash);

  const row = window.FedgeTable.row;  // cells: [text, className?, title?]

  function sites(body) {
    const rows = body.sites || [];
    $("sites-section").hidden = rows.length === 0;
    const trs = rows.map((s) => {
      const status = s.online === null ? "unknown" : s.online ? "online" : "offline";
      const spans = s.site_versions === null ? "" : ` over ${s.site_versions} site version(s)`;
      return row([[s.site, "id"], [status, "state " + status],
        [when(s.last_aggregate_at)], [version(s.last_aggregate_upper_version), "num"],
        [int(s.last_aggregate_samples), "num"], [s.last_aggregate_state || dash],
        [int(s.devices_behind), "num", "device updates in its last aggregate" + spans],
        [int(s.aggregates_used), "num"],
        [pct(s.sample_share), "num", `${int(s.samples_used)} samples in versions`],
        [pct(s.aggregate_share), "num"]]);
    });
    $("sites").tBodies[0].replaceChildren(...trs);
  }

  function upper(body) {
    const u = body.upper;
    $("upper-section").hidden = !u;
    if (!u) return;
    const every = u.every_versions === null ? "" : ` of ${u.every_versions}`;
    const holding = u.holding ? "holding" : "training";
    const why = u.upper_version === null ? "no upper model yet" : !u.asked ?
      "not invited to a round from it yet" : u.holding ? "its aggregate is with the uplink" : "";
    $("upper").tBodies[0].replaceChildren(row([[u.broker || dash, "id"], [u.federation || dash],
      [u.site_id || dash, "id"], [version(u.upper_version), "num"], [version(u.site_version), "num"],
      [int(u.versions) + every, "num"], [int(u.updates), "num"], [int(u.samples), "num"],
      [u.asked ? "yes" : "no"], [holding, u.holding ? "warn" : "", why]]));
  }

  window.FedgeTiers = { sites, upper };
})();
