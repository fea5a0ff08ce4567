"""Where ``--events`` go, by URI: a file, ``-`` (stdout), or ``mqtt://...`` (one table of schemes).

``check_events`` runs at start, before any model loads: every URI is parsed and every broker
connected to once, so a wrong URI, a broker that is away and refused credentials end the run there,
in one line. ``open_events`` opens a sink for the run loop.
"""

from __future__ import annotations

import re
from typing import Callable, Protocol, Sequence

from hagrid_edge.deploy.common.capture import SourceEvent
from hagrid_edge.deploy.common.debounce import GestureEvent
from hagrid_edge.deploy.common.homeassistant import HomeAssistant
from hagrid_edge.deploy.common.outputs import EventsOutput
from hagrid_edge.errors import HagridEdgeError

USAGE = "a file, - (stdout), or mqtt://[user[:pass]@]HOST[:PORT]/TOPIC"


class EventSink(Protocol):
    name: str

    def write(self, event: GestureEvent | SourceEvent) -> None: ...

    def close(self) -> None: ...


def _check_mqtt(uri: str) -> None:
    from hagrid_edge.deploy.common import mqtt_events

    mqtt_events.check(uri)


def _open_mqtt(uri: str, homeassistant: HomeAssistant | None) -> EventSink:
    from hagrid_edge.deploy.common.mqtt_events import MqttEvents, parse_mqtt_uri

    if homeassistant is None:
        return MqttEvents(uri)
    return MqttEvents(uri, birth=homeassistant.discovery(parse_mqtt_uri(uri).topic), will=homeassistant.will)


# scheme -> (check at start, open); a URI without "://" is a file (or "-").
SCHEMES: dict[str, tuple[Callable[[str], None], Callable[[str, HomeAssistant | None], EventSink]]] = {
    "mqtt": (_check_mqtt, _open_mqtt),
}


def scheme_of(uri: str) -> str:
    """The URI's scheme ("" for a file or -); ``HagridEdgeError`` for one not in ``SCHEMES``."""
    if "://" not in uri:
        return ""
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        shown = re.sub(r"//([^/@:]*):[^/@]*@", r"//\1:***@", uri)  # never a password in a message
        raise HagridEdgeError(f"--events {shown}: unknown scheme {scheme}:// (use {USAGE})")
    return scheme


def check_events(uris: Sequence[str], homeassistant: HomeAssistant | None = None) -> None:
    """Refuse, naming the URI or option, what cannot work, before a model is loaded or a file touched."""
    schemes = [scheme_of(uri) for uri in uris]
    if homeassistant is not None and schemes.count("mqtt") != 1:
        given = ", ".join(uris) or "none"
        raise HagridEdgeError(f"--homeassistant: needs exactly one --events mqtt://HOST[:PORT]/TOPIC (--events "
                              f"given: {given})")
    for uri, scheme in zip(uris, schemes):  # noqa: B905 (Python 3.8: no strict)
        if scheme:
            SCHEMES[scheme][0](uri)


def open_events(uri: str, homeassistant: HomeAssistant | None = None) -> EventSink:
    """The sink for one ``--events`` URI; ``homeassistant`` goes to the ``mqtt://`` one."""
    scheme = scheme_of(uri)
    if not scheme:
        return EventsOutput(uri)
    return SCHEMES[scheme][1](uri, homeassistant)
