// cellnet chat page: plain JavaScript, no build step, no external files.
// The conversation's conversation id lives in sessionStorage, so a reload keeps the conversation.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var log = $("log"), form = $("ask"), input = $("question"), send = $("send"), status = $("status");

  function newId() {
    if (window.crypto && crypto.randomUUID) { return crypto.randomUUID(); }
    return "s-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2, 10);
  }
  function conversationId() {
    var id = sessionStorage.getItem("cellnet-conversation");
    if (!id) { id = newId(); sessionStorage.setItem("cellnet-conversation", id); }
    return id;
  }
  function showConversation() { $("conversation-id").textContent = conversationId().slice(0, 8); }

  function headers() {
    var h = { "Content-Type": "application/json" };
    var key = sessionStorage.getItem("cellnet-key");
    if (key) { h["Authorization"] = "Bearer " + key; }
    return h;
  }
  $("api-key").addEventListener("change", function () {
    sessionStorage.setItem("cellnet-key", this.value.trim());
    checkReady();
  });

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function fmt(x) { return (typeof x === "number") ? x.toFixed(3) : "-"; }

  function render(turn, row) {
    turn.querySelector(".pending") && turn.removeChild(turn.querySelector(".pending"));
    var a = el("div", row.answer ? "a" : "a none", row.answer || "(no confident answer)");
    var meta = el("span", "meta", "score " + fmt(row.score) + (row.steps ? " · " + row.steps + " steps" : ""));
    a.appendChild(meta);
    turn.appendChild(a);
    if (row.baseline) {
      var b = el("div", "base");
      b.appendChild(el("b", null, "baseline: "));
      b.appendChild(document.createTextNode((row.baseline.text || "(no confident answer)") + " "));
      b.appendChild(el("span", "meta", "score " + fmt(row.baseline.score)));
      turn.appendChild(b);
    }
    if (row.candidates && row.candidates.length) {
      var t = el("table", "cands");
      row.candidates.forEach(function (c, i) {
        var tr = el("tr", i === 0 ? "top" : "");
        var td = el("td", null, c.text);
        if (c.penalised) { td.appendChild(el("span", "tag", "repeat")); }
        tr.appendChild(td);
        tr.appendChild(el("td", "s", fmt(c.score)));
        t.appendChild(tr);
      });
      turn.appendChild(t);
    }
  }

  function ask(question) {
    var turn = el("div", "turn");
    turn.appendChild(el("div", "q", question));
    turn.appendChild(el("div", "meta pending", "thinking …"));
    log.appendChild(turn);
    send.disabled = true;
    var body = { question: question, k: parseInt($("k").value, 10), session_id: conversationId(),
                 baseline: $("baseline").checked };
    return fetch("/v1/answer", { method: "POST", headers: headers(), body: JSON.stringify(body) })
      .then(function (r) {
        return r.json().then(function (j) { return { status: r.status, body: j }; });
      })
      .then(function (res) {
        if (res.status === 401) { $("key-box").hidden = false; }
        if (res.status !== 200) { throw new Error(res.body.detail || ("HTTP " + res.status)); }
        render(turn, res.body.answers[0]);
        turn.setAttribute("data-state", "answered");
      })
      .catch(function (e) {
        var p = turn.querySelector(".pending");
        if (p) { turn.removeChild(p); }
        turn.appendChild(el("div", "err", "error: " + e.message));
        turn.setAttribute("data-state", "error");
      })
      .then(function () { send.disabled = false; input.focus(); window.scrollTo(0, document.body.scrollHeight); });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var q = input.value.trim();
    if (!q) { return; }
    input.value = "";
    ask(q);
  });
  $("new-conversation").addEventListener("click", function () {
    sessionStorage.setItem("cellnet-conversation", newId());
    showConversation();
    log.innerHTML = "";
    input.focus();
  });

  function checkReady() {
    fetch("/readyz", { headers: headers() }).then(function (r) {
      if (r.status === 401) {
        $("key-box").hidden = false;
        status.className = "status error";
        status.textContent = "API key needed";
        return;
      }
      return r.json().then(function (j) {
        if (j.ready) {
          status.className = "status ready";
          status.textContent = "ready · " + j.run + " · " + j.core + " → " + j.decoder;
          status.setAttribute("data-ready", "1");
        } else if (j.error) {
          status.className = "status error";
          status.textContent = "failed to load: " + j.error;
        } else {
          status.className = "status loading";
          status.textContent = "loading " + j.run + " …";
          setTimeout(checkReady, 1000);
        }
      });
    }).catch(function () { status.className = "status error"; status.textContent = "server unreachable"; setTimeout(checkReady, 2000); });
  }

  showConversation();
  checkReady();
})();
