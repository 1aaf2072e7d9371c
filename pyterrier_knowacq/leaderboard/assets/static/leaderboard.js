/* knowacq leaderboard: sortable tables, filters, the table baseline, details rows, copy buttons, enlarged plots;
   filters, sort orders and baselines are kept in the address (#...) so that a reload or a shared link keeps them.
   Vanilla JS, no dependencies, works from file://. Data is only ever read with textContent / getAttribute /
   JSON.parse and written with textContent / setAttribute / new Option(): nothing from the results is parsed as HTML. */
(function () {
  'use strict';

  var each = function (list, fn) { Array.prototype.forEach.call(list, fn); };

  // --- the address: #f.backbone=x&q=bm25&s.t-dl19-abc=m:nDCG@10:d&b.t-dl19-abc=<system id> ---------------------
  function readState() {
    var hash = window.location.hash.replace(/^#/, '');
    if (hash.indexOf('=') === -1) { return new URLSearchParams(''); }  // a plain anchor (#t-...)
    return new URLSearchParams(hash);
  }
  var state = readState();

  function saveState() {
    var text = state.toString();
    var url = window.location.href.split('#')[0] + (text ? '#' + text : '');
    try {
      window.history.replaceState(null, '', url);
    } catch (e) {
      window.location.hash = text;
    }
  }

  function setState(key, value) {
    if (value === '' || value === null || value === undefined) { state.delete(key); } else { state.set(key, value); }
    saveState();
  }

  // --- sorting ------------------------------------------------------------------------------------------------------
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

  function mainRows(body) {
    return Array.prototype.filter.call(body.rows, function (r) { return !r.classList.contains('detail'); });
  }

  function sortTable(table, th, wanted) {
    var headers = Array.prototype.slice.call(th.parentNode.children);
    var index = headers.indexOf(th);
    var type = th.getAttribute('data-type') || 'text';
    var current = th.getAttribute('aria-sort');
    // numbers (measures) sort high-to-low first unless data-first says otherwise (the rank); text sorts A-Z first
    var first = th.getAttribute('data-first') || (type === 'num' ? 'descending' : 'ascending');
    var dir = wanted || (current === first ? (first === 'ascending' ? 'descending' : 'ascending') : first);
    headers.forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', dir);
    var body = table.tBodies[0];
    var rows = mainRows(body).map(function (r, i) { return [r, i]; });
    rows.sort(function (p, q) {
      var a = cellValue(p[0], index), b = cellValue(q[0], index);
      var c = compare(a, b, type);
      if (dir === 'descending' && a !== '' && b !== '') { c = -c; }
      return c || p[1] - q[1];
    });
    rows.forEach(function (p) {
      body.appendChild(p[0]);
      var detail = p[0].getAttribute('data-detail') && document.getElementById(p[0].getAttribute('data-detail'));
      if (detail) { body.appendChild(detail); }
    });
    return dir;
  }

  function tableKey(table) { return table.getAttribute('data-table'); }

  function setupSorting() {
    each(document.querySelectorAll('table.sortable'), function (table) {
      var heads = table.tHead ? table.tHead.rows[0].cells : [];
      each(heads, function (th) {
        th.addEventListener('click', function () {
          var dir = sortTable(table, th);
          if (tableKey(table) && th.getAttribute('data-key')) {
            setState('s.' + tableKey(table), th.getAttribute('data-key') + ':' + (dir === 'ascending' ? 'a' : 'd'));
          }
        });
      });
      var saved = tableKey(table) && state.get('s.' + tableKey(table));
      if (saved) {
        var cut = saved.lastIndexOf(':');
        var key = saved.slice(0, cut), dir = saved.slice(cut + 1) === 'a' ? 'ascending' : 'descending';
        each(heads, function (th) { if (th.getAttribute('data-key') === key) { sortTable(table, th, dir); } });
      }
    });
  }

  // --- filters ------------------------------------------------------------------------------------------------------
  function setupFilters() {
    var form = document.getElementById('filters');
    var dataNode = document.getElementById('lb-filters');
    if (!form || !dataNode) { return; }
    form.addEventListener('submit', function (ev) { ev.preventDefault(); });
    var choices = JSON.parse(dataNode.textContent);
    var selects = form.querySelectorAll('select[data-filter]');
    each(selects, function (sel) {
      var key = sel.getAttribute('data-filter');
      var values = choices[key] || [];
      values.forEach(function (v) { sel.appendChild(new Option(v, v)); });
      if (!values.length) { sel.disabled = true; }
      var saved = state.get('f.' + key);
      if (saved !== null && values.indexOf(saved) !== -1) { sel.value = saved; }
      sel.addEventListener('change', function () { setState('f.' + key, sel.value); apply(); });
    });
    var search = form.querySelector('input[data-filter="name"]');
    if (search) {
      if (state.get('q')) { search.value = state.get('q'); }
      search.addEventListener('input', function () { setState('q', search.value.trim()); apply(); });
    }

    function apply() {
      var wanted = {};
      each(selects, function (sel) {
        if (sel.value !== '') { wanted[sel.getAttribute('data-filter')] = sel.value; }
      });
      var text = search ? search.value.trim().toLowerCase() : '';
      var shown = 0, total = 0;
      each(document.querySelectorAll('table.lb[data-table] tbody tr.main'), function (row) {
        var ok = Object.keys(wanted).every(function (k) {
          return row.getAttribute('data-' + k.replace(/_/g, '-')) === wanted[k];
        });
        if (ok && text) { ok = (row.getAttribute('data-name') || '').indexOf(text) !== -1; }
        row.hidden = !ok;
        var detail = document.getElementById(row.getAttribute('data-detail') || '');
        if (detail) {
          var button = row.querySelector('button.expand');
          detail.hidden = !ok || !button || button.getAttribute('aria-expanded') !== 'true';
        }
        total += 1;
        if (ok) { shown += 1; }
      });
      var count = document.getElementById('filter-count');
      if (count) { count.textContent = shown === total ? '' : shown + ' of ' + total + ' rows shown'; }
    }
    apply();
  }

  // --- the table's baseline: markers recomputed from the precomputed comparisons --------------------------------
  function fmtP(p) {  // as Python's '{:.2g}': 0.046, 0.2, 1, 3.6e-08
    if (p === null || p === undefined || isNaN(p)) { return '–'; }
    p = Number(p);
    if (p === 0) { return '0'; }
    var e = Math.floor(Math.log10(Math.abs(p)));
    if (e < -4 || e >= 2) {
      return p.toExponential(1).replace('.0e', 'e').replace(/e([+-])(\d)$/, 'e$10$2');
    }
    var s = p.toPrecision(2);
    return s.indexOf('.') === -1 ? s : s.replace(/0+$/, '').replace(/\.$/, '');
  }

  function setupBaselines() {
    each(document.querySelectorAll('select.baseline[data-table]'), function (sel) {
      var tid = sel.getAttribute('data-table');
      var table = document.querySelector('table.lb[data-table="' + tid + '"]');
      var node = document.querySelector('script.lb-compare[data-table="' + tid + '"]');
      if (!table || !node) { return; }
      var data = JSON.parse(node.textContent);

      function show(base) {
        var per = data.b[base] || {};
        each(table.tBodies[0].rows, function (row) {
          if (!row.classList.contains('main')) { return; }
          var sid = row.getAttribute('data-sid');
          var badge = row.querySelector('.badge.base');
          if (badge) { badge.hidden = sid !== base; }
          each(row.querySelectorAll('td[data-m]'), function (td) {
            if (td.classList.contains('blank')) { return; }
            var m = data.measures[Number(td.getAttribute('data-m'))];
            var mark = td.querySelector('.sig');
            var cmp = sid === base ? null : ((per[m] || {})[sid] || null);
            var title = (td.getAttribute('title') || '').split('; ')[0];
            if (mark) {
              mark.textContent = cmp ? (cmp[0] > 0 ? '▲' : (cmp[0] < 0 ? '▼' : '')) : '';
              mark.classList.toggle('down', !!cmp && cmp[0] < 0);
            }
            if (cmp) {
              var verdict = cmp[0] > 0 ? 'significantly better than ' : (cmp[0] < 0 ? 'significantly worse than ' : 'not significantly different from ');
              title += '; ' + verdict + (data.names[base] || base) + ' (paired t-test over ' + cmp[4] +
                ' shared queries, Holm-corrected p = ' + fmtP(cmp[1]) + '; better on ' + cmp[2] + ', worse on ' + cmp[3] + ')';
            } else if (sid === base) {
              title += '; the table\'s baseline';
            }
            td.setAttribute('title', title);
          });
        });
      }
      var saved = state.get('b.' + tid);
      if (saved && data.b[saved] && saved !== sel.value) {
        sel.value = saved;
        show(saved);
      }
      sel.addEventListener('change', function () {
        show(sel.value);
        setState('b.' + tid, sel.value === data['default'] ? '' : sel.value);
      });
    });
  }

  // --- details rows, copy buttons -------------------------------------------------------------------------------
  function setupDetails() {
    each(document.querySelectorAll('button.expand[aria-controls]'), function (button) {
      button.addEventListener('click', function () {
        var detail = document.getElementById(button.getAttribute('aria-controls'));
        var open = button.getAttribute('aria-expanded') !== 'true';
        button.setAttribute('aria-expanded', open ? 'true' : 'false');
        if (detail) { detail.hidden = !open; }
      });
    });
    each(document.querySelectorAll('button.copy[data-copy]'), function (button) {
      button.addEventListener('click', function () {
        var source = document.getElementById(button.getAttribute('data-copy'));
        if (!source) { return; }
        var text = source.textContent;
        var done = function () {
          button.textContent = 'Copied';
          window.setTimeout(function () { button.textContent = 'Copy'; }, 1500);
        };
        var fallback = function () {
          var area = document.createElement('textarea');
          area.value = text;
          area.setAttribute('readonly', '');
          area.style.position = 'fixed';
          area.style.opacity = '0';
          document.body.appendChild(area);
          area.select();
          try { document.execCommand('copy'); done(); } catch (e) { /* the text stays selectable */ }
          document.body.removeChild(area);
        };
        if (navigator.clipboard && navigator.clipboard.writeText) {
          navigator.clipboard.writeText(text).then(done, fallback);
        } else {
          fallback();
        }
      });
    });
  }

  // --- plots: click to enlarge ------------------------------------------------------------------------------------
  function setupZoom() {
    var links = document.querySelectorAll('a.zoom');
    if (!links.length) { return; }
    var dialog = document.createElement('dialog');
    dialog.className = 'zoom-dialog';
    var close = document.createElement('button');
    close.type = 'button';
    close.className = 'zoom-close';
    close.textContent = 'Close ✕';
    var open = document.createElement('a');
    open.className = 'zoom-open';
    open.textContent = 'open the file';
    var img = document.createElement('img');
    img.alt = '';
    var bar = document.createElement('div');
    bar.className = 'zoom-bar';
    bar.appendChild(open);
    bar.appendChild(close);
    dialog.appendChild(bar);
    dialog.appendChild(img);
    document.body.appendChild(dialog);
    close.addEventListener('click', function () { dialog.close(); });
    dialog.addEventListener('click', function (ev) { if (ev.target === dialog) { dialog.close(); } });
    each(links, function (link) {
      link.addEventListener('click', function (ev) {
        if (typeof dialog.showModal !== 'function') { return; }  // the link opens the file itself
        ev.preventDefault();
        img.src = link.getAttribute('href');
        var small = link.querySelector('img');
        img.alt = small ? small.getAttribute('alt') : '';
        open.setAttribute('href', link.getAttribute('href'));
        dialog.showModal();
      });
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    setupSorting();
    setupDetails();
    setupFilters();
    setupBaselines();
    setupZoom();
  });
}());
