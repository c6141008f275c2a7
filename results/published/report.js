
// A figure is drawn as soon as its script runs, when the grid row it sits in may not hold its later panels yet:
// it takes the width the cell had then. Once the page has loaded, every figure is fitted to its cell.
window.addEventListener('load', () => document.querySelectorAll('.js-plotly-plot').forEach(gd => Plotly.Plots.resize(gd)));
function tbNumber(text) { const m = text.replace(/,/g, '').match(/^-?[0-9.]+(e[-+]?[0-9]+)?/i); return m ? parseFloat(m[0]) : NaN; }
function tbSort(th) {
  const table = th.closest('table'), body = table.tBodies[0], index = th.cellIndex;
  const ascending = th.dataset.order !== 'asc';
  table.querySelectorAll('th').forEach(h => { delete h.dataset.order; });
  th.dataset.order = ascending ? 'asc' : 'desc';
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = a.cells[index].textContent.trim(), y = b.cells[index].textContent.trim();
    const nx = tbNumber(x), ny = tbNumber(y), numeric = !isNaN(nx) && !isNaN(ny);
    if (!numeric && (!isNaN(nx) || !isNaN(ny))) return isNaN(nx) ? 1 : -1;  // "-" (no value) last either way
    const order = numeric ? nx - ny : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(r => body.appendChild(r));
}
function tbFilter(tableId) {
  const table = document.getElementById(tableId);
  const selects = document.querySelectorAll('select[data-table="' + tableId + '"]');
  Array.from(table.tBodies[0].rows).forEach(row => {
    let shown = true;
    selects.forEach(s => { if (s.value && row.cells[+s.dataset.column].textContent.trim() !== s.value) shown = false; });
    row.style.display = shown ? '' : 'none';
  });
}
document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => tbSort(th)));
  document.querySelectorAll('select[data-table]').forEach(s => s.addEventListener('change', () => tbFilter(s.dataset.table)));
});
