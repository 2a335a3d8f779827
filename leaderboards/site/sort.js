// Sortable tables for the curb leaderboard site (no dependencies; works from file://).
// A header button sorts its column: numbers (a cell's data-sort) descending first, text ascending
// first; a second click reverses. Cells whose data-sort is empty (no value) always sort last.
"use strict";

function sortKey(cell) {
  const v = cell.dataset.sort;
  if (v === undefined) return cell.textContent.trim();
  return v === "" ? null : Number(v);
}

function compare(a, b) {
  if (a === null || b === null) return a === b ? 0 : a === null ? 1 : -1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  if (typeof a !== typeof b) return typeof a === "number" ? -1 : 1;
  return a.localeCompare(b, undefined, { numeric: true });
}

function sortBy(table, col) {
  const heads = Array.from(table.tHead.rows[0].cells);
  const th = heads[col];
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const numeric = rows.some((r) => typeof sortKey(r.cells[col]) === "number");
  const current = th.getAttribute("aria-sort");
  const dir = current ? (current === "ascending" ? "descending" : "ascending") : numeric ? "descending" : "ascending";
  const sign = dir === "ascending" ? 1 : -1;
  rows.sort((ra, rb) => {
    const a = sortKey(ra.cells[col]), b = sortKey(rb.cells[col]);
    if (a === null || b === null) return compare(a, b);  // missing values last in both directions
    return sign * compare(a, b);
  });
  heads.forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", dir);
  rows.forEach((r) => body.appendChild(r));
}

document.querySelectorAll("table.sortable").forEach((table) => {
  Array.from(table.tHead.rows[0].cells).forEach((th, col) => {
    th.querySelector("button").addEventListener("click", () => sortBy(table, col));
  });
});
