// DataGate console: live dashboard updates and confirmations. No library, nothing fetched.
(function () {
  "use strict";

  // Forms with data-confirm ask before they submit (disconnect, revoke, delete).
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // [data-live-url] opens the console websocket; each message replaces [data-live=name]
  // fragments with what the server rendered. Reconnects with a growing delay.
  function startLive(root) {
    var path = root.getAttribute("data-live-url");
    var status = document.querySelector("[data-live-status]");
    var delay = 1000;
    function setStatus(text, cls) {
      if (!status) return;
      status.textContent = text;
      status.className = "live-status " + cls;
    }
    function connect() {
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      var socket = new WebSocket(scheme + window.location.host + path);
      socket.onopen = function () { delay = 1000; setStatus("live", "live"); };
      socket.onmessage = function (event) {
        var message;
        try { message = JSON.parse(event.data); } catch (e) { return; }
        var parts = message.live || {};
        Object.keys(parts).forEach(function (name) {
          var target = root.querySelector('[data-live="' + name + '"]');
          if (target) target.innerHTML = parts[name];
        });
        document.body.setAttribute("data-live-updated", String(Date.now()));
      };
      socket.onclose = function (event) {
        if (event.code === 4403 || event.code === 4401) {
          setStatus("not allowed: reload the page to log in again", "down");
          return;
        }
        setStatus("reconnecting…", "down");
        window.setTimeout(connect, delay);
        delay = Math.min(delay * 2, 15000);
      };
    }
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var root = document.querySelector("[data-live-url]");
    if (root && "WebSocket" in window) startLive(root);
  });
})();
