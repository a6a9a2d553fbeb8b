// fitbit_stream dashboard: re-aggregates the embedded datasets (one row per workout, visit,
// gym-hour or member) for the current filters and draws every chart as inline SVG.
// No library, no network: the offline page's Content-Security-Policy forbids both. A served page
// (body[data-live-api]) polls its own JSON endpoint and re-renders when the data's version moves.
// Text from the data is only ever set through textContent, never parsed as HTML.
(() => {
  'use strict';

  const SVG = 'http://www.w3.org/2000/svg';
  let DATA = JSON.parse(document.getElementById('fitbit-data').textContent);
  let D = DATA.datasets;
  const UNKNOWN = DATA.unknown;
  const AGE_ORDER = DATA.age_order;

  // --- DOM helpers -------------------------------------------------------------------------

  const attrs = (el, a) => {
    for (const [k, v] of Object.entries(a || {})) el.setAttribute(k, String(v));
    return el;
  };
  const h = (tag, a, text) => {
    const el = attrs(document.createElement(tag), a);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const s = (tag, a, text) => {
    const el = attrs(document.createElementNS(SVG, tag), a);
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const card = (kpi) => document.querySelector(`[data-kpi="${kpi}"]`);
  const healthCard = (key) => document.querySelector(`[data-health="${key}"]`);

  // --- numbers -----------------------------------------------------------------------------

  const missingValue = (x) => x === null || x === undefined || Number.isNaN(x);
  const fixed = (d) => (x) => (missingValue(x) ? '–' : x.toFixed(d));
  const f0 = fixed(0);
  const f1 = fixed(1);
  const f2 = fixed(2);
  const pct = (x) => (missingValue(x) ? '–' : `${(x * 100).toFixed(1)}%`);
  // Durations read as hours:minutes (285 minutes is 4:45), rounded to the minute.
  const hmm = (minutes) => {
    if (missingValue(minutes)) return '–';
    const total = Math.round(minutes);
    return `${Math.floor(total / 60)}:${String(total % 60).padStart(2, '0')}`;
  };
  const hoursHmm = (hours) => (missingValue(hours) ? '–' : hmm(hours * 60));
  // Gold minutes carry two decimals: summing whole hundredths keeps the total exact.
  const sumMinutes = (rows, key) => rows.reduce((a, r) => a + Math.round(r[key] * 100), 0) / 100;
  const mean = (rows, key) => (rows.length ? rows.reduce((a, r) => a + r[key], 0) / rows.length : null);
  const lowest = (rows, key) => rows.reduce((a, r) => Math.min(a, r[key]), Infinity);
  const highest = (rows, key) => rows.reduce((a, r) => Math.max(a, r[key]), -Infinity);
  const groupBy = (rows, keyOf) => {
    const groups = new Map();
    for (const r of rows) {
      const k = keyOf(r);
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(r);
    }
    return groups;
  };
  const byLabel = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  const unknownLast = (a, b) => (a === UNKNOWN) - (b === UNKNOWN) || byLabel(a, b);
  const ageIndex = (age) => {
    const i = AGE_ORDER.indexOf(age);
    return i < 0 ? AGE_ORDER.length : i;
  };
  const byMember = (a, b) =>
    (a.user_id === null) - (b.user_id === null) || (a.user_id || 0) - (b.user_id || 0) || byLabel(a.key, b.key);
  // ISO dates (YYYY-MM-DD) as UTC day numbers and back, for the days between two dates.
  const dayNumber = (iso) => Date.UTC(Number(iso.slice(0, 4)), Number(iso.slice(5, 7)) - 1, Number(iso.slice(8, 10))) / 864e5;
  const isoDay = (n) => new Date(n * 864e5).toISOString().slice(0, 10);
  const pad2 = (n) => String(n).padStart(2, '0');
  const utcTime = (ms, seconds) => {
    const t = new Date(ms);
    const hm = `${pad2(t.getUTCHours())}:${pad2(t.getUTCMinutes())}`;
    return seconds ? `${hm}:${pad2(t.getUTCSeconds())}` : hm;
  };

  // --- filters -----------------------------------------------------------------------------

  const FILTER = {
    age: document.getElementById('filter-age'),
    city: document.getElementById('filter-city'),
    gender: document.getElementById('filter-gender'),
    from: document.getElementById('filter-date-from'),
    to: document.getElementById('filter-date-to'),
  };
  const distinct = (rows, key) => [...new Set(rows.map((r) => r[key]))];
  // Options follow the data; a choice the new data no longer has stays selectable (and selected).
  const fill = (select, values) => {
    const keep = select.value;
    select.replaceChildren(h('option', { value: '' }, 'All'));
    for (const v of values) select.appendChild(h('option', { value: v }, v));
    if (keep && !values.includes(keep)) select.appendChild(h('option', { value: keep }, keep));
    select.value = keep;
  };
  let bounds = { first: '', last: '' };
  function refreshFilters() {
    const demographic = [...D.workouts, ...D.visits, ...D.members];
    fill(FILTER.age, distinct(demographic, 'age').sort((a, b) => ageIndex(a) - ageIndex(b) || byLabel(a, b)));
    fill(FILTER.city, distinct(demographic, 'city').sort(unknownLast));
    fill(FILTER.gender, distinct(demographic, 'gender').sort(unknownLast));
    const dates = distinct([...D.workouts, ...D.visits, ...D.occupancy], 'date').sort();
    const first = dates.length ? dates[0] : '';
    const last = dates.length ? dates[dates.length - 1] : '';
    // A date range left at the data's edges follows the data as days arrive; a narrowed one stays.
    if (!FILTER.from.value || FILTER.from.value === bounds.first) FILTER.from.value = first;
    if (!FILTER.to.value || FILTER.to.value === bounds.last) FILTER.to.value = last;
    for (const input of [FILTER.from, FILTER.to]) attrs(input, { min: first, max: last });
    bounds = { first, last };
  }
  const resetFilters = () => {
    FILTER.age.value = '';
    FILTER.city.value = '';
    FILTER.gender.value = '';
    FILTER.from.value = bounds.first;
    FILTER.to.value = bounds.last;
  };

  const current = () => ({
    age: FILTER.age.value,
    city: FILTER.city.value,
    gender: FILTER.gender.value,
    from: FILTER.from.value,
    to: FILTER.to.value,
  });
  const demoOk = (f, r) =>
    (!f.age || r.age === f.age) && (!f.city || r.city === f.city) && (!f.gender || r.gender === f.gender);
  const dateOk = (f, r) => (!f.from || r.date >= f.from) && (!f.to || r.date <= f.to);

  // --- chart primitives --------------------------------------------------------------------
  // Every chart is drawn at its container's pixel width (1 SVG unit = 1 CSS pixel), so text keeps
  // its size on a phone instead of shrinking with a scaled-down drawing; a resize redraws.

  const clip = (text, n) => (text.length > n ? `${text.slice(0, Math.max(1, n - 1))}…` : text);
  const widthOf = (plot) => Math.max(260, Math.floor(plot.getBoundingClientRect().width) || 640);
  const CHAR_W = 6.2; // average advance of an 11 px label, for layout before anything is measured

  function chartSvg(W, H, label, cls) {
    return s('svg', {
      viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: `chart${cls ? ` ${cls}` : ''}`, role: 'img',
      'aria-label': label,
    });
  }

  function empty(plot, message) {
    const W = widthOf(plot);
    const svg = chartSvg(W, 60, message, 'empty');
    svg.appendChild(s('text', { x: W / 2, y: 34, 'text-anchor': 'middle', class: 'muted' }, message));
    plot.appendChild(svg);
  }

  // The rendered width of a text of class ``cls``, measured in an invisible SVG of the page.
  let ruler = null;
  const textWidth = (text, cls) => {
    if (!ruler) ruler = document.body.appendChild(s('svg', { class: 'ruler', 'aria-hidden': 'true' }));
    const t = ruler.appendChild(s('text', { class: cls }, text));
    const w = t.getComputedTextLength();
    t.remove();
    return w || text.length * CHAR_W;
  };

  // Legend entries left to right, wrapping at the chart's width; returns the height used.
  function legend(svg, series, y, W) {
    let x = 0;
    let row = 0;
    for (const se of series) {
      const w = 28 + textWidth(se.name, 'legend');
      if (x > 0 && x + w > W) {
        x = 0;
        row += 1;
      }
      const top = y + row * 18;
      const swatch = se.color
        ? s('rect', { x, y: top, width: 12, height: 12, rx: 2, fill: se.color })
        : s('rect', { x, y: top, width: 12, height: 12, rx: 2, class: se.cls });
      svg.appendChild(swatch);
      svg.appendChild(s('text', { x: x + 16, y: top + 10, class: 'legend' }, se.name));
      x += w;
    }
    return (row + 1) * 18;
  }

  // Horizontal bars, one band per row and one bar per series, each labelled with its value.
  function hbars(plot, rows, series, opts) {
    if (!rows.length) return empty(plot, 'No data for these filters');
    const W = widthOf(plot);
    const labelW = Math.min(opts.labelW || 160, Math.round(W * 0.36));
    const valueW = 58;
    const barH = 14;
    const gap = 3;
    const legendH = series.length > 1 ? legend(s('g'), series, 0, W) + 6 : 4;
    const band = series.length * (barH + gap) + 9;
    const H = legendH + rows.length * band + 4;
    const max = rows.reduce((m, r) => Math.max(m, ...series.map((se) => r[se.key] || 0)), 0) || 1;
    const plotW = W - labelW - valueW;
    const svg = chartSvg(W, H, opts.title);
    if (series.length > 1) legend(svg, series, 4, W);
    const chars = Math.floor((labelW - 8) / CHAR_W);
    rows.forEach((r, i) => {
      const y0 = legendH + i * band + 4;
      const g = s('g', { class: 'row', 'data-key': r.key });
      const label = s('text', { x: labelW - 8, y: y0 + (band - 9) / 2 + 4, 'text-anchor': 'end', class: 'label' });
      label.textContent = clip(r.label, chars);
      label.appendChild(s('title', {}, r.label));
      g.appendChild(label);
      series.forEach((se, j) => {
        const v = r[se.key];
        const w = v > 0 ? Math.max(1, (v / max) * plotW) : 0;
        const y = y0 + j * (barH + gap);
        const bar = s('rect', {
          x: labelW, y, width: w, height: barH, rx: 2, class: `bar ${se.cls}`,
          'data-series': se.key, 'data-value': v,
        });
        bar.appendChild(s('title', {}, `${r.label} · ${se.name}: ${se.fmt(v)}`));
        g.appendChild(bar);
        g.appendChild(s('text', { x: labelW + w + 4, y: y + barH - 3, class: 'value', 'data-series': se.key }, se.fmt(v)));
      });
      svg.appendChild(g);
    });
    plot.appendChild(svg);
  }

  function ticks(max, integer) {
    const top = max > 0 ? max : 1;
    const raw = top / 5;
    const p = 10 ** Math.floor(Math.log10(raw));
    let step = [1, 2, 2.5, 5, 10].map((m) => m * p).find((c) => c >= raw);
    if (integer) step = Math.max(1, Math.ceil(step));
    const out = [];
    for (let v = 0; v < top + step - 1e-9; v += step) out.push(Math.round(v * 1e6) / 1e6);
    return out;
  }

  // Where a point's label may go, tried in order: right, left, then above and below the dot.
  const LABEL_SPOTS = [
    [8, 4, 'start'], [-8, 4, 'end'], [6, -8, 'start'], [6, 16, 'start'], [-6, -8, 'end'], [-6, 16, 'end'],
    [0, -10, 'middle'], [0, 19, 'middle'], [8, -18, 'start'], [8, 26, 'start'], [-8, -18, 'end'], [-8, 26, 'end'],
  ];
  const overlaps = (a, b) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;

  function scatter(plot, points, opts) {
    if (!points.length) return empty(plot, 'No data for these filters');
    const W = widthOf(plot);
    const H = Math.round(Math.min(340, Math.max(240, W * 0.55)));
    const m = { l: 48, r: 12, t: 14, b: 44 };
    // Headroom past the largest value keeps the outermost dots and their labels inside the plot.
    const xs = ticks(Math.max(...points.map((p) => p.x)) * 1.1, true);
    const ys = ticks(Math.max(...points.map((p) => p.y)) * 1.1, false);
    const xMax = xs[xs.length - 1];
    const yMax = ys[ys.length - 1];
    const px = (x) => m.l + (x / xMax) * (W - m.l - m.r);
    const py = (y) => H - m.b - (y / yMax) * (H - m.t - m.b);
    const svg = chartSvg(W, H, opts.title);
    // In the document before the labels: their size is measured, not guessed.
    plot.appendChild(svg);
    for (const x of xs) {
      svg.appendChild(s('line', { x1: px(x), x2: px(x), y1: m.t, y2: H - m.b, class: 'grid' }));
      svg.appendChild(s('text', { x: px(x), y: H - m.b + 16, 'text-anchor': 'middle', class: 'tick' }, String(x)));
    }
    for (const y of ys) {
      svg.appendChild(s('line', { x1: m.l, x2: W - m.r, y1: py(y), y2: py(y), class: 'grid' }));
      svg.appendChild(s('text', { x: m.l - 6, y: py(y) + 4, 'text-anchor': 'end', class: 'tick' }, String(y)));
    }
    svg.appendChild(s('text', { x: (m.l + W - m.r) / 2, y: H - 8, 'text-anchor': 'middle', class: 'axis' }, opts.xTitle));
    svg.appendChild(
      s('text', { x: 14, y: (m.t + H - m.b) / 2, 'text-anchor': 'middle', class: 'axis',
        transform: `rotate(-90 14 ${(m.t + H - m.b) / 2})` }, opts.yTitle),
    );
    const dots = [];
    for (const p of points) {
      const dot = s('circle', {
        cx: px(p.x), cy: py(p.y), r: 5, class: 'dot', 'data-key': p.key, 'data-x': p.x, 'data-y': p.y,
      });
      dot.appendChild(s('title', {}, `${p.label}: ${opts.xFmt(p.x)} ${opts.xTitle}, ${opts.yFmt(p.y)} ${opts.yTitle}`));
      svg.appendChild(dot);
      dots.push({ x0: px(p.x) - 6, y0: py(p.y) - 6, x1: px(p.x) + 6, y1: py(p.y) + 6 });
    }
    // One label per spot: members on (nearly) the same point share it ("user 7 +3"). Each label
    // takes the first place around its dot that covers no other label and no dot; one that finds
    // none is left out rather than drawn over another (the dot's tooltip and the figures table
    // still name it). Crowded spots are placed first, then left to right.
    const spots = [...groupBy(points, (p) => `${Math.round(px(p.x) / 8)} ${Math.round(py(p.y) / 8)}`).values()]
      .sort((a, b) => b.length - a.length || a[0].x - b[0].x || b[0].y - a[0].y || byLabel(a[0].key, b[0].key));
    const placed = [];
    const area = { x0: m.l, y0: 0, x1: W, y1: H - m.b };
    for (const group of spots) {
      const p = group[0];
      const more = group.length > 1 ? ` +${group.length - 1}` : '';
      const text = clip(p.label, 32) + more;
      const label = s('text', { class: 'point-label', 'data-key': p.key, 'data-members': group.length }, text);
      svg.appendChild(label);
      let box = null;
      for (const [dx, dy, anchor] of LABEL_SPOTS) {
        attrs(label, { x: px(p.x) + dx, y: py(p.y) + dy, 'text-anchor': anchor });
        const bb = label.getBBox();
        const w = bb.width || text.length * 5.6;
        const x0 = bb.width ? bb.x : anchor === 'start' ? px(p.x) + dx : anchor === 'end' ? px(p.x) + dx - w : px(p.x) + dx - w / 2;
        const y0 = bb.height ? bb.y : py(p.y) + dy - 9;
        const b = { x0: x0 - 1, y0: y0 - 1, x1: x0 + w + 1, y1: y0 + (bb.height || 12) + 1 };
        const inside = b.x0 >= area.x0 && b.x1 <= area.x1 && b.y0 >= area.y0 && b.y1 <= area.y1;
        if (inside && !placed.some((o) => overlaps(b, o)) && !dots.some((o) => overlaps(b, o))) {
          box = b;
          break;
        }
      }
      if (box) placed.push(box);
      else label.remove();
    }
  }

  // A time axis: a tick step that gives at most ~6 ticks over [t0, t1] (epoch ms).
  function timeTicks(t0, t1, maxTicks) {
    const steps = [1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400].map((x) => x * 1000);
    const step = steps.find((st) => (t1 - t0) / st <= maxTicks) || 86400e3 * Math.ceil((t1 - t0) / 86400e3 / maxTicks);
    const out = [];
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
    return { step, ticks: out };
  }

  const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7',
    '#9c755f', '#bab0ac'];

  // Lines over time, one per series ({name, points: [{t, v}]}); the last point of each is a dot.
  function lines(plot, series, opts) {
    const all = series.flatMap((se) => se.points);
    if (!all.length) return empty(plot, opts.emptyText || 'No batches recorded yet');
    const W = widthOf(plot);
    const legendH = legend(s('g'), series, 0, W) + 6;
    const H = legendH + 190;
    const m = { l: 52, r: 12, t: legendH + 8, b: 28 };
    let t0 = Math.min(...all.map((p) => p.t));
    let t1 = Math.max(...all.map((p) => p.t));
    if (t1 - t0 < 60e3) {
      t0 -= 30e3;
      t1 += 30e3;
    }
    const ys = ticks(Math.max(...all.map((p) => p.v)) * 1.05, opts.integer);
    const yMax = ys[ys.length - 1];
    const px = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
    const py = (v) => H - m.b - (v / yMax) * (H - m.t - m.b);
    const svg = chartSvg(W, H, opts.title);
    legend(svg, series, 4, W);
    for (const y of ys) {
      svg.appendChild(s('line', { x1: m.l, x2: W - m.r, y1: py(y), y2: py(y), class: 'grid' }));
      svg.appendChild(s('text', { x: m.l - 6, y: py(y) + 4, 'text-anchor': 'end', class: 'tick' }, opts.fmt(y)));
    }
    const tt = timeTicks(t0, t1, Math.max(2, Math.floor((W - m.l - m.r) / 70)));
    for (const t of tt.ticks) {
      svg.appendChild(s('text', { x: px(t), y: H - m.b + 16, 'text-anchor': 'middle', class: 'tick' },
        utcTime(t, tt.step < 60e3)));
    }
    for (const se of series) {
      if (!se.points.length) continue;
      const path = s('polyline', {
        points: se.points.map((p) => `${px(p.t).toFixed(1)},${py(p.v).toFixed(1)}`).join(' '),
        class: 'line', stroke: se.color, 'data-series': se.name,
      });
      path.appendChild(s('title', {}, se.name));
      svg.appendChild(path);
      const last = se.points[se.points.length - 1];
      const dot = s('circle', { cx: px(last.t), cy: py(last.v), r: 3, fill: se.color, class: 'last', 'data-series': se.name,
        'data-value': last.v });
      dot.appendChild(s('title', {}, `${se.name}: ${opts.fmt(last.v)} at ${utcTime(last.t, true)} UTC`));
      svg.appendChild(dot);
    }
    plot.appendChild(svg);
  }

  const LOW = [240, 244, 248];
  const HIGH = [8, 81, 156];
  const shade = (t) => `rgb(${LOW.map((c, i) => Math.round(c + (HIGH[i] - c) * t)).join(',')})`;

  function heatCell(svg, r, gym, day, hour, x, y, w, hgt, max, showValue) {
    if (!r) {
      svg.appendChild(s('rect', { x: x + 1, y: y + 1, width: w - 2, height: hgt - 2, class: 'cell none' }));
      return;
    }
    const t = r.avg_occupancy / max;
    const cell = s('rect', {
      x: x + 1, y: y + 1, width: Math.max(1, w - 2), height: hgt - 2, rx: 2, fill: shade(t), class: 'cell',
      'data-gym': gym, 'data-date': day, 'data-hour': hour, 'data-visitors': r.visitors,
      'data-avg': r.avg_occupancy, 'data-peak': r.peak_occupancy,
    });
    cell.appendChild(
      s('title', {}, `gym ${gym}, ${day} ${pad2(hour)}:00 UTC: ${r.visitors} visitors, ` +
        `avg occupancy ${f2(r.avg_occupancy)}, peak ${r.peak_occupancy}`),
    );
    svg.appendChild(cell);
    if (showValue) {
      svg.appendChild(
        s('text', { x: x + w / 2, y: y + hgt / 2 + 3, 'text-anchor': 'middle',
          class: t > 0.55 ? 'cell-value light' : 'cell-value' }, f2(r.avg_occupancy)),
      );
    }
  }

  // One grid per gym, the cell's colour its avg occupancy. Wide: a row per date, a column per UTC
  // hour. Narrow (a phone): a row per hour and a column per date, so 24 columns never squeeze.
  function heatmap(plot, rows) {
    if (!rows.length) return empty(plot, 'No data for these filters');
    const max = rows.reduce((a, r) => Math.max(a, r.avg_occupancy), 0) || 1;
    const gyms = [...new Set(rows.map((r) => r.gym))].sort((a, b) => a - b);
    const width = widthOf(plot);
    const wide = width >= 84 + 24 * 22 + 4;
    for (const gym of gyms) {
      const mine = rows.filter((r) => r.gym === gym);
      const days = [...new Set(mine.map((r) => r.date))].sort();
      const at = new Map(mine.map((r) => [`${r.date} ${r.hour_of_day}`, r]));
      plot.appendChild(h('h3', { class: 'gym' }, `Gym ${gym}`));
      let svg;
      if (wide) {
        const labelW = 84;
        const cellW = Math.min(36, Math.floor((width - labelW - 4) / 24));
        const cellH = 22;
        const top = 18;
        const W = labelW + 24 * cellW + 4;
        svg = chartSvg(W, top + days.length * cellH + 4, `Hourly occupancy of gym ${gym}`, 'heat');
        for (let hour = 0; hour < 24; hour += 1) {
          svg.appendChild(s('text', { x: labelW + hour * cellW + cellW / 2, y: 12, 'text-anchor': 'middle', class: 'tick' },
            String(hour)));
        }
        days.forEach((day, i) => {
          const y = top + i * cellH;
          svg.appendChild(s('text', { x: labelW - 6, y: y + cellH / 2 + 4, 'text-anchor': 'end', class: 'label' }, day));
          for (let hour = 0; hour < 24; hour += 1) {
            heatCell(svg, at.get(`${day} ${hour}`), gym, day, hour, labelW + hour * cellW, y, cellW, cellH, max, true);
          }
        });
      } else {
        const labelW = 40;
        const top = 18;
        const cellH = 18;
        const colW = Math.min(64, (width - labelW - 4) / days.length);
        const W = Math.ceil(labelW + days.length * colW + 4);
        svg = chartSvg(W, top + 24 * cellH + 4, `Hourly occupancy of gym ${gym}`, 'heat');
        const every = Math.max(1, Math.ceil(38 / colW));
        days.forEach((day, i) => {
          if (i % every === 0) {
            svg.appendChild(s('text', { x: labelW + i * colW + colW / 2, y: 12, 'text-anchor': 'middle', class: 'tick' },
              day.slice(5)));
          }
        });
        for (let hour = 0; hour < 24; hour += 1) {
          const y = top + hour * cellH;
          svg.appendChild(s('text', { x: labelW - 6, y: y + cellH / 2 + 4, 'text-anchor': 'end', class: 'tick' },
            `${pad2(hour)}h`));
          days.forEach((day, i) => {
            heatCell(svg, at.get(`${day} ${hour}`), gym, day, hour, labelW + i * colW, y, colW, cellH, max, colW >= 30);
          });
        }
      }
      svg.setAttribute('data-gym', gym);
      plot.appendChild(svg);
    }
    const scale = chartSvg(Math.min(width, 400), 26, 'colour scale', 'scale');
    scale.appendChild(s('text', { x: 0, y: 16, class: 'legend' }, 'avg occupancy 0'));
    const step = Math.min(22, (Math.min(width, 400) - 150) / 11);
    for (let i = 0; i <= 10; i += 1) {
      scale.appendChild(s('rect', { x: 100 + i * step, y: 4, width: step, height: 14, fill: shade(i / 10) }));
    }
    scale.appendChild(s('text', { x: 100 + 11 * step + 6, y: 16, class: 'legend' }, f2(max)));
    plot.appendChild(scale);
  }

  // Per day: workouts (bars), time in gym and exercising (bars, h:mm) and mean avg bpm (line), in
  // three panels sharing the date axis. Values are written on the marks while they have room.
  function trend(plot, days) {
    if (!days.length) return empty(plot, 'No data for these filters');
    const W = widthOf(plot);
    const m = { l: 44, r: 10 };
    const band = (W - m.l - m.r) / days.length;
    const x = (i) => m.l + i * band;
    const panelH = 96;
    const titleH = 18;
    const panels = 3;
    const H = panels * (panelH + titleH) + 22;
    const svg = chartSvg(W, H, 'Daily trend');
    const panelTop = (k) => k * (panelH + titleH) + titleH;
    const barsPanel = (k, title, series, fmt) => {
      const top = panelTop(k);
      svg.appendChild(s('text', { x: 0, y: top - 5, class: 'legend panel-title' }, title));
      const max = Math.max(1, ...days.flatMap((d) => series.map((se) => d[se.key] || 0)));
      const y = (v) => top + panelH - (v / max) * (panelH - 14);
      svg.appendChild(s('line', { x1: m.l, x2: W - m.r, y1: top + panelH, y2: top + panelH, class: 'grid' }));
      svg.appendChild(s('text', { x: m.l - 6, y: y(max) + 4, 'text-anchor': 'end', class: 'tick' }, fmt(max)));
      // Bars stay slim when there are few days: a 600 px block per day reads as a wall, not a bar.
      const barW = Math.max(1, Math.min(56, (band * 0.8) / series.length));
      const labelled = barW >= Math.max(...days.flatMap((d) => series.map((se) => fmt(d[se.key]).length))) * 6 + 2;
      days.forEach((d, i) => {
        series.forEach((se, j) => {
          const v = d[se.key] || 0;
          const bx = x(i) + (band - barW * series.length) / 2 + j * barW;
          const bar = s('rect', {
            x: bx, y: y(v), width: Math.max(1, barW - 1), height: top + panelH - y(v), class: `bar ${se.cls}`,
            'data-date': d.key, 'data-series': se.key, 'data-value': v,
          });
          bar.appendChild(s('title', {}, `${d.key} · ${se.name}: ${fmt(v)}`));
          svg.appendChild(bar);
          if (labelled) {
            svg.appendChild(s('text', { x: bx + barW / 2, y: y(v) - 3, 'text-anchor': 'middle', class: 'value',
              'data-date': d.key, 'data-series': se.key }, fmt(v)));
          }
        });
      });
    };
    barsPanel(0, 'Workouts', [{ key: 'workouts', name: 'workouts', cls: 's-count' }], f0);
    barsPanel(1, 'Time in gym / exercising (h:mm)', [
      { key: 'minutes_in_gym', name: 'time in gym', cls: 's-gym' },
      { key: 'minutes_exercising', name: 'time exercising', cls: 's-exercise' },
    ], hmm);
    // Average bpm: a line through the days that have workouts, on a scale from the lowest value.
    const top = panelTop(2);
    svg.appendChild(s('text', { x: 0, y: top - 5, class: 'legend panel-title' }, 'Average bpm'));
    const known = days.filter((d) => d.avg_bpm !== null);
    if (known.length) {
      // Ten bpm below the lowest day keeps its dot and label off the axis line.
      const lo = Math.max(0, Math.floor(Math.min(...known.map((d) => d.avg_bpm)) / 10) * 10 - 10);
      // Ten bpm of headroom above the highest day leaves room for its label.
      const hi = Math.ceil(Math.max(...known.map((d) => d.avg_bpm)) / 10) * 10 + 10;
      const y = (v) => top + panelH - ((v - lo) / (hi - lo)) * (panelH - 14);
      svg.appendChild(s('line', { x1: m.l, x2: W - m.r, y1: top + panelH, y2: top + panelH, class: 'grid' }));
      svg.appendChild(s('text', { x: m.l - 6, y: top + panelH + 4, 'text-anchor': 'end', class: 'tick' }, String(lo)));
      svg.appendChild(s('text', { x: m.l - 6, y: y(hi) + 4, 'text-anchor': 'end', class: 'tick' }, String(hi)));
      const cx = (d) => x(days.indexOf(d)) + band / 2;
      svg.appendChild(s('polyline', {
        points: known.map((d) => `${cx(d).toFixed(1)},${y(d.avg_bpm).toFixed(1)}`).join(' '), class: 'line s-line',
      }));
      const labelled = band >= 34;
      for (const d of known) {
        const dot = s('circle', { cx: cx(d), cy: y(d.avg_bpm), r: 4, class: 'dot', 'data-date': d.key,
          'data-series': 'avg_bpm', 'data-value': d.avg_bpm });
        dot.appendChild(s('title', {}, `${d.key} · average bpm: ${f1(d.avg_bpm)}`));
        svg.appendChild(dot);
        if (labelled) {
          svg.appendChild(s('text', { x: cx(d), y: y(d.avg_bpm) - 7, 'text-anchor': 'middle', class: 'value',
            'data-date': d.key, 'data-series': 'avg_bpm' }, f1(d.avg_bpm)));
        }
      }
    }
    // Date labels under the last panel, thinned to what fits.
    const every = Math.max(1, Math.ceil(44 / band));
    days.forEach((d, i) => {
      if (i % every === 0) {
        svg.appendChild(s('text', { x: x(i) + band / 2, y: H - 6, 'text-anchor': 'middle', class: 'tick' }, d.key.slice(5)));
      }
    });
    plot.appendChild(svg);
  }

  // The numbers of a chart as a table; each row carries them raw in data-* attributes.
  function table(columns, rows) {
    const t = h('table');
    const head = h('tr');
    for (const c of columns) head.appendChild(h('th', { scope: 'col' }, c.label));
    t.appendChild(h('thead')).appendChild(head);
    const body = t.appendChild(h('tbody'));
    for (const r of rows) {
      const tr = h('tr', { 'data-key': r.key });
      for (const c of columns) {
        if (c.key !== 'label') tr.setAttribute(`data-${c.key}`, missingValue(r[c.key]) ? '' : String(r[c.key]));
        tr.appendChild(h('td', { class: c.key === 'label' ? 'text' : 'num' }, c.key === 'label' ? r.label : c.fmt(r[c.key])));
      }
      body.appendChild(tr);
    }
    return t;
  }

  function figures(kpi, columns, rows) {
    card(kpi).querySelector('.figures').replaceChildren(table(columns, rows));
  }

  function chart(kpi, rowCount) {
    const el = card(kpi);
    el.setAttribute('data-rows', rowCount);
    const plot = el.querySelector('.plot');
    plot.replaceChildren();
    return plot;
  }

  function tile(kpi, value, text) {
    const el = card(kpi);
    el.setAttribute('data-value', value === null ? '' : String(value));
    el.querySelector('.value').textContent = text;
  }

  // --- the KPIs ----------------------------------------------------------------------------

  function members(visits) {
    return [...groupBy(visits, (r) => r.member)].map(([member, rs]) => {
      const exercising = sumMinutes(rs, 'minutes_exercising');
      return {
        key: member, label: member, user_id: rs[0].user_id, logins: rs.length,
        minutes_in_gym: sumMinutes(rs, 'minutes_in_gym'), minutes_exercising: exercising,
        hours: exercising / 60,
      };
    }).sort(byMember);
  }

  // Every day from the first to the last with data, days without any at zero. Over more than a
  // year (a stray date far from the rest), only the days with data: a gap of years is no trend.
  function daily(workouts, visits) {
    const dates = [...new Set([...workouts, ...visits].map((r) => r.date))].sort();
    if (!dates.length) return [];
    const w = groupBy(workouts, (r) => r.date);
    const v = groupBy(visits, (r) => r.date);
    const first = dayNumber(dates[0]);
    const last = dayNumber(dates[dates.length - 1]);
    const days = last - first <= 400 ? Array.from({ length: last - first + 1 }, (_, i) => isoDay(first + i)) : dates;
    const out = [];
    for (const day of days) {
      const ws = w.get(day) || [];
      const vs = v.get(day) || [];
      out.push({
        key: day, label: day, workouts: ws.length, avg_bpm: mean(ws, 'avg_bpm'),
        minutes_in_gym: sumMinutes(vs, 'minutes_in_gym'), minutes_exercising: sumMinutes(vs, 'minutes_exercising'),
      });
    }
    return out;
  }

  function distribution(kpi, rows, key, order) {
    const out = [...groupBy(rows, (r) => r[key])]
      .map(([value, rs]) => ({ key: value, label: value, members: rs.length }))
      .sort(order);
    const series = [{ key: 'members', name: 'members', cls: 's-count', fmt: f0 }];
    hbars(chart(kpi, out.length), out, series, { title: card(kpi).dataset.title, labelW: 130 });
    figures(kpi, [{ key: 'label', label: key }, { key: 'members', label: 'Members', fmt: f0 }], out);
  }

  function renderKpis() {
    const f = current();
    const workouts = D.workouts.filter((r) => demoOk(f, r) && dateOk(f, r));
    const visits = D.visits.filter((r) => demoOk(f, r) && dateOk(f, r));
    const occupancy = D.occupancy.filter((r) => dateOk(f, r));
    const people = D.members.filter((r) => demoOk(f, r));

    const avgBpm = mean(workouts, 'avg_bpm');
    tile('total_workouts', workouts.length, f0(workouts.length));
    tile('total_visits', visits.length, f0(visits.length));
    tile('total_members', people.length, f0(people.length));
    tile('minutes_in_gym', sumMinutes(visits, 'minutes_in_gym'), hmm(sumMinutes(visits, 'minutes_in_gym')));
    tile('minutes_exercising', sumMinutes(visits, 'minutes_exercising'), hmm(sumMinutes(visits, 'minutes_exercising')));
    tile('avg_bpm', avgBpm, avgBpm === null ? '–' : f1(avgBpm));

    const days = daily(workouts, visits);
    trend(chart('daily_trend', days.length), days);
    figures('daily_trend', [
      { key: 'label', label: 'Date' },
      { key: 'workouts', label: 'Workouts', fmt: f0 },
      { key: 'minutes_in_gym', label: 'Time in gym', fmt: hmm },
      { key: 'minutes_exercising', label: 'Time exercising', fmt: hmm },
      { key: 'avg_bpm', label: 'Avg bpm', fmt: f1 },
    ], days);

    const hr = [...groupBy(workouts, (r) => r.age_gender)]
      .map(([group, rs]) => ({
        key: group, label: group, age: rs[0].age, gender: rs[0].gender, workouts: rs.length,
        min: lowest(rs, 'min_bpm'), avg: mean(rs, 'avg_bpm'), max: highest(rs, 'max_bpm'),
      }))
      .sort((a, b) => ageIndex(a.age) - ageIndex(b.age) || unknownLast(a.gender, b.gender));
    hbars(chart('hr_by_group', hr.length), hr, [
      { key: 'min', name: 'min bpm', cls: 's-min', fmt: f1 },
      { key: 'avg', name: 'avg bpm', cls: 's-avg', fmt: f1 },
      { key: 'max', name: 'max bpm', cls: 's-max', fmt: f1 },
    ], { title: 'Heart rate by age group and gender', labelW: 150 });
    figures('hr_by_group', [
      { key: 'label', label: 'Age group / gender' },
      { key: 'workouts', label: 'Workouts', fmt: f0 },
      { key: 'min', label: 'Min bpm', fmt: f2 },
      { key: 'avg', label: 'Avg bpm', fmt: f2 },
      { key: 'max', label: 'Max bpm', fmt: f2 },
    ], hr);

    const perMember = members(visits);
    hbars(chart('gym_vs_exercise', perMember.length), perMember, [
      { key: 'minutes_in_gym', name: 'time in gym', cls: 's-gym', fmt: hmm },
      { key: 'minutes_exercising', name: 'time exercising', cls: 's-exercise', fmt: hmm },
    ], { title: 'Time in gym vs time exercising', labelW: 215 });
    figures('gym_vs_exercise', [
      { key: 'label', label: 'Member' },
      { key: 'logins', label: 'Visits', fmt: f0 },
      { key: 'minutes_in_gym', label: 'Time in gym', fmt: hmm },
      { key: 'minutes_exercising', label: 'Time exercising', fmt: hmm },
    ], perMember);

    const points = perMember.map((m) => ({ key: m.key, label: m.label, x: m.logins, y: m.hours }));
    scatter(chart('logins_vs_hours', points.length), points, {
      title: 'Gym logins vs workout hours', xTitle: 'gym logins', yTitle: 'workout hours', xFmt: f0, yFmt: hoursHmm,
    });
    figures('logins_vs_hours', [
      { key: 'label', label: 'Member' },
      { key: 'logins', label: 'Gym logins', fmt: f0 },
      { key: 'hours', label: 'Workout time', fmt: hoursHmm },
    ], perMember);

    const total = sumMinutes(visits, 'minutes_exercising');
    const shares = total > 0
      ? perMember.map((m) => ({ ...m, share: m.minutes_exercising / total }))
        .sort((a, b) => b.share - a.share || byMember(a, b))
      : [];
    const sharePlot = chart('workout_share', shares.length);
    if (total > 0) {
      // Bars for the members with workout time; the table lists the others at 0% too.
      const withTime = shares.filter((m) => m.share > 0);
      hbars(sharePlot, withTime, [{ key: 'share', name: 'share', cls: 's-share', fmt: pct }], {
        title: 'Share of workout time', labelW: 215,
      });
    } else {
      empty(sharePlot, 'No workout time for these filters');
    }
    figures('workout_share', [
      { key: 'label', label: 'Member' },
      { key: 'minutes_exercising', label: 'Time exercising', fmt: hmm },
      { key: 'share', label: 'Share', fmt: pct },
    ], shares);

    const occ = occupancy.map((r) => ({
      ...r, key: `${r.gym} ${r.date} ${r.hour_of_day}`,
      label: `gym ${r.gym} ${r.date} ${pad2(r.hour_of_day)}:00`,
    })).sort((a, b) => a.gym - b.gym || byLabel(a.date, b.date) || a.hour_of_day - b.hour_of_day);
    heatmap(chart('occupancy_heatmap', occ.length), occ);
    figures('occupancy_heatmap', [
      { key: 'label', label: 'Gym hour (UTC)' },
      { key: 'visitors', label: 'Visitors', fmt: f0 },
      { key: 'avg_occupancy', label: 'Avg occupancy', fmt: f2 },
      { key: 'peak_occupancy', label: 'Peak occupancy', fmt: f0 },
    ], occ);

    distribution('age_distribution', people, 'age', (a, b) => ageIndex(a.key) - ageIndex(b.key) || byLabel(a.key, b.key));
    distribution('gender_distribution', people, 'gender', (a, b) => unknownLast(a.key, b.key));
    distribution('city_distribution', people, 'city', (a, b) => b.members - a.members || unknownLast(a.key, b.key));

    const shown = document.getElementById('selection');
    shown.textContent = `${workouts.length} workouts, ${visits.length} visits, ${occupancy.length} gym-hours, ` +
      `${people.length} members` + (f.from || f.to ? ` · ${f.from || '…'} to ${f.to || '…'}` : '');
  }

  // --- pipeline health ---------------------------------------------------------------------

  function healthPlot(key) {
    const plot = healthCard(key).querySelector('.plot');
    plot.replaceChildren();
    return plot;
  }

  const count = (n, one, many) => `${f0(n)} ${n === 1 ? one : many}`;
  const backlog = (r) => {
    const parts = [];
    if (r.backlog_offsets !== null) parts.push(count(r.backlog_offsets, 'offset', 'offsets'));
    if (r.backlog_files !== null) parts.push(count(r.backlog_files, 'file', 'files'));
    return parts.join(', ') || '–';
  };
  const seconds = (ms) => (missingValue(ms) ? '–' : (ms / 1000).toFixed(1));

  function renderHealth() {
    const health = DATA.health;
    // A batch without a time cannot be placed on a time axis (the recorder always writes one).
    const progress = health ? health.progress.filter((r) => !missingValue(r.time_ms)) : [];
    const byQuery = [...groupBy(progress, (r) => r.query_name)].sort((a, b) => byLabel(a[0], b[0]));
    const colour = new Map(byQuery.map(([q], i) => [q, PALETTE[i % PALETTE.length]]));

    const last = byQuery.map(([q, rs]) => {
      const r = rs.reduce((a, b) => (b.time_ms > a.time_ms || (b.time_ms === a.time_ms && b.batch_id > a.batch_id) ? b : a));
      return { ...r, key: q, label: q, at: r.time_ms };
    });
    const at = (ms) => `${new Date(ms).toISOString().slice(0, 10)} ${utcTime(ms, true)}`;
    const wrap = healthCard('last_batch').querySelector('.table-wrap');
    if (last.length) {
      wrap.replaceChildren(table([
        { key: 'label', label: 'Query' },
        { key: 'batch_id', label: 'Batch', fmt: f0 },
        { key: 'at', label: 'At (UTC)', fmt: at },
        { key: 'num_input_rows', label: 'Rows', fmt: f0 },
        { key: 'processed_rows_per_second', label: 'Rows/s', fmt: f0 },
        { key: 'batch_duration_ms', label: 'Duration (s)', fmt: seconds },
        { key: 'backlog', label: 'Backlog', fmt: (x) => x },
      ], last.map((r) => ({ ...r, backlog: backlog(r) }))));
    } else {
      wrap.replaceChildren(h('p', { class: 'muted' }, health ? 'No batches recorded yet' : 'Not part of this page'));
    }

    // Lag in its own unit: Kafka offsets and Delta files do not share an axis.
    const lagPlot = healthPlot('lag');
    const units = [['backlog_offsets', 'offsets behind latest'], ['backlog_files', 'files outstanding']];
    let drawn = 0;
    for (const [key, unit] of units) {
      const series = byQuery
        .map(([q, rs]) => ({ name: q, color: colour.get(q),
          points: rs.filter((r) => r[key] !== null).map((r) => ({ t: r.time_ms, v: r[key] })) }))
        .filter((se) => se.points.length);
      if (!series.length) continue;
      lagPlot.appendChild(h('h3', { class: 'gym' }, unit));
      lines(lagPlot, series, { title: `Lag per query: ${unit}`, fmt: f0, integer: true });
      drawn += 1;
    }
    if (!drawn) empty(lagPlot, 'No batches recorded yet');
    healthCard('lag').querySelector('.figures').replaceChildren(table([
      { key: 'label', label: 'Query' },
      { key: 'backlog_offsets', label: 'Offsets behind', fmt: f0 },
      { key: 'backlog_files', label: 'Files outstanding', fmt: f0 },
    ], last));

    const latency = byQuery.map(([q, rs]) => ({ name: q, color: colour.get(q),
      points: rs.filter((r) => r.batch_duration_ms !== null).map((r) => ({ t: r.time_ms, v: r.batch_duration_ms / 1000 })) }))
      .filter((se) => se.points.length);
    lines(healthPlot('latency'), latency, { title: 'Batch latency per query (s)', fmt: (v) => String(v) });
    healthCard('latency').querySelector('.figures').replaceChildren(table([
      { key: 'label', label: 'Query' },
      { key: 'batches', label: 'Batches shown', fmt: f0 },
      { key: 'mean', label: 'Mean (s)', fmt: seconds },
      { key: 'worst', label: 'Worst (s)', fmt: seconds },
    ], byQuery.map(([q, rs]) => {
      const timed = rs.filter((r) => r.batch_duration_ms !== null);
      return { key: q, label: q, batches: rs.length, mean: timed.length ? mean(timed, 'batch_duration_ms') : null,
        worst: timed.length ? highest(timed, 'batch_duration_ms') : null };
    })));

    const quarantine = health ? health.quarantine : [];
    const reasons = [...groupBy(quarantine, (r) => r.reason)]
      .map(([reason, rs]) => ({ key: reason, label: reason, records: rs.reduce((a, r) => a + r.records, 0) }))
      .sort((a, b) => b.records - a.records || byLabel(a.key, b.key));
    const qPlot = healthPlot('quarantine');
    healthCard('quarantine').setAttribute('data-rows', reasons.length);
    if (reasons.length) {
      hbars(qPlot, reasons, [{ key: 'records', name: 'records', cls: 's-max', fmt: f0 }],
        { title: 'Quarantined records by reason', labelW: 140 });
    } else {
      empty(qPlot, 'Nothing quarantined');
    }
    healthCard('quarantine').querySelector('.figures').replaceChildren(table([
      { key: 'label', label: 'Reason / topic' },
      { key: 'records', label: 'Records', fmt: f0 },
    ], quarantine.map((r) => ({ ...r, key: `${r.reason} ${r.topic}`, label: `${r.reason} / ${r.topic}` }))));
  }

  function render() {
    const notice = document.getElementById('notice');
    const missing = DATA.missing || [];
    notice.hidden = !missing.length;
    notice.textContent = missing.length
      ? `Waiting for ${missing.length} table(s) the pipeline has not written yet: ${missing.join(', ')}` : '';
    renderKpis();
    renderHealth();
    document.body.setAttribute('data-version', DATA.version || '');
    document.body.setAttribute('data-renders', String(Number(document.body.getAttribute('data-renders') || 0) + 1));
  }

  for (const el of [FILTER.age, FILTER.city, FILTER.gender, FILTER.from, FILTER.to]) {
    el.addEventListener('change', render);
    el.addEventListener('input', render);
  }
  document.getElementById('filter-reset').addEventListener('click', () => {
    resetFilters();
    render();
  });

  // Charts are drawn at their container's width: redraw when the page's width changes.
  let pageWidth = document.documentElement.clientWidth;
  let resizing = 0;
  window.addEventListener('resize', () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      if (document.documentElement.clientWidth !== pageWidth) {
        pageWidth = document.documentElement.clientWidth;
        render();
      }
    }, 150);
  });

  refreshFilters();
  resetFilters();
  render();

  // --- live refresh (served pages only) ----------------------------------------------------
  // The endpoint answers 304 while the tables' Delta versions stand still; a new version brings
  // the whole payload, which replaces the data and redraws with the user's filters kept.
  const api = document.body.dataset.liveApi;
  if (api && window.location.protocol.startsWith('http')) {
    const every = Number(document.body.dataset.pollMs) || 2000;
    const status = document.getElementById('live-status');
    const say = (state, text) => {
      status.dataset.state = state;
      status.textContent = text;
    };
    say('wait', '· connecting');
    const poll = async () => {
      // A tab in the background asks nothing; it catches up at its first poll once shown.
      if (document.hidden) {
        setTimeout(poll, every);
        return;
      }
      try {
        const headers = DATA.version ? { 'If-None-Match': `"${DATA.version}"` } : {};
        const res = await fetch(api, { headers, cache: 'no-store' });
        if (res.status === 200) {
          DATA = await res.json();
          D = DATA.datasets;
          document.getElementById('generated').textContent = DATA.generated_at;
          refreshFilters();
          render();
        } else if (res.status === 304) {
          // Read the empty body to its end: a response left unread is cancelled when collected,
          // which the browser reports as a failed request.
          await res.arrayBuffer();
        } else {
          throw new Error(`HTTP ${res.status}`);
        }
        say('live', '· live');
      } catch (err) {
        say('error', `· server not answering (${err.message}), retrying`);
      }
      setTimeout(poll, every);
    };
    setTimeout(poll, every);
  }
})();
