"""Channels: how personalization reaches people — the browser SDK (``bespoke.js``) and the
demo storefront served beside the API (:mod:`bespoke.channels.web`)."""
