"""Home Assistant MQTT discovery for ``--homeassistant``: every gesture a device trigger, no YAML.

Published retained on each connection to the broker of the ``--events mqtt://`` URI:

- one ``device_automation`` trigger per gesture of ``hagrid_edge.labels.GESTURES`` on
  ``<prefix>/device_automation/<node_id>/gesture_<name>/config``: it fires when a message on the
  events topic is the start of that gesture (its ``value_template`` renders the gesture of a
  ``start`` event, which must equal the trigger's ``payload``); Home Assistant shows it as
  "<gesture> gesture";
- a ``binary_sensor`` (device class ``running``) on the availability topic, so the device page says
  whether the run is up: the topic holds "online" while connected; "offline" is published when the
  run ends and is the broker's last will if the run dies or loses the network.

All belong to one device, identified by the node id (the host name unless ``--ha-node-id``).
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass, field

from hagrid_edge import __version__
from hagrid_edge.errors import HagridEdgeError
from hagrid_edge.labels import GESTURES

DEFAULT_PREFIX = "homeassistant"
ONLINE, OFFLINE = "online", "offline"
# The rendered value of an events message: the gesture of a start, else nothing (ends, source events).
START_TEMPLATE = "{{ value_json.gesture if value_json.event == 'start' else '' }}"
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def default_node_id() -> str:
    """The host name with anything a discovery topic may not hold replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "hagrid-edge"


@dataclass(frozen=True)
class HomeAssistant:
    prefix: str = DEFAULT_PREFIX
    node_id: str = field(default_factory=default_node_id)

    def __post_init__(self) -> None:
        if not _NODE_ID.match(self.node_id):
            raise HagridEdgeError(f"--ha-node-id {self.node_id}: use letters, digits, _ and - only")
        if not self.prefix or "+" in self.prefix or "#" in self.prefix or self.prefix[0] == "/" or self.prefix[-1] == "/":
            raise HagridEdgeError(f"--homeassistant {self.prefix}: the discovery prefix must be a plain MQTT topic "
                                  f"(default {DEFAULT_PREFIX})")

    @property
    def availability_topic(self) -> str:
        return f"hagrid-edge/{self.node_id}/availability"

    @property
    def will(self) -> tuple[str, str]:
        """The broker's last will for the connection: the availability topic says "offline"."""
        return self.availability_topic, OFFLINE

    def device(self) -> dict:
        return {"identifiers": [f"hagrid-edge_{self.node_id}"], "name": f"hagrid-edge {self.node_id}",
                "manufacturer": "hagrid-edge", "model": "HaGRID hand-gesture recognition", "sw_version": __version__}

    def discovery(self, events_topic: str) -> list[tuple[str, str]]:
        """(topic, JSON payload) of every discovery message, then the availability topic's "online"."""
        device = self.device()
        messages = []
        for gesture in GESTURES:
            config = {"automation_type": "trigger", "type": "gesture", "subtype": gesture, "topic": events_topic,
                      "value_template": START_TEMPLATE, "payload": gesture, "qos": 1, "device": device}
            messages.append((f"{self.prefix}/device_automation/{self.node_id}/gesture_{gesture}/config",
                             json.dumps(config)))
        running = {"name": "running", "unique_id": f"hagrid-edge_{self.node_id}_running",
                   "state_topic": self.availability_topic, "payload_on": ONLINE, "payload_off": OFFLINE,
                   "device_class": "running", "entity_category": "diagnostic", "device": device}
        messages.append((f"{self.prefix}/binary_sensor/{self.node_id}/running/config", json.dumps(running)))
        messages.append((self.availability_topic, ONLINE))
        return messages
