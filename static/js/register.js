/* Registration form enhancements. The form works without this file: every action is a
   submit button handled by the server. With it: fields shown only when relevant, and an
   accessible autocomplete (ARIA 1.2 combobox) over /api/establishments. */
(function () {
  "use strict";

  function toggleWhen(container, visible) {
    container.hidden = !visible;
    container.querySelectorAll("input, select, textarea").forEach(function (el) { el.disabled = !visible; });
  }

  // "Autre" profession: the free-text field appears only when it applies.
  document.querySelectorAll("[data-show-when]").forEach(function (container) {
    var parts = container.getAttribute("data-show-when").split("=");
    var select = document.getElementById(parts[0]);
    if (!select) { return; }
    var update = function () { toggleWhen(container, select.value === parts[1]); };
    select.addEventListener("change", update);
    update();
  });

  // "Mon établissement n'est pas référencé dans la liste".
  document.querySelectorAll("[data-show-when-checked]").forEach(function (container) {
    var box = document.getElementById(container.getAttribute("data-show-when-checked"));
    if (!box) { return; }
    var update = function () { toggleWhen(container, box.checked); };
    box.addEventListener("change", update);
    update();
  });

  var live = document.createElement("div");
  live.className = "visually-hidden";
  live.setAttribute("role", "status");
  live.setAttribute("aria-live", "polite");
  document.body.appendChild(live);

  document.querySelectorAll("[data-autocomplete]").forEach(function (wrapper) {
    var index = wrapper.getAttribute("data-autocomplete");
    var input = wrapper.querySelector("input[type=text]");
    var fieldset = wrapper.closest("fieldset");
    var finess = document.getElementById("establishments-" + index + "-finess");
    var summary = document.getElementById("establishments-" + index + "-finess-summary");
    var listId = "establishments-" + index + "-listbox";
    var list = document.createElement("ul");
    list.id = listId;
    list.className = "autocomplete-list";
    list.setAttribute("role", "listbox");
    list.setAttribute("aria-label", "Établissements correspondants");
    list.hidden = true;
    input.parentNode.insertBefore(list, input.nextSibling);
    input.setAttribute("role", "combobox");
    input.setAttribute("aria-autocomplete", "list");
    input.setAttribute("aria-expanded", "false");
    input.setAttribute("aria-controls", listId);

    var results = [];
    var active = -1;
    var timer = null;
    var lastQuery = "";
    var controller = null;

    function close() {
      list.hidden = true;
      input.setAttribute("aria-expanded", "false");
      input.removeAttribute("aria-activedescendant");
      active = -1;
    }

    function highlight(position) {
      var items = list.querySelectorAll("li");
      items.forEach(function (li, i) { li.setAttribute("aria-selected", i === position ? "true" : "false"); });
      active = position;
      if (position >= 0 && items[position]) {
        input.setAttribute("aria-activedescendant", items[position].id);
        items[position].scrollIntoView({ block: "nearest" });
      }
    }

    function choose(position) {
      var item = results[position];
      if (!item) { return; }
      input.value = item.name;
      if (finess) { finess.value = item.finess; }
      if (summary) {
        summary.querySelector("[data-fills=postal_code]").textContent = item.postal_code || "";
        summary.querySelector("[data-fills=city]").textContent = item.city || "";
        summary.querySelector("[data-fills=department]").textContent =
          (item.department || "") + (item.department_name ? " - " + item.department_name : "");
        summary.hidden = false;
      }
      var notListed = fieldset && fieldset.querySelector("input[id$='-not_listed']");
      if (notListed && notListed.checked) { notListed.checked = false; notListed.dispatchEvent(new Event("change")); }
      close();
      live.textContent = "Établissement choisi : " + item.name + ", " + (item.city || "");
    }

    function render() {
      list.textContent = "";
      results.forEach(function (item, i) {
        var li = document.createElement("li");
        li.id = listId + "-" + i;
        li.setAttribute("role", "option");
        li.setAttribute("aria-selected", "false");
        li.appendChild(document.createTextNode(item.name));
        var detail = document.createElement("span");
        detail.className = "detail";
        detail.textContent = [item.postal_code, item.city].filter(Boolean).join(" ") + " — FINESS " + item.finess;
        li.appendChild(detail);
        li.addEventListener("mousedown", function (event) { event.preventDefault(); choose(i); });
        list.appendChild(li);
      });
      var open = results.length > 0;
      list.hidden = !open;
      input.setAttribute("aria-expanded", open ? "true" : "false");
      active = -1;
      live.textContent = results.length === 0 ? "Aucun établissement trouvé."
        : results.length + " établissement" + (results.length > 1 ? "s" : "") +
          " trouvé" + (results.length > 1 ? "s" : "") + ". Utilisez les flèches pour choisir.";
    }

    function search() {
      var query = input.value.trim();
      if (query.length < 2) { results = []; close(); return; }
      if (query === lastQuery) { return; }
      lastQuery = query;
      if (controller) { controller.abort(); }
      controller = new AbortController();
      fetch("/api/establishments?limit=8&q=" + encodeURIComponent(query), {
        headers: { "Accept": "application/json" }, signal: controller.signal
      }).then(function (response) {
        return response.ok ? response.json() : [];
      }).then(function (data) {
        results = Array.isArray(data) ? data : [];
        render();
      }).catch(function () { /* aborted or offline: the "Rechercher" button still works */ });
    }

    input.addEventListener("input", function () {
      if (finess) { finess.value = ""; }
      if (summary) { summary.hidden = true; }
      clearTimeout(timer);
      timer = setTimeout(search, 200);
    });
    input.addEventListener("keydown", function (event) {
      var count = results.length;
      if (event.key === "ArrowDown" && count) {
        event.preventDefault();
        if (list.hidden) { render(); }
        highlight((active + 1) % count);
      } else if (event.key === "ArrowUp" && count) {
        event.preventDefault();
        highlight(active <= 0 ? count - 1 : active - 1);
      } else if (event.key === "Enter" && !list.hidden && active >= 0) {
        event.preventDefault();
        choose(active);
      } else if (event.key === "Escape") {
        close();
      }
    });
    input.addEventListener("blur", function () { setTimeout(close, 150); });
  });
})();
