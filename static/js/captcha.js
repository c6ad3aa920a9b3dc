/* The captcha field, improved when JavaScript runs (templates/captcha/field.html).
 * Without it the field still works: "Nouvelle image" submits the form, which comes back
 * with a new image and everything typed; the proof of work explains that it needs it.
 * A file of its own, not inline: the portal's CSP allows scripts from 'self' only. */
(function () {
  "use strict";

  // Image mode: "Nouvelle image" swaps the picture, the audio link and the hidden id in
  // place, so the user does not lose focus or scroll position.
  function enhanceImage(field) {
    var button = field.querySelector("[data-captcha-refresh]");
    var image = field.querySelector("[data-captcha-image]");
    var audio = field.querySelector("[data-captcha-audio]");
    var hiddenId = field.querySelector("[data-captcha-id]");
    var answer = field.querySelector("input[name=captcha_answer]");
    var status = field.querySelector("[data-captcha-status]");
    if (!button || !image || !audio || !hiddenId || !answer || !window.fetch) {
      return;
    }
    var busy = false;
    button.addEventListener("click", function (event) {
      event.preventDefault();
      if (busy) {
        return;
      }
      busy = true;
      fetch(button.getAttribute("data-captcha-refresh"), {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
        cache: "no-store"
      }).then(function (response) {
        if (!response.ok) {
          throw new Error("captcha refresh answered " + response.status);
        }
        return response.json();
      }).then(function (data) {
        image.src = data.image_url;
        audio.href = data.audio_url;
        hiddenId.value = data.id;
        answer.value = "";
        status.textContent = "Une nouvelle image a été affichée.";
        answer.focus();
      }).catch(function () {
        // The way without JavaScript still works: send the form back for a new image.
        if (button.form && button.form.requestSubmit) {
          button.form.requestSubmit(button);
        }
      }).then(function () {
        busy = false;
      });
    });
  }

  // Proof-of-work mode: the widget draws its own checkbox; tie it to the field's hint
  // and error so that screen readers announce them with "Je suis humain".
  function enhancePow(field) {
    var widget = field.querySelector("altcha-widget");
    if (!widget) {
      return;
    }
    var describedBy = field.getAttribute("aria-describedby");
    var invalid = field.classList.contains("has-error");
    function link() {
      var checkbox = widget.querySelector("input[type=checkbox]");
      if (!checkbox) {
        return false;
      }
      if (describedBy) {
        checkbox.setAttribute("aria-describedby", describedBy);
      }
      if (invalid) {
        checkbox.setAttribute("aria-invalid", "true");
      }
      return true;
    }
    if (!link()) {
      widget.addEventListener("load", link);
    }
    widget.addEventListener("statechange", function (event) {
      if (event.detail && event.detail.state === "verified") {
        invalid = false;
        var checkbox = widget.querySelector("input[type=checkbox]");
        if (checkbox) {
          checkbox.removeAttribute("aria-invalid");
        }
      }
    });
  }

  function init() {
    var fields = document.querySelectorAll("[data-captcha]");
    for (var i = 0; i < fields.length; i += 1) {
      if (fields[i].getAttribute("data-captcha") === "pow") {
        enhancePow(fields[i]);
      } else {
        enhanceImage(fields[i]);
      }
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
