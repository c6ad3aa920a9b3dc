/* "ROR inscription": the pre-filled attestation follows the request chosen above it (the
   server defaults to "référent ROR" when the page is used without JavaScript). */
(function () {
  "use strict";
  var links = document.querySelectorAll("a[data-attestation-template]");
  document.querySelectorAll("input[name=request_type]").forEach(function (radio) {
    radio.addEventListener("change", function () {
      links.forEach(function (link) {
        var url = new URL(link.href, window.location.href);
        url.searchParams.set("request_type", radio.value);
        link.href = url.pathname + url.search;
      });
    });
  });
})();
