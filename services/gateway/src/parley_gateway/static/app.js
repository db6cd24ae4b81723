// Parley's web chat: sign in with e-mail and password (an HttpOnly session cookie the page never
// sees; nothing secret in localStorage), chats from the REST API,
// answers streamed over the WebSocket /chat/ws and rendered as Markdown, a stop button, bot
// profiles (GET /bots, where the server has them) and thumbs up/down on answers.
"use strict";

(function () {
  const BOT_STORAGE = "parley.botId";
  const $ = (id) => document.getElementById(id);
  const md = window.ParleyMarkdown;

  const state = {
    user: null,
    chatId: null,
    bots: [],
    socket: null,
    ready: null,
    turn: null,
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = {};
    if (options.body) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
    let body = null;
    if (response.status !== 204) {
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.statusText;
      throw new ApiError(response.status, message);
    }
    return body;
  }

  function setStatus(text) {
    $("status").textContent = text || "";
  }

  // --- signing in and out ---------------------------------------------------------------

  async function signIn(email, password) {
    await api("/auth/sign-in", { method: "POST", body: JSON.stringify({ email, password }) });
    await enter();
  }

  async function enter() {
    state.user = await api("/auth/me");
    $("password").value = "";
    $("signin").hidden = true;
    $("app").hidden = false;
    await Promise.all([loadBots(), loadChats()]);
    newChat();
  }

  function showSignIn(message) {
    state.user = null;
    $("app").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
    $("email").focus();
    api("/auth/methods")
      .then((methods) => ($("sso-link").hidden = !methods.oidc))
      .catch(() => ($("sso-link").hidden = true));
  }

  async function signOut() {
    if (state.socket) state.socket.close();
    state.socket = null;
    state.turn = null;
    try {
      await api("/auth/sign-out", { method: "POST" });
    } finally {
      showSignIn("");
    }
  }

  // --- bots ---------------------------------------------------------------------------------

  async function loadBots() {
    const picker = $("bot-picker");
    const select = $("bot-select");
    try {
      const body = await api("/bots");
      state.bots = Array.isArray(body) ? body : body.bots || [];
    } catch (_) {
      state.bots = []; // a server without bot profiles: no picker
    }
    select.replaceChildren();
    for (const bot of state.bots) {
      const option = document.createElement("option");
      option.value = bot.bot_id;
      option.textContent = (bot.avatar && bot.avatar.length <= 4 ? bot.avatar + " " : "") + bot.name;
      select.append(option);
    }
    picker.hidden = state.bots.length === 0;
    const saved = localStorage.getItem(BOT_STORAGE);
    if (saved && state.bots.some((b) => b.bot_id === saved)) select.value = saved;
  }

  function botName(botId) {
    const bot = state.bots.find((b) => b.bot_id === botId);
    return bot ? bot.name : "";
  }

  // --- chats --------------------------------------------------------------------------------

  async function loadChats() {
    const body = await api("/chats?limit=100");
    const list = $("chat-list");
    list.replaceChildren();
    for (const chat of body.chats) {
      const item = document.createElement("li");
      item.className = "chat-item" + (chat.chat_id === state.chatId ? " active" : "");
      item.dataset.chatId = chat.chat_id;
      const open = document.createElement("button");
      open.type = "button";
      open.className = "chat-open";
      open.textContent = chat.title || "Untitled chat";
      open.title = chat.title;
      open.addEventListener("click", () => openChat(chat.chat_id));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "chat-delete";
      remove.textContent = "\u00d7";
      remove.title = "Delete this chat";
      remove.setAttribute("aria-label", "Delete chat " + (chat.title || ""));
      remove.addEventListener("click", () => deleteChat(chat.chat_id));
      item.append(open, remove);
      list.append(item);
    }
  }

  function markActive() {
    for (const item of document.querySelectorAll(".chat-item")) {
      item.classList.toggle("active", item.dataset.chatId === state.chatId);
    }
  }

  function newChat() {
    if (state.turn) return;
    state.chatId = null;
    $("messages").replaceChildren();
    $("chat-title").textContent = "New chat";
    $("chat-bot").textContent = "";
    $("bot-select").disabled = false;
    markActive();
    $("input").focus();
  }

  async function openChat(chatId) {
    if (state.turn) return;
    try {
      const chat = await api("/chat/" + chatId);
      state.chatId = chat.chat_id;
      $("chat-title").textContent = chat.title || "Untitled chat";
      $("chat-bot").textContent = botName(chat.bot_id);
      $("bot-select").disabled = true;
      $("messages").replaceChildren();
      for (const message of chat.messages) {
        if (message.role === "user") addUser(message.content);
        else if (message.role === "assistant") {
          const bubble = addAssistant();
          showAnswer(bubble, message.content, message.finish_reason);
          attachFeedback(bubble, chat.chat_id, message.message_id);
        }
      }
      markActive();
      setStatus("");
    } catch (error) {
      setStatus("Could not open the chat: " + error.message);
    }
  }

  async function deleteChat(chatId) {
    try {
      await api("/chat/" + chatId, { method: "DELETE" });
      if (chatId === state.chatId) newChat();
      await loadChats();
    } catch (error) {
      setStatus("Could not delete the chat: " + error.message);
    }
  }

  // --- messages -----------------------------------------------------------------------------

  function scrollDown() {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  function addUser(text) {
    const message = document.createElement("div");
    message.className = "message user";
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = text;
    message.append(bubble);
    $("messages").append(message);
    scrollDown();
  }

  function addAssistant() {
    const message = document.createElement("div");
    message.className = "message assistant";
    const content = document.createElement("div");
    content.className = "bubble markdown";
    const note = document.createElement("div");
    note.className = "note";
    const feedback = document.createElement("div");
    feedback.className = "feedback";
    feedback.hidden = true;
    // Triangles rather than emoji: they are in every font, so they show even without one.
    for (const [rating, label, text] of [["up", "Good answer", "\u25b2"], ["down", "Bad answer", "\u25bc"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "rate rate-" + rating;
      button.dataset.rating = rating;
      button.title = label;
      button.setAttribute("aria-label", label);
      button.setAttribute("aria-pressed", "false");
      button.textContent = text;
      feedback.append(button);
    }
    message.append(content, note, feedback);
    $("messages").append(message);
    scrollDown();
    return message;
  }

  const NOTES = {
    cancelled: "stopped",
    length: "cut at the length limit",
    error: "the model failed",
    expired: "no worker answered in time",
  };

  function showAnswer(bubble, text, finishReason) {
    bubble.querySelector(".bubble").innerHTML = md.render(text);
    bubble.querySelector(".note").textContent = NOTES[finishReason] || "";
    bubble.classList.toggle("streaming", finishReason === undefined);
  }

  function attachFeedback(bubble, chatId, messageId) {
    bubble.dataset.messageId = messageId;
    const feedback = bubble.querySelector(".feedback");
    feedback.hidden = false;
    for (const button of feedback.querySelectorAll("button")) {
      button.onclick = () => rate(bubble, chatId, messageId, button.dataset.rating);
    }
  }

  async function rate(bubble, chatId, messageId, rating) {
    const path = "/chat/" + chatId + "/messages/" + messageId + "/feedback";
    try {
      await api(path, { method: "POST", body: JSON.stringify({ rating }) });
      for (const button of bubble.querySelectorAll(".rate")) {
        button.setAttribute("aria-pressed", String(button.dataset.rating === rating));
      }
      setStatus("Thanks for the feedback.");
    } catch (error) {
      if (error.status === 404 || error.status === 405) {
        bubble.querySelector(".feedback").hidden = true;
        setStatus("Feedback is not available on this server.");
      } else {
        setStatus("Could not send the feedback: " + error.message);
      }
    }
  }

  // The stored answer's id (for feedback) arrives shortly after the stream ends.
  async function findAnswerId(bubble, chatId, requestId) {
    for (let attempt = 0; attempt < 20; attempt += 1) {
      try {
        const chat = await api("/chat/" + chatId);
        const stored = chat.messages.find((m) => m.role === "assistant" && m.request_id === requestId);
        if (stored) {
          attachFeedback(bubble, chatId, stored.message_id);
          return;
        }
      } catch (_) {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  // --- the WebSocket ------------------------------------------------------------------------

  function connect() {
    if (state.socket && state.socket.readyState <= WebSocket.OPEN && state.ready) return state.ready;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + location.host + "/chat/ws");
    state.socket = socket;
    state.ready = new Promise((resolve, reject) => {
      let ready = false;
      // The upgrade request carries the session cookie: the server answers `ready` by itself.
      socket.onmessage = (event) => {
        const frame = JSON.parse(event.data);
        if (frame.type === "ready") {
          ready = true;
          resolve();
        } else if (!ready && frame.type === "error") {
          reject(new Error(frame.error.message));
        } else {
          onFrame(frame);
        }
      };
      socket.onclose = (event) => {
        if (state.socket === socket) state.socket = null;
        if (!ready) reject(new Error("could not connect (" + (event.reason || event.code) + ")"));
        if (state.turn) endTurn("the connection closed");
        if (event.code === 4401) showSignIn("Your session has ended; sign in again.");
      };
    });
    return state.ready;
  }

  let renderQueued = false;

  function renderSoon() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      if (state.turn) {
        showAnswer(state.turn.bubble, state.turn.text, undefined);
        scrollDown();
      }
    });
  }

  function onFrame(frame) {
    const turn = state.turn;
    if (frame.type === "chat" && turn) {
      turn.requestId = frame.request_id;
      turn.chatId = frame.chat_id;
      if (!state.chatId) {
        state.chatId = frame.chat_id;
        $("bot-select").disabled = true;
        loadChats().then(() => {
          markActive();
          const item = document.querySelector('.chat-item[data-chat-id="' + frame.chat_id + '"] .chat-open');
          if (item) $("chat-title").textContent = item.textContent;
        });
      }
    } else if (frame.type === "chunk" && turn && frame.request_id === turn.requestId) {
      turn.text += frame.text;
      renderSoon();
    } else if (frame.type === "reset" && turn && frame.request_id === turn.requestId) {
      turn.text = "";
      renderSoon();
    } else if (frame.type === "done" && turn && frame.request_id === turn.requestId) {
      showAnswer(turn.bubble, frame.answer.content, frame.answer.finish_reason);
      findAnswerId(turn.bubble, turn.chatId, turn.requestId);
      endTurn("");
      loadChats().then(markActive);
    } else if (frame.type === "error") {
      const own = turn && (!turn.requestId || frame.request_id === turn.requestId);
      if (own) {
        turn.bubble.remove();
        endTurn(frame.error.message);
      } else {
        setStatus(frame.error.message);
      }
    }
  }

  function setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    $("input").disabled = busy;
  }

  function endTurn(message) {
    if (state.turn) state.turn.bubble.classList.remove("streaming");
    state.turn = null;
    setBusy(false);
    setStatus(message);
    $("input").focus();
  }

  async function send(text) {
    if (state.turn || !text.trim()) return;
    const frame = { type: "message", message: text };
    if (state.chatId) frame.chat_id = state.chatId;
    else if (!$("bot-picker").hidden && $("bot-select").value) {
      frame.bot_id = $("bot-select").value;
      localStorage.setItem(BOT_STORAGE, frame.bot_id);
    }
    const temperature = $("temperature").value;
    if (temperature !== "") frame.temperature = Number(temperature);
    const maxTokens = $("max-tokens").value;
    if (maxTokens !== "") frame.max_tokens = Number(maxTokens);
    addUser(text);
    state.turn = { bubble: addAssistant(), text: "", requestId: null, chatId: state.chatId };
    state.turn.bubble.classList.add("streaming");
    $("input").value = "";
    setBusy(true);
    setStatus("");
    try {
      await connect();
      state.socket.send(JSON.stringify(frame));
    } catch (error) {
      if (state.turn) {
        state.turn.bubble.remove();
        endTurn("Could not send: " + error.message);
      }
    }
  }

  function stop() {
    if (state.turn && state.socket) state.socket.send(JSON.stringify({ type: "stop" }));
  }

  // --- wiring -------------------------------------------------------------------------------

  function init() {
    $("signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await signIn($("email").value.trim(), $("password").value);
      } catch (error) {
        $("password").value = "";
        showSignIn(error.status === 401 ? "Wrong e-mail address or password." : "Sign-in failed: " + error.message);
      }
    });
    $("sign-out").addEventListener("click", signOut);
    $("new-chat").addEventListener("click", newChat);
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      send($("input").value);
    });
    $("input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        send($("input").value);
      }
    });
    $("stop").addEventListener("click", stop);
    enter().catch((error) => showSignIn(error.status === 401 ? "" : error.message));
  }

  init();
})();
