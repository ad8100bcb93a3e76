// tether console: progressive enhancement only. Every page is complete without this script.
// On a task page ([data-task]): follow /tasks/{id}/events (Server-Sent Events) and mark revoked
// branches, update the state, announce changes politely; make the lineage tree keyboard-navigable
// (WAI-ARIA tree pattern: arrows, Home/End). No inline script or style anywhere (CSP).
"use strict";

(function () {
  function announce(root, text) {
    var region = root.querySelector("[data-role=announce]");
    if (region) { region.textContent = text; }
  }

  function markRevoked(item) {
    if (item.getAttribute("data-state") === "revoked") { return false; }
    item.setAttribute("data-state", "revoked");
    item.classList.remove("state-live", "state-expired");
    item.classList.add("state-revoked", "cut");
    var badge = item.querySelector(":scope > .node-line [data-role=node-state]");
    if (badge) {
      badge.textContent = "revoked";
      badge.className = "badge state-revoked";
    }
    var label = item.querySelector(":scope > .node-line [data-role=node-label]");
    if (label) { label.textContent = label.textContent.replace(/, (live|expired)/, ", revoked"); }
    return true;
  }

  function follow(root) {
    var url = root.getAttribute("data-events");
    if (!url || !window.EventSource) { return; }
    var source = new EventSource(url);
    source.addEventListener("task", function (message) {
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      var changed = 0;
      (data.revoked || []).forEach(function (jti) {
        root.querySelectorAll("[data-jti]").forEach(function (item) {
          if (item.getAttribute("data-jti") === jti && markRevoked(item)) { changed += 1; }
        });
      });
      var state = root.querySelector("[data-role=task-state]");
      var before = state ? state.textContent : "";
      if (state && data.state && before !== data.state) {
        state.textContent = data.state;
        state.className = "badge state-" + data.state;
        if (data.state !== "active") {
          root.querySelectorAll(".actions").forEach(function (el) { el.hidden = true; });
        }
      }
      var live = root.querySelector("[data-role=live-count]");
      if (live && typeof data.live === "number") { live.textContent = String(data.live); }
      var sumLive = root.querySelector("[data-role=sum-live]");
      if (sumLive && typeof data.live === "number") { sumLive.textContent = String(data.live); }
      var sumRevoked = root.querySelector("[data-role=sum-revoked]");
      if (sumRevoked && Array.isArray(data.revoked)) { sumRevoked.textContent = String(data.revoked.length); }
      var parts = [];
      if (state && before !== data.state) { parts.push("Task is now " + data.state + "."); }
      if (changed) { parts.push(changed + " token(s) revoked."); }
      if (parts.length) { announce(root, parts.join(" ")); }
    });
  }

  function tree(root) {
    var items = function () {
      return Array.prototype.filter.call(root.querySelectorAll("[role=treeitem]"), function (el) {
        return el.offsetParent !== null;
      });
    };
    root.addEventListener("keydown", function (event) {
      var current = event.target.closest ? event.target.closest("[role=treeitem]") : null;
      if (!current) { return; }
      var list = items();
      var index = list.indexOf(current);
      var next = null;
      if (event.key === "ArrowDown") { next = list[index + 1]; }
      else if (event.key === "ArrowUp") { next = list[index - 1]; }
      else if (event.key === "Home") { next = list[0]; }
      else if (event.key === "End") { next = list[list.length - 1]; }
      else if (event.key === "ArrowLeft") {
        var group = current.parentElement && current.parentElement.closest("[role=treeitem]");
        next = group || null;
      } else if (event.key === "ArrowRight") {
        next = current.querySelector("[role=group] > [role=treeitem]");
      } else { return; }
      event.preventDefault();
      if (next) {
        current.setAttribute("tabindex", "-1");
        next.setAttribute("tabindex", "0");
        next.focus();
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-task]").forEach(follow);
    document.querySelectorAll("[role=tree]").forEach(tree);
  });
})();
