/* knowacq leaderboard: sortable tables and filters. Vanilla JS, no dependencies, works from file://.
   Data is only ever read with textContent / getAttribute and written with textContent / new Option():
   nothing from the results is parsed as HTML. */
(function () {
  'use strict';

  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) { return ''; }
    var v = cell.getAttribute('data-v');
    return v === null ? cell.textContent.trim() : v;
  }

  function compare(a, b, type) {
    if (type === 'num' || (type === 'auto' && a !== '' && b !== '' && !isNaN(a) && !isNaN(b))) {
      var x = parseFloat(a), y = parseFloat(b);
      var xn = isNaN(x), yn = isNaN(y);
      if (xn || yn) { return xn === yn ? 0 : (xn ? 1 : -1); }  // empty cells last
      return x - y;
    }
    return String(a).localeCompare(String(b), undefined, {numeric: true, sensitivity: 'base'});
  }

  function sortTable(table, th) {
    var headers = Array.prototype.slice.call(th.parentNode.children);
    var index = headers.indexOf(th);
    var type = th.getAttribute('data-type') || 'text';
    var current = th.getAttribute('aria-sort');
    // numbers (measures) sort high-to-low first unless data-first says otherwise (the rank); text sorts A-Z first
    var first = th.getAttribute('data-first') || (type === 'num' ? 'descending' : 'ascending');
    var dir = current === first ? (first === 'ascending' ? 'descending' : 'ascending') : first;
    headers.forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows = rows.map(function (r, i) { return [r, i]; });
    rows.sort(function (p, q) {
      var c = compare(cellValue(p[0], index), cellValue(q[0], index), type);
      var empty = cellValue(p[0], index) === '' || cellValue(q[0], index) === '';
      if (dir === 'descending' && !empty) { c = -c; }
      return c || p[1] - q[1];
    });
    rows.forEach(function (p) { body.appendChild(p[0]); });
  }

  function setupSorting() {
    var tables = document.querySelectorAll('table.sortable');
    Array.prototype.forEach.call(tables, function (table) {
      var heads = table.tHead ? table.tHead.rows[0].cells : [];
      Array.prototype.forEach.call(heads, function (th) {
        th.addEventListener('click', function () { sortTable(table, th); });
      });
    });
  }

  function setupFilters() {
    var form = document.getElementById('filters');
    var dataNode = document.getElementById('lb-filters');
    if (!form || !dataNode) { return; }
    form.addEventListener('submit', function (ev) { ev.preventDefault(); });
    var choices = JSON.parse(dataNode.textContent);
    var selects = form.querySelectorAll('select[data-filter]');
    Array.prototype.forEach.call(selects, function (sel) {
      var values = choices[sel.getAttribute('data-filter')] || [];
      values.forEach(function (v) { sel.appendChild(new Option(v, v)); });
      if (!values.length) { sel.disabled = true; }
      sel.addEventListener('change', apply);
    });
    var search = form.querySelector('input[data-filter="name"]');
    if (search) { search.addEventListener('input', apply); }

    function apply() {
      var wanted = {};
      Array.prototype.forEach.call(selects, function (sel) {
        if (sel.value !== '') { wanted[sel.getAttribute('data-filter')] = sel.value; }
      });
      var text = search ? search.value.trim().toLowerCase() : '';
      var shown = 0, total = 0;
      var rows = document.querySelectorAll('table.lb[data-table] tbody tr');
      Array.prototype.forEach.call(rows, function (row) {
        var ok = Object.keys(wanted).every(function (k) {
          return row.getAttribute('data-' + k.replace(/_/g, '-')) === wanted[k];
        });
        if (ok && text) { ok = (row.getAttribute('data-name') || '').indexOf(text) !== -1; }
        row.hidden = !ok;
        total += 1;
        if (ok) { shown += 1; }
      });
      var count = document.getElementById('filter-count');
      if (count) { count.textContent = shown === total ? '' : shown + ' of ' + total + ' rows shown'; }
    }
  }

  document.addEventListener('DOMContentLoaded', function () {
    setupSorting();
    setupFilters();
  });
}());
