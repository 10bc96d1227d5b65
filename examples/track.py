"""Post events to the local evspool sidecar from Python.

    pip install requests mixpanel
    evspool run --sink mixpanel &      # EVSPOOL_SINK_TOKEN=<project token>
    python examples/track.py
"""
import json
import os
import urllib.request

# The native endpoint: JSON object, array or NDJSON; 202 after the durable commit.
req = urllib.request.Request(
    "http://127.0.0.1:8787/v1/events?topic=track",
    data=json.dumps([
        {"event": "Signed up", "properties": {"distinct_id": "user-42", "plan": "pro"}},
        {"event": "Viewed pricing", "properties": {"distinct_id": "user-42"}},
    ]).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
with urllib.request.urlopen(req) as resp:
    print(resp.status, json.loads(resp.read())["ids"])

# Or keep the official SDK and only change its API host.
try:
    from mixpanel import Consumer, Mixpanel

    mp = Mixpanel(os.environ.get("MIXPANEL_TOKEN", "demo-token"),
                  consumer=Consumer(api_host="127.0.0.1:8787", request_timeout=5))
    # The SDK uses https by default; the sidecar listens on loopback http:
    mp._consumer._endpoints = {k: "http://127.0.0.1:8787/" + k for k in ("events", "people", "groups", "imports")}
    mp._consumer._endpoints.update(events="http://127.0.0.1:8787/track", people="http://127.0.0.1:8787/engage",
                                   imports="http://127.0.0.1:8787/import")
    mp.track("user-42", "Signed up", {"plan": "pro"})
except ImportError:
    pass
