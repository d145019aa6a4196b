// Flowsite chat window: plain JavaScript, no build step.
//
// Speaks the WebSocket protocol of README.md ("Chat UI and WebSocket protocol"). Model output is
// only ever put into the page as text (Text nodes / textContent), never parsed as HTML.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("chat-config").textContent);
  const els = {
    conversation: document.getElementById("conversation"),
    messages: document.getElementById("messages"),
    form: document.getElementById("composer"),
    input: document.getElementById("question"),
    send: document.getElementById("send"),
    stop: document.getElementById("stop"),
    newChat: document.getElementById("new-chat"),
    status: document.getElementById("connection"),
  };
  const storageKey = "flowsite.chat." + config.chatflowId;
  const CLOSE_MESSAGES = {
    4401: "This chatflow is not public: log in as a staff user to use it.",
    4403: "This chatflow is only open to staff users.",
    4404: "This chatflow no longer exists.",
  };
  const PING_EVERY_MS = 15000;
  const SILENCE_LIMIT_MS = 25000;
  const MAX_RETRY_DELAY_MS = 3000;

  let saved = loadSaved(); // {chatId, pending: predictionId | null}, per chatflow
  let socket = null;
  let retries = 0;
  let closedForGood = false;
  let lastHeard = 0;
  let pingTimer = null;
  let reconnectTimer = null;
  let resumeOnOpen = null; // {predictionId, afterSeq} found in storage after a reload
  let awaiting = null; // a question sent, its `prediction` frame not yet received
  let current = null; // the answer being relayed: {predictionId, lastSeq, text, view, ...}

  // --- storage ------------------------------------------------------------------------------

  function newId() {
    if (window.crypto && crypto.randomUUID) {
      return crypto.randomUUID();
    }
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }

  function loadSaved() {
    try {
      const value = JSON.parse(localStorage.getItem(storageKey) || "null");
      if (value && typeof value.chatId === "string") {
        return { chatId: value.chatId, pending: value.pending || null };
      }
    } catch (e) {
      // unreadable storage: start a new conversation
    }
    return { chatId: newId(), pending: null };
  }

  function save() {
    try {
      localStorage.setItem(storageKey, JSON.stringify(saved));
    } catch (e) {
      // private mode or full storage: the chat still works, history won't survive a reload
    }
  }

  // --- rendering ----------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function nearBottom() {
    const c = els.conversation;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 120;
  }

  function keepBottom(wasNear) {
    if (wasNear) els.conversation.scrollTop = els.conversation.scrollHeight;
  }

  function addMessage(role, text, extraClass) {
    const wasNear = nearBottom();
    const user = role === "userMessage";
    const row = el("div", "msg " + (user ? "msg-user" : "msg-bot") + (extraClass ? " " + extraClass : ""));
    row.dataset.role = role;
    if (!user) row.append(el("div", "avatar", "AI"));
    const body = el("div", "msg-body");
    const bubble = el("div", "bubble");
    const textNode = document.createTextNode(text || "");
    bubble.append(textNode);
    body.append(bubble);
    row.append(body);
    els.messages.append(row);
    keepBottom(wasNear || user);
    return { row, body, bubble, textNode, typing: null };
  }

  function answerView() {
    const view = addMessage("apiMessage", "");
    view.row.classList.add("msg-answer");
    view.typing = el("div", "typing");
    view.typing.setAttribute("aria-label", "Answering");
    view.typing.append(el("span"), el("span"), el("span"));
    view.body.prepend(view.typing);
    return view;
  }

  function stopTyping(view) {
    if (view && view.typing) {
      view.typing.remove();
      view.typing = null;
    }
  }

  function setAnswerText(text) {
    const wasNear = nearBottom();
    current.text = text;
    current.view.textNode.data = text;
    keepBottom(wasNear);
  }

  function appendToken(token) {
    if (typeof token !== "string" || token === "") return;
    const wasNear = nearBottom();
    stopTyping(current.view);
    current.view.bubble.classList.add("streaming");
    current.text += token;
    current.view.textNode.appendData(token);
    keepBottom(wasNear);
  }

  // An answer that failed: what to do first (the hint, when the server knows one), then the
  // technical message for whoever fixes it.
  function restartAnswer() {
    current.text = "";
    current.view.textNode.data = "";
    current.view.bubble.classList.remove("streaming");
  }

  function showError(view, message, hint) {
    const wasNear = nearBottom();
    stopTyping(view);
    const card = el("div", "error-card");
    card.setAttribute("role", "alert");
    card.append(el("div", "error-title", hint || message || "The answer failed."));
    if (hint && message) card.append(el("div", "error-detail", message));
    view.body.append(card);
    keepBottom(wasNear);
  }

  function addTag(view, text) {
    view.body.append(el("span", "tag", text));
  }

  function notice(text, isError) {
    const wasNear = nearBottom();
    const node = el("div", "notice" + (isError ? " notice-error" : ""), text);
    node.setAttribute("role", isError ? "alert" : "status");
    els.messages.append(node);
    keepBottom(wasNear);
    return node;
  }

  function setStatus(state, text) {
    els.status.dataset.state = state;
    els.status.textContent = text;
  }

  function answering() {
    return Boolean(awaiting || (current && !current.finished));
  }

  function refreshControls() {
    const busy = answering();
    els.send.hidden = busy;
    els.stop.hidden = !busy;
    els.send.disabled = closedForGood || els.input.value.trim() === "";
    els.input.disabled = closedForGood;
  }

  function renderWelcome() {
    if (config.welcomeMessage) addMessage("apiMessage", config.welcomeMessage, "msg-welcome");
  }

  // --- the socket ---------------------------------------------------------------------------

  function send(message) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(message));
    return true;
  }

  function connect() {
    reconnectTimer = null;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + config.wsPath);
    socket = ws;
    ws.onopen = function () {
      retries = 0;
      lastHeard = Date.now();
      setStatus("online", "Connected");
      startPing();
      if (current && !current.finished) {
        send({ type: "resume", predictionId: current.predictionId, afterSeq: current.lastSeq });
      } else if (resumeOnOpen) {
        send({ type: "resume", predictionId: resumeOnOpen.predictionId, afterSeq: 0 });
      }
      refreshControls();
    };
    ws.onmessage = function (e) {
      lastHeard = Date.now();
      let message;
      try {
        message = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      handle(message);
    };
    ws.onclose = function (e) {
      if (socket !== ws) return;
      socket = null;
      stopPing();
      if (CLOSE_MESSAGES[e.code]) {
        closedForGood = true;
        setStatus("closed", "Not available");
        if (awaiting) failAwaiting(CLOSE_MESSAGES[e.code]);
        notice(CLOSE_MESSAGES[e.code], true);
        refreshControls();
        return;
      }
      if (awaiting) {
        failAwaiting("The connection dropped before the question was accepted: send it again.");
      }
      setStatus("reconnecting", "Reconnecting…");
      const delay = Math.min(MAX_RETRY_DELAY_MS, 250 * 2 ** retries);
      retries += 1;
      reconnectTimer = setTimeout(connect, delay);
    };
  }

  function startPing() {
    stopPing();
    pingTimer = setInterval(function () {
      if (Date.now() - lastHeard > SILENCE_LIMIT_MS && socket) {
        socket.close(); // a half-open connection: reconnect and resume
        return;
      }
      send({ type: "ping" });
    }, PING_EVERY_MS);
  }

  function stopPing() {
    if (pingTimer) clearInterval(pingTimer);
    pingTimer = null;
  }

  // --- protocol -----------------------------------------------------------------------------

  function handle(message) {
    switch (message.type) {
      case "prediction":
        onPrediction(message);
        break;
      case "event":
        onEvent(message);
        break;
      case "done":
        onDone(message);
        break;
      case "error":
        onError(message);
        break;
      default:
        break; // pong and anything newer
    }
    refreshControls();
  }

  function onPrediction(message) {
    if (current && current.predictionId === message.predictionId) {
      return; // our own resume after a reconnect: keep what we have and continue after lastSeq
    }
    let view;
    if (awaiting) {
      view = awaiting.view;
      awaiting = null;
    } else {
      // resumed after a reload: show the question this answer belongs to
      addMessage("userMessage", message.question);
      view = answerView();
    }
    resumeOnOpen = null;
    current = {
      predictionId: message.predictionId,
      lastSeq: 0,
      text: "",
      view: view,
      finished: false,
      error: null,
      aborted: false,
    };
    view.row.dataset.predictionId = message.predictionId;
    saved.pending = message.predictionId;
    save();
  }

  function onEvent(message) {
    if (!current || message.predictionId !== current.predictionId) return;
    if (message.seq <= current.lastSeq) return; // never apply an event twice
    current.lastSeq = message.seq;
    switch (message.event) {
      case "token":
        appendToken(message.data);
        break;
      case "error":
        current.error = String(message.data);
        break;
      case "abort":
        current.aborted = true;
        break;
      case "retry":
        restartAnswer(); // a new attempt (queue mode, after a lost worker) answers from scratch
        break;
      default:
        break; // start, metadata, sourceDocuments, usedTools…, end
    }
  }

  function onDone(message) {
    if (!current || message.predictionId !== current.predictionId || current.finished) return;
    const view = current.view;
    stopTyping(view);
    view.bubble.classList.remove("streaming");
    if (message.status === "succeeded") {
      // The stored answer is the reference: it fills a non-streaming answer and corrects one
      // rebuilt from the database after a restart.
      if (typeof message.text === "string" && message.text !== current.text) {
        setAnswerText(message.text);
      }
    } else if (message.status === "cancelled" || current.aborted) {
      addTag(view, current.text ? "Stopped" : "Stopped before answering");
    } else {
      const error = message.error || {};
      showError(view, error.message || current.error, error.hint);
    }
    view.row.dataset.status = message.status;
    current.finished = true;
    saved.pending = null;
    save();
  }

  function failAwaiting(text, hint) {
    const view = awaiting.view;
    awaiting = null;
    showError(view, text, hint);
    view.row.dataset.status = "refused";
  }

  function onError(message) {
    if (message.code === "stream_interrupted" && current && !current.finished) {
      setTimeout(function () {
        send({ type: "resume", predictionId: current.predictionId, afterSeq: current.lastSeq });
      }, 1000);
      return;
    }
    if (awaiting) {
      failAwaiting(message.message, message.hint);
      return;
    }
    if (message.code === "prediction_not_found" && (resumeOnOpen || (current && !current.finished))) {
      resumeOnOpen = null;
      if (current && !current.finished) {
        showError(current.view, "This answer is no longer available.", "Ask again.");
        current.finished = true;
      }
      saved.pending = null;
      save();
      return;
    }
    if (["login_required", "staff_only", "chatflow_not_found"].includes(message.code)) {
      return; // the close that follows says it
    }
    notice(message.message, true);
  }

  // --- actions ------------------------------------------------------------------------------

  function ask(question) {
    if (answering() || closedForGood) return;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      notice("Not connected right now; your message was not sent. Try again in a moment.", true);
      return;
    }
    addMessage("userMessage", question);
    awaiting = { question: question, view: answerView() };
    send({ type: "question", question: question, chatId: saved.chatId });
    els.input.value = "";
    autosize();
    refreshControls();
  }

  function stop() {
    if (current && !current.finished) {
      send({ type: "stop", predictionId: current.predictionId });
    } else if (awaiting) {
      send({ type: "stop" });
    }
  }

  function newChat() {
    stop();
    current = null;
    awaiting = null;
    resumeOnOpen = null;
    saved = { chatId: newId(), pending: null };
    save();
    els.messages.replaceChildren();
    renderWelcome();
    refreshControls();
    els.input.focus();
  }

  function autosize() {
    els.input.style.height = "auto";
    els.input.style.height = Math.min(els.input.scrollHeight, 200) + "px";
  }

  async function loadHistory() {
    const url = config.historyUrl + "?chatId=" + encodeURIComponent(saved.chatId);
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        notice("Could not load this conversation: " + (body.message || response.status), true);
        return [];
      }
      const body = await response.json();
      for (const message of body.messages) {
        const view = addMessage(message.role, message.content);
        if (message.predictionId) view.row.dataset.predictionId = message.predictionId;
      }
      return body.messages;
    } catch (e) {
      notice("Could not load this conversation (network error).", true);
      return [];
    }
  }

  async function start() {
    els.form.addEventListener("submit", function (e) {
      e.preventDefault();
      const question = els.input.value.trim();
      if (question) ask(question);
    });
    els.input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        els.form.requestSubmit();
      }
    });
    els.input.addEventListener("input", function () {
      autosize();
      refreshControls();
    });
    els.stop.addEventListener("click", stop);
    els.newChat.addEventListener("click", newChat);
    save();
    renderWelcome();
    const history = await loadHistory();
    if (saved.pending) {
      const stored = history.some((m) => m.predictionId === saved.pending);
      if (stored) {
        saved.pending = null;
        save();
      } else {
        resumeOnOpen = { predictionId: saved.pending, afterSeq: 0 };
      }
    }
    refreshControls();
    connect();
    els.input.focus();
  }

  start();
})();
