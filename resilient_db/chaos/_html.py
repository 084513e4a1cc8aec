"""The self-contained HTML report: one timeline per scenario (inline SVG drawn by inline JS
from the embedded JSON; no network) and the invariant table.

When the script has drawn every timeline it sets ``data-timelines-drawn`` on ``<body>``;
script errors are counted in ``data-script-errors`` (a headless browser can check both).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from resilient_db.chaos._model import Check
from resilient_db.chaos._report import to_json
from resilient_db.chaos._report_model import Report, ScenarioReport

__all__ = ["render_html", "write_html"]

_CSS = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px}h2{font-size:16px;margin:28px 0 6px}
.PASS{color:#1a7f37}.FAIL,.ERROR{color:#cf222e}.SKIP{color:#9a6700}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f6f8fa}
.legend span{margin-right:14px}.muted{color:#666}svg{display:block;background:#fff}
"""

_JS = r"""
(function(){
var errs=0;window.addEventListener('error',function(){errs++;
 document.body.setAttribute('data-script-errors',String(errs));});
var data=JSON.parse(document.getElementById('chaos-data').textContent);
var NS='http://www.w3.org/2000/svg',W=1000,PH=90,GAP=18,L=60;
var COLORS=['#cf222e','#bc4c00','#8250df','#9a6700','#0550ae','#6e7781','#e85aad'];
function el(t,a,p){var e=document.createElementNS(NS,t);for(var k in a)e.setAttribute(k,a[k]);
 if(p)p.appendChild(e);return e;}
function text(p,x,y,s,c){var t=el('text',{x:x,y:y,'font-size':11,fill:c||'#444'},p);
 t.textContent=s;return t;}
function panel(svg,row,title,series,maxv,kind,tl){
 var y0=row*(PH+GAP)+GAP,n=tl.ok_per_s.length,bw=(W-L)/n;
 el('rect',{x:L,y:y0,width:W-L,height:PH,fill:'#fafbfc',stroke:'#ddd'},svg);
 var fx=L+tl.fault_start/tl.bucket*bw,fw=(tl.fault_end-tl.fault_start)/tl.bucket*bw;
 el('rect',{x:fx,y:y0,width:Math.max(fw,1),height:PH,fill:'#ffebe9','class':'fault'},svg);
 text(svg,4,y0+12,title);text(svg,4,y0+PH,String(Math.round(maxv)),'#888');
 var m=maxv>0?maxv:1;
 series.forEach(function(s,si){
  if(kind==='bars'){var base=s.base||[];s.values.forEach(function(v,i){if(!v)return;
    var b=base[i]||0,h=v/m*PH;el('rect',{x:L+i*bw,y:y0+PH-(b/m*PH)-h,width:Math.max(bw-1,1),
    height:h,fill:s.color},svg);});}
  else{var pts=s.values.map(function(v,i){return (L+(i+.5)*bw)+','+(y0+PH-Math.min(v,m)/m*PH);});
   el('polyline',{points:pts.join(' '),fill:'none',stroke:s.color,'stroke-width':1.5},svg);}
 });}
function breakerBand(svg,row,tl){
 var y0=row*(PH+GAP)+GAP,h=22,span=tl.ok_per_s.length*tl.bucket,sc=(W-L)/span;
 text(svg,4,y0+14,'breaker');
 var col={closed:'#2da44e',open:'#cf222e',half_open:'#d4a72c'};
 tl.breaker.forEach(function(s,i){var t1=i+1<tl.breaker.length?tl.breaker[i+1][0]:span;
  el('rect',{x:L+s[0]*sc,y:y0,width:Math.max((t1-s[0])*sc,1),height:h,fill:col[s[1]]||'#888'},svg);});
 if(!tl.breaker.length)text(svg,L+4,y0+14,'no breaker','#888');
 return h;}
function draw(r,host){
 var tl=r.timeline,svg=el('svg',{width:W,height:4*(PH+GAP)+40,'data-scenario':r.name},host);
 var mx=function(a){return a.reduce(function(x,y){return Math.max(x,y);},0);};
 panel(svg,0,'ok/s',[{values:tl.ok_per_s,color:'#2da44e'}],mx(tl.ok_per_s),'line',tl);
 var base=tl.ok_per_s.map(function(){return 0;}),errs=[],k=0,tot=base.slice();
 Object.keys(tl.errors).forEach(function(name){var v=tl.errors[name];
  errs.push({values:v,base:tot.slice(),color:COLORS[k++%COLORS.length],name:name});
  v.forEach(function(x,i){tot[i]+=x;});});
 panel(svg,1,'errors/bucket',errs,mx(tot),'bars',tl);
 panel(svg,2,'latency ms',[{values:tl.p50_ms,color:'#0550ae'},{values:tl.p95_ms,color:'#8250df'},
  {values:tl.p99_ms,color:'#cf222e'}],mx(tl.p99_ms),'line',tl);
 panel(svg,3,'connects',[{values:tl.connects,color:'#6e7781'}],mx(tl.connects),'bars',tl);
 breakerBand(svg,4,tl);
 var lg=document.createElement('div');lg.className='legend';
 lg.innerHTML='<span style="color:#0550ae">p50</span><span style="color:#8250df">p95</span>'+
  '<span style="color:#cf222e">p99</span><span style="background:#ffebe9">fault window</span>'+
  errs.map(function(e){return '<span style="color:'+e.color+'">'+e.name.replace(/[<&>]/g,'')+
  '</span>';}).join('');
 host.appendChild(lg);return 1;}
var drawn=0;data.results.forEach(function(r){var host=document.getElementById('tl-'+r.name);
 if(host&&r.timeline){drawn+=draw(r,host);}});
document.body.setAttribute('data-timelines-drawn',String(drawn));
document.body.setAttribute('data-script-errors',String(errs));
})();
"""


def _check_row(c: Check) -> str:
    verdict = "PASS" if c.passed else "FAIL"
    offenders = ""
    if c.offenders and not c.passed:
        offenders = f"<br><span class=muted>{escape(', '.join(c.offenders))}</span>"
    return (
        f"<tr><td class='{verdict}'>{verdict}</td><td>{escape(c.name)}</td>"
        f"<td>{escape(c.source)}</td><td>{escape(c.detail)}{offenders}</td></tr>"
    )


def _checks_table(r: ScenarioReport) -> str:
    rows = "".join(_check_row(c) for c in r.checks)
    head = "<tr><th>verdict</th><th>invariant</th><th>source</th><th>detail</th></tr>"
    return f"<table>{head}{rows}</table>" if rows else ""


def _phases_table(r: ScenarioReport) -> str:
    cols = (
        "phase",
        "ops",
        "acknowledged",
        "failed",
        "unknown",
        "ops_per_s",
        "fail_fast",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "connects",
    )
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(getattr(p, c)))}</td>" for c in cols) + "</tr>"
        for p in r.phases
    )
    return f"<table><tr>{head}</tr>{body}</table>" if body else ""


def _section(r: ScenarioReport) -> str:
    notes = "".join(f"<li>{escape(n)}</li>" for n in r.notes)
    reason = f"<p>{escape(r.reason)}</p>" if r.reason else ""
    fleet = ", ".join(f"{escape(k)} {v:g}" for k, v in r.fleet.items())
    timeline = f"<div id='tl-{escape(r.name)}' class='timeline'></div>" if r.timeline else ""
    return (
        f"<h2 id='s-{escape(r.name)}'><span class='{r.status}'>{r.status}</span> "
        f"{escape(r.name)} <span class='muted'>({escape(r.driver)}, {r.seconds:.1f}s) — "
        f"{escape(r.summary)}</span></h2>{reason}{timeline}{_phases_table(r)}"
        f"{'<p>fleet: ' + fleet + '</p>' if fleet else ''}{_checks_table(r)}"
        f"{'<ul>' + notes + '</ul>' if notes else ''}"
    )


def render_html(report: Report) -> str:
    """The report as one HTML document (works offline)."""
    data = json.dumps(to_json(report), default=str).replace("</", "<\\/")
    summary = "".join(
        f"<tr><td class='{r.status}'>{r.status}</td><td><a href='#s-{escape(r.name)}'>"
        f"{escape(r.name)}</a></td><td>{r.seconds:.1f}s</td>"
        f"<td>{escape(', '.join(r.failed_checks) or (r.reason or ''))}</td></tr>"
        for r in report.results
    )
    env = ", ".join(f"{escape(str(k))} {escape(str(v))}" for k, v in report.environment.items())
    expected = sum(1 for r in report.results if r.timeline is not None)
    verdict = "PASS" if report.passed else "FAIL"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>chaos report</title>"
        f"<style>{_CSS}</style></head><body data-timelines-expected='{expected}'>"
        f"<h1>Chaos report — <span class='{verdict}'>{verdict}</span> "
        f"({escape(report.workload)}, {report.seconds:.1f}s)</h1><p class='muted'>{env}</p>"
        f"<table><tr><th>status</th><th>scenario</th><th>time</th><th>why</th></tr>{summary}"
        f"</table>{''.join(_section(r) for r in report.results)}"
        f"<script type='application/json' id='chaos-data'>{data}</script>"
        f"<script>{_JS}</script></body></html>\n"
    )


def write_html(report: Report, path: str | Path) -> None:
    """Write :func:`render_html` to ``path``."""
    Path(path).write_text(render_html(report))
