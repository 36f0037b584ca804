// The console's only script: it keeps the parts of a page marked
// data-live="URL" current. On every event of the engine's watch stream
// (server-sent events from /ui/events) it fetches URL, the same part as
// the server renders it, and puts it in place; an element with
// data-saga="ID" follows that saga only. Pages work without it, only
// not live.
"use strict";
(function () {
  var parts = Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
  var status = document.getElementById("live");
  if (!parts.length || !window.EventSource || !window.fetch) {
    return;
  }
  var pending = [];
  var timer = null;

  // Each part shows the engine's state at a version (its applied index,
  // X-Saga-Version); a refresh at the version it shows changes nothing
  // and leaves the part alone.
  var page = document.body.dataset.version || "";
  parts.forEach(function (el) { el.dataset.version = page; });

  function refresh(el) {
    // Remember which <details> are open: a refresh must not close them.
    var open = Array.prototype.map.call(el.querySelectorAll("details[open][id]"), function (d) { return d.id; });
    var version = "";
    return fetch(el.dataset.live, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        version = r.headers.get("X-Saga-Version") || "";
        return r.text();
      })
      .then(function (html) {
        if (version !== "" && version === el.dataset.version) { return; }
        el.dataset.version = version;
        el.innerHTML = html; // rendered and escaped by the server's templates
        open.forEach(function (id) {
          var d = document.getElementById(id);
          if (d) { d.open = true; }
        });
        document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
      })
      .catch(function () { say("update failed: reload the page"); });
  }

  // Events come in bursts (one per transition): refresh each part once
  // per burst.
  function schedule(els) {
    els.forEach(function (el) { if (pending.indexOf(el) < 0) { pending.push(el); } });
    if (timer) { return; }
    timer = setTimeout(function () {
      timer = null;
      var now = pending;
      pending = [];
      now.forEach(refresh);
    }, 100);
  }

  function say(text) { if (status) { status.textContent = text; } }

  var es = new EventSource("/ui/events");
  es.addEventListener("open", function () {
    // Catch up with what changed before the stream opened; from then on
    // every change comes as an event. "live" is said only then.
    Promise.all(parts.map(refresh)).then(function () {
      document.body.dataset.live = "on";
      say("live");
    });
  });
  es.addEventListener("error", function () {
    document.body.dataset.live = "off";
    say("reconnecting…");
  });
  es.addEventListener("saga", function (ev) {
    var d;
    try { d = JSON.parse(ev.data); } catch (e) { return; }
    schedule(parts.filter(function (el) { return !el.dataset.saga || el.dataset.saga === d.saga; }));
  });
})();
