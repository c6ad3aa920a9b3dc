/* Password page: the policy checklist follows what is typed, and "Générer le mot de
   passe automatiquement" fills both fields with a random password (Web Crypto). The
   server checks the policy again; this only helps. */
(function () {
  "use strict";
  var SPECIALS = "!#$%&()*+,-./:;<=>?@[]^_{|}~";
  var counters = {
    length: function (v) { return v.length; },
    lower: function (v) { return (v.match(/\p{Ll}/gu) || []).length; },
    upper: function (v) { return (v.match(/\p{Lu}/gu) || []).length; },
    digit: function (v) { return (v.match(/\p{Nd}/gu) || []).length; },
    special: function (v) { return (v.match(/[^\p{L}\p{N}\s]/gu) || []).length; }
  };

  document.querySelectorAll("[data-password-policy]").forEach(function (list) {
    var input = document.getElementById(list.getAttribute("data-password-policy"));
    if (!input) { return; }
    var update = function () {
      list.querySelectorAll("li[data-rule]").forEach(function (item) {
        var ok = counters[item.getAttribute("data-rule")](input.value) >= Number(item.getAttribute("data-min"));
        item.classList.toggle("ok", ok);
        item.setAttribute("aria-label", item.textContent.trim() + (ok ? " : respecté" : " : non respecté"));
      });
    };
    input.addEventListener("input", update);
    update();
  });

  function randomPassword(length) {
    var alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789" + SPECIALS;
    var values = new Uint32Array(length);
    for (;;) {
      crypto.getRandomValues(values);
      var out = "";
      for (var i = 0; i < length; i++) { out += alphabet[values[i] % alphabet.length]; }
      if (/[a-z]/.test(out) && /[A-Z]/.test(out) && /[0-9]/.test(out) && /[^A-Za-z0-9]/.test(out)) { return out; }
    }
  }

  document.querySelectorAll("[data-generate-password]").forEach(function (button) {
    var input = document.getElementById(button.getAttribute("data-generate-password"));
    var confirm = document.getElementById(button.getAttribute("data-generate-password") + "_confirm");
    var shown = document.getElementById("generated-password");
    button.hidden = false;
    button.addEventListener("click", function () {
      var value = randomPassword(16);
      input.value = value;
      if (confirm) { confirm.value = value; }
      input.dispatchEvent(new Event("input"));
      if (shown) { shown.textContent = "Mot de passe généré : " + value + " (notez-le avant d'envoyer)"; }
    });
  });
})();
