"""twistd dropin: ``twistd ipcontroller`` runs the ipkernel controller."""

from twisted.application.service import ServiceMaker

ipcontroller = ServiceMaker(
    "ipkernel controller",
    "ipkernel.tap",
    "The ipkernel controller: engines and clients connect over TLS with key files.",
    "ipcontroller",
)
