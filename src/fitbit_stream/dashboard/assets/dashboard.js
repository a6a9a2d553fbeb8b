// fitbit_stream dashboard: re-aggregates the embedded datasets (one row per workout, visit,
// gym-hour or member) for the current filters and draws every chart as inline SVG.
// No library, no network: the page's Content-Security-Policy forbids both.
// Text from the data is only ever set through textContent, never parsed as HTML.
(() => {
  'use strict';

  const SVG = 'http://www.w3.org/2000/svg';
  const DATA = JSON.parse(document.getElementById('fitbit-data').textContent);
  const D = DATA.datasets;
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

  // --- numbers -----------------------------------------------------------------------------

  const fixed = (d) => (x) => (x === null || x === undefined || Number.isNaN(x) ? '–' : x.toFixed(d));
  const f0 = fixed(0);
  const f1 = fixed(1);
  const f2 = fixed(2);
  const pct = (x) => (x === null ? '–' : `${(x * 100).toFixed(1)}%`);
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

  // --- filters -----------------------------------------------------------------------------

  const FILTER = {
    age: document.getElementById('filter-age'),
    city: document.getElementById('filter-city'),
    gender: document.getElementById('filter-gender'),
    from: document.getElementById('filter-date-from'),
    to: document.getElementById('filter-date-to'),
  };
  const demographic = [...D.workouts, ...D.visits, ...D.members];
  const distinct = (rows, key) => [...new Set(rows.map((r) => r[key]))];
  const fill = (select, values) => {
    select.replaceChildren(h('option', { value: '' }, 'All'));
    for (const v of values) select.appendChild(h('option', { value: v }, v));
  };
  fill(FILTER.age, distinct(demographic, 'age').sort((a, b) => ageIndex(a) - ageIndex(b) || byLabel(a, b)));
  fill(FILTER.city, distinct(demographic, 'city').sort(unknownLast));
  fill(FILTER.gender, distinct(demographic, 'gender').sort(unknownLast));
  const dates = distinct([...D.workouts, ...D.visits, ...D.occupancy], 'date').sort();
  const firstDate = dates.length ? dates[0] : '';
  const lastDate = dates.length ? dates[dates.length - 1] : '';
  const resetFilters = () => {
    FILTER.age.value = '';
    FILTER.city.value = '';
    FILTER.gender.value = '';
    FILTER.from.value = firstDate;
    FILTER.to.value = lastDate;
  };
  for (const input of [FILTER.from, FILTER.to]) attrs(input, { min: firstDate, max: lastDate });

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

  const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

  function empty(plot, message) {
    const svg = s('svg', { viewBox: '0 0 640 60', class: 'chart empty', role: 'img', 'aria-label': message });
    svg.appendChild(s('text', { x: 320, y: 34, 'text-anchor': 'middle', class: 'muted' }, message));
    plot.appendChild(svg);
  }

  function legend(svg, series, y) {
    let x = 0;
    for (const se of series) {
      svg.appendChild(s('rect', { x, y, width: 12, height: 12, rx: 2, class: se.cls }));
      svg.appendChild(s('text', { x: x + 16, y: y + 10, class: 'legend' }, se.name));
      x += 24 + se.name.length * 7;
    }
  }

  // Horizontal bars, one band per row and one bar per series, each labelled with its value.
  function hbars(plot, rows, series, opts) {
    if (!rows.length) return empty(plot, 'No data for these filters');
    const W = 640;
    const labelW = opts.labelW || 160;
    const valueW = 64;
    const barH = 14;
    const gap = 3;
    const legendH = series.length > 1 ? 24 : 4;
    const band = series.length * (barH + gap) + 9;
    const H = legendH + rows.length * band + 4;
    const max = rows.reduce((m, r) => Math.max(m, ...series.map((se) => r[se.key] || 0)), 0) || 1;
    const plotW = W - labelW - valueW;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': opts.title });
    if (series.length > 1) legend(svg, series, 4);
    rows.forEach((r, i) => {
      const y0 = legendH + i * band + 4;
      const g = s('g', { class: 'row', 'data-key': r.key });
      const label = s('text', { x: labelW - 8, y: y0 + (band - 9) / 2 + 4, 'text-anchor': 'end', class: 'label' });
      label.textContent = clip(r.label, 34);
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

  function scatter(plot, points, opts) {
    if (!points.length) return empty(plot, 'No data for these filters');
    const W = 640;
    const H = 320;
    const m = { l: 56, r: 24, t: 14, b: 44 };
    // Headroom past the largest value keeps the outermost dots and their labels inside the plot.
    const xs = ticks(Math.max(...points.map((p) => p.x)) * 1.1, true);
    const ys = ticks(Math.max(...points.map((p) => p.y)) * 1.1, false);
    const xMax = xs[xs.length - 1];
    const yMax = ys[ys.length - 1];
    const px = (x) => m.l + (x / xMax) * (W - m.l - m.r);
    const py = (y) => H - m.b - (y / yMax) * (H - m.t - m.b);
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': opts.title });
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
    for (const p of points) {
      const dot = s('circle', {
        cx: px(p.x), cy: py(p.y), r: 5, class: 'dot', 'data-key': p.key, 'data-x': p.x, 'data-y': p.y,
      });
      dot.appendChild(s('title', {}, `${p.label}: ${opts.xFmt(p.x)} ${opts.xTitle}, ${opts.yFmt(p.y)} ${opts.yTitle}`));
      svg.appendChild(dot);
    }
    // One label per spot: members on (nearly) the same point share it ("user 7 +3"); the dots'
    // tooltips and the figures table name every one of them.
    const spots = groupBy(points, (p) => `${Math.round(px(p.x) / 8)} ${Math.round(py(p.y) / 8)}`);
    for (const group of spots.values()) {
      const p = group[0];
      const right = px(p.x) > W * 0.6;
      const more = group.length > 1 ? ` +${group.length - 1}` : '';
      svg.appendChild(s('text', {
        x: px(p.x) + (right ? -7 : 7), y: py(p.y) - 6, 'text-anchor': right ? 'end' : 'start', class: 'point-label',
      }, clip(p.label, 32) + more));
    }
    plot.appendChild(svg);
  }

  const LOW = [240, 244, 248];
  const HIGH = [8, 81, 156];
  const shade = (t) => `rgb(${LOW.map((c, i) => Math.round(c + (HIGH[i] - c) * t)).join(',')})`;

  // One grid per gym: a row per date, a column per UTC hour, the cell's colour its avg occupancy.
  function heatmap(plot, rows) {
    if (!rows.length) return empty(plot, 'No data for these filters');
    const max = rows.reduce((a, r) => Math.max(a, r.avg_occupancy), 0) || 1;
    const gyms = [...new Set(rows.map((r) => r.gym))].sort((a, b) => a - b);
    const cellW = 30;
    const cellH = 22;
    const labelW = 84;
    const top = 18;
    for (const gym of gyms) {
      const mine = rows.filter((r) => r.gym === gym);
      const days = [...new Set(mine.map((r) => r.date))].sort();
      const at = new Map(mine.map((r) => [`${r.date} ${r.hour_of_day}`, r]));
      const W = labelW + 24 * cellW + 4;
      const H = top + days.length * cellH + 4;
      plot.appendChild(h('h3', { class: 'gym' }, `Gym ${gym}`));
      const svg = s('svg', {
        viewBox: `0 0 ${W} ${H}`, class: 'chart heat', role: 'img', 'data-gym': gym,
        'aria-label': `Hourly occupancy of gym ${gym}`,
      });
      for (let hour = 0; hour < 24; hour += 1) {
        svg.appendChild(
          s('text', { x: labelW + hour * cellW + cellW / 2, y: 12, 'text-anchor': 'middle', class: 'tick' }, String(hour)),
        );
      }
      days.forEach((day, i) => {
        const y = top + i * cellH;
        svg.appendChild(s('text', { x: labelW - 6, y: y + cellH / 2 + 4, 'text-anchor': 'end', class: 'label' }, day));
        for (let hour = 0; hour < 24; hour += 1) {
          const r = at.get(`${day} ${hour}`);
          const x = labelW + hour * cellW;
          if (!r) {
            svg.appendChild(s('rect', { x: x + 1, y: y + 1, width: cellW - 2, height: cellH - 2, class: 'cell none' }));
            continue;
          }
          const t = r.avg_occupancy / max;
          const cell = s('rect', {
            x: x + 1, y: y + 1, width: cellW - 2, height: cellH - 2, rx: 2, fill: shade(t), class: 'cell',
            'data-gym': gym, 'data-date': day, 'data-hour': hour, 'data-visitors': r.visitors,
            'data-avg': r.avg_occupancy, 'data-peak': r.peak_occupancy,
          });
          cell.appendChild(
            s('title', {}, `gym ${gym}, ${day} ${String(hour).padStart(2, '0')}:00 UTC: ${r.visitors} visitors, ` +
              `avg occupancy ${f2(r.avg_occupancy)}, peak ${r.peak_occupancy}`),
          );
          svg.appendChild(cell);
          svg.appendChild(
            s('text', { x: x + cellW / 2, y: y + cellH / 2 + 3, 'text-anchor': 'middle',
              class: t > 0.55 ? 'cell-value light' : 'cell-value' }, f2(r.avg_occupancy)),
          );
        }
      });
      plot.appendChild(svg);
    }
    const scale = s('svg', { viewBox: '0 0 640 26', class: 'chart scale', role: 'img', 'aria-label': 'colour scale' });
    scale.appendChild(s('text', { x: 0, y: 16, class: 'legend' }, 'avg occupancy 0'));
    for (let i = 0; i <= 10; i += 1) {
      scale.appendChild(s('rect', { x: 110 + i * 22, y: 4, width: 22, height: 14, fill: shade(i / 10) }));
    }
    scale.appendChild(s('text', { x: 110 + 11 * 22 + 6, y: 16, class: 'legend' }, f2(max)));
    plot.appendChild(scale);
  }

  // The numbers of a chart as a table; each row carries them raw in data-* attributes.
  function figures(kpi, columns, rows) {
    const box = card(kpi).querySelector('.figures');
    const table = h('table');
    const head = h('tr');
    for (const c of columns) head.appendChild(h('th', { scope: 'col' }, c.label));
    table.appendChild(h('thead')).appendChild(head);
    const body = table.appendChild(h('tbody'));
    for (const r of rows) {
      const tr = h('tr', { 'data-key': r.key });
      for (const c of columns) {
        if (c.key !== 'label') tr.setAttribute(`data-${c.key}`, r[c.key] === null ? '' : String(r[c.key]));
        tr.appendChild(h('td', { class: c.key === 'label' ? 'text' : 'num' }, c.key === 'label' ? r.label : c.fmt(r[c.key])));
      }
      body.appendChild(tr);
    }
    box.replaceChildren(table);
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

  function distribution(kpi, rows, key, order) {
    const out = [...groupBy(rows, (r) => r[key])]
      .map(([value, rs]) => ({ key: value, label: value, members: rs.length }))
      .sort(order);
    const series = [{ key: 'members', name: 'members', cls: 's-count', fmt: f0 }];
    hbars(chart(kpi, out.length), out, series, { title: card(kpi).dataset.title, labelW: 130 });
    figures(kpi, [{ key: 'label', label: key }, { key: 'members', label: 'Members', fmt: f0 }], out);
  }

  function render() {
    const f = current();
    const workouts = D.workouts.filter((r) => demoOk(f, r) && dateOk(f, r));
    const visits = D.visits.filter((r) => demoOk(f, r) && dateOk(f, r));
    const occupancy = D.occupancy.filter((r) => dateOk(f, r));
    const people = D.members.filter((r) => demoOk(f, r));

    const avgBpm = mean(workouts, 'avg_bpm');
    tile('total_workouts', workouts.length, f0(workouts.length));
    tile('total_visits', visits.length, f0(visits.length));
    tile('total_members', people.length, f0(people.length));
    tile('minutes_in_gym', sumMinutes(visits, 'minutes_in_gym'), f2(sumMinutes(visits, 'minutes_in_gym')));
    tile('minutes_exercising', sumMinutes(visits, 'minutes_exercising'), f2(sumMinutes(visits, 'minutes_exercising')));
    tile('avg_bpm', avgBpm, avgBpm === null ? '–' : f1(avgBpm));

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
      { key: 'minutes_in_gym', name: 'minutes in gym', cls: 's-gym', fmt: f2 },
      { key: 'minutes_exercising', name: 'minutes exercising', cls: 's-exercise', fmt: f2 },
    ], { title: 'Minutes in gym vs minutes exercising', labelW: 215 });
    figures('gym_vs_exercise', [
      { key: 'label', label: 'Member' },
      { key: 'logins', label: 'Visits', fmt: f0 },
      { key: 'minutes_in_gym', label: 'Minutes in gym', fmt: f2 },
      { key: 'minutes_exercising', label: 'Minutes exercising', fmt: f2 },
    ], perMember);

    const points = perMember.map((m) => ({ key: m.key, label: m.label, x: m.logins, y: m.hours }));
    scatter(chart('logins_vs_hours', points.length), points, {
      title: 'Gym logins vs workout hours', xTitle: 'gym logins', yTitle: 'workout hours', xFmt: f0, yFmt: f2,
    });
    figures('logins_vs_hours', [
      { key: 'label', label: 'Member' },
      { key: 'logins', label: 'Gym logins', fmt: f0 },
      { key: 'hours', label: 'Workout hours', fmt: f2 },
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
      { key: 'minutes_exercising', label: 'Minutes exercising', fmt: f2 },
      { key: 'share', label: 'Share', fmt: pct },
    ], shares);

    const occ = occupancy.map((r) => ({
      ...r, key: `${r.gym} ${r.date} ${r.hour_of_day}`,
      label: `gym ${r.gym} ${r.date} ${String(r.hour_of_day).padStart(2, '0')}:00`,
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
  resetFilters();
  render();
})();
