// Parley's web chat: sign in with e-mail and password (an HttpOnly session cookie the page never
// sees; nothing secret in localStorage: only the chosen bot and colour theme), chats from the
// REST API, answers streamed over the WebSocket /chat/ws (or, for an edit, a regeneration or a
// message with attachments, as Server-Sent Events from the HTTP API) and rendered by
// markdown.js, a stop button, thumbs up/down, edits and regenerations with arrows between the
// branches, search over the user's chats, bot profiles (choose, create, edit) and attachments
// dropped on the composer.
"use strict";

(function () {
  const BOT_STORAGE = "parley.botId";
  const THEME_STORAGE = "parley.theme";
  const AVATAR_MAX_BYTES = 32 * 1024; // as the session service checks
  const AVATAR_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp"];
  const $ = (id) => document.getElementById(id);
  const md = window.ParleyMarkdown;

  const state = {
    user: null,
    chatId: null,
    bots: [],
    socket: null,
    ready: null,
    turn: null,
    attachments: [], // {name, id?, kind?, element} uploaded (or uploading) to the open chat
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function errorMessage(body, response) {
    return body && body.error ? body.error.message : response.statusText || "HTTP " + response.status;
  }

  async function api(path, options = {}) {
    const headers = {};
    if (typeof options.body === "string") headers["Content-Type"] = "application/json";
    const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
    let body = null;
    if (response.status !== 204) {
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
    }
    if (!response.ok) throw new ApiError(response.status, errorMessage(body, response));
    return body;
  }

  const post = (path, body) => api(path, { method: "POST", body: JSON.stringify(body) });

  function setStatus(text) {
    $("status").textContent = text || "";
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function button(className, text, label, onClick) {
    const node = element("button", className, text);
    node.type = "button";
    if (label) {
      node.title = label;
      node.setAttribute("aria-label", label);
    }
    if (onClick) node.addEventListener("click", onClick);
    return node;
  }

  // --- colour theme: the system's, or the one chosen (a preference, kept in localStorage) -----

  const THEMES = ["auto", "dark", "light"];

  function applyTheme(theme) {
    const root = document.documentElement;
    if (theme === "auto") delete root.dataset.theme;
    else root.dataset.theme = theme;
    $("hljs-dark").media = { auto: "(prefers-color-scheme: dark)", dark: "all", light: "not all" }[theme];
    $("theme-toggle").textContent = "Theme: " + theme;
  }

  function currentTheme() {
    const saved = localStorage.getItem(THEME_STORAGE);
    return THEMES.includes(saved) ? saved : "auto";
  }

  function nextTheme() {
    const theme = THEMES[(THEMES.indexOf(currentTheme()) + 1) % THEMES.length];
    if (theme === "auto") localStorage.removeItem(THEME_STORAGE);
    else localStorage.setItem(THEME_STORAGE, theme);
    applyTheme(theme);
  }

  // --- the chat list on a phone-sized screen --------------------------------------------------

  function showSidebar(open) {
    $("sidebar").classList.toggle("open", open);
    $("menu-toggle").setAttribute("aria-expanded", String(open));
    $("menu-toggle").setAttribute("aria-label", open ? "Hide the chat list" : "Show the chat list");
  }

  // --- signing in and out ---------------------------------------------------------------

  async function signIn(email, password) {
    await post("/auth/sign-in", { email, password });
    await enter();
  }

  async function enter() {
    state.user = await api("/auth/me");
    const who = state.user.name || state.user.email;
    $("whoami").textContent =
      "Signed in as " + who + (state.user.email && state.user.email !== who ? " (" + state.user.email + ")" : "") +
      (state.user.role && state.user.role !== "member" ? ", " + state.user.role : "");
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

  // An avatar: an uploaded image (a data URL), an emoji, or the name's initial. Images by URL
  // from elsewhere are not loaded: the page's policy allows images from this origin only.
  function fillAvatar(node, bot) {
    node.replaceChildren();
    if (!bot) return;
    const avatar = bot.avatar || "";
    if (avatar.startsWith("data:image/")) {
      const img = element("img");
      img.src = avatar;
      img.alt = "";
      node.append(img);
    } else if (avatar && !/^https?:/.test(avatar)) {
      node.textContent = avatar;
    } else {
      node.textContent = (bot.name || "?").slice(0, 1).toUpperCase();
    }
  }

  const ownBot = (bot) => !bot.shared && !bot.builtin;
  const findBot = (botId) => state.bots.find((b) => b.bot_id === botId);

  async function loadBots(selected) {
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
      const option = element("option", "", bot.name);
      option.value = bot.bot_id;
      select.append(option);
    }
    picker.hidden = state.bots.length === 0;
    const wanted = selected || localStorage.getItem(BOT_STORAGE);
    if (wanted && findBot(wanted)) select.value = wanted;
    showBotCard();
  }

  function showBotCard() {
    const bot = findBot($("bot-select").value);
    fillAvatar($("bot-card-avatar"), bot);
    $("bot-card-description").textContent = bot ? bot.description : "";
  }

  function botName(botId) {
    const bot = findBot(botId);
    return bot ? bot.name : "";
  }

  // The dialog that creates and edits the user's own profiles.
  const dialog = { avatar: "" };

  function fillBotForm(bot) {
    $("bot-name").value = bot ? bot.name : "";
    dialog.avatar = bot ? bot.avatar : "";
    $("bot-avatar-text").value = dialog.avatar.startsWith("data:") ? "" : dialog.avatar;
    $("bot-avatar-file").value = "";
    $("bot-description").value = bot ? bot.description : "";
    $("bot-system").value = bot ? bot.system_prompt : "";
    $("bot-temperature").value = bot && bot.sampling.temperature !== null ? bot.sampling.temperature : "";
    $("bot-top-p").value = bot && bot.sampling.top_p !== null ? bot.sampling.top_p : "";
    $("bot-history").value = bot ? bot.history_policy : "truncate";
    $("bot-delete").hidden = !bot;
    $("bot-error").textContent = "";
    fillAvatar($("bot-avatar-preview"), { name: $("bot-name").value, avatar: dialog.avatar });
  }

  function openBotDialog() {
    const select = $("bot-edit-select");
    select.replaceChildren(element("option", "", "A new bot"));
    select.firstChild.value = "";
    for (const bot of state.bots.filter(ownBot)) {
      const option = element("option", "", bot.name);
      option.value = bot.bot_id;
      select.append(option);
    }
    const current = findBot($("bot-select").value);
    select.value = current && ownBot(current) ? current.bot_id : "";
    fillBotForm(findBot(select.value));
    $("bot-dialog").showModal();
    $("bot-name").focus();
  }

  function readAvatarFile(file) {
    $("bot-error").textContent = "";
    if (!AVATAR_TYPES.includes(file.type)) {
      $("bot-error").textContent = "The avatar must be a PNG, JPEG, GIF or WebP image.";
      return;
    }
    if (file.size > AVATAR_MAX_BYTES) {
      $("bot-error").textContent = "The avatar is " + file.size + " bytes; at most " + AVATAR_MAX_BYTES + ".";
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {
      dialog.avatar = reader.result;
      $("bot-avatar-text").value = "";
      fillAvatar($("bot-avatar-preview"), { name: $("bot-name").value, avatar: dialog.avatar });
    };
    reader.readAsDataURL(file);
  }

  function number(id) {
    const value = $(id).value;
    return value === "" ? null : Number(value);
  }

  async function saveBot() {
    const botId = $("bot-edit-select").value;
    const body = {
      name: $("bot-name").value.trim(),
      avatar: dialog.avatar,
      description: $("bot-description").value,
      system_prompt: $("bot-system").value,
      sampling: { temperature: number("bot-temperature"), top_p: number("bot-top-p") },
      history_policy: $("bot-history").value,
    };
    try {
      const saved = botId
        ? await api("/bots/" + encodeURIComponent(botId), { method: "PATCH", body: JSON.stringify(body) })
        : await post("/bots", body);
      await loadBots(saved.bot_id);
      if (!state.chatId) localStorage.setItem(BOT_STORAGE, saved.bot_id);
      $("bot-dialog").close();
      setStatus((botId ? "Saved " : "Created ") + saved.name + ".");
    } catch (error) {
      $("bot-error").textContent = "Could not save the bot: " + error.message;
    }
  }

  async function deleteBot() {
    const botId = $("bot-edit-select").value;
    if (!botId) return;
    try {
      await api("/bots/" + encodeURIComponent(botId), { method: "DELETE" });
      await loadBots();
      $("bot-dialog").close();
      setStatus("The bot is deleted.");
    } catch (error) {
      $("bot-error").textContent = "Could not delete the bot: " + error.message;
    }
  }

  // --- chats --------------------------------------------------------------------------------

  async function loadChats() {
    const body = await api("/chats?limit=100");
    const list = $("chat-list");
    list.replaceChildren();
    for (const chat of body.chats) {
      const item = element("li", "chat-item" + (chat.chat_id === state.chatId ? " active" : ""));
      item.dataset.chatId = chat.chat_id;
      const open = button("chat-open", chat.title || "Untitled chat", "", () => openChat(chat.chat_id));
      open.title = chat.title;
      const remove = button("chat-delete", "\u00d7", "Delete chat " + (chat.title || ""), () =>
        deleteChat(chat.chat_id),
      );
      item.append(open, remove);
      list.append(item);
    }
  }

  function markActive() {
    for (const item of document.querySelectorAll(".chat-item")) {
      const active = item.dataset.chatId === state.chatId;
      item.classList.toggle("active", active);
      const open = item.querySelector(".chat-open");
      if (active) open.setAttribute("aria-current", "page");
      else open.removeAttribute("aria-current");
    }
  }

  function showHeader(title, botId) {
    $("chat-title").textContent = title;
    $("chat-bot").textContent = botName(botId);
    fillAvatar($("chat-avatar"), botId ? findBot(botId) : null);
  }

  function newChat() {
    if (state.turn) return;
    state.chatId = null;
    clearAttachments();
    $("messages").replaceChildren();
    showHeader("New chat", "");
    $("bot-select").disabled = false;
    markActive();
    showSidebar(false);
    $("input").focus();
  }

  function renderChat(chat) {
    state.chatId = chat.chat_id;
    showHeader(chat.title || "Untitled chat", chat.bot_id);
    $("bot-select").disabled = true;
    $("messages").replaceChildren();
    for (const message of chat.messages) {
      if (message.role === "user") addUser(message.content, message);
      else if (message.role === "assistant") {
        const bubble = addAssistant(message);
        showAnswer(bubble, message.content, message.finish_reason);
        attachFeedback(bubble, chat.chat_id, message.message_id);
      }
    }
    markActive();
  }

  async function openChat(chatId) {
    if (state.turn) return;
    try {
      const chat = await api("/chat/" + chatId);
      if (chat.chat_id !== state.chatId) clearAttachments();
      renderChat(chat);
      showSidebar(false);
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

  // --- search -------------------------------------------------------------------------------

  let searchTimer = null;
  let searchSeq = 0;

  // The snippet as text nodes, with the ranges that match in <mark>: nothing in it is parsed.
  function highlighted(snippet, ranges) {
    const node = element("span", "hit-snippet");
    let at = 0;
    for (const [start, end] of ranges) {
      if (start < at || end <= start) continue;
      node.append(snippet.slice(at, start), element("mark", "", snippet.slice(start, end)));
      at = end;
    }
    node.append(snippet.slice(at));
    return node;
  }

  async function search(query) {
    const seq = ++searchSeq;
    const results = $("search-results");
    if (!query.trim()) {
      results.hidden = true;
      $("search-empty").hidden = true;
      $("chat-list").hidden = false;
      return;
    }
    try {
      const page = await api("/chats/search?limit=20&q=" + encodeURIComponent(query));
      if (seq !== searchSeq) return; // a newer query is on its way
      results.replaceChildren();
      for (const hit of page.hits) {
        const item = element("li", "search-hit");
        const open = button("hit-open", "", "", () => openChat(hit.chat_id));
        open.dataset.chatId = hit.chat_id;
        open.append(element("span", "hit-title", hit.chat_title || "Untitled chat"), highlighted(hit.snippet, hit.highlights));
        item.append(open);
        results.append(item);
      }
      results.hidden = false;
      $("search-empty").hidden = page.hits.length > 0;
      $("chat-list").hidden = true;
    } catch (error) {
      if (seq === searchSeq) setStatus("Search failed: " + error.message);
    }
  }

  // --- messages -----------------------------------------------------------------------------

  function scrollDown() {
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
  }

  // `< 2/3 >` between the edits of a question or the regenerations of an answer.
  function branchArrows(message) {
    const nav = element("div", "branches");
    nav.setAttribute("role", "group");
    nav.setAttribute("aria-label", "Versions of this message");
    const index = message.sibling_index;
    const count = message.sibling_count;
    const previous = button("branch-prev", "<", "Previous version", () => moveBranch(message, -1));
    const next = button("branch-next", ">", "Next version", () => moveBranch(message, 1));
    previous.disabled = index === 0;
    next.disabled = index === count - 1;
    nav.append(previous, element("span", "branch-position", index + 1 + "/" + count), next);
    return nav;
  }

  async function moveBranch(message, step) {
    if (state.turn) return;
    const chatId = state.chatId;
    try {
      const path = "/chat/" + chatId + "/messages/" + message.message_id;
      const { siblings } = await api(path + "/siblings");
      const at = siblings.findIndex((m) => m.message_id === message.message_id);
      const target = siblings[at + step];
      if (!target) return;
      renderChat(await post("/chat/" + chatId + "/branch", { message_id: target.message_id }));
      setStatus("Version " + (at + step + 1) + " of " + siblings.length + ".");
    } catch (error) {
      setStatus("Could not switch versions: " + error.message);
    }
  }

  function messageActions(message) {
    const actions = element("div", "message-actions");
    if (message.sibling_count > 1) actions.append(branchArrows(message));
    return actions;
  }

  function attachmentLinks(chatId, attachments) {
    const box = element("div", "message-attachments");
    for (const file of attachments || []) {
      const url = "/chat/" + chatId + "/attachments/" + file.id;
      if (file.kind === "image") {
        const img = element("img", "attachment-image");
        img.src = url;
        img.alt = file.name;
        box.append(img);
      } else {
        const link = element("a", "attachment-link", file.name + " (" + Math.ceil(file.size / 1024) + " KiB)");
        link.href = url;
        link.download = file.name;
        box.append(link);
      }
    }
    return box;
  }

  function addUser(text, message) {
    const node = element("div", "message user");
    const bubble = element("div", "bubble", text);
    node.append(bubble);
    if (message) {
      node.dataset.messageId = message.message_id;
      if (message.attachments && message.attachments.length) {
        node.append(attachmentLinks(state.chatId, message.attachments));
      }
      const actions = messageActions(message);
      actions.prepend(button("edit", "Edit", "Edit this question", () => startEdit(node, message)));
      node.append(actions);
    }
    $("messages").append(node);
    scrollDown();
    return node;
  }

  function startEdit(node, message) {
    if (state.turn || node.querySelector(".edit-form")) return;
    const form = element("form", "edit-form");
    const label = element("label", "visually-hidden", "Edit the question");
    const area = element("textarea", "edit-input");
    area.id = "edit-" + message.message_id;
    label.htmlFor = area.id;
    area.value = message.content;
    area.rows = 3;
    const save = element("button", "edit-save", "Save and ask");
    save.type = "submit";
    const cancel = button("edit-cancel secondary", "Cancel", "", () => {
      form.remove();
      node.querySelector(".bubble").hidden = false;
    });
    form.append(label, area, save, cancel);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!area.value.trim()) return;
      removeFrom(node);
      addUser(area.value);
      streamTurn("/chat/" + state.chatId + "/messages/" + message.message_id + "/edit", {
        message: area.value,
        stream: true,
      });
    });
    node.querySelector(".bubble").hidden = true;
    node.insertBefore(form, node.querySelector(".message-actions"));
    area.focus();
  }

  // Remove a message and those after it (they are replaced by a new branch).
  function removeFrom(node) {
    while (node.nextSibling) node.nextSibling.remove();
    node.remove();
  }

  function regenerate(node, message) {
    if (state.turn) return;
    removeFrom(node);
    streamTurn("/chat/" + state.chatId + "/messages/" + message.message_id + "/regenerate", { stream: true });
  }

  function addAssistant(message) {
    const node = element("div", "message assistant");
    const content = element("div", "bubble markdown");
    const note = element("div", "note");
    const feedback = element("div", "feedback");
    feedback.hidden = true;
    // Triangles rather than emoji: they are in every font, so they show even without one.
    for (const [rating, label, text] of [["up", "Good answer", "\u25b2"], ["down", "Bad answer", "\u25bc"]]) {
      const rate = button("rate rate-" + rating, text, label);
      rate.dataset.rating = rating;
      rate.setAttribute("aria-pressed", "false");
      feedback.append(rate);
    }
    node.append(content, note);
    if (message) {
      const actions = messageActions(message);
      actions.append(feedback, button("regenerate", "Regenerate", "Regenerate this answer", () => regenerate(node, message)));
      node.append(actions);
    } else {
      node.append(feedback);
    }
    $("messages").append(node);
    scrollDown();
    return node;
  }

  const NOTES = {
    cancelled: "stopped",
    length: "cut at the length limit",
    error: "the model failed",
    expired: "no worker answered in time",
  };

  function showAnswer(node, text, finishReason) {
    md.show(node.querySelector(".bubble"), text);
    node.querySelector(".note").textContent = NOTES[finishReason] || "";
    const streaming = finishReason === undefined;
    node.classList.toggle("streaming", streaming);
    // A screen reader reads the answer once it is complete, not every chunk.
    node.setAttribute("aria-busy", String(streaming));
  }

  function attachFeedback(node, chatId, messageId) {
    node.dataset.messageId = messageId;
    const feedback = node.querySelector(".feedback");
    feedback.hidden = false;
    for (const rate of feedback.querySelectorAll("button")) {
      rate.onclick = () => sendRating(node, chatId, messageId, rate.dataset.rating);
    }
  }

  async function sendRating(node, chatId, messageId, rating) {
    const path = "/chat/" + chatId + "/messages/" + messageId + "/feedback";
    try {
      await post(path, { rating });
      for (const rate of node.querySelectorAll(".rate")) {
        rate.setAttribute("aria-pressed", String(rate.dataset.rating === rating));
      }
      setStatus("Thanks for the feedback.");
    } catch (error) {
      if (error.status === 404 || error.status === 405) {
        node.querySelector(".feedback").hidden = true;
        setStatus("Feedback is not available on this server.");
      } else {
        setStatus("Could not send the feedback: " + error.message);
      }
    }
  }

  // The stored answer's id (for feedback) arrives shortly after the stream ends.
  async function findAnswerId(node, chatId, requestId) {
    for (let attempt = 0; attempt < 20; attempt += 1) {
      try {
        const chat = await api("/chat/" + chatId);
        const stored = chat.messages.find((m) => m.role === "assistant" && m.request_id === requestId);
        if (stored) {
          attachFeedback(node, chatId, stored.message_id);
          return;
        }
      } catch (_) {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  // After an HTTP turn the chat is read again: the new branch, its arrows and the ids.
  async function refreshChat(chatId, requestId) {
    for (let attempt = 0; attempt < 20; attempt += 1) {
      try {
        const chat = await api("/chat/" + chatId);
        const stored = chat.messages.some((m) => m.role === "assistant" && m.request_id === requestId);
        if (stored || attempt === 19) {
          if (!state.turn && state.chatId === chatId) renderChat(chat);
          return;
        }
      } catch (_) {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  // --- attachments --------------------------------------------------------------------------

  function clearAttachments() {
    state.attachments = [];
    $("attachments").replaceChildren();
  }

  function restoreAttachments(entries) {
    state.attachments = entries.concat(state.attachments);
    $("attachments").prepend(...entries.map((entry) => entry.element));
  }

  function attachmentChip(entry) {
    const chip = element("span", "attachment-chip");
    const name = element("span", "chip-name", entry.name);
    const remove = button("chip-remove", "\u00d7", "Remove " + entry.name, () => {
      state.attachments = state.attachments.filter((a) => a !== entry);
      chip.remove();
    });
    chip.append(name, remove);
    return chip;
  }

  // Upload the files to the open chat; they go with the next message.
  async function addFiles(files) {
    if (!files.length) return;
    if (!state.chatId) {
      setStatus("Files go into a chat: send a first message, then add them.");
      return;
    }
    for (const file of files) {
      const entry = { name: file.name, id: null };
      entry.element = attachmentChip(entry);
      entry.element.classList.add("uploading");
      $("attachments").append(entry.element);
      state.attachments.push(entry);
      const form = new FormData();
      form.append("file", file);
      try {
        const uploaded = await api("/chat/" + state.chatId + "/attachments", { method: "POST", body: form });
        entry.id = uploaded.id;
        entry.element.classList.remove("uploading");
        entry.element.querySelector(".chip-name").textContent =
          file.name + " (" + uploaded.kind + ", " + uploaded.tokens + " tokens)";
        setStatus("Attached " + file.name + ".");
      } catch (error) {
        state.attachments = state.attachments.filter((a) => a !== entry);
        entry.element.remove();
        const why =
          error.status === 413 ? "it is too large" : error.status === 415 ? "this kind of file is not accepted" : "";
        setStatus(file.name + " was refused" + (why ? " (" + why + ")" : "") + ": " + error.message);
      }
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
        if (state.turn && !state.turn.http) endTurn("the connection closed");
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

  // A turn's events, from the WebSocket or from a Server-Sent Events stream (as the same frames).
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
          if (item) showHeader(item.textContent, $("bot-select").value);
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
      const { chatId, requestId, http } = turn;
      endTurn("");
      if (http) refreshChat(chatId, requestId);
      else findAnswerId(turn.bubble, chatId, requestId);
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

  function beginTurn(http) {
    state.turn = { bubble: addAssistant(), text: "", requestId: null, chatId: state.chatId, http };
    showAnswer(state.turn.bubble, "", undefined);
    setBusy(true);
    setStatus("");
  }

  // A turn over HTTP, streamed as Server-Sent Events; Stop aborts the request (the gateway then
  // stops the generation and keeps the text so far).
  // `onRefused` runs when the request is answered with an error before anything was stored.
  async function streamTurn(path, body, onRefused) {
    beginTurn(true);
    const turn = state.turn;
    turn.abort = new AbortController();
    try {
      const response = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        credentials: "same-origin",
        signal: turn.abort.signal,
      });
      if (!response.ok) {
        let error = null;
        try {
          error = await response.json();
        } catch (_) {
          error = null;
        }
        const refused = new ApiError(response.status, errorMessage(error, response));
        refused.refused = true;
        throw refused;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block);
          const data = /^data: (.*)$/m.exec(block);
          if (event && data) onSseEvent(turn, event[1], JSON.parse(data[1]));
        }
      }
      if (state.turn === turn) endTurn("The answer stopped early.");
    } catch (error) {
      if (state.turn !== turn) return;
      if (error.name === "AbortError") {
        showAnswer(turn.bubble, turn.text, "cancelled");
        endTurn("");
        refreshChat(turn.chatId, turn.requestId);
      } else {
        turn.bubble.remove();
        endTurn("Could not send: " + error.message);
        if (error.refused && onRefused) onRefused();
        if (turn.chatId) refreshChat(turn.chatId, null);
      }
    }
  }

  function onSseEvent(turn, event, data) {
    if (state.turn !== turn) return;
    const requestId = turn.requestId || data.request_id;
    if (event === "chat") onFrame({ type: "chat", ...data });
    else if (event === "chunk") onFrame({ type: "chunk", request_id: requestId, text: data.text });
    else if (event === "reset") onFrame({ type: "reset", request_id: requestId });
    else if (event === "done") onFrame({ type: "done", request_id: requestId, answer: data });
    else if (event === "error") onFrame({ type: "error", request_id: requestId, error: data });
  }

  async function send(text) {
    if (state.turn || !text.trim()) return;
    if (state.attachments.some((a) => !a.id)) {
      setStatus("Wait for the files to finish uploading.");
      return;
    }
    const temperature = $("temperature").value;
    const maxTokens = $("max-tokens").value;
    const options = {};
    if (temperature !== "") options.temperature = Number(temperature);
    if (maxTokens !== "") options.max_tokens = Number(maxTokens);
    const asked = addUser(text);
    $("input").value = "";
    if (state.attachments.length) {
      // Attachments go with a message of the HTTP API.
      const sent = state.attachments;
      const body = { message: text, stream: true, attachment_ids: sent.map((a) => a.id), ...options };
      clearAttachments();
      // A refused question (an image for a model without vision, say) keeps its text and files.
      streamTurn("/chat/" + state.chatId + "/completion", body, () => {
        asked.remove();
        restoreAttachments(sent);
        if (!$("input").value) $("input").value = text;
      });
      return;
    }
    const frame = { type: "message", message: text, ...options };
    if (state.chatId) frame.chat_id = state.chatId;
    else if (!$("bot-picker").hidden && $("bot-select").value) {
      frame.bot_id = $("bot-select").value;
      localStorage.setItem(BOT_STORAGE, frame.bot_id);
    }
    beginTurn(false);
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
    if (!state.turn) return;
    if (state.turn.http) state.turn.abort.abort();
    else if (state.socket) state.socket.send(JSON.stringify({ type: "stop" }));
  }

  // --- wiring -------------------------------------------------------------------------------

  function init() {
    applyTheme(currentTheme());
    $("not-built").hidden = md.built;
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
    $("theme-toggle").addEventListener("click", nextTheme);
    $("menu-toggle").addEventListener("click", () => showSidebar(!$("sidebar").classList.contains("open")));
    $("bot-select").addEventListener("change", showBotCard);
    $("manage-bots").addEventListener("click", openBotDialog);
    $("bot-edit-select").addEventListener("change", () => fillBotForm(findBot($("bot-edit-select").value)));
    $("bot-avatar-file").addEventListener("change", () => {
      const file = $("bot-avatar-file").files[0];
      if (file) readAvatarFile(file);
    });
    $("bot-avatar-text").addEventListener("input", () => {
      dialog.avatar = $("bot-avatar-text").value.trim();
      fillAvatar($("bot-avatar-preview"), { name: $("bot-name").value, avatar: dialog.avatar });
    });
    $("bot-save").addEventListener("click", saveBot);
    $("bot-delete").addEventListener("click", deleteBot);
    $("bot-cancel").addEventListener("click", () => $("bot-dialog").close());
    $("search-input").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => search($("search-input").value), 250);
    });
    $("search-input").addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        $("search-input").value = "";
        search("");
      }
    });
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
    const composer = $("composer");
    composer.addEventListener("dragover", (event) => {
      event.preventDefault();
      composer.classList.add("dropping");
    });
    composer.addEventListener("dragleave", () => composer.classList.remove("dropping"));
    composer.addEventListener("drop", (event) => {
      event.preventDefault();
      composer.classList.remove("dropping");
      addFiles([...event.dataTransfer.files]);
    });
    $("attach-input").addEventListener("change", () => {
      addFiles([...$("attach-input").files]);
      $("attach-input").value = "";
    });
    $("stop").addEventListener("click", stop);
    enter().catch((error) => showSignIn(error.status === 401 ? "" : error.message));
  }

  init();
})();
