"""The live web view of a running cluster, served by `supervisor up`: server.py (the aiohttp
server on its own thread and loop, the routes, the event stream), guard.py (the session
secret, Host and Origin checks), observer.py (what the page shows, from rounds of Status) and
static/ (the page itself: plain HTML, CSS and JavaScript, no library, no CDN)."""
