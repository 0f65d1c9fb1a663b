// flowd web: timestamps in the reader's zone, and live regions refreshed from the event stream.
(function () {
  "use strict";

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }

  // <time datetime="…Z"> → local time, without the date when it is today
  function localTimes(root) {
    var today = new Date().toDateString();
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      var clock = pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
      var day = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
      el.textContent = d.toDateString() === today ? clock : day + " " + clock;
      el.title = el.getAttribute("datetime");
    });
  }

  // replace each [data-live] region with the same region of a fresh render of this page,
  // except one the reader is typing in
  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      if (el.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
      var next = fresh.getElementById(el.id);
      if (next) { el.innerHTML = next.innerHTML; localTimes(el); }
    });
  }

  var busy = false, again = false, last = 0;
  function refresh() {
    if (busy) { again = true; return; }
    var wait = Math.max(0, 400 - (Date.now() - last));  // at most a few renders a second
    busy = true;
    setTimeout(function () {
      last = Date.now();
      fetch(location.href, { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html) swap(html); })
        .catch(function () {})
        .finally(function () { busy = false; if (again) { again = false; refresh(); } });
    }, wait);
  }

  function live() {
    var url = document.body.getAttribute("data-stream");
    if (!url || !window.EventSource) return;
    var dot = document.getElementById("live-dot");
    var source = new EventSource(url);
    source.onopen = function () { if (dot) dot.classList.add("on"); };
    source.onerror = function () { if (dot) dot.classList.remove("on"); };
    source.onmessage = function () { refresh(); };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  document.addEventListener("submit", function (ev) {
    var msg = ev.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) ev.preventDefault();
  });

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    live();
  });
})();
