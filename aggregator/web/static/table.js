// Table rows for the dashboard's scripts (dashboard.js, tiers.js): one place that turns
// [text, className?, title?] cells into a <tr>, always through textContent.
"use strict";
window.FedgeTable = {
  row(cells) {
    const tr = document.createElement("tr");
    for (const [value, cls, title] of cells) {
      const td = document.createElement("td");
      td.textContent = value;
      if (cls) td.className = cls;
      if (title) td.title = title;
      tr.appendChild(td);
    }
    return tr;
  },
};
