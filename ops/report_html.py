"""The report as one self-contained HTML page (jinja2; plots embedded as base64 PNG). Pure; no I/O.

Links to stack dumps are relative to the page's own place (results/<exp>/ops/report.html), so the page
works from the run directory and when the directory is copied elsewhere.
"""

from __future__ import annotations

import base64

import jinja2

from ops.plots import TITLES
from ops.report import Report, eval_delta, exit_text, fmt_s

_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>grpo-ops report: {{ r.run_id }}</title>
<style>
 body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1100px;
        color: #1b1f24; font-size: 14px; }
 h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
 .muted { color: #666; } .verdict { padding: 10px 14px; border-radius: 6px; font-size: 16px; font-weight: 600; }
 .v-ok { background: #e6f4ea; border: 1px solid #34a853; } .v-bad { background: #fce8e6; border: 1px solid #d93025; }
 .v-run { background: #e8f0fe; border: 1px solid #4285f4; }
 table { border-collapse: collapse; width: 100%; margin: 8px 0; } th, td { border: 1px solid #ddd; padding: 5px 8px;
        text-align: left; vertical-align: top; } th { background: #f6f8fa; }
 .PASS { color: #137333; font-weight: 700; } .FAIL { color: #c5221f; font-weight: 700; }
 .WARN { color: #b06000; font-weight: 700; } .UNKNOWN { color: #5f6368; font-weight: 700; }
 .plots { display: flex; flex-wrap: wrap; gap: 12px; } .plot { max-width: 100%; border: 1px solid #eee; }
 figure { margin: 0; } figcaption { font-weight: 600; margin: 4px 0; }
 code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
 pre { background: #f6f8fa; padding: 6px; white-space: pre-wrap; margin: 4px 0; }
</style></head><body>
<h1>grpo-ops report: {{ r.run_id }}</h1>
<div class="muted">trainer {{ r.trainer }} &middot; {{ r.root }} &middot; wall {{ fmt_s(r.wall_s) }}
 &middot; generated {{ generated }}</div>
<p class="verdict {{ vclass }}" id="verdict">{{ r.verdict_line }}</p>
{% for w in r.warnings %}<p class="WARN">warning: {{ w }}</p>{% endfor %}
{% if r.preflight is not none %}<p id="preflight">Preflight: <span class="{{ 'PASS' if r.preflight.ok else 'FAIL' }}">
{{ "passed" if r.preflight.ok else "FAILED" }}</span>{% if r.preflight.lines %} &middot; {{ r.preflight.lines|length }}
 note(s):{% endif %}</p>{% for l in r.preflight.lines %}<pre>{{ l }}</pre>{% endfor %}{% endif %}

<h2>Success criteria</h2>
<table id="criteria"><tr><th>criterion</th><th>status</th><th>detail</th></tr>
{% for c in r.criteria %}<tr><td>{{ c.name }}</td><td class="{{ c.status }}">{{ c.status }}</td>
<td>{{ c.detail }}</td></tr>{% endfor %}</table>

<h2>Curves</h2>
<div class="plots">
{% for name, title, b64 in plots if name != "goodput" %}<figure><figcaption>{{ title }}</figcaption>
<img class="plot" id="plot-{{ name }}" alt="{{ title }}" src="data:image/png;base64,{{ b64 }}"></figure>
{% endfor %}</div>

<h2>Goodput</h2>
<p><b>{{ goodput_pct }}</b> of wall time was productive training ({{ fmt_s(r.goodput.productive_s) }} of
 {{ fmt_s(r.goodput.wall_s) }}; {{ r.goodput.steps_kept }} steps kept, {{ r.goodput.steps_recomputed }} recomputed).</p>
{% for name, title, b64 in plots if name == "goodput" %}<figure><figcaption>{{ title }}</figcaption>
<img class="plot" id="plot-{{ name }}" alt="{{ title }}" src="data:image/png;base64,{{ b64 }}"></figure>{% endfor %}
<table id="goodput"><tr><th>lost to</th><th>time</th><th>share of wall</th></tr>
{% for k, v in r.goodput.lost_s.items() %}<tr><td>{{ k }}</td><td>{{ fmt_s(v) }}</td>
<td>{{ share(v) }}</td></tr>{% endfor %}</table>

<h2>Attempts</h2>
<table id="attempts"><tr><th>#</th><th>plan</th><th>steps</th><th>how it ended</th><th>evidence</th><th>decision</th></tr>
{% for a in r.attempts %}<tr>
<td>{{ a.attempt }}<div class="muted">{{ a.started or "" }}</div></td>
<td>{% for o in a.overrides %}<code>{{ o }}</code><br>{% else %}<span class="muted">config defaults</span>{% endfor %}</td>
<td>{% if a.first_step is not none %}{{ a.first_step }}&ndash;{{ a.last_step }}{% else %}none{% endif %}
 <div class="muted">resumed from {{ a.resume_from_step if a.resume_from_step is not none else "scratch" }};
 start-up {{ fmt_s(a.startup_s) }}; ran {{ fmt_s(a.duration_s) }}</div></td>
<td class="{{ 'PASS' if a.outcome == 'succeeded' else ('UNKNOWN' if a.outcome == 'running' else 'FAIL') }}">{{ a.outcome }}</td>
<td>{{ a.summary }}<div>exit: {{ exit_text(a.exit) }}; peak RSS {{ num(a.peak_rss_mib) }} MiB, GPU {{ num(a.peak_gpu_mib) }} MiB</div>
{% if a.numbers %}<div>{% for k, v in a.numbers.items() %}<code>{{ k }}={{ v }}</code> {% endfor %}</div>{% endif %}
{% for l in a.evidence_lines %}<pre>{{ l }}</pre>{% endfor %}
{% for p in a.stack_dumps %}<div><a href="../{{ p }}">stack dump: {{ p }}</a></div>{% endfor %}</td>
<td>{% if a.decision %}<b>{{ a.decision.action }}</b>: {{ a.decision.reason }}
{% if a.decision.remedy %}<div>remedy: <code>{{ a.decision.remedy }}</code></div>{% endif %}
{% for k, ov in (a.decision.plan_diff or {}).items() %}<div><code>{{ k }}</code>: {{ ov[0] }} &rarr; {{ ov[1] }}</div>{% endfor %}
{% if a.decision.experiment_changed %}<div class="WARN">the experiment itself changed</div>{% endif %}
{% else %}<span class="muted">none</span>{% endif %}</td></tr>{% endfor %}</table>

<h2>Best checkpoints</h2>
{% if r.best_checkpoints %}<table id="checkpoints"><tr><th>step</th><th>accuracy</th><th>path</th></tr>
{% for c in r.best_checkpoints %}<tr><td>{{ c.step }}</td><td>{{ "%.4g"|format(c.accuracy) }}</td><td><code>{{ c.path }}</code></td></tr>
{% endfor %}</table>{% else %}<p class="muted">no checkpoint with a validation metric</p>{% endif %}

<h2>Evaluation before / after</h2>
{% if r.evals %}<table id="evals"><tr><th>model</th><th>which</th><th>score</th><th>time</th><th>note</th></tr>
{% for e in r.evals %}<tr><td><code>{{ e.model }}</code></td><td>{{ e.which }}</td><td>{{ e.score }}</td>
<td>{{ fmt_s(e.duration_s) }}</td><td>{{ e.error or "" }}</td></tr>{% endfor %}</table>
{% if delta is not none %}<p>difference (trained &minus; base): <b>{{ "%+.4g"|format(delta) }}</b></p>{% endif %}
{% else %}<p class="muted">no evaluation ran (pass <code>--eval-cmd</code> to <code>ops run</code>)</p>{% endif %}
</body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def render_html(r: Report, pngs: dict[str, bytes], generated: str) -> str:
    wall = r.goodput.get("wall_s") or 0.0
    ratio = r.goodput.get("goodput")
    vclass = {"SUCCEEDED": "v-ok", "RUNNING": "v-run"}.get(r.verdict, "v-bad")
    if r.verdict == "SUCCEEDED" and not r.ok:
        vclass = "v-bad"
    plots = [(name, TITLES[name], base64.b64encode(png).decode("ascii")) for name, png in pngs.items()]
    return _ENV.from_string(_TEMPLATE).render(
        r=r, plots=plots, generated=generated, vclass=vclass, fmt_s=fmt_s, delta=eval_delta(r.evals),
        goodput_pct=f"{ratio:.1%}" if ratio is not None else "n/a",
        share=lambda v: f"{v / wall:.1%}" if wall else "n/a",
        num=lambda v: f"{v:.0f}" if isinstance(v, (int, float)) else "n/a",
        exit_text=exit_text)

