/*! bespoke.js v1: consent-first personalization for web pages. No dependencies. */
(function (window, document) {
  "use strict";

  // Nothing is stored and nothing is sent before the person consents: these names are
  // written only once they have.
  var ANONYMOUS_ID = "bespoke_aid";
  var USER_ID = "bespoke_uid";
  var QUEUE = "bespoke_queue";
  var CONSENT = "bespoke_consent";
  var PURPOSES = ["personalization", "analytics", "marketing"];
  var YEAR_S = 31536000;
  var MAX_BEACON_EVENTS = 200;

  var config = {
    api: "",
    key: "",
    flushMs: 50,  // events of one burst leave together; a click reaches the profile at once
    retryMs: 1000,
    batchSize: 20,
    maxRetries: 6,
    autocapture: true,
    slotSelector: "[data-bespoke-slot]"
  };
  var state = {
    consent: null,
    anonymousId: null,
    userId: null,
    queue: [],
    timer: null,
    inFlight: null,
    retries: 0,
    depths: {},
    listening: false,
    started: false
  };

  // --- storage (only with consent) ------------------------------------------------------

  function saved(name) {
    try {
      var text = window.localStorage.getItem(name);
      return text ? JSON.parse(text) : null;
    } catch (error) {
      return null;
    }
  }

  function save(name, value) {
    try {
      if (value === null) window.localStorage.removeItem(name);
      else window.localStorage.setItem(name, JSON.stringify(value));
    } catch (error) { /* private mode or full: the queue stays in memory */ }
  }

  function readCookie(name) {
    var found = document.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
    return found ? decodeURIComponent(found[1]) : null;
  }

  function writeCookie(name, value, seconds) {
    var secure = window.location.protocol === "https:" ? "; Secure" : "";
    document.cookie = name + "=" + encodeURIComponent(value || "") + "; Max-Age=" + seconds +
      "; Path=/; SameSite=Lax" + secure;
  }

  function newId() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) {
      return (b + 256).toString(16).slice(1);
    }).join("");
  }

  // --- consent ----------------------------------------------------------------------------

  function granted() {
    var out = [];
    for (var i = 0; i < PURPOSES.length; i++) {
      if (state.consent && state.consent[PURPOSES[i]] === true) out.push(PURPOSES[i]);
    }
    return out;
  }

  function tracking() {
    return !!(state.consent && state.consent.personalization === true);
  }

  function ensureAnonymousId() {
    if (!state.anonymousId) {
      state.anonymousId = readCookie(ANONYMOUS_ID) || saved(ANONYMOUS_ID) || newId();
    }
    writeCookie(ANONYMOUS_ID, state.anonymousId, YEAR_S);  // first-party, a year
    save(ANONYMOUS_ID, state.anonymousId);
    return state.anonymousId;
  }

  function forget() {
    if (state.timer) window.clearTimeout(state.timer);
    state.timer = null;
    state.queue = [];
    state.anonymousId = null;
    state.userId = null;
    state.depths = {};
    state.started = false;
    writeCookie(ANONYMOUS_ID, "", 0);
    save(ANONYMOUS_ID, null);
    save(USER_ID, null);
    save(QUEUE, null);
    save(CONSENT, null);
  }

  /** Record the person's decisions ({personalization: true, marketing: false, ...}). */
  function consent(decisions, source) {
    var purposes = {};
    for (var i = 0; i < PURPOSES.length; i++) {
      var name = PURPOSES[i];
      if (decisions && typeof decisions[name] === "boolean") purposes[name] = decisions[name];
    }
    if (!Object.keys(purposes).length) return Promise.resolve(null);
    var before = state.anonymousId || readCookie(ANONYMOUS_ID) || saved(ANONYMOUS_ID);
    state.consent = Object.assign({}, state.consent || {}, purposes);
    var anyGranted = granted().length > 0;
    var id = anyGranted ? ensureAnonymousId() : before;
    var recorded = id
      ? post("/v1/consent", {anonymous_id: id, purposes: purposes, source: source || "api"})
      : Promise.resolve(null);
    if (!tracking()) {
      // an opt-out: tracking stops and the identifiers go (after the withdrawal is sent)
      forget();
      if (anyGranted) state.consent = purposes;
    } else {
      save(CONSENT, state.consent);
      start();
    }
    return recorded;
  }

  /** Stop tracking and forget every identifier. */
  function optOut() {
    return consent({personalization: false, analytics: false, marketing: false});
  }

  // IAB TCF v2 consent platforms: purpose 1 (store on the device) with 3/4 (personalised
  // ads profile) or 5/6 (personalised content) → personalization; 7/8/9 → analytics;
  // 2 with 4 → marketing.
  function fromTcf(data) {
    if (!data || !data.purpose || !data.purpose.consents) return null;
    var c = data.purpose.consents;
    return {
      personalization: !!(c[1] && (c[5] || c[6] || c[3] || c[4])),
      analytics: !!(c[1] && (c[7] || c[8] || c[9])),
      marketing: !!(c[1] && c[2] && c[4])
    };
  }

  function listenToConsentPlatform() {
    if (typeof window.__tcfapi !== "function") return;
    window.__tcfapi("addEventListener", 2, function (data, ok) {
      if (!ok || !data) return;
      if (data.eventStatus === "tcloaded" || data.eventStatus === "useractioncomplete") {
        var decisions = fromTcf(data);
        if (decisions) consent(decisions, "cmp");
      }
    });
  }

  // --- sending ----------------------------------------------------------------------------

  function url(path) {
    return config.api.replace(/\/$/, "") + path;
  }

  function post(path, body) {
    return window.fetch(url(path), {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-API-Key": config.key},
      body: JSON.stringify(body),
      keepalive: true,
      credentials: "omit"
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (answer) {
        if (!response.ok) {
          var error = new Error((answer && answer.error) || ("HTTP " + response.status));
          error.status = response.status;
          throw error;
        }
        return answer;
      });
    });
  }

  function schedule(delay) {
    if (state.timer || !state.queue.length) return;
    state.timer = window.setTimeout(function () {
      state.timer = null;
      flush();
    }, delay);
  }

  /** Send what is queued now (a batch at a time); resolves when this batch is settled. */
  function flush() {
    if (state.inFlight || !state.queue.length || !tracking()) return state.inFlight || Promise.resolve();
    var batch = state.queue.slice(0, config.batchSize);
    state.inFlight = post("/v1/events", {events: batch}).then(function () {
      drop(batch);
      state.retries = 0;
    }, function (error) {
      if (error.status && error.status < 500 && error.status !== 429 && error.status !== 408) {
        drop(batch);  // refused as invalid: sending it again would not help
      } else {
        state.retries = Math.min(state.retries + 1, config.maxRetries);
      }
    }).then(function () {
      state.inFlight = null;
      // backoff after a failure: 2 s, 4 s, … up to 30 s
      var delay = state.retries ? Math.min(30000, config.retryMs * Math.pow(2, state.retries)) : 0;
      schedule(state.queue.length >= config.batchSize && !state.retries ? 0 : Math.max(delay, config.flushMs));
    });
    return state.inFlight;
  }

  function drop(batch) {
    var sent = {};
    for (var i = 0; i < batch.length; i++) sent[batch[i].source_event_id] = true;
    state.queue = state.queue.filter(function (event) { return !sent[event.source_event_id]; });
    save(QUEUE, state.queue.length ? state.queue : null);
  }

  // The page is going away: what is still queued leaves in a beacon, which the browser
  // delivers after the page is gone (event ids make a repeat harmless).
  function beacon() {
    if (!state.queue.length || !tracking() || !navigator.sendBeacon) return;
    var batch = state.queue.slice(0, MAX_BEACON_EVENTS);
    var body = new Blob([JSON.stringify({events: batch})], {type: "text/plain"});
    if (navigator.sendBeacon(url("/v1/events?key=" + encodeURIComponent(config.key)), body)) {
      drop(batch);
    }
  }

  // --- the public calls -------------------------------------------------------------------

  /** Queue one event ({item_id, value, quantity}); false when tracking is off. */
  function track(type, properties) {
    if (!tracking()) return false;
    var p = properties || {};
    var event = {
      source_event_id: newId(),
      event_type: type,
      anonymous_id: ensureAnonymousId(),
      timestamp: new Date().toISOString(),
      channel: "web",
      consent: granted(),
      context: {page: String(window.location.href).slice(0, 2048),
                referrer: document.referrer ? document.referrer.slice(0, 2048) : null}
    };
    if (state.userId) event.user_id = state.userId;
    if (p.item_id != null) event.item_id = String(p.item_id);
    if (typeof p.value === "number") event.value = p.value;
    if (typeof p.quantity === "number") event.quantity = Math.round(p.quantity);
    state.queue.push(event);
    save(QUEUE, state.queue);
    if (state.queue.length >= config.batchSize) flush();
    else schedule(config.flushMs);
    return true;
  }

  /** The person logged in: their browsing history becomes theirs from now on. */
  function identify(userId, traits) {
    if (!tracking() || !userId) return Promise.resolve(null);
    state.userId = String(userId);
    save(USER_ID, state.userId);
    var body = {user_id: state.userId, anonymous_id: ensureAnonymousId(), channel: "web",
                consent: granted()};
    if (traits) body.traits = traits;
    return flush().then(function () { return post("/v1/identify", body); });
  }

  function field(item, name) {
    var value = item[name];
    if (Array.isArray(value)) return value.join(", ");
    return value == null ? "" : String(value);
  }

  function card(item, template) {
    if (template) {
      var copy = template.content.cloneNode(true);
      var filled = copy.querySelectorAll("[data-bespoke-field]");
      for (var i = 0; i < filled.length; i++) {
        filled[i].textContent = field(item, filled[i].getAttribute("data-bespoke-field"));
      }
      var links = copy.querySelectorAll("a[data-bespoke-link]");
      for (var j = 0; j < links.length; j++) if (item.url) links[j].href = item.url;
      var root = copy.firstElementChild;
      if (root) root.setAttribute("data-bespoke-item", item.item_id);
      return copy;
    }
    var node = document.createElement("div");
    node.className = "bespoke-item";
    node.setAttribute("data-bespoke-item", item.item_id);
    node.textContent = item.title || item.item_id;
    return node;
  }

  /** Fill every [data-bespoke-slot] of the page from /v1/personalize: for the person once
   * they consented, a stranger's answer (no id sent) once they declined, nothing before. */
  function render(options) {
    var elements = document.querySelectorAll(config.slotSelector);
    if (!elements.length || state.consent === null) return Promise.resolve(null);
    var slots = [];
    for (var i = 0; i < elements.length; i++) {
      var el = elements[i];
      slots.push({id: el.getAttribute("data-bespoke-slot"),
                  kind: el.getAttribute("data-bespoke-kind") || "recommendations",
                  k: parseInt(el.getAttribute("data-bespoke-k") || "4", 10)});
    }
    var body = {slots: slots, context: Object.assign({channel: "web"}, (options || {}).context)};
    if (tracking()) body.anonymous_id = ensureAnonymousId();  // else: a stranger's answer
    return post("/v1/personalize", body).then(function (answer) {
      for (var s = 0; s < answer.slots.length; s++) {
        var target = document.querySelector(
          '[data-bespoke-slot="' + answer.slots[s].id.replace(/"/g, '\\"') + '"]');
        if (!target) continue;
        var template = target.querySelector("template");
        var shown = target.querySelectorAll("[data-bespoke-item]");
        for (var r = 0; r < shown.length; r++) shown[r].parentNode.removeChild(shown[r]);
        var items = answer.slots[s].items;
        for (var n = 0; n < items.length; n++) {
          target.appendChild(card(items[n], template));
          track("impression", {item_id: items[n].item_id});
        }
        target.setAttribute("data-bespoke-variant", answer.variant || "control");
      }
      document.dispatchEvent(new CustomEvent("bespoke:render", {detail: answer}));
      return answer;
    });
  }

  // --- auto-capture ---------------------------------------------------------------------

  function onClick(event) {
    if (!tracking() || !event.target.closest) return;
    var cart = event.target.closest("[data-bespoke-add-to-cart]");
    if (cart) {
      var price = parseFloat(cart.getAttribute("data-bespoke-price"));
      track("add_to_cart", {item_id: cart.getAttribute("data-bespoke-add-to-cart"),
                            value: isNaN(price) ? undefined : price, quantity: 1});
      return;
    }
    var item = event.target.closest("[data-bespoke-item]");
    if (item) track("click", {item_id: item.getAttribute("data-bespoke-item")});
  }

  function onSubmit() {
    track("form_submit", {});
  }

  function onScroll() {
    if (!tracking()) return;
    var root = document.documentElement;
    var height = Math.max(root.scrollHeight, document.body ? document.body.scrollHeight : 0);
    var seen = height <= window.innerHeight ? 100
      : 100 * (window.scrollY + window.innerHeight) / height;
    var marks = [25, 50, 75, 100];
    for (var i = 0; i < marks.length; i++) {
      if (seen >= marks[i] - 0.5 && !state.depths[marks[i]]) {
        state.depths[marks[i]] = true;
        track("scroll", {value: marks[i]});
      }
    }
  }

  function onHidden() {
    if (document.visibilityState === "hidden") beacon();
  }

  function start() {
    if (state.started || !tracking()) return;
    state.started = true;
    var left = saved(QUEUE);  // what a closed page could not send
    if (left && left.length) state.queue = left.concat(state.queue);
    state.userId = state.userId || saved(USER_ID);
    if (config.autocapture) {
      if (!state.listening) {
        state.listening = true;
        document.addEventListener("click", onClick, true);
        document.addEventListener("submit", onSubmit, true);
        window.addEventListener("scroll", onScroll, {passive: true});
      }
      track("view", {});  // the page view
    }
    schedule(0);
  }

  /** Configure ({key, api, ...}); tracking starts only once consent is known. */
  function init(options) {
    for (var name in options) if (Object.prototype.hasOwnProperty.call(options, name)) {
      config[name] = options[name];
    }
    if (!config.api) config.api = window.location.origin;
    document.addEventListener("visibilitychange", onHidden);
    window.addEventListener("pagehide", beacon);
    var known = saved(CONSENT);  // decided on an earlier page
    if (known) {
      state.consent = known;
      state.anonymousId = readCookie(ANONYMOUS_ID) || saved(ANONYMOUS_ID);
      start();
    }
    listenToConsentPlatform();
    return api;
  }

  var api = {
    init: init,
    consent: consent,
    optOut: optOut,
    identify: identify,
    track: track,
    render: render,
    flush: flush,
    state: function () {
      return {consent: state.consent, anonymousId: state.anonymousId, userId: state.userId,
              queued: state.queue.length, tracking: tracking()};
    },
    version: "1"
  };
  window.bespoke = api;
})(window, document);
